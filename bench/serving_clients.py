"""``--only client`` of bench/serving.py: what each load client costs, on the bare endpoint.

On 2 cores the server under test gets one core and the client the other; a client that needs most of its core
at the server's peak rate measures itself, not the server. Each client drives the bare endpoint with the same
64 real test messages on ``conns`` connections for ``run_s``: requests per second, the client's CPU time per
request (its process's, or wrk's as a child), and the server's CPU use.

- asyncio streams: bench/serving_load.py, what every scenario uses;
- httpx.AsyncClient: the obvious alternative;
- wrk (Debian's ``wrk``, C with a Lua ``request()`` rotating the bodies), if installed: the cheapest possible
  client, as the floor. It has no open loop and reports no per-request headers without slower Lua callbacks.
"""

from __future__ import annotations

import asyncio
import re
import resource
import shutil
import subprocess
import time

from bench.serving_load import Recorder, closed_loop, text_body

WRK_LUA = """
local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "/v1/classify", {["Content-Type"] = "application/json"}, bodies[(i %% #bodies) + 1])
end
"""


async def httpx_loop(url: str, bodies: list[bytes], conns: int, seconds: float) -> Recorder:
    """The closed loop of serving_load.closed_loop written with httpx.AsyncClient; the client's set-up (SSL
    context, lazy imports) and one request per connection happen before the clock starts."""
    import httpx

    rec = Recorder()
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        await asyncio.gather(*(client.post(url, content=bodies[0], headers=headers) for _ in range(conns)))
        cpu0, t0 = time.process_time(), time.perf_counter()
        stop = t0 + seconds

        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < stop:
                t = time.perf_counter()
                r = await client.post(url, content=bodies[i % len(bodies)], headers=headers)
                rec.add(r.status_code, time.perf_counter() - t, dict(r.headers), r.content)
                i += 1

        await asyncio.gather(*(worker(w) for w in range(conns)))
        rec.seconds, rec.client_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    return rec


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1000.0}[m.group(2)]


def wrk_run(url: str, bodies: list[bytes], conns: int, seconds: float, work) -> dict | None:
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    lines = work / "wrk_bodies.txt"
    lines.write_bytes(b"\n".join(bodies) + b"\n")  # JSON bodies hold no raw newline
    script = work / "wrk.lua"
    script.write_text(WRK_LUA % lines)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([wrk, "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script),
                          url], capture_output=True, text=True, timeout=seconds + 60).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))
    secs = max(1, round(seconds))
    pcts = dict(re.findall(r"^\s*(50|99)%\s+(\S+)", out, re.M))
    return {"rps": rps, "client_cpu_pct": 100 * cpu / secs, "us_per_request": 1e6 * cpu / (rps * secs),
            "p50_ms": _ms(pcts.get("50", "")), "p99_ms": _ms(pcts.get("99", "")), "raw": out[-600:]}


def client_costs(b) -> dict:
    s = b.s
    bodies = [text_body(t) for t in b.pool[:64]]
    rows = []
    with b.bare() as bare:
        url = bare.url + "/v1/classify"
        runs = {"asyncio streams (serving_load.py)": lambda: closed_loop(url, bodies, conns=s.conns, seconds=s.run_s),
                "httpx.AsyncClient": lambda: httpx_loop(url, bodies, s.conns, s.run_s)}
        for name, make in runs.items():
            asyncio.run(closed_loop(url, bodies, conns=s.conns, seconds=s.warmup_s))
            cpu0 = bare.cpu_seconds()
            rec = asyncio.run(make())
            summ = rec.summary()
            n = summ["requests"] or 1
            rows.append({"client": name, "rps": summ["goodput_rps"], "client_cpu_pct": summ["client_cpu_pct"],
                         "us_per_request": 1e6 * rec.client_cpu_s / n, "p50_ms": summ["p50_ms"],
                         "p99_ms": summ["p99_ms"],
                         "server_cpu_pct": 100 * (bare.cpu_seconds() - cpu0) / rec.seconds})
        cpu0, t0 = bare.cpu_seconds(), time.perf_counter()
        w = wrk_run(url, bodies, s.conns, s.run_s, b.work)
        if w is None:
            rows.append({"client": "wrk", "note": "n/a: wrk is not installed (apt-get install wrk)"})
        else:
            w["server_cpu_pct"] = 100 * (bare.cpu_seconds() - cpu0) / (time.perf_counter() - t0)
            rows.append({"client": "wrk (1 thread, Lua request())", **w})
    notes = [f"bare endpoint, {s.conns} connections, {s.run_s:g} s each, the first 64 test messages as bodies. "
             "A client is good enough when its CPU per request times the gateway's peak rate stays well under "
             "one core (the other core is the server's)."]
    return {"rows": rows, "notes": notes}
