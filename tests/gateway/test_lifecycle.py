"""The real CLI, ``tiergate serve``, as a subprocess on loopback serving the real three-tier cascade: a graceful
drain on SIGTERM, ``/readyz`` while the models load, and ``--workers 2`` with Prometheus metrics merged across
the worker processes."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.conftest import free_port
from tests.gateway.conftest import HAM, LOTTERY, write_config
from tests.gateway.test_app import SAMPLE, SPAM, scrape

TOKEN = "lifecycle-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
GRACE_S = 10
SERVER = {"anonymous_privileges": ["final_only"], "shutdown_grace_s": GRACE_S}
TIERGATE = Path(sys.executable).with_name("tiergate")  # the console script of the venv running the tests


@dataclass
class Served:
    proc: subprocess.Popen
    base: str
    log: Path

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@contextlib.contextmanager
def serve(config: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    """``tiergate serve`` in a session of its own (so the workers go with it); killed at the end if still up."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([str(TIERGATE), "serve", "--config", str(config), "--host", "127.0.0.1",
                                 "--port", str(port), *args],
                                env={**os.environ, "TIERGATE_ADMIN_TOKEN": TOKEN, **(env or {})},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield Served(proc, f"http://127.0.0.1:{port}", log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group this test started: the CLI and its workers
        proc.wait(10)


def readiness(s: Served, timeout: float = 120) -> list[tuple[int, str]]:
    """Poll ``/readyz`` from the moment the port opens until it answers 200: every answer, as (status, detail)."""
    seen: list[tuple[int, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if s.proc.poll() is not None:
            pytest.fail(f"tiergate serve exited with {s.proc.returncode} during start-up:\n{s.log_tail()}")
        try:
            r = httpx.get(s.base + "/readyz", timeout=5)
        except httpx.TransportError:
            if seen:
                pytest.fail(f"the port stopped answering after {seen}:\n{s.log_tail()}")
            time.sleep(0.002)  # not listening yet: poll fast, so a short load is still seen
            continue
        seen.append((r.status_code, r.json().get("detail", "")))
        if r.status_code == 200:
            return seen
        time.sleep(0.01)
    pytest.fail(f"not ready within {timeout} s ({seen[-3:]}):\n{s.log_tail()}")


@pytest.fixture
def config(serving_dir, tiny_workdir, request):
    return write_config(serving_dir, tiny_workdir, f"lifecycle-{request.node.name}", SERVER)


# ----------------------------------------------------------------------------------------------- drain
@pytest.mark.timeout(180)
def test_sigterm_drains_in_flight_requests_and_exits_0(config, tmp_path):
    with serve(config, tmp_path / "serve.log") as s:
        readiness(s)
        r = httpx.post(s.base + "/admin/faults", json={"tier": "final", "delay_ms": 1500}, headers=ADMIN)
        assert r.status_code == 200, r.text
        answer: dict = {}

        def in_flight():
            try:
                answer["response"] = httpx.post(s.base + "/v1/classify", json={"text": HAM, "final_only": True},
                                                timeout=30)
            except httpx.HTTPError as e:  # reported by the assertion below
                answer["error"] = e

        t = threading.Thread(target=in_flight)
        t.start()
        deadline = time.monotonic() + 10
        while httpx.get(s.base + "/readyz").json()["tiers"][-1]["queue_items"] == 0:  # on the final tier now
            assert time.monotonic() < deadline and t.is_alive(), f"the request never reached the final tier: {answer}"
            time.sleep(0.01)
        s.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        try:  # a new request once SIGTERM is in: refused, at the door or by a closed port
            late = httpx.post(s.base + "/v1/classify", json={"text": HAM}, timeout=10).status_code
        except httpx.TransportError:
            late = "no connection"
        assert late in (503, "no connection"), late
        t.join(30)
        r = answer.get("response")
        assert r is not None and r.status_code == 200, (answer, s.log_tail())
        assert r.json()["tier"] == "final" and not r.json()["degraded"]
        try:
            code = s.proc.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {GRACE_S} s after SIGTERM:\n{s.log_tail()}")
        assert code == 0, f"exit code {code}:\n{s.log_tail()}"
        assert time.monotonic() - sent < GRACE_S
        assert "Application shutdown complete" in s.log.read_text()


# --------------------------------------------------------------------------------------------- loading
@pytest.mark.timeout(180)
def test_readyz_is_503_while_the_models_load(config, tmp_path):
    """The port opens before the models are loaded (they load in the background): ``/readyz`` answers 503, not
    a refused connection, until they are in. The first load takes a few hundred ms of CPU (the ONNX runtime's
    first sessions, the smoke batch); polled every few ms from the moment the port opens, it is always seen."""
    with serve(config, tmp_path / "serve.log") as s:
        seen = readiness(s)
        assert seen[0] == (503, "models are loading"), seen[:3]
        assert seen[-1][0] == 200 and all(code == 503 for code, _ in seen[:-1]), seen
        assert httpx.get(s.base + "/healthz").status_code == 200


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
            for c in (t / "children").read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc")
def test_the_gateway_process_never_loads_a_model_runtime(config, tmp_path):
    """The model tiers are built in their own processes only: the gateway's process never maps onnxruntime's
    library (nor holds the sessions), while a child of it does, and the child answers."""
    with serve(config, tmp_path / "serve.log") as s:
        readiness(s)
        assert "onnxruntime" not in _maps(s.proc.pid)
        kids = _children(s.proc.pid)
        assert any("onnxruntime" in _maps(k) for k in kids), kids
        r = httpx.post(s.base + "/v1/classify", json={"text": HAM, "final_only": True}, timeout=30)
        assert r.status_code == 200 and r.json()["tier"] == "final" and not r.json()["degraded"]


# --------------------------------------------------------------------------------------------- workers
def per_worker(mp_dir: Path, name: str) -> dict[str, float]:
    """Each process's own value of the samples named ``name`` (summed over labels), read from its files in
    the multiprocess directory one process at a time."""
    out: dict[str, float] = {}
    for f in mp_dir.glob("*.db"):
        pid = f.stem.rsplit("_", 1)[-1]
        for metric in MultiProcessCollector.merge([str(f)], accumulate=True):
            for sample in metric.samples:
                if sample.name == name:
                    out[pid] = out.get(pid, 0.0) + sample.value
    return out


def stale_counter(mp_dir: Path) -> None:
    """A previous run's samples left in the directory: 5 decisions counted by a process long gone."""
    code = ("from prometheus_client import Counter\n"
            "Counter('tiergate_decisions_total', 'x', ['tier', 'label']).labels('final', 'ham').inc(5)\n")
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)},
                   check=True, timeout=60)


@pytest.mark.timeout(300)
def test_two_workers_merge_their_metrics(config, tmp_path):
    mp_dir = tmp_path / "prometheus"
    mp_dir.mkdir()
    stale_counter(mp_dir)
    with serve(config, tmp_path / "serve.log", "--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}) as s:
        readiness(s, timeout=180)
        deadline = time.monotonic() + 120
        while sorted(per_worker(mp_dir, "tiergate_ready").values()) != [1.0, 1.0]:  # both loaded, not just one
            assert time.monotonic() < deadline, (per_worker(mp_dir, "tiergate_ready"), s.log_tail())
            assert s.proc.poll() is None, s.log_tail()
            time.sleep(0.1)

        # a worker that has just turned ready takes a moment before it wins accept()s (seen since the decision
        # log's start-up: both workers open one new SQLite file); the spread below needs both in the race
        time.sleep(2)
        texts = [HAM, LOTTERY, SPAM, "hello"] * 10
        # one connection per request (httpx.post), from four threads: the kernel hands them to either worker
        with cf.ThreadPoolExecutor(4) as ex:
            codes = list(ex.map(lambda t: httpx.post(s.base + "/v1/classify", json={"text": t}, timeout=30).status_code,
                                texts))
        assert codes == [200] * 40

        decided = per_worker(mp_dir, "tiergate_decisions_total")
        assert sum(decided.values()) == 40, decided
        # both answered some (18/22 and 28/12 in trials), else merging would be shown by nothing but the scrapes
        assert len([n for n in decided.values() if n]) == 2, decided
        for _ in range(4):  # each scrape is answered by either worker; every one must see both
            m = scrape(s.base)
            assert m["tiergate_decisions_total"] == 40, (decided, m["tiergate_decisions_total"])
            assert m['tiergate_requests_total{outcome="ok"}'] == 40
            assert m["tiergate_request_latency_seconds_count"] == 40
            assert m["tiergate_ready"] == 1
        # a gauge left in prometheus-client's default multiprocess mode ("all") gets one series per worker
        # process, labelled pid: an unbounded label, and a dead worker's series stay forever
        text = httpx.get(s.base + "/metrics").text
        by_pid = sorted({m.group(1) for line in text.splitlines() if (m := SAMPLE.match(line))
                         and m.group(2) and re.search(r'\bpid="', m.group(2))})
        assert by_pid == [], f"series labelled by worker pid: {by_pid}"
        # the decision log and the shadow audits, merged too: one series each, whichever worker answers
        merged = scrape(s.base)
        for name in ("tiergate_shadow_risk_upper_bound", "tiergate_savings_target_ratio", "tiergate_cost_saved_usd",
                     'tiergate_log_writes_total{outcome="written"}'):
            assert name in merged, name
        assert merged['tiergate_log_writes_total{outcome="written"}'] <= 40

        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(GRACE_S + 5) == 0, s.log_tail()
