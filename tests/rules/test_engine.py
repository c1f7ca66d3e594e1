"""The engine: priorities, shadow, scoring, explanations, time limits, and a property test that it never raises."""

import time

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.rules.conftest import engine_of
from tiergate.data import make_item
from tiergate.rules.engine import REGEX_TIMEOUTS, Engine
from tiergate.rules.loader import load_text

SET = """
- {id: low, description: d, priority: 1, when: {keywords: [offer]}, then: {label: spam, confidence: 0.8}}
- {id: high, description: d, priority: 9, when: {keywords: [offer, newsletter], min_count: 2}, then: {label: ham, confidence: 0.95}}
- {id: send-up, description: d, priority: 5, when: {keywords: [lawyer]}, then: {escalate: final}}
- {id: stop, description: d, priority: 7, when: {keywords: [internal]}, then: {abstain: true}}
- {id: watch, description: d, shadow: true, when: {keywords: [offer]}, then: {label: spam}}
- {id: unused, description: d, enabled: false, priority: 99, when: {keywords: [offer]}, then: {label: ham}}
"""


def test_first_match_by_priority_then_file_order():
    eng = engine_of(SET)
    d = eng.decide(make_item("newsletter with an offer"), record=False)
    assert (d.kind, d.label, d.rule_id, d.confidence) == ("label", "ham", "high", 0.95)
    assert d.shadow_hits == ["watch"]
    d = eng.decide(make_item("an offer"), record=False)
    assert (d.label, d.rule_id) == ("spam", "low")
    d = eng.decide(make_item("an offer from our lawyer"), record=False)
    assert (d.kind, d.escalate_to, d.rule_id) == ("escalate", "final", "send-up")
    d = eng.decide(make_item("internal offer"), record=False)
    assert (d.kind, d.label, d.rule_id) == ("abstain", None, "stop")
    assert eng.decide(make_item("hello"), record=False).kind == "none"
    assert "unused" not in eng.rule_ids and "unused" in eng.all_by_id


def test_equal_priority_keeps_file_order():
    eng = engine_of("""
- {id: first, description: d, when: {regex: a}, then: {label: x}}
- {id: second, description: d, when: {regex: a}, then: {label: y}}
""")
    assert eng.decide(make_item("a"), record=False).rule_id == "first"


def test_scoring_mode():
    eng = engine_of("""
- {id: w1, description: d, when: {keywords: [free]}, then: {label: spam, score: 2}}
- {id: w2, description: d, when: {keywords: [money]}, then: {label: spam, score: 3.5}}
- {id: h1, description: d, when: {keywords: [meeting]}, then: {label: ham, score: 1}}
- {id: veto, description: d, priority: 5, when: {keywords: [whitelisted]}, then: {label: ham, confidence: 0.9}}
""", header="version: 1\nmode: scoring\nthreshold: {spam: 5, ham: 1}\n")
    d = eng.decide(make_item("free money"), record=False)
    assert (d.label, d.rule_id, d.contributors) == ("spam", "w2", ["w2", "w1"])
    assert d.scores == {"spam": 5.5} and 0.9 <= d.confidence <= 1.0
    assert eng.decide(make_item("free"), record=False).kind == "none"
    assert eng.decide(make_item("free money whitelisted"), record=False).rule_id == "veto"
    # both pass their thresholds: the larger multiple of its threshold wins (ham 1/1 < spam 5.5/5? no: 1.0 < 1.1)
    assert eng.decide(make_item("free money meeting"), record=False).label == "spam"


def test_explain_gives_sub_conditions_and_spans():
    eng = engine_of("""
- id: combo
  description: d
  when:
    all:
      - {regex: 'wire\\s+transfer', field: body, flags: [ignorecase]}
      - {any: [{keywords: [urgent]}, {feature: {name: url_count, op: '>=', value: 1}, field: body}]}
  then: {label: spam}
""")
    text = "Subject: hi\n\nPlease WIRE  transfer it, urgent: http://x.example"
    item = make_item(text)
    ex = eng.explain(item)
    assert ex["decision"]["label"] == "spam" and ex["decision"]["rule"] == "combo"
    ev = ex["matched"][0]["evidence"]
    body = item.get("body")
    regex_ev = next(e for e in ev if e["condition"].startswith("regex"))
    assert body[regex_ev["span"][0]:regex_ev["span"][1]] == "WIRE  transfer"
    assert any(e["condition"] == "keyword 'urgent'" for e in ev)
    assert any(e["condition"].startswith("feature url_count >= 1 (is 1)") for e in ev)


def test_catastrophic_pattern_is_cut_off_and_counted():
    eng = engine_of("""
- {id: redos, description: d, priority: 5, when: {regex: '(a+)+$'}, then: {label: spam}}
- {id: after, description: d, when: {keywords: [hello]}, then: {label: ham}}
""", item_budget_s=0.05)
    before = REGEX_TIMEOUTS.labels(rule="redos")._value.get()
    item = make_item("hello " + "a" * 40000 + "!")
    t0 = time.perf_counter()
    d = eng.decide(item)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, elapsed          # without the limit this runs for hours
    assert (d.label, d.rule_id) == ("ham", "after")  # the time-out counted as no match; later rules still ran
    assert REGEX_TIMEOUTS.labels(rule="redos")._value.get() == before + 1
    assert eng.explain(item)["timeouts"] == ["redos"]


# ------------------------------------------------------------------------------------ property test
SAFE_PATTERNS = [r"\bfree\b", r"^Subject:", r"[A-Z]{3,}", r"x.*y", r"(?:spam){e<=1}", r"(a+)+$", r"\d+",
                 r"(?m)^$", r"é", r"\s{2,}", r"(?i)viagra|cialis"]
FIELDS = ["text", "subject", "from", "to", "body", "headers", "header:x-mailer", "header:received", "meta:k"]
words = st.text(min_size=1, max_size=8).filter(lambda s: s.strip() != "")
leaf = st.one_of(
    st.builds(lambda p, f, ic: {"regex": p, "field": f, **({"flags": ["ignorecase"]} if ic else {})},
              st.sampled_from(SAFE_PATTERNS), st.sampled_from(FIELDS), st.booleans()),
    st.builds(lambda ws, f, n: {"keywords": ws, "field": f, "min_count": n},
              st.lists(words, min_size=1, max_size=5), st.sampled_from(FIELDS), st.integers(1, 3)),
    st.builds(lambda ws, f: {"phrases": ws, "field": f}, st.lists(words, min_size=1, max_size=3),
              st.sampled_from(FIELDS)),
    st.builds(lambda n, op, v, f: {"feature": {"name": n, "op": op, "value": v}, "field": f},
              st.sampled_from(["length", "word_count", "line_count", "url_count", "uppercase_ratio",
                               "nonascii_ratio"]),
              st.sampled_from([">", ">=", "<", "<=", "==", "!="]), st.floats(-5, 50, allow_nan=False),
              st.sampled_from(FIELDS)),
    st.builds(lambda p, v: {"feature": {"name": "match_count", "op": ">=", "value": v, "pattern": p}},
              st.sampled_from(SAFE_PATTERNS), st.integers(0, 3)),
)
conditions = st.recursive(leaf, lambda inner: st.one_of(
    st.builds(lambda cs: {"all": cs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda cs: {"any": cs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda c: {"not": c}, inner)), max_leaves=6)
actions = st.one_of(
    st.builds(lambda lab, c: {"label": lab, "confidence": c}, st.sampled_from(["spam", "ham"]),
              st.floats(0.01, 1.0)),
    st.builds(lambda t: {"escalate": t}, st.sampled_from(["next", "final"])),
    st.just({"abstain": True}),
    st.builds(lambda lab, s: {"label": lab, "score": s}, st.sampled_from(["spam", "ham"]), st.floats(-3, 3)),
)


@st.composite
def rule_sets(draw):
    n = draw(st.integers(1, 6))
    rules = [{"id": f"r-{i}", "description": "generated", "priority": draw(st.integers(-3, 3)),
              "shadow": draw(st.booleans()), "enabled": draw(st.booleans()), "when": draw(conditions),
              "then": draw(actions)} for i in range(n)]
    mode = draw(st.sampled_from(["first-match", "scoring"]))
    return {"version": 1, "mode": mode, "threshold": {"spam": 2.0, "ham": 1.0}, "rules": rules}


texts = st.one_of(st.text(max_size=400),
                  st.builds(lambda s, b: f"Subject: {s}\nFrom: a@b.c\nX-Mailer: {s}\n\n{b}",
                            st.text(max_size=60).map(lambda s: s.replace("\n", " ")), st.text(max_size=300)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=rule_sets(), batch=st.lists(texts, min_size=1, max_size=4), meta=st.dictionaries(
    st.just("k"), st.one_of(st.none(), st.text(max_size=10), st.integers())))
def test_engine_never_raises(doc, batch, meta):
    src = load_text(yaml.safe_dump(doc, allow_unicode=True), name="gen.yaml")
    assert not src.errors, [str(p) for p in src.errors]
    eng = Engine(src, item_budget_s=0.01)
    for text in batch:
        item = make_item(text, meta=meta)
        d = eng.decide(item, record=False)
        assert d.kind in ("label", "escalate", "abstain", "none")
        if d.kind == "label":
            assert d.label in ("spam", "ham") and 0 < d.confidence <= 1
        eng.explain(item)
        assert set(eng.matching_rules(item)) <= set(eng.rule_ids)
