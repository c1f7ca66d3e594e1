"""The log's database: migrations, refusal of a newer schema, retention, deletes cascading to feedback, and
which rows retraining may learn from."""

from __future__ import annotations

import sqlite3

import pytest

from tiergate.decisionlog.store import DECISION_COLUMNS, SCHEMA_VERSION, DecisionStore
from tiergate.errors import ConfigError


def row(rid, ts=1000.0, tier="small", label="ham", text=None, degraded=None, vid=1):
    values = {"request_id": rid, "ts": ts, "tier": tier, "label": label, "confidence": 0.9, "path": tier,
              "reason": "r", "cost_usd": 0.0, "baseline_cost_usd": 0.0, "degraded": degraded, "final_only": 0,
              "versions_id": vid, "text_sha256": "0" * 64, "text": text}
    return tuple(values[c] for c in DECISION_COLUMNS)


@pytest.fixture
def store(tmp_path):
    s = DecisionStore.open(tmp_path / "d.db")
    s.version_id('{"small": "a"}')
    yield s
    s.close()


def test_a_new_file_gets_the_latest_schema_in_wal_mode(tmp_path):
    s = DecisionStore.open(tmp_path / "d.db")
    assert s.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()
    again = DecisionStore.open(tmp_path / "d.db")  # opening twice migrates nothing
    assert again.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    again.close()


def test_an_older_log_is_upgraded_in_place_and_keeps_its_rows(tmp_path):
    from tiergate.decisionlog.store import MIGRATIONS

    c = sqlite3.connect(tmp_path / "d.db", isolation_level=None)
    c.executescript(f"BEGIN; {MIGRATIONS[0]}; PRAGMA user_version = 1; COMMIT;")
    c.execute("INSERT INTO versions(versions) VALUES ('{}')")
    c.execute("INSERT INTO decisions(request_id, ts, tier, label, confidence, path, reason, cost_usd, baseline_cost_usd, "
              "versions_id, text_sha256) VALUES ('old', 1, 'small', 'ham', 0.9, 'small', 'r', 0, 0, 1, 'x')")
    c.close()
    s = DecisionStore.open(tmp_path / "d.db")
    assert s.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION > 1
    assert s.decided_label("old") == "ham"
    assert s.reject_feedback("old", "Ham", "bad_label", 2.0) and not s.reject_feedback("nope", "x", "bad_label", 2.0)
    assert [r["label"] for r in s.rejected_feedback_rows()] == ["Ham"]
    assert s.delete("old") and s.rejected_feedback_rows() == []
    s.close()


def test_a_log_from_a_newer_tiergate_is_refused_not_guessed_at(tmp_path):
    c = sqlite3.connect(tmp_path / "d.db")
    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    c.close()
    with pytest.raises(ConfigError, match="newer than this tiergate"):
        DecisionStore.open(tmp_path / "d.db")


def test_a_file_that_is_not_a_database_gets_a_clear_error(tmp_path):
    (tmp_path / "d.db").write_bytes(b"x" * 4096)
    with pytest.raises(ConfigError, match="not a usable decision log"):
        DecisionStore.open(tmp_path / "d.db")


def test_readonly_open_of_a_missing_log_says_how_it_comes_about(tmp_path):
    with pytest.raises(ConfigError, match="no decision log here yet"):
        DecisionStore.open(tmp_path / "none.db", readonly=True)


def test_retention_by_age_and_by_rows_takes_the_feedback_with_it(store):
    store.insert_decisions([row(f"r{i}", ts=1000.0 + i) for i in range(10)])
    for i in range(10):
        store.upsert_feedback(f"r{i}", "spam", 2000.0)
    assert store.enforce_retention(max_age_s=5.5, max_rows=100, now=1010.0) == 5   # ts < 1004.5
    assert store.enforce_retention(max_age_s=1e9, max_rows=3, now=1010.0) == 2     # the newest 3 stay
    left = [r[0] for r in store.conn.execute("SELECT request_id FROM decisions ORDER BY id")]
    assert left == ["r7", "r8", "r9"]
    assert [r[0] for r in store.conn.execute("SELECT request_id FROM feedback ORDER BY request_id")] == left


def test_delete_removes_the_row_its_text_and_its_feedback(store):
    store.insert_decisions([row("a", text="secret"), row("b")])
    store.upsert_feedback("a", "spam", 1.0)
    assert store.delete("a") and not store.delete("a")
    assert store.conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 0
    assert store.conn.execute("SELECT COUNT(*) FROM decisions WHERE text IS NOT NULL").fetchone()[0] == 0


def test_a_request_id_is_logged_once_and_feedback_updates_count(store):
    store.insert_decisions([row("a", label="ham")])
    store.insert_decisions([row("a", label="spam")])
    assert store.decided_label("a") == "ham"
    store.upsert_feedback("a", "spam", 1.0)
    store.upsert_feedback("a", "ham", 2.0)
    (fb,) = store.feedback_rows()
    assert (fb["label"], fb["updates"], fb["agreed"], fb["decided_label"]) == ("ham", 2, True, "ham")


def test_training_rows_prefer_feedback_then_the_final_tier_then_audits(store):
    store.insert_decisions([
        row("fb", tier="small", label="ham", text="t1"),              # feedback says spam
        row("final", tier="large", label="spam", text="t2"),          # decided by the final tier
        row("degraded", tier="small", label="ham", text="t3", degraded="timeout"),
        row("audited", tier="small", label="ham", text="t4"),         # the audit said spam
        row("cheap", tier="small", label="ham", text="t5"),           # a cheap tier's own answer: not a lesson
        row("notext", tier="large", label="spam"),                    # no text: nothing to learn from
    ])
    store.upsert_feedback("fb", "spam", 1.0)
    store.set_audits([("spam", 1.0, "audited")])
    got = [(r.request_id, r.label, r.source) for r in store.training_rows("large")]
    assert got == [("fb", "spam", "feedback"), ("final", "spam", "final_tier"), ("audited", "spam", "shadow_audit")]


def test_live_counts_are_per_version_set(store):
    v2 = store.version_id('{"small": "b"}')
    store.insert_decisions([row("a"), row("b", vid=v2), row("c", tier="large"), row("d", degraded="error")])
    store.set_audits([("spam", 1.0, "a")])
    audits, decided = store.live_counts('{"small": "a"}')
    assert audits == [("small", "ham", "spam")]
    assert decided == {"small": 1, "large": 1}
    assert store.live_counts('{"small": "zzz"}') == ([], {})
