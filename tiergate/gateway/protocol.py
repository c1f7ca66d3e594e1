"""uvicorn's HTTP protocol, with three additions for serving under overload:

* the moment each request was read off its socket, in the ASGI scope (``scope["tiergate.read_at"]``, a
  ``time.perf_counter()`` value). When the event loop is the bottleneck (cheap tiers under overload),
  requests do not wait in any queue of the gateway's own: they wait as tasks behind each other on the loop.
  Only the time between reading a request and starting its handler shows that wait, and the admission check
  at the door (:meth:`~tiergate.gateway.scheduler.Scheduler.door_check`) refuses a request that has already
  waited longer than ``server.max_loop_wait_ms`` with a 429, before its body is parsed;
* a budget of work per turn of the loop (:class:`LoopBudget`, ``server.loop_budget_ms``): every request the
  loop reads is work in its next turn, so without a bound a flood lengthens every turn (measured at 3x
  capacity on rules-decided traffic: /healthz and 429s waited seconds). Beyond the budget a classify request
  is refused as soon as its headers are read;
* a cap on open requests (``server.max_open_requests``, off by default): a classify request read while that
  many requests of this worker are still unanswered is refused the same way.

Both refusals are written by the protocol itself, from bytes made once (:func:`set_limits`), in the parser's
callback: no task, no ASGI app, no middleware, no router, and the body is skipped by the parser as it
arrives. Such a refusal costs the header parse and one write: about 16 us, against 49 us for the same 429
through an ASGI app (61,000 against 20,000 refusals/s under wrk, docs/benchmarks.md).

Without httptools (uvicorn's h11 protocol) requests carry no stamp and none of these checks applies.
"""

from __future__ import annotations

import json
import time

from tiergate.gateway import metrics as m
from tiergate.gateway.errors import CLASSIFY_PATH, error_body

READ_AT = "tiergate.read_at"
OPEN = "tiergate.open"  # requests of this worker open when this one was read (itself not counted)

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: uvicorn's default protocol, unstamped
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


def refusal_bytes(detail: str, keep_alive: bool) -> bytes:
    """The whole HTTP response of a refusal by the protocol: the gateway's error body (as
    :func:`tiergate.gateway.errors.error_response` writes it for an OverloadedError), ``Retry-After: 1``."""
    body = json.dumps(error_body("OverloadedError", detail, retry_after_s=1), separators=(",", ":")).encode()
    return (b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            b"content-length: %d\r\nconnection: %s\r\n\r\n%s"
            % (len(body), b"keep-alive" if keep_alive else b"close", body))


if HttpToolsProtocol is not None:
    class StampedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc,valid-type]
        max_open = 0    # server.max_open_requests (set_limits)
        refusal: dict[tuple[str, bool], bytes] = {}  # the 429s, by reason and keep-alive (set_limits)

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
            if scope.get("path") == CLASSIFY_PATH and scope.get("method") == "POST":
                if self.max_open and n >= self.max_open:
                    return self._refuse(cycle, "open_requests")
                budget = LoopBudget
                budget.ensure(self.loop)
                if n >= budget.min_open and budget.admitted >= budget.limit:
                    return self._refuse(cycle, "loop_budget")
                budget.admitted += 1
            cls.open_now += 1
            cycle.tiergate_open = True
            super()._start_asgi_task(cycle, app)

        def _refuse(self, cycle, why: str) -> None:
            """Answer the 429 now, from the parser's callback. ``response_complete`` makes the parser's body
            callbacks drop the body, and the next request on the connection starts as after any response."""
            _REFUSED[why].inc()
            _REFUSED_OUTCOME.inc()
            cycle.response_complete = True
            self.transport.write(self.refusal[why, cycle.keep_alive])
            if not cycle.keep_alive:
                self.transport.close()
                return
            self.on_response_complete()

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


class LoopBudget:
    """How much classify work the event loop takes on per turn.

    A timer set every ``TICK_S`` measures how late the loop runs it (its lag: about how long a turn takes now,
    ``tiergate_loop_lag_seconds``) and, when the loop was busy since the last tick, the loop time per classify
    request admitted in that interval (an average over busy intervals). Between two ticks the protocol admits
    at most ``server.loop_budget_ms / cost`` classify requests once ``server.loop_budget_min_open`` are open, and
    answers the rest 429 at the cost of a header parse: each turn then holds about the budget of accepted
    work, however many requests a flood brings, so refusals and probes wait one short turn, not seconds.
    Started by the first classify request on each loop."""

    TICK_S = 0.005
    cost = 0.0                # loop seconds per admitted request while busy; 0 until measured
    admitted = 0              # classify requests admitted since the last tick
    limit = float("inf")      # requests admitted per tick before refusing
    budget_s = 0.0            # server.loop_budget_ms in seconds (set_limits); 0: no limit
    min_open = 8              # server.loop_budget_min_open (set_limits)
    _loop = None
    _last = 0.0

    @classmethod
    def ensure(cls, loop) -> None:
        if cls._loop is not loop:
            cls._loop, cls.cost, cls.admitted, cls.limit = loop, 0.0, 0, float("inf")
            cls._last = loop.time()
            cls._schedule(loop)

    @classmethod
    def _schedule(cls, loop) -> None:
        due = loop.time() + cls.TICK_S
        loop.call_at(due, cls._tick, loop, due)

    @classmethod
    def _tick(cls, loop, due: float) -> None:
        if cls._loop is not loop:  # a later server's loop took over: this one's ticks stop
            return
        now = loop.time()
        lag = now - due
        m.LOOP_LAG.observe(lag)
        if cls.admitted and lag > 0.001:  # busy since the last tick: that time went to these requests (or more)
            per = (now - cls._last) / cls.admitted
            cls.cost = per if not cls.cost else 0.8 * cls.cost + 0.2 * per
        cls.admitted, cls._last = 0, now
        cls.limit = max(1.0, cls.budget_s / cls.cost) if cls.cost and cls.budget_s else float("inf")
        cls._schedule(loop)


_REFUSED = {why: m.REJECTED.labels(why) for why in ("open_requests", "loop_budget")}
_REFUSED_OUTCOME = m.REQUESTS.labels("overloaded")  # as error_response counts a classify 429


def set_limits(max_open: int, budget_ms: float, budget_min_open: int) -> None:
    """``server.max_open_requests``, ``server.loop_budget_ms`` and ``server.loop_budget_min_open`` of this
    process (the gateway's state sets them whenever it reads the config; each worker of ``serve --workers N``
    reads its own). 0 turns either limit off."""
    if HttpToolsProtocol is None:
        return
    cls = StampedHttpToolsProtocol
    cls.max_open, LoopBudget.budget_s, LoopBudget.min_open = max_open, budget_ms / 1000, budget_min_open
    details = {"open_requests": f"this worker has {max_open} or more requests open (server.max_open_requests); "
                                "retry in 1 s",
               "loop_budget": "the gateway's event loop is saturated: it has taken on all the work it can in this "
                             f"turn (server.loop_budget_ms={budget_ms:g}); retry in 1 s"}
    cls.refusal = {(why, keep): refusal_bytes(d, keep) for why, d in details.items() for keep in (True, False)}


def http_protocol():
    """What ``uvicorn.Config(http=...)`` should get: the stamped protocol, or "auto" without httptools
    (an importable class: ``serve --workers N`` hands it to its worker processes)."""
    return StampedHttpToolsProtocol if HttpToolsProtocol is not None else "auto"
