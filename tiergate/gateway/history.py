"""The gateway's own recent metrics, for the status page's plots (``GET /status``): every ``interval_s`` a
sample of the counters this process exports (or, under ``serve --workers N``, all workers' merged), kept for
``keep_s``. Plots are drawn from differences of consecutive samples, as Prometheus' ``rate()`` would.

Also the last escalated decisions, for the page's table (no text: the tier path, label, confidence, time).
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry

LATENCY = "tiergate_request_latency_seconds"


async def cancelled(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


@dataclass(slots=True)
class Sample:
    t: float
    baseline: float = 0.0          # USD, counters since start
    cost: float = 0.0
    shadow: float = 0.0
    decided: dict[str, float] = field(default_factory=dict)        # per tier
    latency: dict[float, float] = field(default_factory=dict)      # cumulative bucket counts by upper bound


def _registry():
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def take_sample(now: float | None = None) -> Sample:
    s = Sample(time.time() if now is None else now)
    for metric in _registry().collect():
        for smp in metric.samples:
            name = smp.name
            if name == "tiergate_baseline_cost_usd_total":
                s.baseline += smp.value
            elif name == "tiergate_cost_usd_total":
                s.cost += smp.value
            elif name == "tiergate_shadow_cost_usd_total":
                s.shadow += smp.value
            elif name == "tiergate_decisions_total":
                tier = smp.labels.get("tier", "")
                s.decided[tier] = s.decided.get(tier, 0.0) + smp.value
            elif name == LATENCY + "_bucket":
                le = float(smp.labels.get("le", "inf").replace("+Inf", "inf"))
                s.latency[le] = s.latency.get(le, 0.0) + smp.value
    return s


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile from cumulative bucket counts (linear inside a bucket, as histogram_quantile)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for b in bounds:
        if buckets[b] >= rank:
            if b == float("inf"):
                return lower
            width = buckets[b] - below
            return lower + (b - lower) * ((rank - below) / width if width else 1.0)
        lower, below = b, buckets[b]
    return lower


class History:
    """Samples on the event loop (a scrape of one process' registry takes well under a millisecond)."""

    def __init__(self, interval_s: float = 5.0, keep_s: float = 3600.0, recent: int = 20):
        self.interval_s = interval_s
        self.samples: collections.deque[Sample] = collections.deque(maxlen=max(2, int(keep_s / interval_s)))
        self.escalations: collections.deque[dict] = collections.deque(maxlen=recent)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.samples.append(take_sample())
        self._task = asyncio.get_running_loop().create_task(self._run(), name="status-history")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.samples.append(take_sample())

    async def stop(self) -> None:
        await cancelled(self._task)

    def note(self, decisions) -> None:
        """Keep the escalated ones among a request's decisions (called for every answered request)."""
        now = time.time()
        for d in decisions:
            if len(d.path) > 1:
                self.escalations.append({"t": now, "path": list(d.path), "tier": d.tier, "label": d.label,
                                         "confidence": d.confidence, "degraded": d.degraded_reason if d.degraded else ""})

    def with_now(self) -> list[Sample]:
        """The samples, and one taken now (so the plots end at the present)."""
        return [*self.samples, take_sample()]
