"""What the scenarios of bench/serving.py share: settings, the :class:`Bench` (config, admin token, scratch
folder, servers, the texts each tier decides) and a closed-loop run against a server with its CPU use."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.serving_load import call, closed_loop
from bench.serving_load import text_body as body
from bench.serving_procs import (
    ServerError,
    ServerProcess,
    bare_command,
    free_port,
    read_config,
    tiergate_command,
)

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("rules", "small", "large")


class NotAvailable(Exception):
    """The server lacks what a scenario (or a part of it) needs; reported as n/a with this message."""


@dataclass
class Settings:
    """How long each scenario runs. ``quick``: seconds each, for a smoke test; ``full``: the reported figures."""

    run_s: float = 10.0            # one closed-loop measurement (a, b)
    warmup_s: float = 2.0          # load before measuring, per server and traffic type
    repeats: int = 3               # alternating measurements per server; the median is reported
    conns: int = 32                # connections of the closed-loop client
    texts_per_tier: int = 64       # distinct texts per traffic type
    batch_repeats: int = 15        # batch-64 timings per side (c)
    capacity_s: float = 10.0       # closed-loop capacity measurement before overload (d)
    overload_s: float = 30.0       # open-loop overload per traffic type (d)
    overload_factor: float = 3.0   # arrival rate / capacity (d)
    max_conns: int = 0             # connections the open-loop client may open (d); 0: above the server's limit
    soak_s: float = 600.0          # memory soak (e)
    soak_warmup_s: float = 120.0   # the soak's load before its 'start' (the models' buffers reach their high-water mark)
    soak_conns: int = 8            # a bounded load: fewer connections than the throughput runs
    phase_s: float = 10.0          # each fault phase (f)
    fault_conns: int = 16
    fault_delay_ms: float = 1000.0  # the slow final tier's added delay (f)
    deadline_ms: float = 0.0       # X-Tiergate-Deadline-Ms in d; 0: 3x the p99 at capacity, at least 100 ms
    timeout_s: float = 60.0        # a request without an answer by then counts as a timeout
    traffic: tuple[str, ...] = ROLES  # the traffic types that a, d and the soak's mix run (rules, small, large)


def quick_settings() -> Settings:
    return Settings(run_s=2.0, warmup_s=0.5, repeats=1, texts_per_tier=16, batch_repeats=3, capacity_s=2.0,
                    overload_s=3.0, soak_s=5.0, soak_warmup_s=2.0, phase_s=3.0)


def median(values) -> float:
    vals = [v for v in values if v is not None and v == v]
    return statistics.median(vals) if vals else float("nan")


def ratio(num: float, den: float) -> float:
    """``num / den``, NaN when the denominator is 0 or NaN (a server that answered nothing)."""
    return num / den if den and den == den else float("nan")


def roles_of(config: Path) -> dict[str, str | None]:
    """Tier names by role: the first rules tier, the first model tier before the last, the last tier."""
    tiers = read_config(config)["tiers"]
    names = [t["name"] for t in tiers]
    rules = next((t["name"] for t in tiers if t.get("kind") == "rules"), None)
    small = next((t["name"] for t in tiers[:-1] if t.get("kind") != "rules"), None)
    return {"rules": rules, "small": small, "large": names[-1]}


class Bench:
    """What the scenarios share: settings, the config, the admin token, scratch space, the texts by tier."""

    def __init__(self, args: argparse.Namespace, settings: Settings):
        self.args, self.s = args, settings
        self.config = Path(args.config).resolve()
        self.roles = roles_of(self.config)
        self.token = secrets.token_hex(16)
        self.admin = {"Authorization": f"Bearer {self.token}"}
        self.work = Path(tempfile.mkdtemp(prefix="tiergate-serving-"))
        self.pool = self._pool(args.pool)
        self._by_role: dict[str, list[str]] | None = None
        self.discovery: dict = {}

    @staticmethod
    def _pool(limit: int) -> list[str]:
        from tiergate.data import load_dataset

        texts = [e.text for e in load_dataset("spamassassin").split("test")]
        return texts[:limit] if limit else texts

    def tiergate(self, config: Path, name: str) -> ServerProcess:
        """A started ``tiergate serve`` (ServerError if it does not come up: a config it rejects, ...)."""
        level = self.args.server_log_level or None
        env = {"TIERGATE_ADMIN_TOKEN": self.token}
        try:
            return self._started(name, lambda port: tiergate_command(config, port, level), env)
        except ServerError as e:
            if level and "No such option" in str(e):  # a CLI without --log-level: its default then
                return self._started(name, lambda port: tiergate_command(config, port, None), env)
            raise

    def bare(self, rules: bool = False) -> ServerProcess:
        """The bare endpoint; ``rules``: it also runs the config's rules tier on each item (and nothing else)."""
        level = self.args.server_log_level or None
        name, cfg = ("bare-rules", self.config) if rules else ("bare", None)
        return self._started(name, lambda port: bare_command(port, level, cfg), {})

    def _started(self, name: str, command, env: dict[str, str], tries: int = 3) -> ServerProcess:
        """Start ``command(port)`` on a free port; a port taken by someone else before the server bound it
        (another session's server) is retried on a new one."""
        for attempt in range(tries):
            port = free_port()
            proc = ServerProcess(name, command(port), port, self.work / f"{name}.log", env=env)
            try:
                proc.start()
                return proc
            except ServerError as e:
                if "address already in use" not in str(e) or attempt == tries - 1:
                    raise
        raise AssertionError("unreachable")

    def by_role(self, server: ServerProcess) -> dict[str, list[str]]:
        """Up to ``texts_per_tier`` test texts per role, each one answered by that role's tier (not degraded)
        when the running ``server`` classified it; computed once."""
        if self._by_role is None:
            self._by_role = asyncio.run(self._discover(server))
        return self._by_role

    async def _discover(self, server: ServerProcess) -> dict[str, list[str]]:
        want = {role: name for role, name in self.roles.items() if name}
        found: dict[str, list[str]] = {role: [] for role in ROLES}
        t0, batched, seen = time.perf_counter(), True, 0
        for start in range(0, len(self.pool), 32):
            if all(len(found[r]) >= self.s.texts_per_tier for r in want):
                break
            chunk = self.pool[start:start + 32]
            answers = None
            if batched:
                st, _, data = await call(server.url + "/v1/classify", "POST", json.dumps({"texts": chunk}).encode(),
                                         timeout_s=300)
                if st == 200:
                    answers = json.loads(data).get("results")
                else:
                    batched = False  # no batch requests on this server: one item at a time
            if answers is None:
                answers = []
                for t in chunk:
                    st, _, data = await call(server.url + "/v1/classify", "POST", body(t), timeout_s=300)
                    answers.append(json.loads(data) if st == 200 else {})
            seen += len(chunk)
            for text, a in zip(chunk, answers, strict=True):
                for role, name in want.items():
                    if a.get("tier") == name and not a.get("degraded") and len(found[role]) < self.s.texts_per_tier:
                        found[role].append(text)
        self.discovery = {"pool_classified": seen, "seconds": round(time.perf_counter() - t0, 1),
                          "texts": {r: len(v) for r, v in found.items()}, "tiers": want}
        return found

    def blend(self, server: ServerProcess) -> list[bytes]:
        """Equal parts of the texts each tier decides, interleaved (rules, small, large, rules, ...): every
        tier, the final one included, sees a steady share of the traffic."""
        groups = [g for g in self.by_role(server).values() if g]
        return [body(g[i]) for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]

    def mix(self, n: int = 256) -> list[bytes]:
        """The test split's natural mix of traffic (its first ``n`` messages)."""
        return [body(t) for t in self.pool[:n]]


# --------------------------------------------------------------------------------------------- load
def load(server: ServerProcess, bodies: list[bytes], s: Settings, *, seconds: float, conns: int | None = None,
         **kw) -> dict:
    """A closed-loop run against ``server``: the client's summary plus the server's CPU use."""
    cpu0 = server.cpu_seconds()
    rec = asyncio.run(closed_loop(server.url + "/v1/classify", bodies, conns=conns or s.conns, seconds=seconds,
                                  timeout_s=s.timeout_s, **kw))
    out = rec.summary()
    out["server_cpu_pct"] = 100 * (server.cpu_seconds() - cpu0) / rec.seconds
    return out


def medians(runs: list[dict], keys: tuple[str, ...]) -> dict:
    return {k: median(r[k] for r in runs) for k in keys}


def share_of(summary: dict, tier: str) -> float:
    answered = sum(summary["tiers"].values())
    return summary["tiers"].get(tier, 0) / answered if answered else float("nan")


def failures(summary: dict) -> int:
    """Answers that are failures: 5xx statuses and requests with no answer at all."""
    return sum(n for code, n in summary["status"].items() if code.startswith("5")) + sum(summary["errors"].values())


def batch_sizes(server: ServerProcess, tier: str) -> tuple[float, float] | None:
    """(sum, count) of the ``tiergate_batch_size`` histogram for ``tier``, None if the server has none."""
    st, _, data = asyncio.run(call(server.url + "/metrics"))
    if st != 200:
        return None
    total = count = None
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("tiergate_batch_size_") and f'tier="{tier}"' in line:
            value = float(line.rsplit(" ", 1)[1])
            if line.startswith("tiergate_batch_size_sum"):
                total = value
            elif line.startswith("tiergate_batch_size_count"):
                count = value
    return None if total is None or count is None else (total, count)
