"""Markdown for bench/serving.py: one table per scenario, the notes under it, "n/a" for whatever was missing."""

from __future__ import annotations

import math

NA = "n/a"

# Per scenario: (row key, column header, digits or None for as-is). Rows holding "note" (a traffic type with
# nothing to measure) print the note in place of the figures.
COLUMNS: dict[str, list[tuple[str, str, int | None]]] = {
    "a": [("traffic", "traffic", None), ("tier", "tier", None), ("texts", "texts", None),
          ("bare_rps", "bare req/s", 0), ("rps", "tiergate req/s", 0), ("ratio", "ratio to bare", 2),
          ("bare_rules_rps", "bare + same rules req/s", 0), ("ratio_same_work", "ratio to bare + same rules", 2),
          ("p50_ms", "p50 ms", 1), ("p99_ms", "p99 ms", 1), ("bare_p50_ms", "bare p50 ms", 1),
          ("bare_p99_ms", "bare p99 ms", 1), ("overhead_p50_ms", "overhead p50 ms", 2),
          ("overhead_p99_ms", "overhead p99 ms", 2), ("expected_tier", "share from that tier", 3),
          ("failures", "failures", None), ("client_cpu_pct", "client CPU %", 0), ("server_cpu_pct", "server CPU %", 0)],
    "b": [("server", "large tier", None), ("rps", "req/s", 1), ("ratio", "throughput ratio", 2),
          ("p50_ms", "p50 ms", 0), ("p99_ms", "p99 ms", 0), ("mean_batch", "mean batch", 1),
          ("failures", "failures", None), ("server_cpu_pct", "server CPU %", 0)],
    "c": [("items", "items", None), ("http_ms", "HTTP ms (median)", 1), ("in_process_ms", "in-process ms (median)", 1),
          ("ratio", "HTTP / in-process", 2), ("http_p90_ms", "HTTP p90 ms", 1),
          ("in_process_p90_ms", "in-process p90 ms", 1), ("repeats", "repeats", None)],
    "d": [("traffic", "traffic", None), ("capacity_rps", "capacity req/s", 0), ("offered_rps", "offered req/s", 0),
          ("status", "status codes", None), ("bad", "not 200/429", None), ("goodput_ratio", "goodput / capacity", 2),
          ("p99_429_ms", "429 p99 ms", 1), ("p99_ms", "accepted p99 ms", 0), ("cap_p99_ms", "p99 at capacity ms", 0),
          ("deadline_ms", "deadline ms", 0), ("late", "accepted past deadline", None),
          ("retry_after_missing", "429 without Retry-After", None), ("health_max_ms", "/healthz max ms", 0),
          ("sched_lag_p99_ms", "client lag p99 ms", 1), ("connections", "connections", None),
          ("max_backlog", "waiting for a connection (max)", None)],
    "e": [("seconds", "seconds", 0), ("requests", "requests", None), ("failures", "failures", None),
          ("rss_ready_mb", "RSS ready MB", 0), ("rss_start_mb", "RSS start MB", 0), ("rss_end_mb", "RSS end MB", 0),
          ("rss_max_mb", "RSS max MB", 0), ("growth_pct", "growth %", 1),
          ("late_slope_mb_min", "2nd-half slope MB/min", 2), ("rps", "req/s", 0),
          ("tree_pss_start_mb", "tree PSS start MB", 0), ("tree_pss_end_mb", "tree PSS end MB", 0),
          ("tree_pss_max_mb", "tree PSS max MB", 0), ("tree_growth_pct", "tree growth %", 1)],
    "f": [("phase", "phase", None), ("expect", "expected", None), ("admin", "admin calls", None),
          ("requests", "requests", None), ("status", "status codes", None),
          ("failed", "failed (5xx, no answer)", None), ("degraded", "degraded", None),
          ("final_answers", "final tier answers", None), ("p99_ms", "p99 ms", 0), ("check", "check", None)],
    "g": [("traffic", "traffic", None), ("server", "server", None), ("rps", "req/s", 0),
          ("ratio", "ratio to log off", 3), ("p50_ms", "p50 ms", 1), ("p99_ms", "p99 ms", 1),
          ("overhead_p50_ms", "overhead p50 ms", 2), ("overhead_p99_ms", "overhead p99 ms", 2),
          ("failures", "failures", None), ("server_cpu_pct", "server CPU %", 0)],
    "client": [("client", "client", None), ("rps", "req/s", 0), ("client_cpu_pct", "client CPU % of a core", 0),
               ("us_per_request", "client CPU µs / request", 0), ("server_cpu_pct", "server CPU %", 0),
               ("p50_ms", "p50 ms", 1), ("p99_ms", "p99 ms", 1)],
}

TITLES = {"a": "a) single items by deciding tier vs a bare FastAPI endpoint",
          "b": "b) large-decided items: batching on vs max_batch 1",
          "c": "c) batch of 64: HTTP vs in-process cascade",
          "d": "d) overload at 3x capacity (open loop)",
          "e": "e) memory under a bounded load",
          "f": "f) faults during load",
          "g": "g) the decision log: off, on, on with every text",
          "client": "load clients' own cost (bare endpoint)"}


def fmt(value, digits: int | None = 1) -> str:
    """A cell: n/a for missing or NaN, dicts as ``k: v`` lists, floats to ``digits``.

    >>> fmt(float("nan")), fmt({"200": 3, "429": 1}), fmt(1.234, 2), fmt(7)
    ('n/a', '200: 3, 429: 1', '1.23', '7')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:.{1 if digits is None else digits}f}"
    return str(value)


def table(name: str, rows: list[dict]) -> list[str]:
    cols = COLUMNS[name]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "note" in r:
            cells = [fmt(r.get(k), d) for k, _, d in cols[:2]] + [r["note"]] + [""] * (len(cols) - 3)
        else:
            cells = [fmt(r.get(k), d) for k, _, d in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def scenario_markdown(name: str, result: dict) -> str:
    lines = [f"### {TITLES.get(name, name)}", ""]
    if result.get("status") != "ok":
        lines.append(f"**{result.get('status', NA)}**: {result.get('why', '')}")
        return "\n".join(lines) + "\n"
    lines += table(name, result.get("rows", []))
    notes = result.get("notes", [])
    if result.get("discovery"):
        d = result["discovery"]
        notes = [*notes, f"texts found by classifying {d['pool_classified']} test messages on the server "
                         f"({d['seconds']} s): {d['texts']}"]
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def markdown_report(report: dict) -> str:
    m = report["machine"]
    lines = ["# Serving benchmark", "", f"Command: `{report['command']}`", "",
             f"Config: `{report['config']}`; tiers by role: {report['roles']}", "",
             f"Machine: {m.get('cpu')}, {m.get('cores')} cores, Python {m.get('python')}, FastAPI {m.get('fastapi')}, "
             f"uvicorn {m.get('uvicorn')}; commit {m.get('commit')}; 1-minute load average "
             f"{m.get('load_average_1m_at_start')} at the start, {m.get('load_average_1m_at_end', '?')} at the end.",
             ""]
    if report.get("quick"):
        lines += ["**--quick**: a smoke test of a few seconds per scenario; not figures to quote.", ""]
    for name, result in report["scenarios"].items():
        lines.append(scenario_markdown(name, result))
    return "\n".join(lines)
