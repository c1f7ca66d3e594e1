"""The gateway's writer of the decision log: one thread, one connection, group commit.

The event loop only appends to a queue (:meth:`LogWriter.record` does no I/O, no hashing, no redaction). The
writer thread takes whatever has gathered (waiting ``log.commit_interval_ms`` after the first write), turns it
into rows, and commits it all in one transaction, so the cost of a commit (an fsync with ``synchronous: full``)
is shared by every write in it. Operations run in the order they were queued: a feedback for a request id is
queued after that request's decision (the client can only know the id once the answer was sent), so
feedback finds its decision in the same or an earlier transaction, and is acknowledged only after the commit
that holds it.

A full queue drops decisions (counted in ``tiergate_log_writes_total{outcome="dropped"}``) rather than holding
requests; feedback and deletes are never dropped.

>>> w = LogWriter(path, cfg.log); w.start()                            # doctest: +SKIP
>>> w.record(decisions, texts, versions_json)                          # doctest: +SKIP
>>> await w.feedback(request_id, "ham")   # -> the decided label, after the commit   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from tiergate.cascade import Decision
from tiergate.config import LogConfig
from tiergate.decisionlog.privacy import TextPolicy, text_sha256
from tiergate.decisionlog.store import DecisionStore
from tiergate.errors import NotFoundError, UnavailableError

log = logging.getLogger("tiergate.decisionlog")

RETENTION_EVERY_S = 60.0
MAX_OPS_PER_COMMIT = 5000
CALL_TIMEOUT_S = 30.0   # feedback and deletes wait this long for their commit, then 503

LOG_WRITES = Counter("tiergate_log_writes_total", "Decisions offered to the decision log, by outcome "
                     "(written, dropped: the writer's queue was full, error: the database refused the commit)",
                     ["outcome"])
LOG_COMMIT = Histogram("tiergate_log_commit_seconds", "Time of one group commit of the decision log",
                       buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))
LOG_QUEUE = Gauge("tiergate_log_queue_items", "Decisions waiting for the log writer", multiprocess_mode="livesum")
LOG_RETENTION = Counter("tiergate_log_retention_deleted_total", "Decisions deleted by the retention limits")
for _o in ("written", "dropped", "error"):
    LOG_WRITES.labels(_o)


class LogWriter:
    """Owns the log's write connection in a thread of its own. ``start()`` before use, ``close()`` to flush
    everything queued and stop."""

    def __init__(self, location: str | Path, cfg: LogConfig, *, clock=time.time):
        self.location = location          # a file, or a postgresql:// URL
        self.cfg = cfg
        self.policy = TextPolicy(cfg)
        self.clock = clock
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._enqueued = 0      # decisions queued (written by the loop thread only)
        self._done = 0          # decisions written or lost (written by the writer thread only)
        self._ready: Future = Future()
        self.where = str(location)          # for messages: the file, or the URL without its password

    # --------------------------------------------------------------------------------------- the loop side
    def start(self) -> None:
        """Open (and migrate) the database in the writer thread; raises what opening raised."""
        self._thread.start()
        self._ready.result(timeout=60)

    @property
    def pending(self) -> int:
        return self._enqueued - self._done

    def record(self, decisions: Sequence[Decision], texts: Sequence[str], versions_json: str,
               final_only: bool = False) -> None:
        """Queue the decisions of one request (never blocks, never raises)."""
        n = len(decisions)
        if self.pending + n > self.cfg.max_queue:
            LOG_WRITES.labels("dropped").inc(n)
            return
        self._enqueued += n
        LOG_QUEUE.inc(n)
        self._q.put(("decisions", self.clock(), versions_json, list(zip(decisions, texts, strict=True)), final_only))

    def audit(self, request_id: str, label: str) -> None:
        """Record the final tier's answer of a shadow audit beside its decision."""
        self._q.put(("audit", request_id, label, self.clock()))

    async def feedback(self, request_id: str, label: str) -> str:
        """Store feedback once committed; returns the label that was decided. NotFoundError for an id the log
        does not hold (never issued, deleted, or past retention)."""
        decided = await self._call("feedback", request_id, label)
        if decided is None:
            raise NotFoundError(f"no decision with request_id {request_id!r} in the log: it was never issued by "
                                "this gateway, was deleted, or is past retention (log.retention_days, "
                                "log.retention_rows)", request_id=request_id)
        return decided

    async def reject_feedback(self, request_id: str, label: str, reason: str) -> bool:
        """Keep a refused feedback beside its decision (committed before this returns); False for an id the
        log does not hold."""
        return bool(await self._call("reject", request_id, label, reason))

    async def delete(self, request_id: str) -> None:
        """Remove a decision, its text and its feedback (committed before this returns)."""
        if not await self._call("delete", request_id):
            raise NotFoundError(f"no decision with request_id {request_id!r} in the log", request_id=request_id)

    async def flush(self) -> None:
        """Wait until everything queued before this call is committed."""
        await self._call("flush")

    async def _call(self, kind: str, *args):
        if not self._thread.is_alive():
            raise UnavailableError("the decision log's writer is not running; the gateway's log says why")
        fut: Future = Future()
        self._q.put((kind, *args, fut))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), CALL_TIMEOUT_S)
        except TimeoutError:
            raise UnavailableError(f"the decision log did not commit within {CALL_TIMEOUT_S:g} s (disk stalled, or "
                                   "the database locked by another process); retry") from None

    def close(self, timeout_s: float = 30.0) -> None:
        """Commit what is queued, then stop the thread."""
        if not self._thread.is_alive():
            return
        fut: Future = Future()
        self._q.put(("stop", fut))
        try:
            fut.result(timeout=timeout_s)
        except Exception:  # shutting down: say so, do not raise over the rest of the shutdown
            log.exception("the decision log did not flush cleanly")
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------------------------- the thread side
    def _run(self) -> None:
        try:
            store = DecisionStore.open(self.location, synchronous=self.cfg.synchronous)
            self.where = store.where
            self._retention(store)
        except Exception as e:
            self._ready.set_exception(e)
            return
        self._ready.set_result(True)
        last_retention = time.monotonic()
        stop = False
        while not stop:
            try:
                ops = [self._q.get(timeout=RETENTION_EVERY_S)]
            except queue.Empty:
                ops = []
            if ops:
                self._gather(ops)
                stop = self._commit(store, ops)
            if time.monotonic() - last_retention >= RETENTION_EVERY_S:
                self._retention(store)
                last_retention = time.monotonic()
        store.close()

    def _gather(self, ops: list) -> None:
        """Add what arrives within the commit interval (and whatever is already queued).

        The thread sleeps through the interval and then takes what gathered, rather than waiting on the queue:
        a waiting ``get`` woke this thread for every request's ``put``, and each wake-up took the GIL from the
        event loop for a moment (docs/benchmarks.md, "The log writer sleeps through its interval")."""
        time.sleep(self.cfg.commit_interval_ms / 1000)
        while len(ops) < MAX_OPS_PER_COMMIT:
            try:
                ops.append(self._q.get_nowait())
            except queue.Empty:
                return

    def _commit(self, store: DecisionStore, ops: list) -> bool:
        t0 = time.perf_counter()
        answers: list[tuple[Future, object]] = []
        written = 0
        stop = False
        try:
            store.begin()
            audits: list[tuple[str, float, str]] = []
            rows: list[tuple] = []  # of consecutive requests: one INSERT for them all (a third of the cost per row)
            for op in ops:
                kind = op[0]
                if kind != "audit" and audits:  # keep the order: audits refer to rows queued before them
                    store.set_audits(audits)
                    audits = []
                if kind != "decisions" and rows:
                    store.insert_decisions(rows)
                    written += len(rows)
                    rows = []
                if kind == "decisions":
                    rows.extend(self._rows(store, op))
                elif kind == "audit":
                    audits.append((op[2], op[3], op[1]))
                elif kind == "feedback":
                    _, rid, label, fut = op
                    decided = store.decided_label(rid)
                    if decided is not None:
                        store.upsert_feedback(rid, label, self.clock())
                    answers.append((fut, decided))
                elif kind == "reject":
                    _, rid, label, reason, fut = op
                    answers.append((fut, store.reject_feedback(rid, label, reason, self.clock())))
                elif kind == "delete":
                    answers.append((op[2], store.delete(op[1])))
                else:  # flush, stop
                    answers.append((op[-1], True))
                    stop = stop or kind == "stop"
            if rows:
                store.insert_decisions(rows)
                written += len(rows)
            if audits:
                store.set_audits(audits)
            store.commit()
        except Exception as e:  # a database error, or a bug in building rows: this batch fails, the writer lives
            store.rollback()
            store.forget_cached_ids()  # a version set inserted in the rolled-back transaction is gone again
            log.error("the decision log could not commit %d operation(s): %s: %s", len(ops), type(e).__name__, e,
                      exc_info=not isinstance(e, (sqlite3.Error, OSError)) and "psycopg" not in type(e).__module__)
            lost = sum(len(op[3]) for op in ops if op[0] == "decisions")
            self._account(lost, "error")
            err = UnavailableError(f"the decision log could not be written ({e}); retry")
            for op in ops:
                if isinstance(op[-1], Future) and not op[-1].done():
                    op[-1].set_exception(err)
            return any(op[0] == "stop" for op in ops)
        self._account(written, "written")
        LOG_COMMIT.observe(time.perf_counter() - t0)
        for fut, value in answers:
            if not fut.done():
                fut.set_result(value)
        return stop

    def _account(self, n: int, outcome: str) -> None:
        self._done += n
        LOG_QUEUE.dec(n)
        LOG_WRITES.labels(outcome).inc(n)

    def _rows(self, store: DecisionStore, op: tuple) -> list[tuple]:
        _, ts, versions_json, entries, final_only = op
        vid = store.version_id(versions_json)
        policy = self.policy
        rows = []
        for d, text in entries:
            stored = policy.redact(text) if policy.keeps(d.path, final_only) else None
            rows.append((d.request_id, ts, d.tier, d.label, float(d.confidence), ",".join(d.path), d.reason,
                         d.cost_usd, d.baseline_cost_usd, d.degraded_reason if d.degraded else None,
                         int(final_only), vid, text_sha256(text), stored))
        return rows

    def _retention(self, store: DecisionStore) -> None:
        try:
            store.begin()
            gone = store.enforce_retention(max_age_s=self.cfg.retention_days * 86400,
                                           max_rows=self.cfg.retention_rows, now=self.clock())
            store.commit()
        except Exception as e:  # the next round tries again; serving does not depend on it
            log.error("enforcing the log's retention failed: %s", e)
            store.rollback()
            return
        if gone:
            LOG_RETENTION.inc(gone)
            log.info("retention: %d decision(s) older than %g days or beyond %d rows deleted", gone,
                     self.cfg.retention_days, self.cfg.retention_rows)
