"""Prometheus metrics of the request path (STYLE.md: base units, ``_total`` on counters, closed label
sets initialised up front, histograms rather than summaries, attempts beside failures)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

from tiergate.cascade import Decision

DECISIONS = Counter("tiergate_decisions_total", "Items decided, by deciding tier and label", ["tier", "label"])
ESCALATIONS = Counter("tiergate_escalations_total", "Items passed from one tier to the next", ["from_tier", "to_tier"])
TIER_LATENCY = Histogram("tiergate_tier_latency_seconds", "Wall time of one tier's batch, per item batch",
                         ["tier"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
TIER_ITEMS = Counter("tiergate_tier_items_total", "Items each tier was asked about", ["tier"])
COST = Counter("tiergate_cost_usd_total", "Compute cost spent per tier (USD), escalated attempts included", ["tier"])
BASELINE = Counter("tiergate_baseline_cost_usd_total", "Counterfactual cost of sending every item to the final tier (USD)")
# A gauge, though named like a counter (the name is the public contract): an item that escalates costs more
# than the baseline, so the running total can step down, which a Prometheus counter may never do.
SAVED = Gauge("tiergate_cost_saved_usd_total", "Baseline cost minus actual cost, running total (USD)")
REQUESTS = Counter("tiergate_requests_total", "HTTP classify requests by outcome", ["outcome"])
REQUEST_LATENCY = Histogram("tiergate_request_latency_seconds", "End-to-end latency of classify requests",
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
INFLIGHT = Gauge("tiergate_inflight_requests", "Classify requests in progress")
READY = Gauge("tiergate_ready", "1 when the models are loaded and the gateway serves")
TIER_INFO = Gauge("tiergate_tier_info", "Loaded tiers and their versions (value 1)", ["tier", "kind", "version"])
TIER_THRESHOLD = Gauge("tiergate_tier_threshold", "Default confidence threshold per tier", ["tier"])
TIER_COST_PER_ITEM = Gauge("tiergate_tier_cost_per_item_usd", "Configured cost per item per tier (USD)", ["tier"])

OUTCOMES = ("ok", "bad_request", "overloaded", "error", "unavailable")


def init_labels(tiers: Sequence[tuple[str, str, str, float, float]], labels: Sequence[str]) -> None:
    """Create every label combination at zero, so dashboards and rate() see series from the first scrape.
    ``tiers``: (name, kind, version, threshold, cost per item)."""
    names = [t[0] for t in tiers]
    for name, kind, version, threshold, cost in tiers:
        TIER_LATENCY.labels(name)
        TIER_ITEMS.labels(name)
        COST.labels(name)
        TIER_INFO.labels(name, kind, version or "unknown").set(1)
        TIER_THRESHOLD.labels(name).set(threshold)
        TIER_COST_PER_ITEM.labels(name).set(cost)
        for label in labels:
            DECISIONS.labels(name, label)
    for a, b in zip(names, names[1:], strict=False):
        ESCALATIONS.labels(a, b)
    for o in OUTCOMES:
        REQUESTS.labels(o)


def observe_batch(tier: str, n_items: int, seconds: float) -> None:
    TIER_LATENCY.labels(tier).observe(seconds)
    TIER_ITEMS.labels(tier).inc(n_items)


def record(decisions: Sequence[Decision], cost_per_item: dict[str, float]) -> None:
    for d in decisions:
        DECISIONS.labels(d.tier, d.label).inc()
        for a, b in zip(d.path, d.path[1:], strict=False):
            ESCALATIONS.labels(a, b).inc()
        for t in d.path:
            COST.labels(t).inc(cost_per_item.get(t, 0.0))
        BASELINE.inc(d.baseline_cost_usd)
        SAVED.inc(d.baseline_cost_usd - d.cost_usd)  # may be negative: an escalated item costs more
