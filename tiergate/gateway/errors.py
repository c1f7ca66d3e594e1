"""The one place where tiergate's exceptions become HTTP responses, all with one body shape::

    {"error": "<ErrorClass>", "detail": "<what went wrong and what to do>", ...context}

``context`` fields come from the exception (a rule error's ``problems`` and the rule set still served, an
overload's ``retry_after_s``); request-validation errors add ``errors`` (one entry per problem, with its
location). Anything unexpected is a 500 with a generic body: internals and secrets never reach the client.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tiergate.errors import (
    AuthError,
    BodyTimeoutError,
    ConfigError,
    DeadlineError,
    ForbiddenError,
    InputError,
    ModelError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RuleError,
    TiergateError,
    UnavailableError,
)
from tiergate.gateway import metrics as m

log = logging.getLogger("tiergate.gateway")
CLASSIFY_PATH = "/v1/classify"

# Most specific first: the first class an exception is an instance of decides its status.
_STATUS: list[tuple[type[TiergateError], int]] = [
    (PayloadTooLargeError, 413),
    (BodyTimeoutError, 408),
    (InputError, 422),
    (RuleError, 422),
    (AuthError, 401),
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (OverloadedError, 429),
    (DeadlineError, 504),
    (UnavailableError, 503),
    (ConfigError, 500),
    (ModelError, 422),         # only a rejected hot swap reaches HTTP: the artifacts pushed are unusable
]


def status_of(exc: TiergateError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(error: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": error, "detail": detail, **extra}


def _outcome(status: int) -> str:
    if status == 429:
        return "overloaded"
    if status == 401:
        return "unauthorized"
    if status in (503, 504):
        return "unavailable"
    return "bad_request" if status < 500 else "error"


def error_response(exc: TiergateError, path: str = "") -> JSONResponse:
    """The response for a tiergate error (also used by the middleware, outside FastAPI's handlers); a
    classify request's outcome is counted here, once."""
    status = status_of(exc)
    if path == CLASSIFY_PATH:
        m.child(m.REQUESTS, _outcome(status)).inc()
    body = error_body(type(exc).__name__, str(exc), **exc.context)
    if isinstance(exc, RuleError) and exc.problems:
        body["problems"] = exc.problems
    headers = {}
    if isinstance(exc, OverloadedError):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        body["retry_after_s"] = exc.retry_after_s
    if isinstance(exc, AuthError):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status, headers=headers or None)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TiergateError)
    async def _tiergate(request: Request, exc: TiergateError):
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(invalid_body(exc.errors()), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        # Routing errors (404 unknown path, 405 wrong method) in the same shape as everything else.
        name = {404: "NotFoundError", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        return JSONResponse(error_body(name, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return unexpected_response(request.method, request.url.path)


def unexpected_response(method: str, path: str) -> JSONResponse:
    """A 500 for an exception tiergate did not expect (logged with its traceback; the client sees no internals).
    Call from inside the ``except`` block."""
    log.exception("unexpected error on %s %s", method, path)
    if path == CLASSIFY_PATH:
        m.REQUESTS.labels("error").inc()
    return JSONResponse(error_body("InternalError", "the gateway failed on this request; the log has the "
                                   "details"), status_code=500)


def invalid_body(errors: list[dict]) -> InputError:
    """The error for a body that fails its schema: every problem, with where it is (422)."""
    problems = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",)) or "body"
        problems.append({"loc": loc, "msg": e.get("msg", "")})
    detail = "; ".join(f"{p['loc']}: {p['msg']}" for p in problems[:5]) or "invalid request body"
    return InputError(f"invalid request body: {detail}", errors=problems)
