"""The HTTP edge: FastAPI on uvicorn.

``POST /v1/classify`` with ``{"text": ...}`` or ``{"texts": [...]}``; ``GET /healthz`` (alive),
``GET /readyz`` (models loaded, versions, rule-set version, certificate), ``GET /metrics`` (Prometheus).
This module alone maps tiergate's exceptions to HTTP status codes (:func:`_status_of`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tiergate import __version__
from tiergate.cascade import Cascade, new_request_id
from tiergate.data.items import make_item
from tiergate.errors import (
    ConfigError,
    InputError,
    ModelError,
    OverloadedError,
    RuleError,
    TiergateError,
    UnavailableError,
)
from tiergate.gateway import metrics as m
from tiergate.gateway.status import render_status

log = logging.getLogger("tiergate.gateway")


class ClassifyRequest(BaseModel):
    """One item (``text``) or a batch (``texts``); ``final_only`` skips the cheap tiers."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(default=None, description="One input (an RFC 822 message or plain text)")
    texts: list[str] | None = Field(default=None, description="A batch of inputs")
    final_only: bool = Field(default=False, description="Send the item(s) straight to the final tier")
    epsilon: float | None = Field(default=None, gt=0, lt=1, description=(
        "Ask for a stricter risk bound than the configured certificate: the least strict certified setting "
        "within it applies, or the final tier alone when none is certified that strictly"))

    @model_validator(mode="after")
    def _one_of(self) -> ClassifyRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' (one item) or 'texts' (a list of items)")
        if self.texts is not None and not self.texts:
            raise ValueError("'texts' is empty")
        return self


def _status_of(exc: TiergateError) -> int:
    if isinstance(exc, OverloadedError):
        return 429
    if isinstance(exc, UnavailableError):
        return 503
    if isinstance(exc, (InputError, RuleError)):
        return 400
    if isinstance(exc, (ConfigError, ModelError)):
        return 500
    return 500


class GatewayState:
    def __init__(self, config_path: Path):
        self.config_path = Path(config_path)
        self.cascade: Cascade | None = None
        self.inflight = 0
        self.started = time.time()
        self.watchers: list[Any] = []

    def rules_tier(self):
        if self.cascade is None:
            return None
        for tier, tc in zip(self.cascade.tiers, self.cascade.config.tiers, strict=True):
            if tc.kind == "rules":
                return tier
        return None


def create_app(config_path: str | Path, *, watch_rules: bool = True) -> FastAPI:
    """Build the app; models load in the lifespan, so an import never touches the disk."""
    state = GatewayState(Path(config_path))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        cascade = await anyio.to_thread.run_sync(Cascade.from_config, state.config_path)
        state.cascade = cascade
        cfg = cascade.config
        m.init_labels([(tc.name, tc.kind, t.version(), tc.threshold.default, tc.cost.usd_per_item)
                       for t, tc in zip(cascade.tiers, cfg.tiers, strict=True)], cfg.labels or cascade.final.labels)
        if watch_rules:
            _start_rules_watcher(state)
        m.READY.set(1)
        log.info("tiergate %s serving %s: tiers %s", __version__, state.config_path,
                 ", ".join(f"{tc.name}({tc.kind})" for tc in cfg.tiers))
        try:
            yield
        finally:
            m.READY.set(0)
            for w in state.watchers:
                try:
                    w.stop()
                except Exception:  # a watcher failing to stop must not block shutdown
                    log.exception("stopping a watcher failed")
            cascade.close()

    app = FastAPI(title="tiergate", version=__version__, lifespan=lifespan,
                  description="Inference cascade gateway: the cheapest confident tier answers.")
    app.state.gateway = state

    @app.exception_handler(TiergateError)
    async def _tiergate_error(request: Request, exc: TiergateError):
        body: dict[str, Any] = {"error": type(exc).__name__, "detail": str(exc)}
        if isinstance(exc, RuleError) and exc.problems:
            body["problems"] = exc.problems
        headers = {"Retry-After": "1"} if isinstance(exc, OverloadedError) else None
        return JSONResponse(body, status_code=_status_of(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        if request.url.path == "/v1/classify":
            m.REQUESTS.labels("bad_request").inc()
        errors = [{"loc": list(e.get("loc", [])), "msg": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse({"error": "InputError", "detail": "invalid request body", "errors": errors}, status_code=422)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "alive", "version": __version__}

    @app.get("/readyz")
    async def readyz():
        c = state.cascade
        if c is None:
            return JSONResponse({"ready": False, "detail": "models are loading"}, status_code=503)
        rules = state.rules_tier()
        body = {"ready": True, "tiers": [{"name": tc.name, "kind": tc.kind, "version": t.version(),
                                          "threshold": tc.threshold.model_dump(), "cost_usd_per_item": tc.cost.usd_per_item}
                                         for t, tc in zip(c.tiers, c.config.tiers, strict=True)],
                "rules_version": rules.version() if rules is not None else None,
                "labels": c.config.labels, "uptime_s": round(time.time() - state.started, 1)}
        body["certificate"] = _certificate(c)
        return body

    @app.get("/status", response_class=HTMLResponse)
    async def status():
        c = state.cascade
        if c is None:
            return HTMLResponse("<p>models are loading</p>", status_code=503)
        cert = _certificate(c)
        rules = state.rules_tier()
        return HTMLResponse(render_status(c, cert, rules.version() if rules is not None else None))

    @app.get("/metrics")
    async def metrics():
        if state.cascade is not None:
            _update_certificate_metrics(state.cascade)  # staleness follows reloads without a hook in each
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/classify")
    async def classify(req: ClassifyRequest):
        c = state.cascade
        if c is None:
            m.REQUESTS.labels("unavailable").inc()
            raise UnavailableError("models are still loading; retry shortly")
        srv = c.config.server
        texts = [req.text] if req.text is not None else list(req.texts or [])
        if len(texts) > srv.max_batch_items:
            m.REQUESTS.labels("bad_request").inc()
            raise InputError(f"{len(texts)} items in one request; the limit is {srv.max_batch_items} "
                             "(server.max_batch_items): split the batch")
        if state.inflight >= srv.max_inflight:
            m.REQUESTS.labels("overloaded").inc()
            raise OverloadedError(f"{state.inflight} requests in progress (server.max_inflight={srv.max_inflight}); retry later")
        thresholds, applied = _policy(c, req)
        state.inflight += 1
        m.INFLIGHT.inc()
        t0 = time.perf_counter()
        try:
            items = [make_item(t, max_chars=srv.max_text_chars) for t in texts]
            ids = [new_request_id() for _ in items]
            decisions = await asyncio.wait_for(
                anyio.to_thread.run_sync(lambda: c.classify(items, final_only=applied["final_only"], request_ids=ids,
                                                            on_batch=m.observe_batch, thresholds=thresholds)),
                timeout=srv.request_timeout_s)
        except TimeoutError as e:
            m.REQUESTS.labels("unavailable").inc()
            raise UnavailableError(f"classification took longer than {srv.request_timeout_s} s") from e
        except TiergateError:
            m.REQUESTS.labels("error").inc()
            raise
        finally:
            state.inflight -= 1
            m.INFLIGHT.dec()
        m.record(decisions, {tc.name: tc.cost.usd_per_item for tc in c.config.tiers})
        m.REQUESTS.labels("ok").inc()
        m.REQUEST_LATENCY.observe(time.perf_counter() - t0)
        out = [d.to_dict() for d in decisions]
        for d in out:
            d["final_only"] = applied["final_only"]
            if req.epsilon is not None:
                d["applied"] = applied
        if req.text is not None:
            return out[0]
        return {"results": out}

    _include_rules_admin(app, state)
    return app


def _policy(c: Cascade, req: ClassifyRequest) -> tuple[list | None, dict]:
    """Which thresholds a request gets: the configured ones, a stricter certified rung, or the final tier."""
    if req.final_only or req.epsilon is None:
        return None, {"final_only": req.final_only}
    try:
        from tiergate.calibration.ltt import thresholds_for_epsilon
    except ImportError:
        thresholds_for_epsilon = None
    cert = c.config.certificate or {}
    th = thresholds_for_epsilon(c.config, req.epsilon) if thresholds_for_epsilon else None
    if th is None:
        return None, {"final_only": True, "epsilon_requested": req.epsilon, "mode": "final_only",
                      "why": "no setting is certified at this epsilon; the final tier alone has zero disagreement"}
    return th, {"final_only": False, "epsilon_requested": req.epsilon, "mode": "certified",
                "certificate_epsilon": cert.get("epsilon")}


def _certificate(c: Cascade) -> dict | None:
    """The certificate with its staleness (rules reloaded, model swapped, thresholds changed)."""
    cert = c.config.certificate
    if cert is None:
        return None
    try:
        from tiergate.calibration.ltt import certificate_status
    except ImportError:
        return cert
    return certificate_status(c, cert)


def _update_certificate_metrics(c: Cascade) -> None:
    try:
        from tiergate.calibration.metrics import update_certificate_metrics
    except ImportError:
        return
    try:
        update_certificate_metrics(c)
    except Exception:  # a metrics refresh must never fail a scrape
        log.exception("updating certificate metrics failed")


def _include_rules_admin(app: FastAPI, state: GatewayState) -> None:
    try:
        from tiergate.gateway.rules_admin import make_rules_admin_router
    except ImportError:
        return
    app.include_router(make_rules_admin_router(state.rules_tier))


def _start_rules_watcher(state: GatewayState) -> None:
    tier = state.rules_tier()
    if tier is None:
        return
    try:
        from tiergate.rules.reload import RulesWatcher
    except ImportError:
        return
    try:
        w = RulesWatcher(tier)
        w.start()
        state.watchers.append(w)
    except Exception:  # watching is a convenience; serving must not depend on it
        log.exception("could not start the rules file watcher; reload through the admin endpoint instead")
