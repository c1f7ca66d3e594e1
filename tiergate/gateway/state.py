"""What one gateway process holds: the config path, the serving scheduler of the current cascade, and the
life cycle around it (loading in the background, hot swap of models, draining at shutdown)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import anyio

from tiergate import __version__
from tiergate.cascade import Cascade
from tiergate.config import ServerConfig, load_config
from tiergate.data.items import make_item
from tiergate.decisionlog.store import DecisionStore, log_path
from tiergate.decisionlog.writer import LogWriter
from tiergate.errors import ModelError, TiergateError, UnavailableError
from tiergate.gateway import metrics as m
from tiergate.gateway import protocol, worker
from tiergate.gateway.auth import TOKEN_ENV
from tiergate.gateway.history import History
from tiergate.gateway.scheduler import Scheduler
from tiergate.registry import capabilities_of
from tiergate.tiers import Tier

log = logging.getLogger("tiergate.gateway")

# Texts every new model must answer before it is swapped in: plain, mail, empty, odd characters.
SMOKE_TEXTS = ["Subject: hello\n\nJust checking in about tomorrow.", "hello world", "", "\u00e9\u4e2d\ud83d\ude00 \x00"]


class GatewayState:
    def __init__(self, config_path: Path):
        self.config_path = Path(config_path)
        self.scheduler: Scheduler | None = None
        self.server = ServerConfig()         # defaults until the config is read
        self.started = time.time()
        self.draining = False
        self.load_error: str | None = None
        self.watchers: list[Any] = []
        self.log: LogWriter | None = None    # the decision log (log.enabled), one per process, across swaps
        self.history = History()              # recent metrics and escalations, for the status page
        self.several_workers = False          # serve --workers N: other processes write the same log
        self._reload_lock = asyncio.Lock()
        self._retired: set[asyncio.Task] = set()

    @property
    def cascade(self) -> Cascade | None:
        return self.scheduler.cascade if self.scheduler is not None else None

    def require_scheduler(self) -> Scheduler:
        if self.scheduler is None:
            raise UnavailableError(self.load_error or "models are still loading; retry shortly")
        return self.scheduler

    def rules_tier(self):
        c = self.cascade
        if c is None:
            return None
        for tier, tc in zip(c.tiers, c.config.tiers, strict=True):
            if not capabilities_of(tc).distribution and hasattr(tier, "replace_text"):
                return tier
        return None

    # --------------------------------------------------------------------------------------------- start
    async def load(self) -> None:
        """Load the cascade in a worker thread (``/readyz`` answers 503 meanwhile), then start serving."""
        try:
            cfg, base = load_config(self.config_path)
            self.server = cfg.server
            protocol.set_limits(cfg.server.max_open_requests, cfg.server.loop_budget_ms,
                                cfg.server.loop_budget_min_open)
            if cfg.log.enabled:  # first: a gateway that cannot keep its record does not serve
                writer = LogWriter(log_path(cfg, base), cfg.log)
                await anyio.to_thread.run_sync(writer.start)
                self.log = writer
            cascade = await anyio.to_thread.run_sync(Cascade.from_config, self.config_path, worker.build)
            await anyio.to_thread.run_sync(_smoke, list(cascade.tiers))
        except Exception as e:  # the process stays up and says why on /readyz; the log has the trace
            self.load_error = f"models failed to load: {type(e).__name__}: {e}"
            log.exception("loading %s failed", self.config_path)
            return
        sched = Scheduler(cascade, cascade.config.server)
        await self._attach(sched)
        await sched.start()
        self.scheduler = sched
        _publish(cascade)
        self.history.interval_s = cascade.config.metrics.status_sample_s
        self.history.start()
        m.watch_gc()
        if cascade.config.server.gc_freeze:
            refreeze()
        m.READY.set(1)
        if not os.environ.get(TOKEN_ENV):
            log.warning("%s is not set: the /admin/* endpoints are disabled", TOKEN_ENV)
        srv = cascade.config.server
        log.info("tiergate %s serving %s: tiers %s; server %s", __version__, self.config_path,
                 ", ".join(f"{tc.name}({tc.kind})" for tc in cascade.config.tiers),
                 srv.model_dump(mode="json", exclude={"api_keys"}) | {"api_keys": len(srv.api_keys)})

    async def _attach(self, sched: Scheduler) -> None:
        """Connect a scheduler's shadow audits to the log, and resume the live counts the log holds for its
        versions (a restart does not forget the audits made)."""
        if self.log is None:
            return
        sched.auditor.record_audit = self.log.audit
        versions = versions_key(sched.cascade)
        location = self.log.location

        def counts():
            store = DecisionStore.open(location, readonly=True)
            try:
                return store.live_counts(versions)
            finally:
                store.close()

        try:
            audits, decided = await anyio.to_thread.run_sync(counts)
            sched.auditor.seed(audits, versions, decided)
        except Exception:  # the live counts then start from zero; serving does not depend on them
            log.exception("reading past shadow audits from the log failed")

    def decided(self, sched: Scheduler, decisions, texts, final_only: bool) -> None:
        """Every answered request: into the decision log, and offered to the shadow audits."""
        versions = versions_key(sched.cascade)
        if self.log is not None:
            self.log.record(decisions, texts, versions, final_only)
        sched.auditor.offer(decisions, texts, versions)
        self.history.note(decisions)

    def require_log(self) -> LogWriter:
        if self.log is None:
            raise UnavailableError("the decision log is off (log.enabled: false in the config); feedback and "
                                   "decision lookups need it")
        return self.log

    # -------------------------------------------------------------------------------------------- swap
    async def reload_models(self) -> dict:
        """Load what the config names now, verify (hashes at load, a smoke batch), swap atomically.

        Requests in flight finish on the models they started with; on any failure the old models keep
        serving and ModelError lists every reason."""
        old = self.require_scheduler()
        async with self._reload_lock:
            try:
                cascade = await anyio.to_thread.run_sync(self._build, old.cascade)
            except ModelError:
                m.MODEL_RELOADS.labels("rejected").inc()
                raise
            before, after = old.cascade.versions(), cascade.versions()
            if before == after and cascade.config == old.cascade.config:
                _close_new(cascade, old.cascade)
                m.MODEL_RELOADS.labels("ok").inc()
                return {"status": "unchanged", "versions": after}
            sched = Scheduler(cascade, cascade.config.server)
            await self._attach(sched)
            await sched.start()
            self.scheduler, self.server = sched, cascade.config.server
            protocol.set_limits(self.server.max_open_requests, self.server.loop_budget_ms,
                                self.server.loop_budget_min_open)
            _publish(cascade, old.cascade)
            task = asyncio.get_running_loop().create_task(self._retire(old, cascade))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
            m.MODEL_RELOADS.labels("ok").inc()
            log.info("models swapped: %s -> %s", before, after)
            return {"status": "reloaded", "versions": after, "previous_versions": before}

    def _build(self, current: Cascade) -> Cascade:
        try:
            cfg, base = load_config(self.config_path)
        except TiergateError as e:
            raise ModelError(f"model reload rejected, still serving the old models: {e}", problems=[str(e)]) from e
        reuse = {tc.name: t for t, tc in zip(current.tiers, current.config.tiers, strict=True)}
        tiers: list[Tier] = []
        problems = []
        for tc in cfg.tiers:
            old_tc = next((o for o in current.config.tiers if o.name == tc.name), None)
            # A rule set has its own reload path (file watcher, /admin/rules); a model swap keeps it.
            if not capabilities_of(tc).distribution and old_tc is not None and old_tc.path == tc.path:
                tiers.append(reuse[tc.name])
                continue
            try:
                tiers.append(worker.build(tc, base, model_dirs=cfg.model_dirs, server=cfg.server))
            except Exception as e:  # every tier is tried, so the answer lists every problem
                problems.append(f"tier {tc.name} ({tc.path}): {type(e).__name__}: {e}")
        if not problems:
            problems += _smoke([t for t in tiers if t not in current.tiers], raise_=False)
        if problems:
            for t in tiers:
                if t not in current.tiers:
                    t.close()
            raise ModelError(f"model reload rejected ({len(problems)} problem(s)); still serving the old models",
                             problems=problems)
        cascade = Cascade(cfg, tiers, base)
        if (cfg.calibration or {}).get("shadow_rules"):
            from tiergate.calibration.shadow import apply_shadow_rules

            apply_shadow_rules(cascade)
        return cascade

    async def _retire(self, old: Scheduler, new: Cascade) -> None:
        await old.drain(self.server.shutdown_grace_s)
        await old.stop()
        _close_new(old.cascade, new)
        del old
        if self.server.gc_freeze:
            refreeze()

    # -------------------------------------------------------------------------------------------- stop
    async def shutdown(self) -> None:
        self.draining = True
        m.READY.set(0)
        await self.history.stop()
        for w in self.watchers:
            try:
                w.stop()
            except Exception:  # a watcher failing to stop must not block shutdown
                log.exception("stopping a watcher failed")
        sched = self.scheduler
        if sched is not None:
            if not await sched.drain(self.server.shutdown_grace_s):
                log.warning("%d request(s) still in flight after %.0f s; stopping anyway", sched.inflight,
                            self.server.shutdown_grace_s)
            await sched.stop()
            sched.cascade.close()
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)
        if self.log is not None:  # last: every answered request's decision is committed before exit
            await anyio.to_thread.run_sync(self.log.close)


def versions_key(cascade: Cascade) -> str:
    """The rule and model versions a decision is made with, as the log stores them."""
    return json.dumps(cascade.versions(), sort_keys=True)


def _smoke(tiers: list[Tier], raise_: bool = True) -> list[str]:
    """Each tier answers the smoke texts: one output per item, labels from its label set, finite confidence."""
    items = [make_item(t) for t in SMOKE_TEXTS]
    problems = []
    for t in tiers:
        try:
            outs = t.predict(items)
            if len(outs) != len(items):
                raise ModelError(f"{len(outs)} outputs for {len(items)} items")
            for o in outs:
                if o.label is not None and t.labels and o.label not in t.labels:
                    raise ModelError(f"label {o.label!r} outside its label set {t.labels}")
                if not math.isfinite(o.confidence):
                    raise ModelError(f"confidence {o.confidence} is not finite")
        except Exception as e:
            problems.append(f"tier {t.name}: the smoke batch failed: {type(e).__name__}: {e}")
    if problems and raise_:
        raise ModelError("; ".join(problems), problems=problems)
    return problems


def _close_new(cascade: Cascade, keep: Cascade) -> None:
    """Close the tiers of ``cascade`` that ``keep`` does not share."""
    for t in cascade.tiers:
        if t not in keep.tiers:
            t.close()


def _publish(cascade: Cascade, old: Cascade | None = None) -> None:
    cfg = cascade.config
    if old is not None:
        for t, tc in zip(old.tiers, old.config.tiers, strict=True):
            series = (tc.name, tc.kind, t.version() or "unknown")
            # set(0) first: under --workers, remove() leaves the value in the worker's metrics file
            m.TIER_INFO.labels(*series).set(0)
            try:
                m.TIER_INFO.remove(*series)
            except KeyError:
                pass
    labels = m.metric_labels(cfg.labels or cascade.final.labels, cfg.metrics.label_values, cfg.metrics.top_labels)
    m.init_labels([(tc.name, tc.kind, t.version(), tc.threshold.default, tc.cost.usd_per_item)
                   for t, tc in zip(cascade.tiers, cfg.tiers, strict=True)], labels, cfg.metrics.savings_target)


def refreeze() -> None:
    """Thaw the objects frozen at start so the old models' cycles can be collected, then freeze what lives
    now (one full collection, once per model swap)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
