"""Cost per item, measured once: median compute time per item at a stated batch size × the hourly price of
the hardware the tier runs on (+ an optional fixed price per call). Serving and evaluation both read the
figure written into the config, so their cost figures agree."""

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
    """Time ``tier.predict`` on up to ``max_batches`` batches (after one warm-up batch); median per item."""
    items = list(items)
    if not items:
        return CostConfig(usd_per_hour=usd_per_hour, batch_size=batch_size, fixed_usd_per_call=fixed_usd_per_call,
                          measured="no items to measure")
    tier.predict(items[:batch_size])  # warm-up: lazy initialisation, caches, allocator
    per_item = []
    batches = [items[s : s + batch_size] for s in range(0, len(items), batch_size)][:max_batches]
    for b in batches:
        t0 = time.perf_counter()
        tier.predict(b)
        per_item.append((time.perf_counter() - t0) / len(b))
    med = statistics.median(per_item)
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")
    return CostConfig(seconds_per_item=med, batch_size=batch_size, usd_per_hour=usd_per_hour,
                      fixed_usd_per_call=fixed_usd_per_call,
                      measured=f"median of {len(batches)} batches of <= {batch_size} items on {machine_description()}, {when}")
