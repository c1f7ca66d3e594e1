"""Limits applied before a request reaches a route, as plain ASGI middleware (nothing is parsed yet):

* the request's start time, for the overhead figure (``scope["tiergate.t0"]``);
* 503 while the gateway drains for shutdown (probes and metrics still answer);
* 429 at the door for classify requests when the first tier's queue is already full, or when the request
  already waited on the event loop longer than ``server.max_loop_wait_ms`` (see :mod:`tiergate.gateway.protocol`),
  so a flood costs almost nothing to refuse (no body read, no JSON parsed);
* a body limit: ``Content-Length`` over it is 413 at once, and a chunked body is counted as it arrives;
* a body timeout: a client that sends its body too slowly (or stops) gets 408 instead of holding a slot.
"""

from __future__ import annotations

import asyncio
import time

from tiergate.errors import BodyTimeoutError, PayloadTooLargeError, TiergateError, UnavailableError
from tiergate.gateway import metrics as m
from tiergate.gateway.errors import error_response
from tiergate.gateway.protocol import OPEN, READ_AT

_OPEN_PATHS = ("/healthz", "/readyz", "/metrics")
ADMIN_UPLOAD_BYTES = 2_000_000  # a rule file may be larger than a classify request


class LimitsMiddleware:
    def __init__(self, app, state):
        self.app = app
        self.state = state  # GatewayState: its server config and scheduler appear once models load

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = scope["tiergate.t0"] = time.perf_counter()
        path: str = scope.get("path", "")
        waited = t0 - scope.get(READ_AT, t0)
        m.LOOP_WAIT.observe(waited)
        try:
            self._gate(scope, path, waited)
        except TiergateError as e:
            return await error_response(e, path)(scope, receive, send)
        srv = self.state.server
        limit = ADMIN_UPLOAD_BYTES if path.startswith("/admin/") else srv.max_body_bytes
        length = _content_length(scope)
        if length is not None and length > limit:
            await _drain_some(receive)
            return await error_response(_too_large(length, limit), path)(scope, receive, send)
        started = False

        async def send_wrapper(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        received, body_done = 0, False
        until = time.monotonic() + srv.body_timeout_s

        async def receive_wrapper():
            nonlocal received, body_done
            if body_done:
                return await receive()
            try:
                # asyncio.timeout, not wait_for: wait_for wraps receive() in a task of its own, so reading a body
                # that has already arrived cost a trip round the event loop behind every other request.
                async with asyncio.timeout(max(until - time.monotonic(), 0.001)):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeoutError(f"the request body did not arrive within {srv.body_timeout_s:g} s "
                                   "(server.body_timeout_s)") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(received, limit)
                body_done = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except (PayloadTooLargeError, BodyTimeoutError) as e:
            if started:
                raise
            await error_response(e, path)(scope, receive, send)

    def _gate(self, scope, path: str, waited: float) -> None:
        if path in _OPEN_PATHS:
            return
        if self.state.draining:
            raise UnavailableError("the gateway is shutting down; retry on another instance")
        sched = self.state.scheduler
        if sched is not None and path == "/v1/classify" and scope.get("method") == "POST":
            sched.door_check(waited, _header_deadline_s(scope), scope.get(OPEN))


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"request body of {size} bytes or more; the limit is {limit} bytes "
                                "(server.max_body_bytes): split the batch")


def _header_deadline_s(scope) -> float | None:
    """The X-Tiergate-Deadline-Ms header in seconds, if it is a positive number (the route validates it)."""
    for k, v in scope.get("headers", ()):
        if k == b"x-tiergate-deadline-ms":
            try:
                ms = float(v)
            except ValueError:
                return None
            return ms / 1000 if ms > 0 else None
    return None


def _content_length(scope) -> int | None:
    for k, v in scope.get("headers", ()):
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


async def _drain_some(receive) -> None:
    """Read what the client already sent (without waiting for more), so the 413 reaches a client that is
    still writing instead of a connection reset."""
    try:
        await asyncio.wait_for(receive(), 0.05)
    except (TimeoutError, Exception):
        pass
