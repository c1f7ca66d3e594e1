"""The HTTP edge: FastAPI on uvicorn.

Routes live in :mod:`tiergate.gateway.routes` (classify, probes, admin) and :mod:`~tiergate.gateway.rules_admin`;
the serving path in :mod:`~tiergate.gateway.scheduler`; limits before any parsing in
:mod:`~tiergate.gateway.limits`; errors become HTTP in one place, :mod:`tiergate.gateway.errors`.
Models load in the background after start, so ``/readyz`` answers (503) while they load.

>>> uvicorn.run(create_app("runs/spam/tiergate.yaml"), host="127.0.0.1", port=8080)   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from tiergate import __version__
from tiergate.gateway.docs import install_offline_docs
from tiergate.gateway.errors import install_error_handlers
from tiergate.gateway.limits import LimitsMiddleware
from tiergate.gateway.routes import admin, classify, feedback, probes
from tiergate.gateway.rules_admin import make_rules_admin_router
from tiergate.gateway.state import GatewayState
from tiergate.rules.reload import RulesWatcher

log = logging.getLogger("tiergate.gateway")
CONFIG_ENV = "TIERGATE_CONFIG"


def create_app(config_path: str | Path, *, watch_rules: bool = True, several_workers: bool = False) -> FastAPI:
    """Build the app; models load in the lifespan, so an import never touches the disk. ``several_workers``:
    other processes serve beside this one (``serve --workers N``) and write the same decision log."""
    state = GatewayState(Path(config_path))
    state.several_workers = several_workers

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.get_running_loop().create_task(_load(state, watch_rules))
        try:
            yield
        finally:
            if not loading.done():
                loading.cancel()
            await state.shutdown()

    app = _Gateway(title="tiergate", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                   description="Inference cascade gateway: the cheapest confident tier answers.")
    app.state.gateway = state
    install_error_handlers(app)
    # Routes are matched in order: the hot path first, the docs' static files last.
    app.include_router(classify.router)
    app.include_router(feedback.router)
    app.include_router(probes.router)
    app.include_router(admin.router)
    app.include_router(make_rules_admin_router(state.rules_tier))
    install_offline_docs(app)
    return app


class _Gateway(FastAPI):
    """FastAPI with the limits, then the classify fast path, outside its whole middleware stack.

    ``add_middleware`` would put them inside FastAPI's own outer layers (``ServerErrorMiddleware``, its
    exception telemetry and body-limit layers), each a coroutine and a wrapped ``send`` that every classify
    request went through for nothing: the fast path maps its own errors (:mod:`tiergate.gateway.errors`), and
    every other request still meets the whole stack inside the limits."""

    def build_middleware_stack(self):
        inner = super().build_middleware_stack()
        return LimitsMiddleware(classify.ClassifyFastPath(inner, fastapi_app=self), state=self.state.gateway)


def app_from_env() -> FastAPI:
    """The factory ``tiergate serve --workers N`` gives uvicorn: each worker builds its app from $TIERGATE_CONFIG."""
    return create_app(os.environ[CONFIG_ENV], several_workers=True)


async def _load(state: GatewayState, watch_rules: bool) -> None:
    await state.load()
    tier = state.rules_tier()
    if not watch_rules or tier is None:
        return
    try:
        w = RulesWatcher(tier)
        w.start()
        state.watchers.append(w)
    except Exception:  # watching is a convenience; serving must not depend on it
        log.exception("could not start the rules file watcher; reload through the admin endpoint instead")
