"""One tier of a config, served over the KServe v2 / Open Inference Protocol:
``tiergate serve --config C --tier NAME --protocol kserve-v2``.

This is how another gateway reaches it as ``kind: remote`` (:mod:`tiergate.models.remote`): the large tier
on a GPU machine, the small ones beside the gateways. It serves ``GET /v2/health/live``, ``/v2/health/ready``
(503 while the model loads), ``GET /v2/models/NAME`` (metadata: version, labels) and ``POST
/v2/models/NAME/infer`` (one batch per request), plus ``/healthz`` and ``/metrics``. Errors have the
gateway's one body shape (:mod:`tiergate.gateway.errors`); batches run one at a time in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from tiergate import __version__
from tiergate.config import load_config
from tiergate.data.items import make_item
from tiergate.errors import ConfigError, InputError, NotFoundError, UnavailableError
from tiergate.gateway.errors import install_error_handlers
from tiergate.models import kserve
from tiergate.registry import build_tier

log = logging.getLogger("tiergate.gateway.kserve")
INFER = Counter("tiergate_kserve_infer_items_total", "Items answered over the KServe v2 protocol", ["model"])


def create_kserve_app(config_path: str | Path, tier_name: str) -> FastAPI:
    cfg, base = load_config(config_path)
    tc = next((t for t in cfg.tiers if t.name == tier_name), None)
    if tc is None:
        raise ConfigError(f"--tier {tier_name!r}: not a tier of {config_path} (tiers: {[t.name for t in cfg.tiers]})")
    state: dict = {"tier": None, "error": None}
    lock = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            state["tier"] = await anyio.to_thread.run_sync(lambda: build_tier(tc, base, model_dirs=cfg.model_dirs))
            log.info("serving tier %s (%s, version %s) over KServe v2", tc.name, tc.kind, state["tier"].version())
        except Exception as e:  # the process stays up and says why on /v2/health/ready
            state["error"] = f"{type(e).__name__}: {e}"
            log.exception("loading tier %s failed", tc.name)
        yield
        if state["tier"] is not None:
            state["tier"].close()

    app = FastAPI(title=f"tiergate tier {tier_name} (KServe v2)", version=__version__, lifespan=lifespan)
    install_error_handlers(app)

    def tier():
        if state["tier"] is None:
            raise UnavailableError(state["error"] or "the model is loading; retry shortly")
        return state["tier"]

    def model(name: str):
        if name != tier_name:
            raise NotFoundError(f"no model {name!r} here; this server serves {tier_name!r}")
        return tier()

    @app.get("/healthz")
    async def healthz():
        return {"status": "alive", "version": __version__}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if state["tier"] is None:
            return JSONResponse({"ready": False, "detail": state["error"] or "loading"}, status_code=503)
        return {"ready": True}

    @app.get("/v2/models/{name}")
    async def metadata(name: str):
        t = model(name)
        return kserve.metadata_body(tier_name, t.version(), t.labels, platform=f"tiergate-{tc.kind}")

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request):
        t = model(name)
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            raise InputError(f"the body is not JSON: {e}") from None
        texts = kserve.texts_of(body)
        items = [make_item(x, max_chars=cfg.server.max_text_chars) for x in texts]
        async with lock:  # one batch at a time: the tier's own threads do the parallel work
            outs = await anyio.to_thread.run_sync(t.predict, items)
        INFER.labels(tier_name).inc(len(items))
        return kserve.response_body(tier_name, t.version(), t.labels, outs, str(body.get("id", "")))

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
