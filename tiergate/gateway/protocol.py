"""uvicorn's HTTP protocol, with two additions for serving under overload:

* the moment each request was read off its socket, in the ASGI scope (``scope["tiergate.read_at"]``, a
  ``time.perf_counter()`` value). When the event loop is the bottleneck (cheap tiers under overload),
  requests do not wait in any queue of the gateway's own: they wait as tasks behind each other on the loop.
  Only the time between reading a request and starting its handler shows that wait, and the admission check
  at the door (:meth:`~tiergate.gateway.scheduler.Scheduler.door_check`) refuses a request that has already
  waited longer than ``server.max_loop_wait_ms`` with a 429, before its body is parsed;
* a cap on open requests (``server.max_open_requests``): a classify request read while that many requests
  of this worker are still unanswered gets its 429 from a two-message ASGI app started in place of the
  gateway's, so the refusal costs the header parse and one write, not the middleware, the router or the
  body. Why: every request the loop reads is work in its next turn, so without a cap a flood lengthens
  every turn of the loop (measured: /healthz and 429s waited seconds at 3x capacity on rules-decided
  traffic); with it, the work per turn is bounded by the cap and refusals stay cheap. Closed-loop clients
  within the cap are never refused by it (docs/gateway.md, *Admission on the event loop*).

Without httptools (uvicorn's h11 protocol) requests carry no stamp and neither check applies.
"""

from __future__ import annotations

import time

from tiergate.errors import OverloadedError
from tiergate.gateway import metrics as m
from tiergate.gateway.errors import error_response

READ_AT = "tiergate.read_at"
OPEN = "tiergate.open"  # requests of this worker open when this one was read (itself not counted)

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: uvicorn's default protocol, unstamped
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


async def refuse_open(scope, receive, send) -> None:
    """The 429 for a request over ``server.max_open_requests`` (the gateway's error body, counted there)."""
    m.REJECTED.labels("open_requests").inc()
    err = OverloadedError(f"this worker has {scope[OPEN]} requests open (server.max_open_requests); "
                          "retry in 1 s", retry_after_s=1)
    await error_response(err, scope["path"])(scope, receive, send)


if HttpToolsProtocol is not None:
    class StampedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc,valid-type]
        max_open = 0    # server.max_open_requests (set_max_open)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope[READ_AT] = time.perf_counter()  # type: ignore[typeddict-unknown-key]

        # requests read by this worker whose response is not complete (all connections): one up when a
        # request's handler starts, one down when its response is complete or its connection is lost
        open_now = 0

        def _start_asgi_task(self, cycle, app) -> None:
            scope = cycle.scope
            cls = StampedHttpToolsProtocol
            scope[OPEN] = n = cls.open_now  # type: ignore[typeddict-unknown-key]
            if self.max_open and n >= self.max_open and scope.get("method") == "POST" and \
                    scope.get("path") == "/v1/classify":
                app = refuse_open
            cls.open_now += 1
            cycle.tiergate_open = True
            super()._start_asgi_task(cycle, app)

        def on_response_complete(self) -> None:
            _close(self.cycle)
            super().on_response_complete()

        def connection_lost(self, exc) -> None:  # a client that went away never completes its response
            _close(self.cycle)  # (pipelined requests still queued were never counted)
            super().connection_lost(exc)

    def _close(cycle) -> None:
        if cycle is not None and getattr(cycle, "tiergate_open", False):
            cycle.tiergate_open = False
            StampedHttpToolsProtocol.open_now -= 1


def set_max_open(n: int) -> None:
    """``server.max_open_requests`` of this process (the gateway's state sets it whenever it reads the
    config; each worker of ``serve --workers N`` reads its own). 0: no cap."""
    if HttpToolsProtocol is not None:
        StampedHttpToolsProtocol.max_open = n


def http_protocol():
    """What ``uvicorn.Config(http=...)`` should get: the stamped protocol, or "auto" without httptools
    (an importable class: ``serve --workers N`` hands it to its worker processes)."""
    return StampedHttpToolsProtocol if HttpToolsProtocol is not None else "auto"
