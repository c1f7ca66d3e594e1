"""Shadow audits: the certificate's guarantee, watched on live traffic.

A share (``shadow_audit.share``) of the items each cheaper tier decides is also sent to the final tier, off
the request path: audits wait in a bounded queue of their own (full: dropped and counted) and go to the final
tier's runner only when it is idle, a few at a time (``max_batch``), so traffic waits at most one small audit
batch. ``max_per_s`` caps their cost. Each audit compares the cheaper tier's answer with the final tier's.

The live risk is the cascade's disagreement with the final tier, the quantity the certificate bounds:
``risk = sum_t share_t * r_t`` over the cheaper tiers *t*, with ``share_t`` the share of all decisions tier
*t* made and ``r_t`` its disagreement on its audited items. Its upper bound combines one-sided
Clopper–Pearson bounds per tier at level ``1 - delta / m`` (a union bound over the *m* tiers audited), so
it stays valid when audits are dropped unevenly across tiers. ``verdict``: ``holds`` when the upper bound is
at most the certificate's epsilon, ``violated`` when even the lower bound exceeds it, else ``undetermined``
(too few audits to say either).

Audits are charged to ``tiergate_shadow_cost_usd_total`` and subtracted from the savings: they are spent to
keep the guarantee honest, and hiding them would overstate what the cascade saves.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge

from tiergate.calibration.bounds import lower_bound, min_items, upper_bound
from tiergate.cascade import Decision
from tiergate.config import ShadowAuditConfig
from tiergate.gateway import metrics as m
from tiergate.gateway.history import cancelled
from tiergate.gateway.runner import Pending, TierRunner
from tiergate.tiers import TierOutput

log = logging.getLogger("tiergate.gateway.audit")
POLL_S = 0.01   # how often a waiting audit looks whether the final tier has become idle

SHADOW_AUDITS = Counter("tiergate_shadow_audits_total", "Shadow audits completed, by audited tier and whether "
                        "the final tier agreed", ["tier", "agreed"])
SHADOW_DROPPED = Counter("tiergate_shadow_dropped_total", "Shadow audits not made: the audit queue was full "
                         "(queue_full), over shadow_audit.max_per_s (rate), or the final tier failed (error)",
                         ["reason"])
SHADOW_COST = Counter("tiergate_shadow_cost_usd_total", "Cost of the final tier's shadow-audit calls (USD); "
                      "subtracted from tiergate_cost_saved_usd")
SHADOW_QUEUE = Gauge("tiergate_shadow_queue_items", "Shadow audits waiting for the final tier", multiprocess_mode="livesum")
SHADOW_DISAGREEMENT = Gauge("tiergate_shadow_disagreement_ratio", "Share of a tier's audited items on which the "
                            "final tier disagreed", ["tier"], multiprocess_mode="max")
SHADOW_UPPER = Gauge("tiergate_shadow_disagreement_upper_bound", "One-sided Clopper-Pearson upper bound (1 - "
                     "delta) on a tier's disagreement with the final tier", ["tier"], multiprocess_mode="max")
LIVE_RISK = Gauge("tiergate_shadow_risk_ratio", "Estimated share of all decisions on which the cascade disagrees "
                  "with the final tier (from shadow audits): the live risk", multiprocess_mode="max")
LIVE_RISK_UPPER = Gauge("tiergate_shadow_risk_upper_bound", "Upper confidence bound (1 - delta) on the live risk; "
                        "compare with tiergate_certificate_epsilon", multiprocess_mode="max")
LIVE_RISK_LOWER = Gauge("tiergate_shadow_risk_lower_bound", "Lower confidence bound (delta) on the live risk: above "
                        "epsilon, the guarantee is violated", multiprocess_mode="max")
AUDITS_NEEDED = Gauge("tiergate_shadow_audits_needed", "Agreeing audits needed before the upper bound can fall to "
                      "epsilon at all (with zero disagreements): fewer, and 'at risk' means 'not yet known'",
                      multiprocess_mode="max")
DROP_REASONS = ("queue_full", "rate", "error")


@dataclass(slots=True)
class TierCounts:
    decided: int = 0
    audits: int = 0
    disagreed: int = 0


@dataclass(slots=True)
class LiveRisk:
    """Counts since the versions last changed, and the bounds they support."""

    versions: str = ""
    tiers: dict[str, TierCounts] = field(default_factory=dict)
    total: int = 0

    def summary(self, epsilon: float | None, delta: float) -> dict:
        audited = {t: c for t, c in self.tiers.items() if c.decided}
        m_tiers = max(1, len(audited))
        est = ub = lb = 0.0
        per_tier = {}
        for t, c in audited.items():
            share = c.decided / max(self.total, 1)
            u = upper_bound(c.disagreed, c.audits, delta / m_tiers)
            lo = lower_bound(c.disagreed, c.audits, delta / m_tiers)
            r = c.disagreed / c.audits if c.audits else 0.0
            est, ub, lb = est + share * r, ub + share * u, lb + share * lo
            per_tier[t] = {"decided": c.decided, "share": round(share, 6), "audits": c.audits,
                           "disagreed": c.disagreed, "disagreement": round(r, 6),
                           "upper_bound": round(upper_bound(c.disagreed, c.audits, delta), 6)}
        audits = sum(c.audits for c in audited.values())
        if epsilon is None:
            verdict = "no certificate"
        elif ub <= epsilon:
            verdict = "holds"
        elif lb > epsilon:
            verdict = "violated"
        else:
            verdict = "undetermined"
        return {"audits": audits, "decisions": self.total, "risk": round(est, 6), "upper_bound": round(ub, 6),
                "lower_bound": round(lb, 6), "epsilon": epsilon, "delta": delta,
                "within_epsilon": None if epsilon is None else ub <= epsilon, "verdict": verdict,
                "per_tier": per_tier}


@dataclass(slots=True)
class AuditJob:
    """What a shadow audit carries through the final tier's runner (in place of a request)."""

    request_id: str
    tier: str
    label: str
    versions: str
    done: bool = False      # runners skip the work of finished requests; an audit is never finished early


class ShadowAuditor:
    """Samples decisions, queues audits, feeds the idle final tier, counts agreement (one per scheduler)."""

    def __init__(self, cfg: ShadowAuditConfig, final: TierRunner, final_cost: float, *, certificate: dict | None,
                 cheaper: Sequence[str], record_audit=None, rng: random.Random | None = None):
        self.cfg = cfg
        self.final = final
        self.final_cost = final_cost
        self.cert = certificate or {}
        self.cheaper = list(cheaper)
        self.record_audit = record_audit  # (request_id, label) -> None: the decision log's audit column
        self.rng = rng or random.Random()
        self.queue: collections.deque[Pending] = collections.deque()
        self.live = LiveRisk()
        self._tokens = cfg.max_per_s
        self._refilled = time.monotonic()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        for t in self.cheaper:
            SHADOW_DISAGREEMENT.labels(t)
            SHADOW_UPPER.labels(t)
            for a in ("true", "false"):
                SHADOW_AUDITS.labels(t, a)
        for r in DROP_REASONS:
            SHADOW_DROPPED.labels(r)
        self._publish()

    @property
    def epsilon(self) -> float | None:
        eps = self.cert.get("epsilon")
        return None if eps is None else float(eps)

    @property
    def delta(self) -> float:
        return float(self.cert.get("delta", 0.05))

    def start(self) -> None:
        if self.cfg.share > 0 and self.cheaper:
            self._task = asyncio.get_running_loop().create_task(self._pump(), name="shadow-audits")

    async def stop(self) -> None:
        await cancelled(self._task)
        SHADOW_QUEUE.dec(len(self.queue))
        self.queue.clear()

    def seed(self, rows: Sequence[tuple[str, str, str]], versions: str, decided: dict[str, int] | None = None) -> None:
        """Start from audits the log already holds for these versions (tier, decided label, audit label)."""
        self._reset(versions)
        for tier, label, audit in rows:
            if tier not in self.cheaper:
                continue
            c = self.live.tiers.setdefault(tier, TierCounts())
            c.audits += 1
            c.disagreed += audit != label
        for tier, n in (decided or {}).items():
            if tier in self.cheaper:
                self.live.tiers.setdefault(tier, TierCounts()).decided += n
            self.live.total += n
        self._publish()

    # -------------------------------------------------------------------------------------------- sampling
    def offer(self, decisions: Sequence[Decision], texts: Sequence[str], versions: str) -> None:
        """Count every decision; choose audits among those a cheaper tier made (on the event loop, cheap)."""
        if versions != self.live.versions:
            self._reset(versions)
        live = self.live
        for d, text in zip(decisions, texts, strict=True):
            if d.degraded:
                continue  # a degraded answer is already known not to be the final tier's; it is not sampled
            live.total += 1
            if d.tier not in self.cheaper:
                continue
            live.tiers.setdefault(d.tier, TierCounts()).decided += 1
            if self.cfg.share <= 0 or self.rng.random() >= self.cfg.share:
                continue
            if not self._take_token():
                SHADOW_DROPPED.labels("rate").inc()
            elif len(self.queue) >= self.cfg.max_queue:
                SHADOW_DROPPED.labels("queue_full").inc()
            else:
                self.queue.append(Pending(AuditJob(d.request_id, d.tier, d.label, versions), 0, text,
                                          background=True))
                SHADOW_QUEUE.inc()
                self._wake.set()

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.cfg.max_per_s, self._tokens + (now - self._refilled) * self.cfg.max_per_s)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def _reset(self, versions: str) -> None:
        self.live = LiveRisk(versions=versions)

    # --------------------------------------------------------------------------------------------- running
    async def _pump(self) -> None:
        r = self.final
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if r.load == 0 and not r.breaker.refusing():
                n = min(self.cfg.max_batch, len(self.queue))
                batch = [self.queue.popleft() for _ in range(n)]
                SHADOW_QUEUE.dec(n)
                r.put(batch)
            await asyncio.sleep(POLL_S)

    def finished(self, items: Sequence[Pending], outputs: Sequence[TierOutput] | None) -> None:
        """The final tier answered (or failed) a batch of audits (called by the scheduler's batch router)."""
        if outputs is None:
            SHADOW_DROPPED.labels("error").inc(len(items))
            return
        cost = self.final_cost * len(items)
        SHADOW_COST.inc(cost)
        m.SAVED.dec(cost)
        for p, out in zip(items, outputs, strict=True):
            job: AuditJob = p.request  # type: ignore[assignment]
            if out.label is None:
                SHADOW_DROPPED.labels("error").inc()
                continue
            agreed = out.label == job.label
            SHADOW_AUDITS.labels(job.tier, "true" if agreed else "false").inc()
            if job.versions == self.live.versions:
                c = self.live.tiers.setdefault(job.tier, TierCounts())
                c.audits += 1
                c.disagreed += not agreed
            if self.record_audit is not None:
                self.record_audit(job.request_id, out.label)
        self._publish()

    def _publish(self) -> None:
        s = self.status()
        LIVE_RISK.set(s["risk"])
        LIVE_RISK_UPPER.set(s["upper_bound"])
        LIVE_RISK_LOWER.set(s["lower_bound"])
        AUDITS_NEEDED.set(s["audits_needed"])
        for t, row in s["per_tier"].items():
            SHADOW_DISAGREEMENT.labels(t).set(row["disagreement"])
            SHADOW_UPPER.labels(t).set(row["upper_bound"])

    def status(self) -> dict:
        s = self.live.summary(self.epsilon, self.delta)
        risk = str(self.cert.get("risk", "disagreement"))
        if risk != "disagreement":
            s["note"] = (f"the certificate bounds {risk}; shadow audits measure disagreement with the final tier "
                         "over all items, a proxy for it")
        s["share"] = self.cfg.share
        s["queue"] = len(self.queue)
        s["audits_needed"] = min_items(self.epsilon, self.delta) if self.epsilon else 0
        return s
