"""Prometheus metrics of the request path (STYLE.md: base units, ``_total`` on counters, closed label
sets initialised up front, histograms rather than summaries, attempts beside failures)."""

from __future__ import annotations

import gc
import time
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
# A gauge, and so not named _total: an item that escalates costs more than the baseline, so the running total
# can step down, which a counter may never do. It is net of the shadow audits' cost. Rates of savings are derived
# in PromQL from the counters (deploy/prometheus/rules.yml: baseline - cost - shadow cost).
SAVED = Gauge("tiergate_cost_saved_usd", "Baseline cost minus what the cascade and its shadow audits cost, running "
              "total since start (USD)", multiprocess_mode="sum")
SAVINGS_TARGET = Gauge("tiergate_savings_target_ratio", "The share of the all-to-final-tier cost the operator expects "
                       "the cascade to save (metrics.savings_target)", multiprocess_mode="max")
REQUESTS = Counter("tiergate_requests_total", "HTTP classify requests by outcome", ["outcome"])
REQUEST_LATENCY = Histogram("tiergate_request_latency_seconds", "End-to-end latency of classify requests",
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
INFLIGHT = Gauge("tiergate_inflight_requests", "Classify requests in progress", multiprocess_mode="livesum")
READY = Gauge("tiergate_ready", "1 when the models are loaded and the gateway serves", multiprocess_mode="min")
TIER_INFO = Gauge("tiergate_tier_info", "Loaded tiers and their versions (value 1)", ["tier", "kind", "version"], multiprocess_mode="max")
TIER_THRESHOLD = Gauge("tiergate_tier_threshold", "Default confidence threshold per tier", ["tier"], multiprocess_mode="max")
TIER_COST_PER_ITEM = Gauge("tiergate_tier_cost_per_item_usd", "Configured cost per item per tier (USD)", ["tier"], multiprocess_mode="max")

# The serving path (issue 12): batching, admission, degraded answers, the gateway's own time.
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_SIZE = Histogram("tiergate_batch_size", "Items per batch a tier ran (gathered across requests)", ["tier"],
                       buckets=_SIZE_BUCKETS)
QUEUE_WAIT = Histogram("tiergate_queue_wait_seconds", "Time an item waited in a tier's queue before its batch ran",
                       ["tier"], buckets=_FAST_BUCKETS)
OVERHEAD = Histogram("tiergate_overhead_seconds", "Time a classify request spent in the gateway outside tier "
                     "compute (parsing, queueing, routing, encoding)", buckets=_FAST_BUCKETS)
QUEUE_ITEMS = Gauge("tiergate_queue_items", "Items waiting or running per tier", ["tier"], multiprocess_mode="livesum")
DEGRADED = Counter("tiergate_degraded_total", "Items answered by a cheaper tier because a later one could not "
                   "(error, timeout, breaker_open, deadline)", ["reason"])
ESCALATION_REASONS = Counter("tiergate_escalation_reasons_total", "Items passed on from a tier, by why",
                             ["tier", "reason"])
TIER_BATCHES = Counter("tiergate_tier_batches_total", "Batches each tier was asked to run (attempts)", ["tier"])
TIER_FAILURES = Counter("tiergate_tier_failures_total", "Batches that failed, by tier and why", ["tier", "reason"])
REJECTED = Counter("tiergate_rejected_total", "Requests refused with 429, by the tier that was saturated "
                   "(event_loop: the gateway's own event loop, see server.max_loop_wait_ms; loop_budget: "
                   "server.loop_budget_ms; open_requests: server.max_open_requests)", ["tier"])
LOOP_WAIT = Histogram("tiergate_loop_wait_seconds", "Time a request waited on the gateway's event loop between "
                      "being read off its connection and being handled", buckets=_FAST_BUCKETS)
SHED = Counter("tiergate_shed_total", "Items a tier did not start because their deadline would pass before its "
               "batch could finish (their requests are answered 429)", ["tier"])
LOOP_LAG = Histogram("tiergate_loop_lag_seconds", "How late the gateway's event loop ran a timer it sets every "
                     "5 ms: about how long its turns take (server.loop_budget_ms)",
                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
BREAKER = Gauge("tiergate_breaker_state", "Circuit breaker per tier: 0 closed, 1 open, 2 half-open", ["tier"],
                multiprocess_mode="max")
PRIVILEGED = Counter("tiergate_privileged_requests_total", "Requests using final_only or epsilon, by outcome",
                     ["privilege", "outcome"])
MODEL_RELOADS = Counter("tiergate_model_reloads_total", "Model hot-swap attempts by outcome", ["outcome"])
FAULTS = Gauge("tiergate_fault_injected", "1 while an operator's fault is injected on the tier", ["tier"],
               multiprocess_mode="max")

FEEDBACK = Counter("tiergate_feedback_total", "Feedback received, by outcome (agreed or corrected: it matched "
                   "the decided label or not; unknown_id, bad_label: refused)", ["outcome"])
FEEDBACK_OUTCOMES = ("agreed", "corrected", "unknown_id", "bad_label")

DEGRADED_REASONS = ("error", "timeout", "breaker_open", "deadline")
FAILURE_REASONS = ("error", "timeout", "breaker_open")
# low_confidence: below the tier's threshold; rule: a rule said escalate; error, timeout, breaker_open: the tier
# failed; deadline: passed on, but no later tier could answer in time (answered degraded); override: sent past
# the tier by the caller (final_only).
ESCALATION_WHY = ("low_confidence", "rule", "error", "timeout", "breaker_open", "deadline", "override")
OTHER_LABEL = "other"
_kept_labels: frozenset[str] | None = None   # the label values metrics use; the rest count as "other"
OUTCOMES = ("ok", "bad_request", "overloaded", "error", "unavailable", "unauthorized")


def metric_labels(labels: Sequence[str], kept: Sequence[str] | None, top: int) -> list[str]:
    """The values the ``label`` label takes: ``kept`` (the config's metrics.label_values) or the first ``top``
    labels, and ``other`` for the rest, so a data set with thousands of classes cannot explode the series."""
    chosen = list(kept) if kept is not None else list(labels)[:top]
    return chosen + ([OTHER_LABEL] if len(chosen) < len(labels) else [])


def label_value(label: str) -> str:
    return label if _kept_labels is None or label in _kept_labels else OTHER_LABEL


def init_labels(tiers: Sequence[tuple[str, str, str, float, float]], labels: Sequence[str],
                savings_target: float = 0.0) -> None:
    """Create every label combination at zero, so dashboards and rate() see series from the first scrape.
    ``tiers``: (name, kind, version, threshold, cost per item); ``labels``: from :func:`metric_labels`."""
    global _kept_labels
    _kept_labels = frozenset(labels)
    SAVINGS_TARGET.set(savings_target)
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
    for name in names:
        BATCH_SIZE.labels(name)
        QUEUE_WAIT.labels(name)
        QUEUE_ITEMS.labels(name)
        TIER_BATCHES.labels(name)
        REJECTED.labels(name)
        SHED.labels(name)
        BREAKER.labels(name)
        FAULTS.labels(name)
        for r in FAILURE_REASONS:
            TIER_FAILURES.labels(name, r)
        for r in ESCALATION_WHY:
            ESCALATION_REASONS.labels(name, r)
    for r in DEGRADED_REASONS:
        DEGRADED.labels(r)
    for priv in ("final_only", "epsilon"):
        for o in ("allowed", "denied"):
            PRIVILEGED.labels(priv, o)
    for o in ("ok", "rejected"):
        MODEL_RELOADS.labels(o)
    for o in FEEDBACK_OUTCOMES:
        FEEDBACK.labels(o)


_CHILDREN: dict[tuple, object] = {}


def child(metric, *labels: str):
    """``metric.labels(*labels)``, made once: ``labels()`` takes a lock and builds its key on every call (1.7 µs
    measured, against 0.7 for the child's ``inc``), and a rules-decided request touches a dozen series. Made
    lazily, in the process that serves (prometheus-client's multiprocess mode binds a child to its process)."""
    key = (id(metric), labels)
    c = _CHILDREN.get(key)
    if c is None:
        c = _CHILDREN[key] = metric.labels(*labels)
    return c


def observe_batch(tier: str, n_items: int, seconds: float) -> None:
    child(TIER_LATENCY, tier).observe(seconds)
    child(TIER_ITEMS, tier).inc(n_items)


def record(decisions: Sequence[Decision], cost_per_item: dict[str, float]) -> None:
    for d in decisions:
        child(DECISIONS, d.tier, label_value(d.label)).inc()
        for a, b in zip(d.path, d.path[1:], strict=False):
            child(ESCALATIONS, a, b).inc()
        for t in d.path:
            child(COST, t).inc(cost_per_item.get(t, 0.0))
        BASELINE.inc(d.baseline_cost_usd)
        SAVED.inc(d.baseline_cost_usd - d.cost_usd)  # may be negative: an escalated item costs more


# The collector's pauses: every request of the process waits while one runs, so they set the floor of the tail.
GC_PAUSE = Histogram("tiergate_gc_pause_seconds", "Time the process stood still in one garbage collection, by "
                     "generation", ["generation"], buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                           0.025, 0.05, 0.1, 0.25))
_GC_PAUSES = [GC_PAUSE.labels(str(g)) for g in range(3)]
_gc_start = [0.0]


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_start[0] = time.perf_counter()
    elif _gc_start[0]:
        _GC_PAUSES[info["generation"]].observe(time.perf_counter() - _gc_start[0])


def watch_gc() -> None:
    """Time every collection into ``tiergate_gc_pause_seconds`` (idempotent)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)
