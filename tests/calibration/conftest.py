"""Scored items for calibration tests: synthetic but shaped like a real two-tier mail cascade (most small-tier
confidences near 1, disagreement with the final tier about as likely as the small tier's doubt), so that the
risk of a threshold is known exactly on the pool and re-splits can be drawn by the hundred."""

from __future__ import annotations

import numpy as np

from tiergate.cascade import Cascade
from tiergate.config import CostConfig, Thresholds, TierConfig, TiergateConfig
from tiergate.tiers import FunctionTier, TierOutput


def synthetic_pool(n: int, *, labels=("ham", "spam"), seed: int = 0) -> tuple[list[list[TierOutput]], list[str]]:
    """``outputs[tier][item]`` for a small tier and a final tier, and true labels.

    Small-tier doubt u ~ Beta(0.4, 4) (mostly near 0), confidence 1 - u (1 - u/2 for two labels), and the small
    tier agrees with the final tier with probability equal to its confidence; the final tier is right 98% of
    the time. Class 0 is twice as common as the others, and per-class doubt differs, as in real data."""
    rng = np.random.default_rng(seed)
    C = len(labels)
    y = rng.choice(C, size=n, p=np.r_[2.0, np.ones(C - 1)] / (C + 1))
    final = np.where(rng.random(n) < 0.98, y, (y + rng.integers(1, C, size=n)) % C)
    spread = 1 + (np.arange(C) % 3)  # classes differ in how hard they are
    u = rng.beta(0.4, 4.0 * 3 / spread[final], size=n)
    conf = 1 - u * (C - 1) / C
    agree = rng.random(n) < conf
    small = np.where(agree, final, (final + rng.integers(1, C, size=n)) % C)
    outs_small = [TierOutput(label=labels[s], confidence=float(c)) for s, c in zip(small, conf, strict=True)]
    outs_final = [TierOutput(label=labels[f], confidence=0.99) for f in final]
    return [outs_small, outs_final], [labels[v] for v in y]


def cascade_for(labels=("ham", "spam"), *, ratio: float = 20.0) -> Cascade:
    """A cascade whose tiers are never run (calibration replays outputs), with costs final = ratio x small."""
    cfg = TiergateConfig(labels=list(labels), tiers=[
        TierConfig(name="small", kind="onnx", path="small", cost=CostConfig(seconds_per_item=0.001, usd_per_hour=1.0)),
        TierConfig(name="final", kind="onnx", path="final", threshold=Thresholds(),
                   cost=CostConfig(seconds_per_item=0.001 * ratio, usd_per_hour=1.0)),
    ])
    dummy = [FunctionTier(t.name, list(labels), lambda texts: np.zeros((len(texts), len(labels)))) for t in cfg.tiers]
    return Cascade(cfg, dummy)


def take(outputs, y, idx):
    return [[outs[k] for k in idx] for outs in outputs], [y[k] for k in idx]
