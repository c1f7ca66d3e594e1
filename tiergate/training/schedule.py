"""Learning-rate schedules and batch-size scaling rules.

``lr_at(step)`` is a plain function of the step, so a resumed run gets exactly the learning rate the
uninterrupted run would have had.

>>> s = Schedule(base_lr=1.0, total_steps=100, warmup_steps=10, kind="cosine")
>>> s.lr_at(0), s.lr_at(9), round(s.lr_at(55), 3), s.lr_at(100)
(0.1, 1.0, 0.5, 0.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tiergate.errors import ConfigError


def scale_lr(base_lr: float, batch: int, base_batch: int, rule: str) -> float:
    """Scale a learning rate tuned at ``base_batch`` to ``batch``.

    ``linear`` (Goyal et al. 2017): lr * k; ``sqrt`` (Hoffer et al. 2017; Krizhevsky 2014): lr * sqrt(k);
    ``none``: unchanged, with k = batch / base_batch.
    """
    k = batch / base_batch
    if rule == "linear":
        return base_lr * k
    if rule == "sqrt":
        return base_lr * math.sqrt(k)
    if rule == "none":
        return base_lr
    raise ConfigError(f"lr scaling rule {rule!r}: use linear, sqrt or none")


@dataclass
class Schedule:
    base_lr: float               # peak learning rate, reached at the end of warm-up
    total_steps: int             # optimizer steps of the whole run
    warmup_steps: int = 0        # linear warm-up from base_lr/warmup_steps to base_lr
    kind: str = "cosine"         # cosine | poly | constant
    power: float = 1.0           # exponent of the polynomial decay (1: linear, 2: LAMB's BERT schedule used 1)
    min_lr: float = 0.0          # floor of the decay

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.base_lr
        span = max(self.total_steps - self.warmup_steps, 1)
        t = min(max(step - self.warmup_steps, 0) / span, 1.0)
        if self.kind == "cosine":
            f = 0.5 * (1.0 + math.cos(math.pi * t))
        elif self.kind == "poly":
            f = (1.0 - t) ** self.power
        else:
            raise ConfigError(f"schedule {self.kind!r}: use cosine, poly or constant")
        return self.min_lr + (self.base_lr - self.min_lr) * f
