"""bench/serving.py's own machinery: the load client's parsing and statistics, the server subprocesses, the
config copies, and one scenario end to end on a real two-tier cascade (a few seconds of light load)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import sys
from pathlib import Path

import pytest
import yaml

from bench.serving_common import roles_of
from bench.serving_load import (
    Connection,
    Recorder,
    call,
    closed_loop,
    open_loop,
    pct,
    request_bytes,
    text_body,
)
from bench.serving_procs import (
    ServerError,
    ServerProcess,
    bare_command,
    config_variant,
    copy_workdir,
    free_port,
    listens,
    tier_dir,
)
from bench.serving_report import scenario_markdown


def test_percentile_is_nearest_rank():
    assert pct(list(range(1, 101)), 99) == 99 and pct(list(range(1, 101)), 50) == 50
    assert pct([5.0], 99) == 5.0 and math.isnan(pct([], 50))


def test_recorder_reads_tier_degraded_overhead_and_retry_after():
    rec = Recorder(deadline_ms=100)
    rec.add(200, 0.010, {"x-tiergate-overhead-ms": "0.4"}, b'{"label":"spam","tier":"rules","degraded":false}')
    rec.add(200, 0.250, {"x-tiergate-overhead-ms": "2.0"}, b'{"tier": "small", "degraded": true}')
    rec.add(429, 0.002, {"retry-after": "1"})
    rec.add(429, 0.003, {})
    rec.error("ConnectionResetError", 0.5)
    rec.seconds = 1.0
    s = rec.summary()
    assert s["status"] == {"200": 2, "429": 2} and s["errors"] == {"ConnectionResetError": 1}
    assert s["tiers"] == {"rules": 1, "small": 1} and s["degraded"] == 1
    assert s["late"] == 1  # the 250 ms answer, past its 100 ms deadline
    assert s["retry_after"] == {"1": 1} and s["retry_after_missing"] == 1
    assert s["overhead_p50_ms"] == 0.4 and s["overhead_p99_ms"] == 2.0
    assert s["p99_429_ms"] == pytest.approx(3.0) and s["goodput_rps"] == 2.0


def test_request_bytes_sets_length_and_keeps_a_given_content_type():
    raw = request_bytes("127.0.0.1", 8080, "PUT", "/admin/rules", b"rules: []", {"Content-Type": "application/yaml"})
    head, body = raw.split(b"\r\n\r\n", 1)
    assert body == b"rules: []" and b"Content-Length: 9" in head
    assert head.count(b"Content-Type") == 1 and b"application/yaml" in head


def test_connection_reads_chunked_answers_and_reconnects_after_close():
    """Against a tiny raw server: a chunked answer, then one that closes the connection; the next request
    must open a new connection rather than fail."""
    answers = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
               b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
               b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
    accepted = []

    async def handle(reader, writer):
        accepted.append(1)
        while answers:
            head = await reader.readuntil(b"\r\n\r\n")
            n = int(next(x for x in head.decode().split("\r\n") if x.lower().startswith("content-length")).split(":")[1])
            await reader.readexactly(n)
            answer = answers.pop(0)
            writer.write(answer)
            await writer.drain()
            if b"Connection: close" in answer:
                break
        writer.close()

    async def run():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = Connection("127.0.0.1", port, timeout_s=5)
        raw = request_bytes("127.0.0.1", port, "POST", "/v1/classify", b"{}")
        got = [await conn.send(raw) for _ in range(3)]
        conn.close()
        server.close()
        return got

    got = asyncio.run(run())
    assert got[0][0] == 200 and got[0][2] == b'{"a":1}'
    assert got[1][0] == 429 and got[1][1]["retry-after"] == "2"
    assert got[2] == (200, {"content-length": "2"}, b"ok") and len(accepted) == 2


def test_bare_endpoint_under_both_loops_then_stopped(tmp_path):
    port = free_port()
    with ServerProcess("bare", bare_command(port, "warning"), port, tmp_path / "bare.log") as srv:
        assert listens(srv.proc.pid, port) and srv.rss_bytes() > 10 * 2**20
        bodies = [text_body("Subject: hi\n\nhello"), text_body("Subject: x\n\n" + "y" * 5000)]
        closed = asyncio.run(closed_loop(srv.url + "/v1/classify", bodies, conns=2, seconds=0.5)).summary()
        opened = asyncio.run(open_loop(srv.url + "/v1/classify", bodies, rate=40, seconds=0.5, max_conns=8)).summary()
        bad = asyncio.run(call(srv.url + "/v1/classify", "POST", b'{"txt": 1}'))
        cpu = srv.cpu_seconds()
        pid = srv.proc.pid
    assert closed["status"] == {"200": closed["requests"]} and closed["requests"] > 10
    assert closed["tiers"] == {"rules": closed["requests"]}  # the constant answer is parsed like a decision
    assert opened["requests"] == 20 and opened["status"] == {"200": 20} and opened["connections"] <= 8
    assert bad[0] == 422 and cpu > 0
    assert not Path(f"/proc/{pid}").exists()  # stopped and reaped


def test_listens_names_the_owner_of_a_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert listens(os.getpid(), port)
        assert not listens(os.getppid(), port)
    assert not listens(os.getpid(), port)


def test_a_server_that_exits_raises_with_its_log(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('No such option: --log-level'); sys.exit(2)"]
    proc = ServerProcess("broken", cmd, free_port(), tmp_path / "broken.log", ready_timeout_s=20)
    with pytest.raises(ServerError, match="No such option"):
        proc.start()


def _write_config(d: Path, extra: dict | None = None) -> Path:
    (d / "small").mkdir(parents=True)
    (d / "small" / "model.onnx").write_bytes(b"onnx")
    (d / "rules.yaml").write_text("rules: []\n")
    cfg = {"version": 1, "tiers": [{"name": "rules", "kind": "rules", "path": "rules.yaml"},
                                   {"name": "small", "kind": "onnx", "path": "small"},
                                   {"name": "big", "kind": "torch", "path": "/opt/models/big"}], **(extra or {})}
    (d / "tiergate.yaml").write_text(yaml.safe_dump(cfg))
    return d / "tiergate.yaml"


def test_roles_follow_kind_and_position(tmp_path):
    config = _write_config(tmp_path)
    assert roles_of(config) == {"rules": "rules", "small": "small", "large": "big"}
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump({"tiers": [{"name": "a", "kind": "onnx", "path": "x"},
                                             {"name": "b", "kind": "onnx", "path": "y"}]}))
    assert roles_of(two) == {"rules": None, "small": "a", "large": "b"}


def test_config_variant_serves_the_same_files_with_the_override(tmp_path):
    config = _write_config(tmp_path / "w", {"model_dirs": ["models"], "server": {"tiers": {"big": {"max_wait_ms": 2}}}})
    out = config_variant(config, tmp_path / "v" / "tiergate.yaml", {"big": {"max_batch": 1}})
    raw = yaml.safe_load(out.read_text())
    base = (tmp_path / "w").resolve()
    assert [t["path"] for t in raw["tiers"]] == [str(base / "rules.yaml"), str(base / "small"), "/opt/models/big"]
    assert raw["server"]["tiers"]["big"] == {"max_wait_ms": 2, "max_batch": 1}
    assert raw["model_dirs"] == [str(base / "models"), str(base)]
    plain = config_variant(_write_config(tmp_path / "p"), tmp_path / "pv.yaml")
    # without model_dirs of its own, the copy still may read the original's folder (tiers are confined)
    assert yaml.safe_load(plain.read_text())["model_dirs"] == [str((tmp_path / "p").resolve())]


def test_copy_workdir_is_independent_of_the_original(tmp_path):
    config = _write_config(tmp_path / "w")
    copy = copy_workdir(config, tmp_path / "copy")
    model = tier_dir(copy, "small") / "model.onnx"
    model.write_bytes(b"corrupt")
    assert (tmp_path / "w" / "small" / "model.onnx").read_bytes() == b"onnx"
    assert copy.read_text() == config.read_text()  # relative paths: the copied YAML is already right


def test_markdown_says_na_with_the_reason():
    text = scenario_markdown("b", {"status": "n/a", "why": "the server refuses server.tiers.large.max_batch"})
    assert "**n/a**" in text and "max_batch" in text


@pytest.mark.slow
def test_batch_scenario_end_to_end(tiny_workdir, tmp_path):
    """Scenario c with --quick on a real two-tier cascade served by `tiergate serve`: a ratio and a report."""
    from bench.serving import main

    assert main(["--config", str(tiny_workdir / "tiergate.yaml"), "--only", "c", "--quick",
                 "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "serving_quick.json").read_text())
    c = report["scenarios"]["c"]
    assert c["status"] == "ok", c.get("why")
    row = c["rows"][0]
    assert row["items"] == 64 and row["http_ms"] > 0 and row["in_process_ms"] > 0 and row["ratio"] > 0
    assert report["roles"] == {"rules": None, "small": "small", "large": "final"}
    assert "HTTP / in-process" in (tmp_path / "serving_quick.md").read_text()
