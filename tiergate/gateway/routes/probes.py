"""``GET /healthz`` (the process answers), ``GET /readyz`` (models loaded: versions, rule-set version,
certificate; 503 while loading or draining), ``GET /status`` (a page for people), ``GET /metrics``."""

from __future__ import annotations

import logging
import os
import time

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from tiergate import __version__
from tiergate.calibration.ltt import certificate_status
from tiergate.calibration.metrics import update_certificate_metrics
from tiergate.gateway import metrics as m
from tiergate.gateway.status import render_status

router = APIRouter(tags=["probes"])
log = logging.getLogger("tiergate.gateway")


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "alive", "version": __version__}


@router.get("/readyz")
async def readyz(request: Request):
    gw = request.app.state.gateway
    c = gw.cascade
    if c is None or gw.draining:
        detail = "draining" if gw.draining else (gw.load_error or "models are loading")
        return JSONResponse({"ready": False, "detail": detail}, status_code=503)
    rules = gw.rules_tier()
    sched = gw.scheduler
    return {"ready": True,
            "tiers": [{"name": tc.name, "kind": tc.kind, "version": t.version(), "threshold": tc.threshold.model_dump(),
                       "cost_usd_per_item": tc.cost.usd_per_item, "queue_items": r.load,
                       "breaker": ("closed", "open", "half-open")[r.breaker.state]}
                      for t, tc, r in zip(c.tiers, c.config.tiers, sched.runners, strict=True)],
            "rules_version": rules.version() if rules is not None else None,
            "labels": c.config.labels, "uptime_s": round(time.time() - gw.started, 1),
            "certificate": certificate_status(c, c.config.certificate),
            "live_guarantee": sched.auditor.status(),
            "decision_log": None if gw.log is None else {"where": gw.log.where, "pending": gw.log.pending,
                                                         "store_text": _store_text(c.config.log.store_text)}}


def _store_text(mode) -> str:
    return mode if isinstance(mode, str) else f"sample {mode.sample:g}"


@router.get("/status", response_class=HTMLResponse)
async def status(request: Request):
    gw = request.app.state.gateway
    c = gw.cascade
    if c is None:
        return HTMLResponse("<p>models are loading</p>", status_code=503)
    rules = gw.rules_tier()
    return HTMLResponse(render_status(c, certificate_status(c, c.config.certificate),
                                      rules.version() if rules is not None else None,
                                      live=gw.scheduler.auditor.status(), history=gw.history))


@router.get("/metrics")
async def metrics(request: Request):
    gw = request.app.state.gateway
    sched = gw.scheduler
    if sched is not None:
        for r in sched.runners:
            m.QUEUE_ITEMS.labels(r.name).set(r.load)
        try:
            update_certificate_metrics(sched.cascade)  # staleness follows reloads without a hook in each
        except Exception:  # a metrics refresh must never fail a scrape
            log.exception("updating certificate metrics failed")
    return PlainTextResponse(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)


def _registry():
    """The process's registry, or, under ``--workers N``, every worker's samples merged (prometheus-client's
    multiprocess mode, switched on by PROMETHEUS_MULTIPROC_DIR)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry
