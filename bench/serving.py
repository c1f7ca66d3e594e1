"""The serving benchmark (issue 12): the gateway under load against a bare FastAPI endpoint, in one run.

    python bench/serving.py --config W/tiergate.yaml            # every scenario, ~20 min on 2 cores
    python bench/serving.py --config W/tiergate.yaml --quick    # every scenario for a few seconds (smoke test)
    python bench/serving.py --config W/tiergate.yaml --only a,c

``W/tiergate.yaml`` is what ``tiergate quickstart --no-serve --workdir W`` writes. Every server is a subprocess on
127.0.0.1 with one uvicorn worker (``tiergate serve --config C --host 127.0.0.1 --port P``, and
``bench/bare_endpoint.py``), started and stopped here; the load client is bench/serving_load.py. Scenarios:

a. single items decided by the rules, the small and the large tier (texts found by asking the server about the
   ``spamassassin`` test split) against the bare endpoint, closed loop: req/s, ratio to bare, latency and
   ``X-Tiergate-Overhead-Ms`` p50/p99. BRIEF 5: rules-decided throughput >= 60% of bare (aim 80%), overhead
   p50 <= 1 ms and p99 <= 5 ms.
b. large-decided single items with the config's batching against the same server with ``max_batch: 1`` for the
   large tier (``server.tiers.<large>.max_batch``): throughput ratio.
c. batches of 64 items: HTTP time against the in-process cascade on the same items. BRIEF 5: <= 1.3x.
d. overload, per traffic type: capacity (closed loop), then an open-loop arrival rate of 3x capacity; status
   codes (only 200 and 429 allowed), goodput / capacity, 429 p99, accepted p99 against p99 at capacity,
   accepted answers past their ``X-Tiergate-Deadline-Ms``, and /healthz probed every 100 ms.
e. memory: the server's RSS under a bounded mixed load for ``--soak-seconds`` after ``--soak-warmup-seconds`` of
   it: growth from start to end, and the tree's (gateway and tier processes) PSS and its late slope.
g. the decision log's cost: rules- and small-decided single items with the log off, on (no text) and on with every
   text kept, alternating runs (issue 13: rules-decided throughput loses <= 10% with the log on).
f. faults during load, on a copy of the workdir: the final tier failing, then slow (``POST /admin/faults``), a
   broken rule file (``PUT /admin/rules``), a corrupt small model (``POST /admin/models/reload``): failed
   requests (5xx, no answer) and degraded answers per phase, and whether the old rules and model still serve.
client (opt-in, ``--only client``): what each load client costs per request on the bare endpoint.

A server feature a scenario needs that is missing (an admin endpoint answering 404, a config key the server
rejects, a header never sent) is reported as "n/a" with the reason; it never stops the run. Each scenario prints
a markdown table; the report goes to ``bench/reports/serving[_quick].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving_common import ROLES, Bench, NotAvailable, Settings, quick_settings  # noqa: E402
from bench.serving_faults import run_fault_phases  # noqa: E402
from bench.serving_procs import ServerError, copy_workdir  # noqa: E402
from bench.serving_report import markdown_report, scenario_markdown  # noqa: E402
from bench.serving_scenarios import (  # noqa: E402
    scenario_a,
    scenario_b,
    scenario_c,
    scenario_d,
    scenario_e,
    scenario_g,
)

SCENARIOS = ("a", "b", "c", "d", "e", "f", "g")


def scenario_f(b: Bench) -> dict:
    return run_fault_phases(b, copy_workdir(b.config, b.work / "f-workdir"))


def scenario_client(b: Bench) -> dict:
    from bench.serving_clients import client_costs

    return client_costs(b)


RUNNERS = {"a": scenario_a, "b": scenario_b, "c": scenario_c, "d": scenario_d, "e": scenario_e, "f": scenario_f,
           "g": scenario_g, "client": scenario_client}


# ------------------------------------------------------------------------------------------------ main
def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import fastapi
    import uvicorn

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "fastapi": fastapi.__version__,
            "uvicorn": uvicorn.__version__, "commit": commit, "load_average_1m_at_start": round(os.getloadavg()[0], 2)}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="a tiergate.yaml (what `tiergate quickstart` writes)")
    ap.add_argument("--only", default=",".join(SCENARIOS), help="scenarios, comma-separated: a,b,c,d,e,f,g "
                    "(and 'client', the load clients' own cost; not in the default set)")
    ap.add_argument("--quick", action="store_true", help="every scenario for a few seconds (smoke test)")
    ap.add_argument("--seconds", type=float, help="seconds per closed-loop run (a, b)")
    ap.add_argument("--repeats", type=int, help="alternating runs per server (a, b)")
    ap.add_argument("--conns", type=int, help="closed-loop connections (default 32)")
    ap.add_argument("--overload-seconds", type=float, help="open-loop overload per traffic type (d; default 30)")
    ap.add_argument("--overload-factor", type=float, help="arrival rate / capacity (d; default 3)")
    ap.add_argument("--deadline-ms", type=float, help="X-Tiergate-Deadline-Ms sent in d (default: 3x p99 at capacity)")
    ap.add_argument("--soak-seconds", type=float, help="memory soak (e; default 600, 5 with --quick)")
    ap.add_argument("--soak-warmup-seconds", type=float, help="the soak's load before it starts measuring (e; default 120)")
    ap.add_argument("--phase-seconds", type=float, help="each fault phase (f)")
    ap.add_argument("--fault-delay-ms", type=float, help="the slow final tier's delay (f; default 1000)")
    ap.add_argument("--traffic", help="traffic types for a and d, comma-separated (default: rules,small,large)")
    ap.add_argument("--pool", type=int, default=0, help="test messages to search for texts per tier (0: all 769)")
    ap.add_argument("--server-log-level", default="warning",
                    help="--log-level for both servers (warning: no access log on either side; '' for the default)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "reports"))
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (server logs, config copies)")
    return ap.parse_args(argv)


def settings_of(args: argparse.Namespace) -> Settings:
    s = quick_settings() if args.quick else Settings()
    for flag, name in (("seconds", "run_s"), ("repeats", "repeats"), ("conns", "conns"),
                       ("overload_seconds", "overload_s"), ("overload_factor", "overload_factor"),
                       ("deadline_ms", "deadline_ms"), ("soak_seconds", "soak_s"), ("soak_warmup_seconds", "soak_warmup_s"), ("phase_seconds", "phase_s"),
                       ("fault_delay_ms", "fault_delay_ms")):
        value = getattr(args, flag)
        if value is not None:
            setattr(s, name, value)
    if args.traffic:
        s.traffic = tuple(t.strip() for t in args.traffic.split(",") if t.strip())
        unknown = set(s.traffic) - set(ROLES)
        if unknown:
            sys.exit(f"unknown traffic type(s) {sorted(unknown)}: choose from {', '.join(ROLES)}")
    return s


def main(argv=None) -> int:
    args = parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in RUNNERS]
    if unknown:
        sys.exit(f"unknown scenario(s) {unknown}: choose from {', '.join(RUNNERS)}")
    settings = settings_of(args)
    b = Bench(args, settings)
    command = "python bench/serving.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {"command": command, "config": str(b.config), "quick": args.quick, "settings": asdict(settings),
              "roles": b.roles, "machine": machine(), "scenarios": {}}
    out = Path(args.out)
    stem = "serving_quick" if args.quick else "serving"
    try:
        for name in only:
            print(f"\n== scenario {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                result = {"status": "ok", **RUNNERS[name](b)}
            except (NotAvailable, ServerError) as e:
                result = {"status": "n/a", "why": str(e)}
            except Exception as e:  # one scenario failing must not lose the others' figures
                result = {"status": "error", "why": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            result["wall_s"] = round(time.perf_counter() - t0, 1)
            report["scenarios"][name] = result
            print(scenario_markdown(name, result), flush=True)
            write_report(report, out, stem)  # after each scenario: an interrupted run keeps what it measured
    finally:
        if args.keep:
            print(f"scratch folder kept: {b.work}")
        else:
            shutil.rmtree(b.work, ignore_errors=True)
    report["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    write_report(report, out, stem)
    print(f"\nreport: {out / stem}.json and .md")
    return 0


def write_report(report: dict, out: Path, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
    (out / f"{stem}.md").write_text(markdown_report(report))


if __name__ == "__main__":
    sys.exit(main())
