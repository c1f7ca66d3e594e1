"""uvicorn's HTTP protocol, with the moment each request was read off its socket in the ASGI scope
(``scope["tiergate.read_at"]``, a ``time.perf_counter()`` value).

Why: when the event loop is the bottleneck (cheap tiers under overload), requests do not wait in any queue of
the gateway's own: they wait as tasks behind each other on the loop. Only the time between reading a request
and starting its handler shows that wait, and the admission check at the door
(:meth:`~tiergate.gateway.scheduler.Scheduler.door_check`) refuses a request that has already waited longer
than ``server.max_loop_wait_ms`` with a 429, before its body is parsed, so the loop spends itself on requests
it can still answer in time.

Without httptools (uvicorn's h11 protocol) requests carry no stamp and this check is skipped.
"""

from __future__ import annotations

import time

READ_AT = "tiergate.read_at"

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: uvicorn's default protocol, unstamped
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


if HttpToolsProtocol is not None:
    class StampedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc,valid-type]
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope[READ_AT] = time.perf_counter()  # type: ignore[typeddict-unknown-key]


def http_protocol():
    """What ``uvicorn.Config(http=...)`` should get: the stamped protocol, or "auto" without httptools."""
    return StampedHttpToolsProtocol if HttpToolsProtocol is not None else "auto"
