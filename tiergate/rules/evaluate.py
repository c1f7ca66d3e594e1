"""``tiergate rules eval`` and ``tiergate rules bench``: what a rule set decides on labelled data, and how fast.

Per rule, ``hits`` counts the items on which the rule acted *in the set* (the same count that the metric
``tiergate_rules_hits_total`` keeps in production; for a shadow rule, the items it would have acted on), and
``precision`` is the share of those whose true label is the rule's label: the precision of what the rule
actually decides, after higher-priority rules took their share. ``matched`` and ``match_precision`` give the
same for the condition on its own, whatever the priority (how the rule would do if moved to the top).
``precision`` is None for rules that decide no label (escalate, abstain, score).

>>> from tiergate.data import Example
>>> from tiergate.rules.loader import load_text
>>> from tiergate.rules.engine import Engine
>>> eng = Engine(load_text("rules: [{id: w, description: d, when: {keywords: [win]}, then: {label: spam}}]"))
>>> evaluate(eng, [Example("win now", "spam", "test", "1"), Example("hi", "ham", "test", "2")])["coverage"]
0.5
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from tiergate.data import Example, make_item
from tiergate.rules.engine import Engine


def evaluate(engine: Engine, examples: Sequence[Example], *, max_ids: int = 5) -> dict:
    """Per-rule hits/precision/coverage, the set's coverage and precision, and conflicts."""
    n = len(examples)
    per_hits: Counter[str] = Counter()
    per_correct: Counter[str] = Counter()
    per_decided: Counter[str] = Counter()
    per_decided_correct: Counter[str] = Counter()
    wrong: dict[str, list[str]] = {}
    pair_conflicts: Counter[tuple[str, str]] = Counter()
    pair_ids: dict[tuple[str, str], list[str]] = {}
    decided = correct = escalated = 0
    confusion: Counter[tuple[str, str]] = Counter()
    rules = {c.id: c for c in engine.rules}
    for ex in examples:
        item = make_item(ex.text, max_chars=engine.max_chars)
        matched = engine.matching_rules(item)
        labels_here: dict[str, str] = {}
        for rid in matched:
            per_hits[rid] += 1
            then = rules[rid].rule.then
            if then.kind == "label":
                labels_here[rid] = then.label or ""
                if then.label == ex.label:
                    per_correct[rid] += 1
                else:
                    wrong.setdefault(rid, []).append(ex.id)
        ids = sorted(labels_here)
        for i, a in enumerate(ids):
            for b in ids[i + 1:]:
                if labels_here[a] != labels_here[b]:
                    pair_conflicts[(a, b)] += 1
                    pair_ids.setdefault((a, b), []).append(ex.id)
        d = engine.decide(item, record=False)
        if d.kind != "none":
            per_decided[d.rule_id] += 1
            per_decided_correct[d.rule_id] += d.kind == "label" and d.label == ex.label
        for rid in d.shadow_hits:  # a shadow rule "acts" where it matches: it stands outside the order
            per_decided[rid] += 1
            per_decided_correct[rid] += rules[rid].rule.then.label == ex.label
        if d.kind == "label":
            decided += 1
            correct += d.label == ex.label
            confusion[(ex.label, d.label or "")] += 1
        elif d.kind == "escalate":
            escalated += 1
    out_rules = []
    for c in engine.rules:
        rid = c.id
        kind = c.rule.then.kind
        hits, matched = per_decided[rid], per_hits[rid]
        is_label = kind == "label"
        out_rules.append({
            "id": rid, "label": c.rule.then.label, "action": kind, "shadow": c.shadow, "priority": c.rule.priority,
            "hits": hits,
            "precision": (per_decided_correct[rid] / hits if hits else None) if is_label else None,
            "coverage": hits / n if n else 0.0,
            "matched": matched,
            "match_precision": (per_correct[rid] / matched if matched else None) if is_label else None,
            "wrong": wrong.get(rid, [])[:max_ids],
        })
    return {
        "n": n, "version": engine.version, "mode": engine.mode,
        "coverage": decided / n if n else 0.0,
        "precision": correct / decided if decided else None,
        "decided": decided, "correct": correct, "escalated": escalated,
        "escalation_rate": escalated / n if n else 0.0,
        "rules": out_rules,
        "confusion": [{"true": t, "predicted": p, "n": k} for (t, p), k in sorted(confusion.items())],
        "conflicts": [{"rules": [a, b], "labels": [rules[a].rule.then.label, rules[b].rule.then.label],
                       "items": k, "examples": pair_ids[(a, b)][:max_ids]}
                      for (a, b), k in pair_conflicts.most_common()],
        "misclassified": [{"rule": rid, "items": ids} for rid, ids in sorted(wrong.items())
                          if rules[rid].rule.then.kind == "label"],
    }


def bench(engine: Engine, texts: Sequence[str], *, repeat: int = 3) -> dict:
    """Messages per second through parsing and the rule set (best of ``repeat`` passes), one thread."""
    best = float("inf")
    parse_s = match_s = 0.0
    decided = 0
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        items = [make_item(t, max_chars=engine.max_chars) for t in texts]
        t1 = time.perf_counter()
        ds = [engine.decide(it, record=False) for it in items]
        t2 = time.perf_counter()
        if t2 - t0 < best:
            best, parse_s, match_s = t2 - t0, t1 - t0, t2 - t1
            decided = sum(d.kind == "label" for d in ds)
    n = len(texts)
    return {"messages_per_second": n / best if best > 0 else 0.0, "n": n, "seconds": best,
            "parse_seconds": parse_s, "match_seconds": match_s,
            "match_only_messages_per_second": n / match_s if match_s > 0 else 0.0,
            "mean_latency_ms": 1000 * best / n if n else 0.0, "decided": decided, "repeat": repeat,
            "rules": len(engine.rules), "version": engine.version, "threads": 1}
