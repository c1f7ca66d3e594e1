"""The decision log's database: an embedded SQLite file (WAL) by default, or PostgreSQL shared by several
gateways (``log.url``), with a versioned schema.

One row per decided item (``decisions``), keyed by the ``request_id`` the gateway returned; the rule and model
versions it was decided with (``versions``, stored once per distinct set); feedback by request id
(``feedback``, deleted with its decision), and feedback refused for a known decision (``feedback_rejected``). The schema version is SQLite's ``user_version``; :data:`MIGRATIONS`
upgrades older files in place, and a file written by a newer tiergate is refused rather than guessed at.

Only the gateway's writer thread writes (:mod:`tiergate.decisionlog.writer`); the CLI reads, and deletes on
an operator's request. Several processes may hold the file at once (``serve --workers N``, an export while the
gateway runs): WAL lets readers and one writer proceed together, and a busy writer waits ``BUSY_TIMEOUT_MS``.

>>> store = DecisionStore.open("runs/spam/decisions.db")          # doctest: +SKIP
>>> store.feedback_rows()[:1]                                     # doctest: +SKIP
[{'request_id': '3f2a...', 'label': 'ham', 'decided_label': 'spam', ...}]
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tiergate.errors import ConfigError

BUSY_TIMEOUT_MS = 10_000

# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
MIGRATIONS: list[str] = [
    # 1: decisions, the version sets they were made with, feedback.
    """
    CREATE TABLE versions (
        id        INTEGER PRIMARY KEY,
        versions  TEXT NOT NULL UNIQUE              -- JSON {tier: version}, keys sorted
    );
    CREATE TABLE decisions (
        id                 INTEGER PRIMARY KEY,
        request_id         TEXT NOT NULL UNIQUE,
        ts                 REAL NOT NULL,           -- unix time of the answer
        tier               TEXT NOT NULL,           -- the tier whose answer was returned
        label              TEXT NOT NULL,
        confidence         REAL NOT NULL,
        path               TEXT NOT NULL,           -- tiers the item passed through, comma-separated
        reason             TEXT NOT NULL,
        cost_usd           REAL NOT NULL,
        baseline_cost_usd  REAL NOT NULL,
        degraded           TEXT,                    -- NULL, or why a cheaper answer was returned
        final_only         INTEGER NOT NULL DEFAULT 0,
        versions_id        INTEGER NOT NULL REFERENCES versions(id),
        text_sha256        TEXT NOT NULL,           -- of the text as received (UTF-8)
        text               TEXT,                    -- redacted; only where log.store_text allows
        audit_label        TEXT,                    -- the final tier's answer in a shadow audit
        audit_ts           REAL
    );
    CREATE INDEX decisions_ts ON decisions(ts);
    CREATE TABLE feedback (
        request_id  TEXT PRIMARY KEY REFERENCES decisions(request_id) ON DELETE CASCADE,
        label       TEXT NOT NULL,
        ts          REAL NOT NULL,
        updates     INTEGER NOT NULL DEFAULT 1      -- how many times this id was given feedback
    );
    """,
    # 2: feedback that was refused for a known decision (a label outside the label set): a client whose labels
    # do not match the gateway's (e.g. "Spam" for "spam") shows up here, and can be fixed and replayed.
    """
    CREATE TABLE feedback_rejected (
        id          INTEGER PRIMARY KEY,
        request_id  TEXT NOT NULL REFERENCES decisions(request_id) ON DELETE CASCADE,
        label       TEXT NOT NULL,
        reason      TEXT NOT NULL,
        ts          REAL NOT NULL
    );
    CREATE INDEX feedback_rejected_request ON feedback_rejected(request_id);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

DECISION_COLUMNS = ("request_id", "ts", "tier", "label", "confidence", "path", "reason", "cost_usd",
                    "baseline_cost_usd", "degraded", "final_only", "versions_id", "text_sha256", "text")


@dataclass(slots=True)
class TrainingRow:
    """A logged item with a label tiergate may learn from, and where the label came from."""

    request_id: str
    text: str
    label: str
    source: str             # feedback | final_tier | shadow_audit


class DecisionStore:
    """One connection to the log (SQLite or PostgreSQL: :class:`Sqlite`, :class:`Postgres`). Not thread-safe:
    each thread opens its own. Queries are written once, with ``?`` placeholders, in the SQL both speak."""

    def __init__(self, conn, where: str, dialect: Dialect):
        self.conn = conn
        self.where = where          # the file, or the database URL without its password (for messages)
        self.dialect = dialect
        self._version_ids: dict[str, int] = {}

    @property
    def path(self) -> Path:
        return Path(self.where)

    @classmethod
    def open(cls, location: str | Path, *, readonly: bool = False, synchronous: str = "full") -> DecisionStore:
        """Open the log at ``location`` (a file, or a ``postgresql://`` URL), migrating it to the current schema;
        ``readonly``: it must exist already (the command line never creates one)."""
        if is_url(location):
            return Postgres.open(cls, str(location))
        return Sqlite.open(cls, Path(location), readonly=readonly, synchronous=synchronous)

    def _x(self, sql: str, params: Sequence = ()):
        return self.conn.execute(self.dialect.sql(sql), params)

    def _xm(self, sql: str, rows: Sequence[Sequence]) -> None:
        if rows:
            self.dialect.executemany(self.conn, self.dialect.sql(sql), rows)

    def begin(self) -> None:
        """Start a write transaction (SQLite: take the write lock now, so a busy file waits here)."""
        self.dialect.begin(self)

    def commit(self) -> None:
        self.conn.commit() if self.dialect.name == "postgresql" else self._x("COMMIT")

    def rollback(self) -> None:
        try:
            self.conn.rollback() if self.dialect.name == "postgresql" else self._x("ROLLBACK")
        except Exception:  # nothing to roll back (the failure came before BEGIN): fine
            pass

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION. Several processes may open a new log at once (serve --workers N):
        the version is read again inside an exclusive transaction, so one of them migrates and the others find
        it done. A reader upgrades too (`tiergate feedback export` after an upgrade, before the gateway
        restarts): migrations only add."""
        d = self.dialect
        if self._schema_version() == SCHEMA_VERSION:
            return
        d.begin_exclusive(self)
        try:
            have = self._schema_version()
            for v in range(have, SCHEMA_VERSION):
                for statement in _statements(d.migrations[v]):
                    self._x(statement)
            d.set_version(self, max(have, SCHEMA_VERSION))
            self.commit()
        except BaseException:
            self.rollback()
            raise

    def _schema_version(self) -> int:
        have = self.dialect.version(self)
        if have > SCHEMA_VERSION:
            raise ConfigError(f"{self.where}: the decision log has schema version {have}, newer than this tiergate "
                              f"knows ({SCHEMA_VERSION}); upgrade tiergate")
        return have

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------------------------------------ writing
    def version_id(self, versions_json: str) -> int:
        """The id of a version set (inserted on first use); call inside the writer's transaction."""
        vid = self._version_ids.get(versions_json)
        if vid is None:
            self._x("INSERT INTO versions(versions) VALUES (?) ON CONFLICT DO NOTHING", (versions_json,))
            vid = self._x("SELECT id FROM versions WHERE versions = ?", (versions_json,)).fetchone()[0]
            self._version_ids[versions_json] = vid
        return vid

    def forget_cached_ids(self) -> None:
        """After a rollback: ids cached inside the rolled-back transaction may not exist."""
        self._version_ids.clear()

    def insert_decisions(self, rows: Sequence[tuple]) -> None:
        """Rows in :data:`DECISION_COLUMNS` order. A request id already logged keeps its first row."""
        cols = ", ".join(DECISION_COLUMNS)
        marks = ", ".join("?" * len(DECISION_COLUMNS))
        if self.dialect.name == "postgresql":  # its TEXT cannot hold NUL, which a JSON body may carry
            rows = [tuple(v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in r) for r in rows]
        self._xm(f"INSERT INTO decisions({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING", rows)

    def decided_label(self, request_id: str) -> str | None:
        row = self._x("SELECT label FROM decisions WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else row[0]

    def upsert_feedback(self, request_id: str, label: str, ts: float) -> None:
        self._x(
            "INSERT INTO feedback(request_id, label, ts) VALUES (?, ?, ?) ON CONFLICT(request_id) DO UPDATE "
            "SET label = excluded.label, ts = excluded.ts, updates = feedback.updates + 1", (request_id, label, ts))

    def reject_feedback(self, request_id: str, label: str, reason: str, ts: float) -> bool:
        """Keep a refused feedback for a decision the log holds; False (nothing kept) for an unknown id."""
        cur = self._x("INSERT INTO feedback_rejected(request_id, label, reason, ts) SELECT request_id, CAST(? AS TEXT), "
                                "CAST(? AS TEXT), CAST(? AS DOUBLE PRECISION) "
                                "FROM decisions WHERE request_id = ?", (label, reason, ts, request_id))
        return cur.rowcount > 0

    def rejected_feedback_rows(self) -> list[dict]:
        cur = self._x("SELECT r.request_id, r.label, r.reason, r.ts, d.label FROM feedback_rejected r "
                                "JOIN decisions d USING (request_id) ORDER BY r.id")
        return [{"request_id": r[0], "label": r[1], "reason": r[2], "feedback_ts": r[3], "decided_label": r[4]}
                for r in cur]

    def set_audits(self, rows: Sequence[tuple[str, float, str]]) -> None:
        """(label, ts, request_id): the final tier's answer in a shadow audit."""
        self._xm("UPDATE decisions SET audit_label = ?, audit_ts = ? WHERE request_id = ?", rows)

    def delete(self, request_id: str) -> bool:
        """Remove a decision, its text and its feedback; True if there was one."""
        cur = self._x("DELETE FROM decisions WHERE request_id = ?", (request_id,))
        return cur.rowcount > 0

    def enforce_retention(self, *, max_age_s: float, max_rows: int, now: float | None = None) -> int:
        """Delete decisions (and their feedback) older than ``max_age_s`` and beyond the newest ``max_rows``;
        returns how many went."""
        now = time.time() if now is None else now
        gone = self._x("DELETE FROM decisions WHERE ts < ?", (now - max_age_s,)).rowcount
        top = self._x("SELECT MAX(id) FROM decisions").fetchone()[0]
        if top is not None:
            # ids only grow, so the newest max_rows rows are those with id > top - max_rows (gaps make it keep
            # fewer, never more)
            gone += self._x("DELETE FROM decisions WHERE id <= ?", (top - max_rows,)).rowcount
        return gone

    # ------------------------------------------------------------------------------------------ reading
    def stats(self) -> dict:
        c = self
        n, oldest, newest = c._x("SELECT COUNT(*), MIN(ts), MAX(ts) FROM decisions").fetchone()
        with_text = c._x("SELECT COUNT(*) FROM decisions WHERE text IS NOT NULL").fetchone()[0]
        audited = c._x("SELECT COUNT(*) FROM decisions WHERE audit_label IS NOT NULL").fetchone()[0]
        fb = c._x("SELECT COUNT(*) FROM feedback").fetchone()[0]
        rejected = c._x("SELECT COUNT(*) FROM feedback_rejected").fetchone()[0]
        by_tier = dict(c._x("SELECT tier, COUNT(*) FROM decisions GROUP BY tier").fetchall())
        return {"path": self.where, "schema_version": SCHEMA_VERSION, "decisions": n, "with_text": with_text,
                "shadow_audited": audited, "feedback": fb, "feedback_rejected": rejected, "by_tier": by_tier, "oldest_ts": oldest,
                "newest_ts": newest, "bytes": self.dialect.size(self)}

    def feedback_rows(self) -> list[dict]:
        """Every feedback row with the decision it is about, oldest feedback first."""
        cur = self._x(
            "SELECT f.request_id, f.label, f.ts, f.updates, d.ts, d.tier, d.label, d.confidence, d.path, "
            "d.degraded, v.versions FROM feedback f JOIN decisions d USING (request_id) "
            "JOIN versions v ON v.id = d.versions_id ORDER BY f.ts")
        return [{"request_id": r[0], "label": r[1], "feedback_ts": r[2], "updates": r[3], "decided_ts": r[4],
                 "decided_tier": r[5], "decided_label": r[6], "confidence": r[7], "path": r[8].split(","),
                 "degraded": r[9], "agreed": r[1] == r[6], "versions": json.loads(r[10])} for r in cur]

    def training_rows(self, final_tier: str) -> Iterator[TrainingRow]:
        """Logged items with text and a label from the final tier or from people: human feedback first, then
        the final tier's own decision (not a degraded one), then its shadow-audit answer."""
        cur = self._x(
            "SELECT d.request_id, d.text, f.label, d.tier, d.label, d.degraded, d.audit_label "
            "FROM decisions d LEFT JOIN feedback f USING (request_id) WHERE d.text IS NOT NULL ORDER BY d.id")
        for rid, text, fb, tier, label, degraded, audit in cur:
            if fb is not None:
                yield TrainingRow(rid, text, fb, "feedback")
            elif tier == final_tier and degraded is None:
                yield TrainingRow(rid, text, label, "final_tier")
            elif audit is not None:
                yield TrainingRow(rid, text, audit, "shadow_audit")

    def live_counts(self, versions_json: str) -> tuple[list[tuple[str, str, str]], dict[str, int]]:
        """The shadow audits made with this version set, and how many (not degraded) decisions each tier made
        with it: what the live risk is computed from."""
        row = self._x("SELECT id FROM versions WHERE versions = ?", (versions_json,)).fetchone()
        if row is None:
            return [], {}
        audits = self._x("SELECT tier, label, audit_label FROM decisions WHERE versions_id = ? AND "
                                   "audit_label IS NOT NULL", (row[0],)).fetchall()
        decided = dict(self._x("SELECT tier, COUNT(*) FROM decisions WHERE versions_id = ? AND "
                                         "degraded IS NULL GROUP BY tier", (row[0],)).fetchall())
        return audits, decided

    def count_text(self) -> int:
        return self._x("SELECT COUNT(*) FROM decisions WHERE text IS NOT NULL").fetchone()[0]


def _statements(script: str) -> list[str]:
    """A migration script as single statements (sqlite3.complete_statement knows comments and quotes)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()):
        raise ValueError(f"an incomplete statement at the end of a migration: {buf.strip()[:80]}")
    return out


def _with_retry(op, attempts: int = 50, pause_s: float = 0.1):
    """Run ``op`` again while the database is busy: switching to WAL and starting an exclusive transaction can
    answer SQLITE_BUSY at once, without waiting for the busy timeout, while another process holds the file."""
    for i in range(attempts):
        try:
            return op()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e) or i == attempts - 1:
                raise
            time.sleep(pause_s)


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def without_password(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


class Dialect:
    name = ""
    migrations: list[str] = []

    @staticmethod
    def sql(sql: str) -> str:
        return sql


class Sqlite(Dialect):
    """The embedded default: one file, WAL (readers and one writer at once), ``user_version`` as the version."""

    name = "sqlite"
    migrations = MIGRATIONS

    @classmethod
    def open(cls, store_cls, path: Path, *, readonly: bool, synchronous: str) -> DecisionStore:
        if readonly and not path.exists():
            raise ConfigError(f"{path}: no decision log here yet; the gateway creates it when it serves "
                              "(log.enabled, log.path in the config)")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            if not readonly:
                _with_retry(lambda: conn.execute("PRAGMA journal_mode = WAL"))
                conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            store = store_cls(conn, str(path), cls())
            store._migrate()
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"{path}: not a usable decision log ({e}); move it aside to start a new one") from e
        return store

    @staticmethod
    def executemany(conn, sql: str, rows) -> None:
        conn.executemany(sql, rows)

    @staticmethod
    def begin(store: DecisionStore) -> None:
        store._x("BEGIN IMMEDIATE")

    @staticmethod
    def begin_exclusive(store: DecisionStore) -> None:
        _with_retry(lambda: store._x("BEGIN IMMEDIATE"))

    @staticmethod
    def version(store: DecisionStore) -> int:
        return store._x("PRAGMA user_version").fetchone()[0]

    @staticmethod
    def set_version(store: DecisionStore, v: int) -> None:
        store._x(f"PRAGMA user_version = {int(v)}")

    @staticmethod
    def size(store: DecisionStore) -> int:
        return store.path.stat().st_size if store.path.exists() else 0


# The same schema in PostgreSQL's types: float8 for times and money (its REAL is single precision), identity ids.
PG_MIGRATIONS: list[str] = [
    """
    CREATE TABLE versions (
        id        BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        versions  TEXT NOT NULL UNIQUE
    );
    CREATE TABLE decisions (
        id                 BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        request_id         TEXT NOT NULL UNIQUE,
        ts                 DOUBLE PRECISION NOT NULL,
        tier               TEXT NOT NULL,
        label              TEXT NOT NULL,
        confidence         DOUBLE PRECISION NOT NULL,
        path               TEXT NOT NULL,
        reason             TEXT NOT NULL,
        cost_usd           DOUBLE PRECISION NOT NULL,
        baseline_cost_usd  DOUBLE PRECISION NOT NULL,
        degraded           TEXT,
        final_only         INTEGER NOT NULL DEFAULT 0,
        versions_id        BIGINT NOT NULL REFERENCES versions(id),
        text_sha256        TEXT NOT NULL,
        text               TEXT,
        audit_label        TEXT,
        audit_ts           DOUBLE PRECISION
    );
    CREATE INDEX decisions_ts ON decisions(ts);
    CREATE TABLE feedback (
        request_id  TEXT PRIMARY KEY REFERENCES decisions(request_id) ON DELETE CASCADE,
        label       TEXT NOT NULL,
        ts          DOUBLE PRECISION NOT NULL,
        updates     INTEGER NOT NULL DEFAULT 1
    );
    """,
    """
    CREATE TABLE feedback_rejected (
        id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        request_id  TEXT NOT NULL REFERENCES decisions(request_id) ON DELETE CASCADE,
        label       TEXT NOT NULL,
        reason      TEXT NOT NULL,
        ts          DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX feedback_rejected_request ON feedback_rejected(request_id);
    """,
]
PG_LOCK = 7_216_843_051  # the advisory lock migrations take (any constant of tiergate's own)


class Postgres(Dialect):
    """The log shared by several gateways (``log.url``; extra ``tiergate[postgres]``, psycopg 3). Commits are
    durable when they return (PostgreSQL's default ``synchronous_commit``); the schema version is kept in
    ``tiergate_schema``, and migrations run under an advisory lock."""

    name = "postgresql"
    migrations = PG_MIGRATIONS

    @classmethod
    def open(cls, store_cls, url: str) -> DecisionStore:
        try:
            import psycopg
        except ImportError as e:
            raise ConfigError("log.url names PostgreSQL, and psycopg is not installed: pip install "
                              "'tiergate[postgres]'") from e
        where = without_password(url)
        try:
            conn = psycopg.connect(url, connect_timeout=10)
        except psycopg.Error as e:
            raise ConfigError(f"{where}: cannot connect to the decision log's database: {e}") from e
        conn.execute("CREATE TABLE IF NOT EXISTS tiergate_schema (version INTEGER NOT NULL)")
        conn.commit()
        store = store_cls(conn, where, cls())
        store._migrate()
        return store

    @staticmethod
    def sql(sql: str) -> str:
        return sql.replace("?", "%s")

    @staticmethod
    def executemany(conn, sql: str, rows) -> None:
        with conn.cursor() as cur:
            cur.executemany(sql, rows)

    @staticmethod
    def begin(store: DecisionStore) -> None:
        store.conn.rollback()  # psycopg opens a transaction at the first statement; start from a clean one

    @staticmethod
    def begin_exclusive(store: DecisionStore) -> None:
        store.conn.rollback()
        store._x(f"SELECT pg_advisory_xact_lock({PG_LOCK})")

    @staticmethod
    def version(store: DecisionStore) -> int:
        row = store._x("SELECT MAX(version) FROM tiergate_schema").fetchone()
        store.conn.commit()
        return int(row[0] or 0)

    @staticmethod
    def set_version(store: DecisionStore, v: int) -> None:
        store._x("DELETE FROM tiergate_schema")
        store._x("INSERT INTO tiergate_schema(version) VALUES (?)", (int(v),))

    @staticmethod
    def size(store: DecisionStore) -> int:
        row = store._x("SELECT pg_total_relation_size('decisions') + pg_total_relation_size('feedback')").fetchone()
        store.conn.commit()
        return int(row[0] or 0)


def log_path(cfg, base: Path) -> str | Path:
    """Where a config's decision log lives: ``log.url`` (PostgreSQL; or the variable ``log.url_env`` names),
    else the file ``log.path``, relative to the config's folder."""
    import os

    url = cfg.log.url or (os.environ.get(cfg.log.url_env, "") if cfg.log.url_env else "")
    if cfg.log.url_env and not url:
        raise ConfigError(f"log.url_env names {cfg.log.url_env}, which is not set")
    if url:
        return url
    p = Path(cfg.log.path)
    return p if p.is_absolute() else base / p
