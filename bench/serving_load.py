"""The load client of bench/serving.py: keep-alive HTTP/1.1 on raw asyncio streams, closed and open loop.

Why this client: on these 2-core machines the server gets one core and the client the other, so the client must
cost well under a core at the server's peak rate. ``python bench/serving.py --only client`` measures the
candidates on the bare endpoint (32 connections, the test messages as bodies); on the shared 2-core machine:
this client 169 us of CPU per request (23% of a core at the bare endpoint's 1,390 req/s), wrk (C, with a Lua
``request()``) 53 us, httpx.AsyncClient about 10 ms (as installed here: without ``sniffio``, httpcore retries
that failed import on every lock, four times per request). wrk is cheaper still, but has no open loop and
reads no per-request header without per-response Lua callbacks; this client stays far enough from a core to
measure the gateway, and the scenarios report its CPU use beside every figure.

- :func:`closed_loop`: ``conns`` connections, each sending its next request as soon as the last one is answered,
  for ``seconds``; the rate is whatever the server sustains (its capacity at that concurrency).
- :func:`open_loop`: requests *arrive* at a fixed rate whatever the server does (evenly spaced), and are sent
  on up to ``max_conns`` connections. Latency is measured from the arrival time, so time spent waiting for a
  free connection counts (no coordinated omission).
- :class:`Recorder`: per-request status, latency, the ``X-Tiergate-Overhead-Ms`` header, ``Retry-After``,
  and the answering ``tier`` / ``degraded`` flag read from the body, in compact arrays (a 600 s soak at a
  thousand requests a second stays a few MB).

Run as a script, it is the /healthz prober (a separate process, so the client's event loop cannot delay the
probes): ``python bench/serving_load.py probe URL --interval 0.1`` probes until its standard input closes,
then prints one JSON line.
This module imports nothing from tiergate, so the prober starts in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import re
import sys
import threading
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

TIER_RE = re.compile(rb'"tier"\s*:\s*"([^"]*)"')
DEGRADED_RE = re.compile(rb'"degraded"\s*:\s*true')
ERROR = 0  # the status recorded for a request that got no HTTP answer (its kind goes to Recorder.errors)


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; NaN when empty.

    >>> pct([1, 2, 3, 4], 50), pct([1, 2, 3, 4], 99), pct([], 50)
    (2, 4, nan)
    """
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, math.ceil(q / 100 * len(s)) - 1)
    return s[min(k, len(s) - 1)]


@dataclass
class Recorder:
    """What came back, one entry per request (arrays, parallel by index)."""

    deadline_ms: float | None = None          # accepted answers slower than this are counted late
    status: array = field(default_factory=lambda: array("h"))
    latency_s: array = field(default_factory=lambda: array("d"))
    overhead_ms: array = field(default_factory=lambda: array("d"))    # NaN where the header was absent
    tiers: Counter = field(default_factory=Counter)                   # answering tier of 200s
    errors: Counter = field(default_factory=Counter)                  # no HTTP answer, by kind
    degraded: int = 0
    late: int = 0                               # 200s beyond deadline_ms
    retry_after: Counter = field(default_factory=Counter)             # Retry-After values of 429s
    retry_after_missing: int = 0                # 429s without Retry-After
    seconds: float = 0.0                        # wall time of the run
    client_cpu_s: float = 0.0                   # this process's CPU time during the run
    send_lag_s: array = field(default_factory=lambda: array("d"))     # open loop: sent minus arrival time
    sched_lag_s: array = field(default_factory=lambda: array("d"))    # open loop: queued minus arrival time
    max_backlog: int = 0                        # open loop: most arrivals waiting for a connection at once
    connections: int = 0                        # open loop: connections opened

    def add(self, status: int, latency_s: float, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.status.append(status)
        self.latency_s.append(latency_s)
        headers = headers or {}
        try:
            self.overhead_ms.append(float(headers.get("x-tiergate-overhead-ms", "nan")))
        except ValueError:
            self.overhead_ms.append(float("nan"))
        if status == 200:
            m = TIER_RE.search(body)
            self.tiers[m.group(1).decode() if m else "?"] += 1
            if DEGRADED_RE.search(body):
                self.degraded += 1
            if self.deadline_ms is not None and latency_s * 1000 > self.deadline_ms:
                self.late += 1
        elif status == 429:
            ra = headers.get("retry-after")
            if ra is None:
                self.retry_after_missing += 1
            else:
                self.retry_after[ra] += 1

    def error(self, kind: str, latency_s: float) -> None:
        self.errors[kind] += 1
        self.add(ERROR, latency_s)

    def latencies(self, status: int | None = None) -> list[float]:
        """Latencies in ms, of one status (None: all answers, errors excluded)."""
        return [lat * 1000 for st, lat in zip(self.status, self.latency_s, strict=True)
                if (st == status if status is not None else st != ERROR)]

    def summary(self) -> dict:
        """The figures bench/serving.py reports (ms, requests per second)."""
        codes = Counter(str(s) for s in self.status if s != ERROR)
        ok = self.latencies(200)
        rej = self.latencies(429)
        ovh = [o for o, st in zip(self.overhead_ms, self.status, strict=True) if st == 200 and not math.isnan(o)]
        n = len(self.status)
        return {
            "requests": n, "seconds": round(self.seconds, 3),
            "rps": n / self.seconds if self.seconds else float("nan"),
            "goodput_rps": len(ok) / self.seconds if self.seconds else float("nan"),
            "status": dict(sorted(codes.items())), "errors": dict(self.errors),
            "p50_ms": pct(ok, 50), "p99_ms": pct(ok, 99), "max_ms": max(ok, default=float("nan")),
            "p99_429_ms": pct(rej, 99),
            "overhead_p50_ms": pct(ovh, 50), "overhead_p99_ms": pct(ovh, 99),
            "overhead_seen": len(ovh), "tiers": dict(self.tiers), "degraded": self.degraded,
            "late": self.late, "deadline_ms": self.deadline_ms,
            "retry_after": dict(self.retry_after), "retry_after_missing": self.retry_after_missing,
            "client_cpu_pct": 100 * self.client_cpu_s / self.seconds if self.seconds else float("nan"),
            # send lag: waiting for a free connection (all busy on slow answers) plus the client's own lateness;
            # schedule lag: the client's lateness alone (its event loop behind the arrival schedule)
            "send_lag_p99_ms": pct([x * 1000 for x in self.send_lag_s], 99),
            "sched_lag_p99_ms": pct([x * 1000 for x in self.sched_lag_s], 99), "max_backlog": self.max_backlog,
            "connections": self.connections,
        }


def text_body(text: str) -> bytes:
    """The JSON body of a single-item classify request."""
    return json.dumps({"text": text}).encode()


def request_bytes(host: str, port: int, method: str, path: str, body: bytes = b"",
                  headers: dict[str, str] | None = None) -> bytes:
    """One HTTP/1.1 keep-alive request, ready to write."""
    headers = headers or {}
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    if body or method in ("POST", "PUT"):
        if not any(k.lower() == "content-type" for k in headers):
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    """One keep-alive connection; reconnects after the server closes it or after ``idle_s`` unused (uvicorn
    closes idle keep-alive connections after 5 s, and a request written into a closing socket would count as
    a failure that is really the client's)."""

    def __init__(self, host: str, port: int, timeout_s: float, idle_s: float = 4.0):
        self.host, self.port, self.timeout_s, self.idle_s = host, port, timeout_s, idle_s
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    async def send(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        """Write one request and read its answer: (status, lower-case headers, body)."""
        now = time.perf_counter()
        if self.writer is not None and now - self.last_used > self.idle_s:
            self.close()
        try:
            # asyncio.timeout, not wait_for: wait_for wraps each call in a new task, which doubled the
            # client's CPU per request
            async with asyncio.timeout(self.timeout_s):
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                self.writer.write(raw)
                status, headers, body = await self._read()
        except BaseException:
            self.close()  # a half-read answer leaves the stream out of step: never reuse it
            raise
        self.last_used = time.perf_counter()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    async def _read(self) -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            body = b"".join(parts)
        else:
            body = b""
        return status, headers, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _one(conn: Connection, raw: bytes, rec: Recorder, t_arrival: float) -> None:
    try:
        status, headers, body = await conn.send(raw)
    except TimeoutError:
        rec.error("timeout", time.perf_counter() - t_arrival)
    except (ConnectionError, asyncio.IncompleteReadError, OSError, ValueError, IndexError) as e:
        rec.error(type(e).__name__, time.perf_counter() - t_arrival)
    else:
        rec.add(status, time.perf_counter() - t_arrival, headers, body)


async def closed_loop(url: str, bodies: Sequence[bytes], *, conns: int, seconds: float,
                      headers: dict[str, str] | None = None, timeout_s: float = 60.0,
                      deadline_ms: float | None = None,
                      actions: Sequence[tuple[float, Callable]] = ()) -> Recorder:
    """``conns`` connections POST ``bodies`` (round robin, each connection from its own offset) to ``url``
    for ``seconds``. ``actions``: (seconds after the start, async callable) run during the load, awaited
    before the function returns."""
    u = urlsplit(url)
    raws = [request_bytes(u.hostname, u.port, "POST", u.path, b, headers) for b in bodies]
    rec = Recorder(deadline_ms=deadline_ms)
    t0 = time.perf_counter()
    stop = t0 + seconds

    async def worker(w: int) -> None:
        conn = Connection(u.hostname, u.port, timeout_s)
        i = w * max(1, len(raws) // conns)
        while time.perf_counter() < stop:
            await _one(conn, raws[i % len(raws)], rec, time.perf_counter())
            i += 1
        conn.close()

    async def later(delay: float, fn: Callable) -> None:
        await asyncio.sleep(delay)
        await fn()

    cpu0 = time.process_time()
    await asyncio.gather(*(worker(w) for w in range(conns)), *(later(d, fn) for d, fn in actions))
    rec.seconds = time.perf_counter() - t0
    rec.client_cpu_s = time.process_time() - cpu0
    return rec


async def open_loop(url: str, bodies: Sequence[bytes], *, rate: float, seconds: float, max_conns: int = 512,
                    headers: dict[str, str] | None = None, timeout_s: float = 60.0,
                    deadline_ms: float | None = None) -> Recorder:
    """Requests arrive every ``1 / rate`` seconds for ``seconds``; each goes out on the most recently idle
    connection, or on a new one while fewer than ``max_conns`` are open, or else waits for the next connection
    to come free. Its latency runs from its arrival. The run lasts until every arrival is answered.

    Idle connections are reused last-in first-out, so a server that keeps up is met by a few warm
    connections, and only one that holds them opens more (up to ``max_conns``)."""
    u = urlsplit(url)
    raws = [request_bytes(u.hostname, u.port, "POST", u.path, b, headers) for b in bodies]
    rec = Recorder(deadline_ms=deadline_ms)
    idle: list[Connection] = []
    backlog: deque[tuple[int, float]] = deque()
    every: list[Connection] = []
    running: set[asyncio.Task] = set()

    async def serve(conn: Connection, i: int, t_arrival: float) -> None:
        while True:
            rec.send_lag_s.append(time.perf_counter() - t_arrival)
            await _one(conn, raws[i % len(raws)], rec, t_arrival)
            if not backlog:
                idle.append(conn)
                return
            i, t_arrival = backlog.popleft()

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for i in range(max(1, int(rate * seconds))):
        t_arrival = t0 + i / rate
        delay = t_arrival - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        rec.sched_lag_s.append(time.perf_counter() - t_arrival)
        if idle:
            conn = idle.pop()
        elif len(every) < max_conns:
            conn = Connection(u.hostname, u.port, timeout_s)
            every.append(conn)
        else:
            backlog.append((i, t_arrival))
            rec.max_backlog = max(rec.max_backlog, len(backlog))
            continue
        task = asyncio.create_task(serve(conn, i, t_arrival))
        running.add(task)
        task.add_done_callback(running.discard)
    while running:
        await asyncio.gather(*list(running))
    for conn in every:
        conn.close()
    rec.seconds = time.perf_counter() - t0
    rec.client_cpu_s = time.process_time() - cpu0
    rec.connections = len(every)
    return rec


async def call(url: str, method: str = "GET", body: bytes = b"", headers: dict[str, str] | None = None,
               timeout_s: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; (status, headers, body), status ERROR when no answer came."""
    u = urlsplit(url)
    conn = Connection(u.hostname, u.port, timeout_s)
    path = u.path + (f"?{u.query}" if u.query else "")
    try:
        return await conn.send(request_bytes(u.hostname, u.port, method, path, body, headers))
    except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, OSError) as e:
        return ERROR, {"error": type(e).__name__}, b""
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------ prober
def probe(url: str, interval_s: float, stop: threading.Event, timeout_s: float = 10.0) -> dict:
    """GET ``url`` every ``interval_s`` (a new connection each time, as a load balancer's health check does)
    until ``stop`` is set: latencies in ms and failures."""
    u = urlsplit(url)
    lat, failures = [], Counter()
    nxt = t_start = time.perf_counter()
    while not stop.is_set():
        t = time.perf_counter()
        try:
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout_s)
            c.request("GET", u.path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status != 200:
                failures[str(r.status)] += 1
        except (OSError, http.client.HTTPException) as e:
            failures[type(e).__name__] += 1
        lat.append((time.perf_counter() - t) * 1000)
        nxt += interval_s
        stop.wait(max(0.0, nxt - time.perf_counter()))
    slow = [(round(i * interval_s, 1), round(ms)) for i, ms in enumerate(lat) if ms > 50][:20]
    return {"probes": len(lat), "max_ms": max(lat, default=float("nan")), "p99_ms": pct(lat, 99),
            "p50_ms": pct(lat, 50), "failures": dict(failures), "slow": slow, "seconds": time.perf_counter() - t_start}


def main(argv: Sequence[str] | None = None) -> None:
    """The prober: probes until its standard input closes (the benchmark closes it when the load has ended
    and drained), then prints one JSON line."""
    ap = argparse.ArgumentParser(description="the /healthz prober of bench/serving.py")
    ap.add_argument("mode", choices=["probe"])
    ap.add_argument("url")
    ap.add_argument("--interval", type=float, default=0.1)
    args = ap.parse_args(argv)
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    print(json.dumps(probe(args.url, args.interval, stop)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
