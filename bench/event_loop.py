"""The event loop's share of overload, side by side in one run (issue 12; docs/benchmarks.md, *Overload*):

1. **What a refusal costs.** ``tiergate serve`` refusing every classify request, once at the door of the ASGI
   middleware (``server.max_loop_wait_ms`` tiny: every request has waited longer) and once in the HTTP protocol
   (``server.max_open_requests: 1`` with one request held open by a fault on the final tier). wrk, 32
   connections: 429s per second.
2. **How fast new connections are accepted under load.** The same gateway on ``server.event_loop: asyncio``
   and ``uvloop``, serving a closed-loop wrk load; meanwhile ``--connections`` sockets connect at once and the
   listen socket's accept queue (``ss -ltn``'s Recv-Q) is read until it is empty.

Needs ``wrk`` and ``ss`` (Debian: wrk, iproute2). Prints a table and writes ``bench/reports/event_loop.{json,md}``.

    TIERGATE_ADMIN_TOKEN=bench python bench/event_loop.py --config W/tiergate.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving_procs import ServerProcess, config_variant, free_port, tiergate_command  # noqa: E402

RULES_MAIL = ("From: a@example.org\nTo: b@example.org\nSubject: weekly notes\nX-BeenThere: razor-users@example.com\n"
              "\nthe notes of the week, as every week")


def wrk_script(path: Path, text: str) -> Path:
    body = json.dumps({"text": text})
    path.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                    f"wrk.body = {json.dumps(body)}\n")
    return path


def run_wrk(url: str, script: Path, seconds: float, conns: int = 32) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "-s", str(script), url],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {"rps": float(rps.group(1)) if rps else float("nan"), "requests": int(total.group(1)) if total else 0,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def post(url: str, body: dict, token: str | None = None, timeout: float = 120) -> int:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json",
                                                                  **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def server_variant(config: Path, out: Path, server: dict) -> tuple[Path, dict]:
    """A copy of ``config`` serving the same models, with ``server`` settings merged in; (path, its YAML)."""
    cfg = config_variant(config, out)
    raw = yaml.safe_load(cfg.read_text())
    raw.setdefault("server", {}).update(server)
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    return cfg, raw


def accept_queue(port: int) -> int:
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout.split()
    return int(out[1]) if len(out) > 1 else 0


def refusal_cost(args, work: Path, script: Path) -> list[dict]:
    rows = []
    token = os.environ.get("TIERGATE_ADMIN_TOKEN")
    variants = {"at the door (ASGI middleware, error_response)": {"max_loop_wait_ms": 0.001, "min_open_requests": 0,
                                                                  "loop_budget_ms": 0},
                "by the HTTP protocol (written from the parser)": {"max_open_requests": 1, "loop_budget_ms": 0}}
    for name, server in variants.items():
        cfg, raw = server_variant(args.config, work / f"refuse-{len(rows)}.yaml",
                                  {**server, "anonymous_privileges": ["final_only", "epsilon"]})
        port = free_port()
        with ServerProcess(name, tiergate_command(cfg, port, "warning"), port, work / f"refuse-{len(rows)}.log") as s:
            holder = None
            if "max_open_requests" in server:
                if not token:
                    sys.exit("set TIERGATE_ADMIN_TOKEN: the protocol's case holds one request open with a fault")
                post(s.url + "/admin/faults", {"tier": raw["tiers"][-1]["name"], "delay_ms": 600_000}, token)
                holder = threading.Thread(target=post, args=(s.url + "/v1/classify", {"text": "x", "final_only": True}),
                                          daemon=True)
                holder.start()
                time.sleep(1.0)
            runs = [run_wrk(s.url + "/v1/classify", script, args.seconds) for _ in range(args.repeats)]
        refused = [r["rps"] * (r["non_2xx"] / r["requests"]) if r["requests"] else float("nan") for r in runs]
        rows.append({"refused_by": name, "refusals_per_s": refused, "median": sorted(refused)[len(refused) // 2],
                     "us_per_refusal_one_core": 1e6 / sorted(refused)[len(refused) // 2]})
    return rows


def accept_rate(args, work: Path, script: Path) -> list[dict]:
    rows = []
    for loop in ("asyncio", "uvloop"):
        cfg, _ = server_variant(args.config, work / f"loop-{loop}.yaml", {"event_loop": loop})
        port = free_port()
        with ServerProcess(loop, tiergate_command(cfg, port, "warning"), port, work / f"loop-{loop}.log") as s:
            load: dict = {}
            t = threading.Thread(target=lambda out=load, url=s.url: out.update(
                run_wrk(url + "/v1/classify", script, args.load_seconds)))
            t.start()
            time.sleep(1.5)  # the load is running
            socks = []
            t0 = time.perf_counter()
            for _ in range(args.connections):
                c = socket.socket()
                c.setblocking(False)
                try:
                    c.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                socks.append(c)
            samples = []
            while time.perf_counter() - t0 < args.load_seconds:
                q = accept_queue(port)
                samples.append((round(time.perf_counter() - t0, 2), q))
                if q == 0:
                    break
                time.sleep(0.25)
            t.join()
            for c in socks:
                c.close()
        drained = next((ts for ts, q in samples if q == 0), None)
        rows.append({"event_loop": loop, "load_rps": load.get("rps"), "first_queue": samples[0][1] if samples else None,
                     "queue_after_1s": next((q for ts, q in samples if ts >= 1.0), None),
                     "drained_s": drained, "samples": samples})
    return rows


def markdown(report: dict) -> str:
    lines = [f"# The event loop under overload\n\n`{report['command']}` ({report['machine']})\n",
             "## What a refusal costs (wrk, 32 connections, every classify request refused)\n",
             "| refused | 429s per second (runs) | median | µs per refusal (one core) |", "|---|---|---|---|"]
    for r in report["refusals"]:
        lines.append(f"| {r['refused_by']} | {', '.join(f'{x:,.0f}' for x in r['refusals_per_s'])} | {r['median']:,.0f} | "
                     f"{r['us_per_refusal_one_core']:.0f} |")
    a, b = report["refusals"]
    lines.append(f"\nThe protocol's refusal: **{b['median'] / a['median']:.1f}×** the door's rate.\n")
    lines += [f"## New connections under load ({report['connections']} at once beside a 32-connection wrk load)\n",
              "| event loop | load req/s | accept queue at first | after 1 s | empty after |", "|---|---|---|---|---|"]
    for r in report["accept"]:
        drained = f"{r['drained_s']:.2f} s" if r["drained_s"] is not None else f"not within {report['load_seconds']:g} s"
        lines.append(f"| {r['event_loop']} | {r['load_rps']:,.0f} | {r['first_queue']} | {r['queue_after_1s']} | {drained} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, type=Path, help="a tiergate.yaml (what `tiergate quickstart` writes)")
    ap.add_argument("--seconds", type=float, default=5.0, help="each wrk run of the refusal cost")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--connections", type=int, default=1000, help="sockets opened at once under load")
    ap.add_argument("--load-seconds", type=float, default=8.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "reports")
    args = ap.parse_args(argv)
    for tool in ("wrk", "ss"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install wrk iproute2")
    work = Path(tempfile.mkdtemp(prefix="tiergate-bench-loop-"))
    try:
        script = wrk_script(work / "post.lua", RULES_MAIL)
        report = {"command": "python bench/event_loop.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "machine": f"{os.cpu_count()} CPUs, {os.uname().machine}", "connections": args.connections,
                  "load_seconds": args.load_seconds}
        report["refusals"] = refusal_cost(args, work, script)
        report["accept"] = accept_rate(args, work, script)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "event_loop.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (args.out / "event_loop.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
