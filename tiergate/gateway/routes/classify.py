"""``POST /v1/classify``: one item (``text``) or a batch (``texts``).

The body is read under the size limit (:mod:`tiergate.gateway.limits`) and parsed here by pydantic straight
from bytes (a strict schema: unknown keys, wrong types, empty batches, malformed JSON, invalid UTF-8 and
runaway nesting are 422, never 500). The response carries ``X-Tiergate-Overhead-Ms``: the request's time in
the gateway less the compute of the tier batches it took part in.

The route is declared on the router (for the OpenAPI schema, ``/docs`` and the 405 of other methods), but a
``POST /v1/classify`` reaches :func:`classify` through :class:`ClassifyFastPath`, an ASGI layer inside the
limits that calls it directly: FastAPI's router, dependency solving and exception middleware cost about as
much loop time as the rules tier's whole answer (docs/benchmarks.md, "The classify fast path"). Errors still
become HTTP in :mod:`tiergate.gateway.errors`, the same functions FastAPI's handlers call.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request as StarletteRequest

from tiergate.calibration.ltt import thresholds_for_epsilon
from tiergate.cascade import Cascade, new_request_id
from tiergate.errors import InputError, TiergateError
from tiergate.gateway import metrics as m
from tiergate.gateway.auth import authenticate, require_privilege
from tiergate.gateway.errors import CLASSIFY_PATH, error_response, invalid_body, unexpected_response
from tiergate.gateway.protocol import READ_AT

router = APIRouter(tags=["classify"])

DEADLINE_HEADER = "x-tiergate-deadline-ms"


class ClassifyFastPath:
    """ASGI middleware: ``POST /v1/classify`` straight to :func:`classify`, everything else on to ``app``.

    Sits inside :class:`~tiergate.gateway.limits.LimitsMiddleware` (the door, body limit and body timeout
    still apply) and outside FastAPI's router. A :class:`~tiergate.errors.TiergateError` becomes its response
    through :func:`~tiergate.gateway.errors.error_response`, anything else a logged 500, as FastAPI's handlers
    would answer them."""

    def __init__(self, app, fastapi_app):
        self.app = app
        self.fastapi_app = fastapi_app  # what ``request.app`` is inside the route

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != CLASSIFY_PATH or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        scope["app"] = self.fastapi_app
        request = StarletteRequest(scope, receive)
        try:
            response = await classify(request)
        except TiergateError as e:
            response = error_response(e, CLASSIFY_PATH)
        except Exception:
            response = unexpected_response("POST", CLASSIFY_PATH)
        await response(scope, receive, send)


class ClassifyRequest(BaseModel):
    """One item (``text``) or a batch (``texts``); ``final_only`` and ``epsilon`` are privileges."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | None = Field(default=None, description="One input (an RFC 822 message or plain text)")
    texts: list[str] | None = Field(default=None, min_length=1, description="A batch of inputs")
    final_only: bool = Field(default=False, description="Send the item(s) straight to the final tier (a privilege)")
    epsilon: float | None = Field(default=None, gt=0, lt=1, description=(
        "Ask for a stricter risk bound than the configured certificate (a privilege): the least strict certified "
        "setting within it applies, or the final tier alone when none is certified that strictly"))
    deadline_ms: float | None = Field(default=None, gt=0, description=(
        "Answer within this many milliseconds (also the X-Tiergate-Deadline-Ms header); a tier that cannot finish "
        "in time is skipped and the best answer so far is returned, flagged degraded"))

    @model_validator(mode="after")
    def _one_of(self) -> ClassifyRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' (one item) or 'texts' (a list of items)")
        return self


def _openapi_schema() -> dict:
    """The model's schema, with "exactly one of text / texts" said the way OpenAPI can say it."""
    schema = ClassifyRequest.model_json_schema()
    schema["oneOf"] = [{"required": ["text"], "not": {"required": ["texts"]}},
                       {"required": ["texts"], "not": {"required": ["text"]}}]
    return schema


_SCHEMA = _openapi_schema()


@router.post("/v1/classify", openapi_extra={"requestBody": {
    "required": True, "content": {"application/json": {"schema": _SCHEMA}}}})
async def classify(request: Request):
    gw = request.app.state.gateway
    sched = gw.require_scheduler()
    srv = sched.server
    client = authenticate(request, srv)
    raw = await request.body()
    try:
        req = ClassifyRequest.model_validate_json(raw)
    except ValidationError as e:
        raise invalid_body(e.errors(include_url=False, include_input=False)) from None
    texts = [req.text] if req.text is not None else list(req.texts or [])
    if len(texts) > srv.max_batch_items:
        raise InputError(f"{len(texts)} items in one request; the limit is {srv.max_batch_items} "
                         "(server.max_batch_items): split the batch")
    if req.final_only:
        require_privilege(client, "final_only")
    if req.epsilon is not None:
        require_privilege(client, "epsilon")
    # The deadline runs from when the request was read: time it already spent waiting on the loop counts.
    read_at = request.scope.get(READ_AT)
    waited = request.scope["tiergate.t0"] - read_at if read_at is not None and "tiergate.t0" in request.scope else 0.0
    deadline_s = max(_deadline_s(request, req, srv) - waited, 0.001)
    cfgs, applied = _policy(sched.cascade, req)
    decisions, compute_s = await sched.classify(texts, deadline_s=deadline_s, final_only=applied["final_only"],
                                                cfgs=cfgs)
    m.record(decisions, sched.cost_by_name)
    for d in decisions:
        d.request_id = new_request_id()
    # Logged before the answer leaves: a client can give feedback only on an id the log has queued.
    gw.decided(sched, decisions, texts, applied["final_only"])
    out = []
    for d in decisions:
        row = d.to_dict()
        row["final_only"] = applied["final_only"]
        if req.epsilon is not None:
            row["applied"] = applied
        out.append(row)
    m.child(m.REQUESTS, "ok").inc()
    t0 = request.scope.get("tiergate.t0", time.perf_counter())
    wall = time.perf_counter() - t0
    overhead = max(wall - compute_s, 0.0)
    m.REQUEST_LATENCY.observe(wall)
    m.OVERHEAD.observe(overhead)
    return JSONResponse(out[0] if req.text is not None else {"results": out},
                        headers={"X-Tiergate-Overhead-Ms": f"{overhead * 1000:.3f}"})


def _deadline_s(request: Request, req: ClassifyRequest, srv) -> float:
    """The body's ``deadline_ms``, else the header, else the server default; never above
    ``server.request_timeout_s``."""
    ms = req.deadline_ms
    header = request.headers.get(DEADLINE_HEADER)
    if ms is None and header is not None:
        try:
            ms = float(header)
        except ValueError:
            ms = -1.0
        if not ms > 0:
            raise InputError(f"X-Tiergate-Deadline-Ms must be a positive number of milliseconds (got {header!r})")
    if ms is None:
        ms = srv.default_deadline_ms
    return min(ms / 1000, srv.request_timeout_s)


def _policy(c: Cascade, req: ClassifyRequest) -> tuple[list | None, dict]:
    """Which tier configs a request gets: the configured ones, a stricter certified rung, or the final tier."""
    if req.final_only or req.epsilon is None:
        return None, {"final_only": req.final_only}
    cert = c.config.certificate or {}
    th = thresholds_for_epsilon(c.config, req.epsilon)
    if th is None:
        return None, {"final_only": True, "epsilon_requested": req.epsilon, "mode": "final_only",
                      "why": "no setting is certified at this epsilon; the final tier alone has zero disagreement"}
    cfgs = [tc.model_copy(update={"threshold": t}) for tc, t in zip(c.config.tiers, th, strict=True)]
    return cfgs, {"final_only": False, "epsilon_requested": req.epsilon, "mode": "certified",
                  "certificate_epsilon": cert.get("epsilon")}
