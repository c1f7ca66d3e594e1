"""Scenarios a to e of bench/serving.py (f is in serving_faults.py); each takes the :class:`Bench` and returns
``{"rows": [...], "notes": [...]}`` for the report, or raises NotAvailable for what the server lacks."""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

from bench.serving_common import (
    ROLES,
    ROOT,
    Bench,
    NotAvailable,
    batch_sizes,
    failures,
    load,
    median,
    medians,
    ratio,
    share_of,
)
from bench.serving_load import call, open_loop, pct
from bench.serving_load import text_body as body
from bench.serving_procs import ServerError, ServerProcess, config_variant, read_config
from bench.serving_report import NA, fmt


def traffic_types(b: Bench, server: ServerProcess, rows: list[dict]) -> Iterator[tuple[str, str, list[bytes]]]:
    """(role, tier name, request bodies) for each traffic type (rules-, small-, large-decided) that has texts;
    a row saying n/a goes to ``rows`` for each one that has none."""
    texts = b.by_role(server)
    for role in (r for r in ROLES if r in b.s.traffic):
        tier = b.roles[role]
        if not tier or not texts.get(role):
            rows.append({"traffic": role, "tier": tier or NA, "note": "n/a: no test text is decided there"})
            continue
        yield role, tier, [body(t) for t in texts[role]]


def _same_work(b: Bench, tg: ServerProcess, bodies: list[bytes], bm: dict, tm: dict) -> dict:
    """The rules-decided load on a bare endpoint that parses each item and runs the same rules tier: what is
    left between it and tiergate is the gateway's own cost (the scheduler, metrics, the decision log)."""
    s = b.s
    with b.bare(rules=True) as br:
        load(br, bodies, s, seconds=s.warmup_s)
        runs, tg_runs = [], []
        for _ in range(s.repeats):
            runs.append(load(br, bodies, s, seconds=s.run_s))
            tg_runs.append(load(tg, bodies, s, seconds=s.run_s))
    rps = median(r["goodput_rps"] for r in runs)
    tg_rps = median(r["goodput_rps"] for r in tg_runs)
    return {"bare_rules_rps": rps, "rps_beside_bare_rules": tg_rps, "ratio_same_work": ratio(tg_rps, rps)}


def scenario_a(b: Bench) -> dict:
    s, rows, notes = b.s, [], []
    keys = ("goodput_rps", "p50_ms", "p99_ms", "overhead_p50_ms", "overhead_p99_ms", "client_cpu_pct", "server_cpu_pct")
    with b.bare() as bare, b.tiergate(b.config, "a-tiergate") as tg:
        for role, tier, bodies in traffic_types(b, tg, rows):
            for srv in (bare, tg):
                load(srv, bodies, s, seconds=s.warmup_s)
            bare_runs, tg_runs = [], []
            for _ in range(s.repeats):  # alternating, so drift on a shared machine hits both alike
                bare_runs.append(load(bare, bodies, s, seconds=s.run_s))
                tg_runs.append(load(tg, bodies, s, seconds=s.run_s))
            bm, tm = medians(bare_runs, keys), medians(tg_runs, keys)
            rows.append({"traffic": role, "tier": tier, "texts": len(bodies), "bare_rps": bm["goodput_rps"],
                         "rps": tm["goodput_rps"], "ratio": ratio(tm["goodput_rps"], bm["goodput_rps"]),
                         "p50_ms": tm["p50_ms"], "p99_ms": tm["p99_ms"], "bare_p50_ms": bm["p50_ms"],
                         "bare_p99_ms": bm["p99_ms"], "overhead_p50_ms": tm["overhead_p50_ms"],
                         "overhead_p99_ms": tm["overhead_p99_ms"],
                         "expected_tier": median(share_of(r, tier) for r in tg_runs),
                         "failures": sum(failures(r) for r in tg_runs),
                         "client_cpu_pct": tm["client_cpu_pct"], "server_cpu_pct": tm["server_cpu_pct"],
                         "runs": {"bare": bare_runs, "tiergate": tg_runs}})
            if role == "rules":
                rows[-1].update(_same_work(b, tg, bodies, bm, tm))
    rules = next((r for r in rows if r["traffic"] == "rules" and "ratio" in r), None)
    if rules:
        notes.append(f"rules-decided throughput {fmt(rules['ratio'], 2)}x bare (target >= 0.6, aim 0.8): "
                     + ("met" if rules["ratio"] >= 0.6 else "NOT met"))
        if rules["overhead_p50_ms"] == rules["overhead_p50_ms"]:
            ok = rules["overhead_p50_ms"] <= 1 and rules["overhead_p99_ms"] <= 5
            notes.append(f"rules-decided overhead p50 {fmt(rules['overhead_p50_ms'])} / p99 "
                         f"{fmt(rules['overhead_p99_ms'])} ms (target <= 1 / <= 5 ms): " + ("met" if ok else "NOT met"))
        else:
            notes.append("overhead: n/a (the server sends no X-Tiergate-Overhead-Ms header)")
    if rules and "bare_rules_rps" in rules:
        notes.append(f"against a bare endpoint doing the same work (parse + the same rules, no gateway): "
                     f"{fmt(rules['ratio_same_work'], 2)}x; the rules themselves cost the rest of the gap to bare")
    notes.append(f"{s.conns} connections, {s.run_s:g} s per run, median of {s.repeats} alternating runs per server "
                 f"after {s.warmup_s:g} s of warm-up; latency is the client's, overhead the server's header.")
    return {"rows": rows, "notes": notes, "discovery": b.discovery}


def scenario_b(b: Bench) -> dict:
    s, large = b.s, b.roles["large"]
    server_cfg = read_config(b.config).get("server") or {}
    batching = (server_cfg.get("tiers") or {}).get(large) or server_cfg.get("batching")
    variant = config_variant(b.config, b.work / "max_batch_1" / "tiergate.yaml", {large: {"max_batch": 1}})
    keys = ("goodput_rps", "p50_ms", "p99_ms", "client_cpu_pct", "server_cpu_pct")
    with b.tiergate(b.config, "b-batching") as on:
        texts = b.by_role(on).get("large")
        if not texts:
            raise NotAvailable("no test text is decided by the large tier")
        try:
            off = b.tiergate(variant, "b-max-batch-1")
        except ServerError as e:
            raise NotAvailable(f"the server refuses server.tiers.{large}.max_batch: {str(e)[-500:]}") from e
        with off:
            bodies = [body(t) for t in texts]
            runs: dict[str, list[dict]] = {"batching": [], "max_batch_1": []}
            for srv in (on, off):
                load(srv, bodies, s, seconds=s.warmup_s)
            for _ in range(s.repeats):
                for name, srv in (("batching", on), ("max_batch_1", off)):
                    before = batch_sizes(srv, large)
                    run = load(srv, bodies, s, seconds=s.run_s)
                    after = batch_sizes(srv, large)
                    run["mean_batch"] = ((after[0] - before[0]) / (after[1] - before[1])
                                         if before and after and after[1] > before[1] else float("nan"))
                    runs[name].append(run)
    rows = []
    for name, rs in runs.items():
        m = medians(rs, (*keys, "mean_batch"))
        rows.append({"server": name, "rps": m["goodput_rps"], "p50_ms": m["p50_ms"], "p99_ms": m["p99_ms"],
                     "mean_batch": m["mean_batch"], "failures": sum(failures(r) for r in rs),
                     "server_cpu_pct": m["server_cpu_pct"], "runs": rs})
    gain = ratio(rows[0]["rps"], rows[1]["rps"])
    rows[0]["ratio"], rows[1]["ratio"] = gain, 1.0
    notes = [f"batching on / max_batch 1: {fmt(gain, 2)}x throughput on large-decided single items "
             f"({s.conns} connections, median of {s.repeats}).",
             f"the config's batching for tier {large} (server.tiers.{large}, else server.batching): "
             + (json.dumps(batching) if batching else "none written (the server's defaults)"),
             "mean batch: from the tiergate_batch_size histogram" + ("" if rows[0]["mean_batch"] == rows[0]["mean_batch"]
                                                                     else " (n/a: the server exports none)")]
    return {"rows": rows, "notes": notes}


def scenario_c(b: Bench) -> dict:
    import http.client

    from tiergate.cascade import Cascade
    from tiergate.data import make_items

    texts = b.pool[:64]
    payload = json.dumps({"texts": texts}).encode()
    with b.tiergate(b.config, "c-tiergate") as tg:
        conn = http.client.HTTPConnection("127.0.0.1", tg.port, timeout=b.s.timeout_s)

        def over_http() -> float:
            t0 = time.perf_counter()
            conn.request("POST", "/v1/classify", body=payload, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise NotAvailable(f"a batch of 64 answered {r.status}: {data[:200]!r}")
            json.loads(data)
            return time.perf_counter() - t0

        cascade = Cascade.from_config(b.config)
        try:
            def in_process() -> float:
                t0 = time.perf_counter()
                cascade.classify(make_items(texts))
                return time.perf_counter() - t0

            over_http(), in_process()  # warm both
            http_s, local_s = [], []
            for _ in range(b.s.batch_repeats):  # alternating: the server is idle while the cascade runs here
                http_s.append(over_http())
                local_s.append(in_process())
        finally:
            cascade.close()
            conn.close()
    slower = ratio(median(http_s), median(local_s))
    rows = [{"items": len(texts), "http_ms": 1000 * median(http_s), "in_process_ms": 1000 * median(local_s),
             "ratio": slower, "http_p90_ms": 1000 * pct(http_s, 90), "in_process_p90_ms": 1000 * pct(local_s, 90),
             "repeats": len(http_s)}]
    notes = [f"HTTP / in-process at batch 64: {fmt(slower, 2)}x (target <= 1.3): " + ("met" if slower <= 1.3 else "NOT met"),
             "the first 64 test messages (their natural tier mix); in-process = Cascade.from_config(C).classify("
             "make_items(texts)), parsing included; HTTP includes encoding and decoding JSON on one keep-alive "
             "connection. Median of alternating repeats."]
    return {"rows": rows, "notes": notes}


def start_probe(url: str) -> subprocess.Popen:
    """The /healthz prober, every 100 ms from its own process until :func:`finish_probe`."""
    return subprocess.Popen([sys.executable, str(ROOT / "bench" / "serving_load.py"), "probe", url,
                             "--interval", "0.1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def finish_probe(proc: subprocess.Popen) -> dict:
    try:
        out, _ = proc.communicate(input="", timeout=60)  # EOF on its stdin stops it
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
        return {"max_ms": float("nan"), "probes": 0, "failures": {"prober": 1}}


def wait_recovered(server: ServerProcess, bodies: list[bytes], limit_s: float = 60.0) -> float:
    """Seconds until /healthz and one classify answer 200 again after an overload."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        if (asyncio.run(call(server.url + "/healthz", timeout_s=5))[0] == 200
                and asyncio.run(call(server.url + "/v1/classify", "POST", bodies[0], timeout_s=30))[0] == 200):
            return time.perf_counter() - t0
        time.sleep(0.5)
    return float("nan")


def server_counts(server: ServerProcess) -> dict[str, float]:
    """The gateway's refusals by reason, its loop-lag histogram and its collector pauses, from /metrics
    (cumulative)."""
    status, _, text = asyncio.run(call(server.url + "/metrics", timeout_s=10))
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in text.decode().splitlines():
        if line.startswith(("tiergate_rejected_total{", "tiergate_loop_lag_seconds_bucket{",
                            "tiergate_loop_lag_seconds_count", "tiergate_gc_pause_seconds_")):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def counts_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def overload_conns(b: Bench) -> int:
    """Connections for the open loop: more than the server admits at once (``server.max_inflight``, 2x with
    a margin), so that its admission control, not the client, is what meets the excess; within the fd limit."""
    if b.s.max_conns:
        return b.s.max_conns
    inflight = int((read_config(b.config).get("server") or {}).get("max_inflight") or 128)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, min(2 * inflight + 64, soft - 128))


def scenario_d(b: Bench) -> dict:
    s, rows = b.s, []
    max_conns = overload_conns(b)
    with b.tiergate(b.config, "d-tiergate") as tg:
        for role, tier, bodies in traffic_types(b, tg, rows):
            load(tg, bodies, s, seconds=s.warmup_s)
            cap = load(tg, bodies, s, seconds=s.capacity_s)
            capacity = cap["goodput_rps"]
            if not capacity:
                rows.append({"traffic": role, "tier": tier, "note": f"n/a: no request succeeded at capacity "
                                                                     f"({cap['status']}, {cap['errors']})"})
                continue
            deadline = s.deadline_ms or max(100.0, 3 * cap["p99_ms"])
            rate = s.overload_factor * capacity
            probe = start_probe(tg.url + "/healthz")
            counts0 = server_counts(tg)
            cpu0 = tg.cpu_seconds()
            rec = asyncio.run(open_loop(tg.url + "/v1/classify", bodies, rate=rate, seconds=s.overload_s,
                                        max_conns=max_conns, timeout_s=s.timeout_s, deadline_ms=deadline,
                                        headers={"X-Tiergate-Deadline-Ms": str(round(deadline))}))
            over = rec.summary()
            over["server_cpu_pct"] = 100 * (tg.cpu_seconds() - cpu0) / rec.seconds
            health = finish_probe(probe)
            over["server_counts"] = counts_delta(counts0, server_counts(tg))
            recovered = wait_recovered(tg, bodies)
            others = {k: v for k, v in over["status"].items() if k not in ("200", "429")}
            n200 = over["status"].get("200", 0)
            rows.append({"traffic": role, "tier": tier, "capacity_rps": capacity, "offered_rps": rate,
                         "status": over["status"], "bad": sum(others.values()) + sum(over["errors"].values()),
                         "errors": over["errors"], "goodput_ratio": ratio(over["goodput_rps"], capacity),
                         "p99_429_ms": over["p99_429_ms"], "p99_ms": over["p99_ms"], "cap_p99_ms": cap["p99_ms"],
                         "deadline_ms": deadline, "late": over["late"],
                         "late_share": over["late"] / n200 if n200 else float("nan"),
                         "retry_after_missing": over["retry_after_missing"], "health_max_ms": health["max_ms"],
                         "health_failures": health.get("failures", {}), "health_probes": health.get("probes", 0),
                         "health_slow": health.get("slow", []),
                         "send_lag_p99_ms": over["send_lag_p99_ms"], "sched_lag_p99_ms": over["sched_lag_p99_ms"],
                         "max_backlog": over["max_backlog"], "connections": over["connections"],
                         "recovered_s": recovered,
                         "capacity_run": cap, "overload_run": over})
    notes = [f"capacity: closed loop, {s.conns} connections, {s.capacity_s:g} s; overload: open loop at "
             f"{s.overload_factor:g}x capacity for {s.overload_s:g} s (even arrivals, latency from arrival), "
             f"up to {max_conns} connections, X-Tiergate-Deadline-Ms sent (default 3x the p99 at capacity, "
             "at least 100 ms); 'late' = 200s answered after their deadline; /healthz probed every 100 ms on a "
             "new connection from a separate process, from the start of the overload until its backlog drained.",
             "allowed under overload: 200 and 429 only ('not 200/429' counts anything else, and requests with no "
             "answer).",
             "client lag: how far the client's event loop fell behind the arrival schedule (the client's own "
             "limit); waiting for a connection: arrivals queued in the client because every connection was busy."]
    bad = [r for r in rows if r.get("bad")]
    notes.append("only 200/429 under overload: " + ("met" if not bad and any("bad" in r for r in rows)
                                                     else ("NOT met" if bad else NA)))
    return {"rows": rows, "notes": notes}


def scenario_e(b: Bench) -> dict:
    s = b.s
    bodies = b.mix()
    samples: list[tuple[float, int]] = []
    with b.tiergate(b.config, "e-tiergate") as tg:
        rss_ready = tg.rss_bytes()
        tree_ready = tg.tree_pss_bytes()
        load(tg, bodies, s, seconds=max(s.soak_warmup_s, 2.0), conns=s.soak_conns)
        t0 = time.perf_counter()

        async def sample() -> None:
            while time.perf_counter() - t0 < s.soak_s:
                samples.append((time.perf_counter() - t0, tg.rss_bytes()))
                tree.append(tg.tree_pss_bytes())
                await asyncio.sleep(1.0)

        tree: list[int] = []
        run = load(tg, bodies, s, seconds=s.soak_s, conns=s.soak_conns, actions=[(0.0, sample)])
        samples.append((time.perf_counter() - t0, tg.rss_bytes()))
        tree.append(tg.tree_pss_bytes())
    start, end = samples[0][1], samples[-1][1]
    peak = max(v for _, v in samples)
    # a leak rate needs minutes: over a few seconds the slope is allocator noise
    slope = _slope_mb_per_min(samples[len(samples) // 2:]) if s.soak_s >= 60 else float("nan")
    tree_t = [(t, v) for (t, _), v in zip(samples, tree, strict=True)]
    tree_slope = _slope_mb_per_min(tree_t[len(tree_t) // 2:]) if s.soak_s >= 60 else float("nan")
    rows = [{"seconds": s.soak_s, "requests": run["requests"], "failures": failures(run),
             "rss_ready_mb": rss_ready / 2**20, "rss_start_mb": start / 2**20, "rss_end_mb": end / 2**20,
             "rss_max_mb": peak / 2**20, "growth_pct": 100 * (end - start) / start if start else float("nan"),
             "late_slope_mb_min": slope, "rps": run["goodput_rps"],
             "tree_pss_ready_mb": tree_ready / 2**20,
             "tree_pss_start_mb": tree[0] / 2**20, "tree_pss_end_mb": tree[-1] / 2**20,
             "tree_pss_max_mb": max(tree) / 2**20,
             "tree_growth_pct": 100 * (tree[-1] - tree[0]) / tree[0] if tree[0] else float("nan"),
             "tree_late_slope_mb_min": tree_slope}]
    notes = [f"{s.soak_conns} connections, the test split's natural mix (first 256 messages); RSS from /proc every "
             f"second; 'start' is after {s.soak_warmup_s:.0f} s of the same load (a model tier's buffers grow to the high-water "
             "mark of the batch shapes the traffic makes, then stay: the large tier +130 MB over its first ~100 "
             "batches), 'ready' right after start-up; 'tree PSS': "
             "the server and its tiers' processes, shared pages counted once; "
             "slope: least squares over the second half of the run."]
    return {"rows": rows, "notes": notes, "samples": [(round(t, 1), v) for t, v in samples]}


def _slope_mb_per_min(samples: list[tuple[float, int]]) -> float:
    if len(samples) < 3:
        return float("nan")
    ts, vs = [t for t, _ in samples], [v / 2**20 for _, v in samples]
    mt, mv = statistics.fmean(ts), statistics.fmean(vs)
    den = sum((t - mt) ** 2 for t in ts)
    return 60 * sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / den if den else float("nan")


def scenario_g(b: Bench) -> dict:
    """The decision log's cost (issue 13): rules- and small-decided single items against the same models with
    the log off, with the default log (no text) and with every text kept; alternating runs. Shadow audits are
    off in all three, so that only the log is measured (their cost is the final tier's, bounded by max_per_s)."""
    s, rows = b.s, []
    work = b.work / "g"
    no_audit = {"share": 0.0}
    variants = {
        "log off": config_variant(b.config, work / "off" / "tiergate.yaml",
                                  sections={"log": {"enabled": False}, "shadow_audit": no_audit}),
        "log on": config_variant(b.config, work / "on" / "tiergate.yaml",
                                 sections={"log": {"path": str(work / "on.db")}, "shadow_audit": no_audit}),
        "log on, all text": config_variant(b.config, work / "all" / "tiergate.yaml",
                                           sections={"log": {"path": str(work / "all.db"), "store_text": "all"},
                                                     "shadow_audit": no_audit}),
    }
    keys = ("goodput_rps", "p50_ms", "p99_ms", "overhead_p50_ms", "overhead_p99_ms", "server_cpu_pct")
    servers = {}
    try:
        for name, cfg in variants.items():
            servers[name] = b.tiergate(cfg, "g-" + name.replace(" ", "-").replace(",", ""))
            servers[name].__enter__()
        first = servers["log off"]
        for role, tier, bodies in traffic_types(b, first, rows):
            if role == "large":
                continue
            for srv in servers.values():
                load(srv, bodies, s, seconds=s.warmup_s)
            runs: dict[str, list[dict]] = {name: [] for name in servers}
            for _ in range(s.repeats):
                for name, srv in servers.items():
                    runs[name].append(load(srv, bodies, s, seconds=s.run_s))
            off = medians(runs["log off"], keys)
            for name, rs in runs.items():
                m = medians(rs, keys)
                rows.append({"traffic": role, "tier": tier, "server": name, "rps": m["goodput_rps"],
                             "ratio": ratio(m["goodput_rps"], off["goodput_rps"]), "p50_ms": m["p50_ms"],
                             "p99_ms": m["p99_ms"], "overhead_p50_ms": m["overhead_p50_ms"],
                             "overhead_p99_ms": m["overhead_p99_ms"], "server_cpu_pct": m["server_cpu_pct"],
                             "failures": sum(failures(r) for r in rs), "runs": rs})
    finally:
        for srv in servers.values():
            srv.__exit__(None, None, None)
    notes = []
    for row in rows:
        if row["traffic"] == "rules" and row["server"] == "log on":
            loss = 1 - row["ratio"]
            notes.append(f"rules-decided throughput with the log on: {fmt(row['ratio'], 3)}x log off, a loss of "
                         f"{fmt(100 * loss, 1)}% (target <= 10%): " + ("met" if loss <= 0.10 else "NOT met"))
    notes.append(f"{s.conns} connections, {s.run_s:g} s per run, median of {s.repeats} runs alternating across the "
                 "three servers; shadow audits off in all three")
    return {"rows": rows, "notes": notes}
