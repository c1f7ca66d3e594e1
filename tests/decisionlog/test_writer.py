"""The writer thread: group commit, order (feedback finds the decision queued before it), drops when full,
flush on close, retention at start, audits beside their decisions."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from prometheus_client import REGISTRY

from tiergate.cascade import Decision
from tiergate.config import LogConfig
from tiergate.decisionlog.writer import LogWriter
from tiergate.errors import NotFoundError

V = '{"small": "v1"}'


def decision(rid: str, label: str = "ham", path=("small",)) -> Decision:
    return Decision(label=label, confidence=0.9, probabilities=None, tier=path[-1], reason="r", path=list(path),
                    request_id=rid)


def count(db, sql="SELECT COUNT(*) FROM decisions"):
    with sqlite3.connect(db) as c:
        return c.execute(sql).fetchone()[0]


def commits() -> float:
    return REGISTRY.get_sample_value("tiergate_log_commit_seconds_count") or 0.0


def test_many_writes_share_few_commits_and_feedback_finds_its_decision(tmp_path):
    w = LogWriter(tmp_path / "d.db", LogConfig(commit_interval_ms=20))
    w.start()

    async def go():
        for i in range(500):
            w.record([decision(f"r{i}")], [f"text {i}"], V)
        decided = await w.feedback("r499", "spam")  # queued after the decision: found, in the same commit
        with pytest.raises(NotFoundError):
            await w.feedback("never-issued", "spam")
        return decided

    before = commits()
    assert asyncio.run(go()) == "ham"
    assert commits() - before < 50, "500 decisions took one commit each"
    assert count(tmp_path / "d.db") == 500
    assert count(tmp_path / "d.db", "SELECT label FROM feedback WHERE request_id = 'r499'") == "spam"
    w.close()


def test_a_full_queue_drops_decisions_and_counts_them_and_close_flushes_the_rest(tmp_path):
    w = LogWriter(tmp_path / "d.db", LogConfig(max_queue=5))
    dropped = REGISTRY.get_sample_value("tiergate_log_writes_total", {"outcome": "dropped"}) or 0.0
    for i in range(8):  # the writer has not started: nothing drains the queue
        w.record([decision(f"r{i}")], ["t"], V)
    assert REGISTRY.get_sample_value("tiergate_log_writes_total", {"outcome": "dropped"}) - dropped == 3
    w.start()
    w.close()
    assert count(tmp_path / "d.db") == 5 and w.pending == 0


def test_retention_runs_at_start(tmp_path):
    w = LogWriter(tmp_path / "d.db", LogConfig(), clock=lambda: 1_000.0)
    w.start()
    for i in range(4):
        w.record([decision(f"old{i}")], ["t"], V)
    w.close()
    later = LogWriter(tmp_path / "d.db", LogConfig(retention_days=1), clock=lambda: 1_000.0 + 2 * 86400)
    later.start()
    assert count(tmp_path / "d.db") == 0
    later.close()


def test_audits_and_deletes_apply_in_order(tmp_path):
    w = LogWriter(tmp_path / "d.db", LogConfig(store_text="all"))
    w.start()

    async def go():
        w.record([decision("a"), decision("b")], ["mail to x@y.org", "b"], V)
        w.audit("a", "spam")
        await w.delete("b")
        with pytest.raises(NotFoundError):
            await w.delete("b")
        await w.flush()

    asyncio.run(go())
    with sqlite3.connect(tmp_path / "d.db") as c:
        assert c.execute("SELECT request_id, audit_label, text FROM decisions").fetchall() == [("a", "spam", "mail to <email>")]
    w.close()


def test_one_commit_of_interleaved_operations_keeps_their_order(tmp_path):
    """Requests queued one after another share one INSERT; an audit or a delete between them still applies
    to the rows queued before it, and a repeated request id keeps its first row."""
    w = LogWriter(tmp_path / "d.db", LogConfig(commit_interval_ms=200))
    w.start()

    async def go():
        before = commits()
        w.record([decision("a")], ["t"], V)
        w.record([decision("b")], ["t"], V)
        w.audit("a", "spam")
        w.record([decision("c"), decision("a", label="spam")], ["t", "t"], V)
        w.audit("c", "ham")
        deleted = asyncio.ensure_future(w.delete("b"))
        w.record([decision("d")], ["t"], V)
        await deleted
        await w.flush()
        return commits() - before

    assert asyncio.run(go()) <= 2  # all of it within one or two group commits
    with sqlite3.connect(tmp_path / "d.db") as c:
        got = c.execute("SELECT request_id, label, audit_label FROM decisions ORDER BY request_id").fetchall()
    assert got == [("a", "ham", "spam"), ("c", "ham", "ham"), ("d", "ham", None)]
    w.close()


def test_a_failing_batch_fails_its_waiters_and_the_writer_lives_on(tmp_path):
    w = LogWriter(tmp_path / "d.db", LogConfig(commit_interval_ms=50))
    w.start()
    errors = REGISTRY.get_sample_value("tiergate_log_writes_total", {"outcome": "error"}) or 0.0

    async def go():
        w.record([object()], ["t"], V)  # not a Decision: building its row fails inside the writer
        with pytest.raises(Exception, match="could not be written"):
            await w.feedback("x", "ham")   # in the same group commit, which is rolled back
        w.record([decision("ok")], ["t"], V)
        assert await w.feedback("ok", "spam") == "ham"

    asyncio.run(go())
    assert REGISTRY.get_sample_value("tiergate_log_writes_total", {"outcome": "error"}) - errors == 1
    w.close()
    assert count(tmp_path / "d.db") == 1
