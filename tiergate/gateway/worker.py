"""A tier in a process of its own (``executor: process``): what the child process runs.

Model tiers do much of their work in Python (TF-IDF tokenising, n-gram counting, torch's op dispatch) and so
hold the GIL; in a thread of the gateway's process they starve its event loop (measured: /healthz waited up to
0.5 s and 429s took 0.2 s at the median while the large tier computed). In a child process they compete only
for the cores. The child builds the tier from its config entry (the same registry, the same confinement) and
answers texts; the parent keeps its own copy of the tier for versions, labels and the smoke batch.
"""

from __future__ import annotations

import os
from pathlib import Path

from tiergate.config import TierConfig
from tiergate.data.items import make_item
from tiergate.tiers import Tier, TierOutput

NICE = 10
_TIER: Tier | None = None
_MAX_CHARS = 200_000


def init(tc_json: dict, base: str, model_dirs: list[str], max_chars: int) -> None:
    """Process initializer: build the tier once."""
    global _TIER, _MAX_CHARS
    from tiergate.registry import build_tier

    # Below the gateway's own priority: when the cores are short, the event loop (probes, 429s, routing) runs
    # first and the models take what is left, instead of the loop waiting behind a batch.
    os.nice(NICE)

    _TIER = build_tier(TierConfig.model_validate(tc_json), Path(base), model_dirs=model_dirs)
    _MAX_CHARS = max_chars


def ready() -> bool:
    return _TIER is not None


def predict(texts: list[str]) -> list[TierOutput]:
    """Parse and answer ``texts`` (items are parsed here: an Item does not cross processes)."""
    assert _TIER is not None, "worker not initialised"
    return _TIER.predict([make_item(t, max_chars=_MAX_CHARS) for t in texts])
