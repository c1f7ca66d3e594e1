"""The cascade: items flow tier to tier until one is confident enough; the last tier always decides.

One routing rule serves both the live path (:meth:`Cascade.classify`, which runs a tier only on the items
still undecided) and the offline path (:func:`route`, which replays precomputed outputs of every tier, as
evaluation and calibration need), so what is measured offline is what is served.

Routing of one item at tier *i* (:func:`step`):
  * the last tier always decides;
  * a forced escalation (``escalate_to``) jumps to the named tier (or the next);
  * a label whose confidence reaches the tier's threshold for that label decides;
  * otherwise the item goes on to tier *i + 1*.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tiergate.config import Thresholds, TierConfig, TiergateConfig, load_config
from tiergate.data.items import Item
from tiergate.errors import ConfigError, UnavailableError
from tiergate.registry import build_tier, capabilities_of
from tiergate.tiers import Tier, TierOutput

log = logging.getLogger("tiergate.cascade")


@dataclass(slots=True)
class Decision:
    """The answer for one item: what was decided, by which tier, why, how fast, at what cost."""

    label: str
    confidence: float
    probabilities: dict[str, float] | None
    tier: str
    reason: str
    latency_ms: float = 0.0
    cost_usd: float = 0.0                   # every tier the item passed through
    baseline_cost_usd: float = 0.0          # what sending it straight to the final tier would have cost
    path: list[str] = field(default_factory=list)
    request_id: str = ""
    degraded: bool = False                  # a later tier failed or ran out of time; an earlier tier's answer
    degraded_reason: str = ""               # error | timeout | breaker_open | deadline

    def to_dict(self) -> dict:
        return {
            "label": self.label, "confidence": round(self.confidence, 6),
            "probabilities": None if self.probabilities is None else {k: round(v, 6) for k, v in self.probabilities.items()},
            "tier": self.tier, "reason": self.reason, "latency_ms": round(self.latency_ms, 3),
            "cost_usd": self.cost_usd, "baseline_cost_usd": self.baseline_cost_usd,
            "cost_saved_usd": self.baseline_cost_usd - self.cost_usd, "path": self.path, "degraded": self.degraded,
            **({"degraded_reason": self.degraded_reason} if self.degraded else {}),
            **({"request_id": self.request_id} if self.request_id else {}),
        }


def reason_for(tier: TierConfig, out: TierOutput, final: bool) -> str:
    if out.reason and not capabilities_of(tier).distribution:  # a rule decided, not a confidence
        return f"rule:{out.reason}"
    if final:
        return "final-tier"
    return f"confidence {out.confidence:.4f} >= threshold {tier.threshold.for_label(out.label):.4f}"


def step(i: int, out: TierOutput, tiers: Sequence[TierConfig]) -> int | None:
    """Where an item at tier ``i`` goes: None if tier ``i`` decides it, else the index of the next tier."""
    last = len(tiers) - 1
    if i == last:
        return None
    if out.escalate_to:
        if out.escalate_to == "next":
            return i + 1
        for j, t in enumerate(tiers):
            if t.name == out.escalate_to and j > i:
                return j
        return i + 1  # unknown or earlier tier: the safe reading is "go on"
    if out.label is not None and out.confidence >= tier_threshold(tiers[i], out.label):
        return None
    return i + 1


def tier_threshold(tier: TierConfig, label: str | None) -> float:
    return tier.threshold.for_label(label)


@dataclass(slots=True)
class Routed:
    """Where one item ended in an offline replay."""

    tier_index: int
    output: TierOutput
    path: list[int]


def route(outputs: Sequence[Sequence[TierOutput]], tiers: Sequence[TierConfig]) -> list[Routed]:
    """Replay the cascade over precomputed outputs (``outputs[i][n]``: tier ``i`` on item ``n``)."""
    n = len(outputs[0]) if outputs else 0
    routed = []
    for k in range(n):
        i, path = 0, []
        while True:
            path.append(i)
            nxt = step(i, outputs[i][k], tiers)
            if nxt is None:
                routed.append(Routed(i, outputs[i][k], path))
                break
            i = nxt
    return routed


class Cascade:
    """Tiers in order with their thresholds and costs.

    >>> cascade = Cascade.from_config("runs/spam/tiergate.yaml")          # doctest: +SKIP
    >>> cascade.classify([make_item("Subject: win money now")])[0].tier   # doctest: +SKIP
    'rules'
    """

    def __init__(self, config: TiergateConfig, tiers: Sequence[Tier], base: Path | None = None):
        if len(tiers) != len(config.tiers):
            raise ConfigError(f"{len(config.tiers)} tiers configured but {len(tiers)} given")
        self.config = config
        self.tiers = list(tiers)
        self.base = base

    @classmethod
    def from_config(cls, path: str | Path, build: Callable[..., Tier] | None = None) -> Cascade:
        """The cascade ``path`` describes. ``build(tc, base, model_dirs=..., server=...)`` makes each tier
        (default: the registry's, in this process; the gateway's puts model tiers in processes of their own,
        tiergate.gateway.worker.build). A tier that fails to build closes the ones built before it."""
        cfg, base = load_config(path)
        make = build or (lambda tc, base, model_dirs, server: build_tier(tc, base, model_dirs=model_dirs))
        tiers: list[Tier] = []
        try:
            for tc in cfg.tiers:
                tiers.append(make(tc, base, model_dirs=cfg.model_dirs, server=cfg.server))
        except BaseException:
            for t in tiers:
                t.close()
            raise
        cascade = cls(cfg, tiers, base)
        if (cfg.calibration or {}).get("shadow_rules"):  # rules calibration put in shadow mode
            from tiergate.calibration.shadow import apply_shadow_rules

            apply_shadow_rules(cascade)
        return cascade

    @property
    def tier_configs(self) -> list[TierConfig]:
        return self.config.tiers

    @property
    def final(self) -> Tier:
        return self.tiers[-1]

    def baseline_cost_per_item(self) -> float:
        return self.config.tiers[-1].cost.usd_per_item

    def versions(self) -> dict[str, str]:
        return {t.name: t.version() for t in self.tiers}

    def classify(self, items: Sequence[Item], *, final_only: bool = False,
                 request_ids: Sequence[str] | None = None,
                 on_batch: Callable[[str, int, float], None] | None = None,
                 thresholds: Sequence[Thresholds] | None = None) -> list[Decision]:
        """Decide every item; each tier runs once, as one batch, on the items still undecided.

        ``final_only`` sends every item straight to the final tier. ``on_batch(tier, n_items, seconds)``
        is called after each tier's batch (the gateway's latency histogram listens there). ``thresholds``
        replaces every tier's thresholds for this call (a request asking for a stricter risk bound)."""
        n = len(items)
        cfgs = self.config.tiers
        if thresholds is not None:
            if len(thresholds) != len(cfgs):
                raise ConfigError(f"{len(thresholds)} thresholds given for {len(cfgs)} tiers")
            cfgs = [tc.model_copy(update={"threshold": th}) for tc, th in zip(cfgs, thresholds, strict=True)]
        start = time.perf_counter()
        elapsed = [0.0] * n
        cost = [0.0] * n
        paths: list[list[str]] = [[] for _ in range(n)]
        decisions: list[Decision | None] = [None] * n
        best: dict[int, tuple[int, TierOutput]] = {}  # the most recent model answer per item, for degradation
        model_answers = [capabilities_of(tc).distribution for tc in cfgs]  # which tiers' answers count there
        at: dict[int, list[int]] = {len(cfgs) - 1 if final_only else 0: list(range(n))}
        for i, tier in enumerate(self.tiers):
            idx = at.pop(i, [])
            if not idx:
                continue
            t0 = time.perf_counter()
            try:
                outs = tier.predict([items[k] for k in idx])
            except Exception as e:  # a failing tier degrades the answer; it does not fail the request
                log.exception("tier %s failed on %d items", cfgs[i].name, len(idx))
                self._degrade(i, idx, best, decisions, paths, cost, e)
                continue
            dt = time.perf_counter() - t0
            if on_batch is not None:
                on_batch(cfgs[i].name, len(idx), dt)
            for k, out in zip(idx, outs, strict=True):
                # A batch's wall time is shared by its items; each item also waited for the tiers before.
                elapsed[k] += dt
                cost[k] += cfgs[i].cost.usd_per_item
                paths[k].append(cfgs[i].name)
                if out.label is not None and model_answers[i]:
                    best[k] = (i, out)
                nxt = step(i, out, cfgs)
                if nxt is None:
                    decisions[k] = self._decision(i, out, cfgs)
                else:
                    at.setdefault(nxt, []).append(k)
        baseline = self.baseline_cost_per_item()
        total_ms = (time.perf_counter() - start) * 1000
        result = []
        for k, d in enumerate(decisions):
            assert d is not None  # the last tier always decides
            d.latency_ms = min(elapsed[k] * 1000, total_ms)
            d.cost_usd = cost[k]
            d.baseline_cost_usd = baseline
            d.path = paths[k]
            d.request_id = request_ids[k] if request_ids else ""
            result.append(d)
        return result

    def _degrade(self, i: int, idx: list[int], best: dict, decisions: list, paths: list, cost: list,
                 error: Exception) -> None:
        """Tier ``i`` failed: answer each of its items with the last model answer it had, flagged
        ``degraded``; an item with no earlier answer cannot be answered (UnavailableError)."""
        cfgs = self.config.tiers
        for k in idx:
            if k not in best:
                raise UnavailableError(f"tier {cfgs[i].name} failed ({type(error).__name__}: {error}) and no "
                                       "earlier tier had an answer") from error
            j, out = best[k]
            d = self._decision(j, out, cfgs)
            d.degraded = True
            d.reason = f"degraded: tier {cfgs[i].name} failed; answer of {cfgs[j].name}"
            decisions[k] = d
            paths[k].append(cfgs[i].name)

    def _decision(self, i: int, out: TierOutput, cfgs: Sequence[TierConfig]) -> Decision:
        final = i == len(cfgs) - 1
        label = out.label
        if label is None:  # a final tier always names a label; guard against a misbehaving one
            label = max(out.probabilities or {"": 0.0}, key=lambda k: (out.probabilities or {}).get(k, 0.0))
        return Decision(label=label, confidence=out.confidence, probabilities=out.probabilities,
                        tier=cfgs[i].name, reason=reason_for(cfgs[i], out, final))

    def close(self) -> None:
        for t in self.tiers:
            t.close()


def new_request_id() -> str:
    return uuid.uuid4().hex
