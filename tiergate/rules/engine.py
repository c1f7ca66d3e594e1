"""The rules engine: a validated rule set compiled once, then applied to items.

``first-match`` mode: enabled, non-shadow rules are tried from the highest ``priority`` down (ties keep file
order); the first that matches acts (decide a label, force escalation, or abstain). ``scoring`` mode: rules with
``then: {label, score}`` add their score to the label; rules with a plain label/escalate/abstain still act at
once in priority order; a label whose total reaches ``threshold[label]`` is decided (the highest total/threshold
wins), with confidence ``min(1, 0.9 + 0.1 * (total - threshold) / threshold)``.

Shadow rules are evaluated on every item and counted, never acted on. Nothing here raises on an input: each
item has a time budget for all of its regex evaluations together (``item_budget_s``, or the ``deadline`` the
caller passes), and a regex cut off by it, or started after it, is *no match* plus a metric.

>>> from tiergate.data import make_item
>>> from tiergate.rules.loader import load_text
>>> eng = Engine(load_text('''
... rules:
...   - {id: lottery, description: d, when: {keywords: [lottery]}, then: {label: spam, confidence: 0.9}}
... '''))
>>> eng.decide(make_item("You won the LOTTERY!")).label
'spam'
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client import Counter

from tiergate.data.items import DEFAULT_MAX_CHARS, Item
from tiergate.errors import RuleError
from tiergate.rules.conditions import Context, Evidence, KeywordIndex, Matcher, compile_condition, describe
from tiergate.rules.loader import RuleSource
from tiergate.rules.schema import Rule

DEFAULT_ITEM_BUDGET_S = 0.05  # wall-clock seconds for all the regex evaluations of one item

RULE_HITS = Counter("tiergate_rules_hits_total", "Items on which a rule matched and acted (decided, "
                    "escalated or abstained)", ["rule"])
SHADOW_HITS = Counter("tiergate_rules_shadow_hits_total", "Items a shadow rule matched (it never acts)",
                      ["rule"])
REGEX_TIMEOUTS = Counter("tiergate_rules_regex_timeouts_total", "Regex evaluations cut off by the item's time "
                         "budget, or skipped because it was spent, counted as no match", ["rule"])
_METRICS = (RULE_HITS, SHADOW_HITS, REGEX_TIMEOUTS)


@dataclass(slots=True)
class CompiledRule:
    rule: Rule
    matcher: Matcher
    order: int
    shadow: bool
    file: str = ""
    line: int = 0

    @property
    def id(self) -> str:
        return self.rule.id


@dataclass(slots=True)
class Decision:
    """What the set says about one item. ``kind`` is label, escalate, abstain or none."""

    kind: str = "none"
    label: str | None = None
    confidence: float = 0.0
    rule_id: str = ""
    escalate_to: str | None = None
    contributors: list[str] = field(default_factory=list)  # scoring mode: every rule that added score
    scores: dict[str, float] = field(default_factory=dict)
    shadow_hits: list[str] = field(default_factory=list)


class Engine:
    """A compiled rule set. Build it from a :class:`RuleSource` without errors (else :class:`RuleError`).

    ``shadow`` names rules to run in shadow mode whatever their file says (runtime overrides).
    ``item_budget_s`` is the wall-clock time all the regex evaluations of one item may take together, unless
    the caller passes its own ``deadline``.
    """

    def __init__(self, source: RuleSource, *, item_budget_s: float = DEFAULT_ITEM_BUDGET_S,
                 max_chars: int = DEFAULT_MAX_CHARS, shadow: Iterable[str] = ()):
        source.raise_if_errors()
        self.source = source
        self.mode = source.mode
        self.threshold = dict(source.threshold)
        self.item_budget_s = item_budget_s
        self.max_chars = max_chars
        self.version = source.version()
        self.shadow_overrides = frozenset(shadow)
        self.index = KeywordIndex()
        compiled: list[CompiledRule] = []
        problems: list[str] = []
        for order, entry in enumerate(source.entries):
            rule = entry.rule
            assert rule is not None  # raise_if_errors guarantees every entry parsed
            try:
                matcher = compile_condition(rule.when, self.index)
            except Exception as e:  # regex.error: lint reports it with its location
                line, col = entry.where("when")
                problems.append(f"{entry.file}:{line}:{col}: {rule.id}: invalid regex: {e} "
                                "(fix the pattern; `tiergate rules lint` shows where)")
                continue
            line, _ = entry.where()
            compiled.append(CompiledRule(rule, matcher, order, rule.shadow or rule.id in self.shadow_overrides,
                                         entry.file, line))
        if problems:
            raise RuleError(f"{source.origin}: {len(problems)} rule(s) do not compile", problems)
        self.index.build()
        compiled.sort(key=lambda c: (-c.rule.priority, c.order))
        self.all_by_id = {c.id: c for c in compiled}  # disabled rules too: their examples still run
        compiled = [c for c in compiled if c.rule.enabled]
        self.rules = compiled
        self.active = [c for c in compiled if not c.shadow]
        self.shadows = [c for c in compiled if c.shadow]
        self.by_id = {c.id: c for c in compiled}
        # Metric children bound once: label values are exactly the loaded ids, initialised at zero.
        self._hits = {c.id: RULE_HITS.labels(rule=c.id) for c in compiled}
        self._shadow_hits = {c.id: SHADOW_HITS.labels(rule=c.id) for c in compiled}
        self._timeouts = {c.id: REGEX_TIMEOUTS.labels(rule=c.id) for c in compiled}

    @property
    def rule_ids(self) -> list[str]:
        return [c.id for c in self.rules]

    def context(self, item: Item, deadline: float | None = None) -> Context:
        """The per-item state; ``deadline`` (a ``time.perf_counter()`` value) defaults to now + the item budget."""
        if deadline is None:
            deadline = time.perf_counter() + self.item_budget_s
        return Context(item, self.index, max_chars=self.max_chars, deadline=deadline)

    def _matches(self, c: CompiledRule, ctx: Context) -> bool:
        ctx.rule_id = c.id
        try:
            return c.matcher.match(ctx)
        except Exception:  # a matcher bug must not fail a request; count nothing, match nothing
            return False

    def _flush(self, ctx: Context, shadow_hits: list[str], acted: str, record: bool) -> None:
        if not record:
            return
        for rid in ctx.timeouts:
            t = self._timeouts.get(rid)
            if t is not None:
                t.inc()
        for rid in shadow_hits:
            self._shadow_hits[rid].inc()
        if acted:
            self._hits[acted].inc()

    def decide(self, item: Item, *, record: bool = True, deadline: float | None = None) -> Decision:
        """Apply the set to one item. ``record=False`` leaves the metrics alone (eval, lint, tests); ``deadline``
        (a ``time.perf_counter()`` value) ends its regex evaluations, by default the item budget from now."""
        ctx = self.context(item, deadline)
        shadow_hits = [c.id for c in self.shadows if self._matches(c, ctx)]
        d = self._decide_first(ctx) if self.mode == "first-match" else self._decide_scoring(ctx)
        d.shadow_hits = shadow_hits
        self._flush(ctx, shadow_hits, d.rule_id if d.kind != "none" else "", record)
        return d

    @staticmethod
    def _act(c: CompiledRule) -> Decision:
        then = c.rule.then
        kind = then.kind
        if kind == "label":
            return Decision("label", then.label, c.rule.confidence, c.id)
        if kind == "escalate":
            return Decision("escalate", None, 0.0, c.id, escalate_to=then.escalate)
        return Decision("abstain", None, 0.0, c.id)

    def _decide_first(self, ctx: Context) -> Decision:
        for c in self.active:
            if c.rule.then.kind != "score" and self._matches(c, ctx):
                return self._act(c)
        return Decision()

    def _decide_scoring(self, ctx: Context) -> Decision:
        totals: dict[str, float] = {}
        contrib: dict[str, list[tuple[float, str]]] = {}
        for c in self.active:
            then = c.rule.then
            if not self._matches(c, ctx):
                continue
            if then.kind != "score":
                return self._act(c)
            assert then.label is not None and then.score is not None
            totals[then.label] = totals.get(then.label, 0.0) + then.score
            contrib.setdefault(then.label, []).append((then.score, c.id))
        best, best_ratio = None, 0.0
        for label, total in totals.items():
            thr = self.threshold.get(label)
            if thr is None or thr <= 0 or total < thr:
                continue
            if total / thr > best_ratio:
                best, best_ratio = label, total / thr
        if best is None:
            return Decision(scores=totals)
        thr = self.threshold[best]
        ids = [rid for _, rid in sorted(contrib[best], key=lambda t: -t[0])]
        conf = min(1.0, 0.9 + 0.1 * (totals[best] - thr) / thr)
        return Decision("label", best, conf, ids[0], contributors=ids, scores=totals)

    def matching_rules(self, item: Item) -> list[str]:
        """Every enabled rule (shadow included) whose condition matches, in priority order; no metrics."""
        ctx = self.context(item)
        return [c.id for c in self.rules if self._matches(c, ctx)]

    def rule_matches(self, rule_id: str, item: Item) -> bool:
        c = self.all_by_id.get(rule_id)
        return c is not None and self._matches(c, self.context(item))

    def explain(self, item: Item) -> dict:
        """Which rules matched and why (sub-condition, field, span), and what the set decided."""
        ctx = self.context(item)
        matched = []
        for c in self.rules:
            ctx.rule_id = c.id
            try:
                ok = c.matcher.match(ctx)
                evidence: list[Evidence] = c.matcher.explain(ctx) if ok else []
            except Exception as e:  # pragma: no cover - defensive, mirrors _matches
                ok, evidence = False, [Evidence(f"error: {e}", "-")]
            if ok:
                matched.append({"id": c.id, "priority": c.rule.priority, "shadow": c.shadow,
                                "then": c.rule.then.model_dump(exclude_none=True),
                                "condition": describe(c.rule.when),
                                "evidence": [e.as_dict() for e in evidence]})
        d = self.decide(item, record=False)
        return {"decision": {"kind": d.kind, "label": d.label, "confidence": d.confidence, "rule": d.rule_id,
                             "escalate_to": d.escalate_to, "scores": d.scores},
                "matched": matched, "timeouts": sorted(set(ctx.timeouts)), "version": self.version}

    def decide_all(self, items: Sequence[Item], *, record: bool = True) -> list[Decision]:
        return [self.decide(it, record=record) for it in items]


def forget_rule_metrics(keep: Iterable[str]) -> None:
    """Drop metric children of rule ids no longer loaded, so label values stay the loaded ids."""
    keep = set(keep)
    for metric in _METRICS:
        for labels in list(metric._metrics):  # prometheus_client keeps children keyed by label tuples
            if labels[0] not in keep:
                metric.remove(*labels)
