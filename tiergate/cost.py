"""Cost per item, measured once: compute time per item at a stated batch size × the hourly price of the
hardware the tier runs on (+ an optional fixed price per call). Serving and evaluation both read the figure
written into the config, so their cost figures agree.

The time per item is the *fastest* of the timed batches, not their median: other work on the machine only ever
slows a batch down, so the minimum is the figure least moved by how busy the machine was (measured: the large
tier's median moved from 17 to 454 ms per item on a loaded machine; see docs/gateway.md#cost). The median and
the spread (slowest / fastest) are recorded beside it. An operator who knows better pins the cost
(``cost.pinned: true``) and calibration leaves it alone."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from collections.abc import Sequence

from tiergate.config import CostConfig
from tiergate.data.items import Item
from tiergate.tiers import Tier


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def measure_cost(tier: Tier, items: Sequence[Item], *, usd_per_hour: float, batch_size: int = 32,
                 max_batches: int = 8, fixed_usd_per_call: float = 0.0) -> CostConfig:
    """Time ``tier.predict`` on up to ``max_batches`` batches (after one warm-up batch); the fastest per item."""
    items = list(items)
    tier.predict(items[:batch_size])  # warm-up: lazy initialisation, caches, allocator
    per_item = []
    for s in range(0, min(len(items), batch_size * max_batches), batch_size):
        b = items[s : s + batch_size]
        t0 = time.perf_counter()
        tier.predict(b)
        per_item.append((time.perf_counter() - t0) / len(b))
    return cost_from_timings(per_item, usd_per_hour=usd_per_hour, batch_size=batch_size,
                             fixed_usd_per_call=fixed_usd_per_call)


def cost_from_timings(per_item_s: Sequence[float], *, usd_per_hour: float, batch_size: int,
                      fixed_usd_per_call: float = 0.0, what: str = "items") -> CostConfig:
    """The cost of a tier from per-item seconds of timed batches (the fastest), as :func:`measure_cost` does."""
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")
    if not per_item_s:
        return CostConfig(usd_per_hour=usd_per_hour, batch_size=batch_size, fixed_usd_per_call=fixed_usd_per_call,
                          measured=f"not measured: fewer than two full batches of {batch_size} {what}")
    fastest, median = min(per_item_s), statistics.median(per_item_s)
    spread = max(per_item_s) / fastest if fastest > 0 else 1.0
    return CostConfig(seconds_per_item=fastest, batch_size=batch_size, usd_per_hour=usd_per_hour,
                      fixed_usd_per_call=fixed_usd_per_call, median_seconds_per_item=median, spread=round(spread, 3),
                      measured=f"fastest of {len(per_item_s)} batches of {batch_size} {what} (after a warm-up batch; "
                               f"median {median * 1000:.3f} ms, slowest/fastest {spread:.2f}) on "
                               f"{machine_description()}, {when}")

