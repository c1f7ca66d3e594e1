"""Operator endpoints, all behind the admin token (:func:`tiergate.gateway.auth.require_admin`):

* ``POST /admin/models/reload``: load the artifacts the config names, verify, smoke-test, swap (422 with every
  reason, old models still serving, on failure);
* ``POST /admin/faults`` ``{"tier", "error_rate", "delay_ms"}``, ``GET`` and ``DELETE /admin/faults``: inject
  failures or latency into a tier to rehearse degraded mode (as Envoy's fault filter does);
* ``DELETE /admin/decisions/{request_id}``: remove a decision, its text and its feedback from the log (a
  person's request to be forgotten; docs/privacy.md);
* ``POST /admin/rules/reload`` and ``PUT /admin/rules`` (:mod:`tiergate.gateway.rules_admin`).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from tiergate.errors import NotFoundError
from tiergate.gateway.auth import require_admin
from tiergate.gateway.runner import Fault

log = logging.getLogger("tiergate.gateway")
REQUEST_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"  # what the gateway issues (hex) and what a log could hold
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


class FaultRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    tier: str = Field(description="The tier to fault (a name from the config)")
    error_rate: float = Field(default=0.0, ge=0, le=1, description="Share of batches that fail")
    delay_ms: float = Field(default=0.0, ge=0, le=600_000, description="Added to every batch of the tier")


@router.post("/models/reload")
async def reload_models(request: Request):
    return await request.app.state.gateway.reload_models()


@router.post("/faults")
async def set_fault(request: Request, body: FaultRequest):
    sched = request.app.state.gateway.require_scheduler()
    try:
        sched.set_fault(body.tier, Fault(body.error_rate, body.delay_ms))
    except KeyError:
        raise NotFoundError(f"no tier named {body.tier!r}; tiers: {[r.name for r in sched.runners]}") from None
    log.warning("fault injected on tier %s: error_rate=%g delay_ms=%g", body.tier, body.error_rate, body.delay_ms)
    return {"status": "injected", "faults": _faults(sched)}


@router.get("/faults")
async def get_faults(request: Request):
    return {"faults": _faults(request.app.state.gateway.require_scheduler())}


@router.delete("/faults")
async def clear_faults(request: Request):
    sched = request.app.state.gateway.require_scheduler()
    for r in sched.runners:
        r.set_fault(Fault())
    log.warning("faults cleared")
    return {"status": "cleared", "faults": {}}


@router.delete("/decisions/{request_id}")
async def delete_decision(request: Request, request_id: str = Path(pattern=REQUEST_ID_PATTERN,
                                                                   description="A classify answer's request_id")):
    await request.app.state.gateway.require_log().delete(request_id)
    log.info("decision %s deleted from the log on an operator's request", request_id)
    return {"status": "deleted", "request_id": request_id}


def _faults(sched) -> dict:
    return {r.name: {"error_rate": r.fault.error_rate, "delay_ms": r.fault.delay_ms}
            for r in sched.runners if r.fault.error_rate or r.fault.delay_ms}
