"""Running the app under uvicorn: timeouts for slow or idle connections, a drain on SIGTERM (new requests get
503 while those in flight finish), and ``--workers N`` with Prometheus metrics merged across workers."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import uvicorn

from tiergate.config import load_config

# h11 reads at most this much of an incomplete request head before refusing it (uvicorn's default is 16 KB).
MAX_HEADER_BYTES = 64 * 1024


class _DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, flag the gateway as draining before uvicorn stops accepting connections."""

    def __init__(self, config: uvicorn.Config, app):
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig, frame) -> None:
        self._app.state.gateway.draining = True
        # uvicorn's own handler also records the signal and raises it again once shut down, so a drained
        # SIGTERM would end the process killed by it (-15) instead of exiting 0; this is its handler without that.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting
        else:
            self.should_exit = True


def run(config_path: str | Path, *, host: str = "127.0.0.1", port: int = 8080, workers: int = 1,
        log_level: str = "info", tier: str | None = None, access_log: bool = False) -> None:
    """Serve the cascade, or with ``tier`` one tier of it over the KServe v2 protocol."""
    from tiergate.gateway.app import CONFIG_ENV, app_from_env, create_app
    from tiergate.gateway.protocol import http_protocol

    srv = load_config(config_path)[0].server
    common = dict(host=host, port=port, log_level=log_level, access_log=access_log, timeout_keep_alive=int(max(1, srv.keepalive_timeout_s)),
                  timeout_graceful_shutdown=int(srv.shutdown_grace_s) or None, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                  server_header=False, http=http_protocol(), loop=srv.event_loop)
    if tier is not None:
        from tiergate.gateway.kserve_app import create_kserve_app

        uvicorn.Server(uvicorn.Config(create_kserve_app(config_path, tier), **common)).run()
        return
    if workers == 1:
        app = create_app(config_path)
        _DrainingServer(uvicorn.Config(app, **common), app).run()
        return
    # Several processes: each worker builds its own app from the environment, and prometheus-client keeps
    # its samples in files under PROMETHEUS_MULTIPROC_DIR, which /metrics merges.
    made = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    mp_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="tiergate-metrics-"))
    # prometheus-client needs the directory empty at start: an earlier run's files would be merged in, and so
    # would the zeros this process wrote as its modules were imported (its tiergate_ready=0 wins the "min").
    for f in Path(mp_dir).glob("*.db"):
        f.unlink()
    os.environ[CONFIG_ENV] = str(Path(config_path).resolve())
    try:
        uvicorn.run(f"{app_from_env.__module__}:{app_from_env.__name__}", factory=True, workers=workers, **common)
    finally:
        if made:
            shutil.rmtree(mp_dir, ignore_errors=True)
