from tests.rules.conftest import engine_of
from tiergate.data import Example
from tiergate.rules.evaluate import bench, evaluate


def ex(text, label, i):
    return Example(text=text, label=label, split="calibration", id=f"e{i}")


DATA = [ex("win the lottery", "spam", 1), ex("lottery results for the club", "ham", 2),
        ex("win a prize", "spam", 3), ex("meeting notes", "ham", 4), ex("ask a lawyer", "ham", 5)]


def test_per_rule_and_set_figures():
    eng = engine_of("""
- {id: club, description: d, priority: 9, when: {keywords: [club]}, then: {label: ham}}
- {id: lottery, description: d, priority: 5, when: {keywords: [lottery]}, then: {label: spam}}
- {id: win, description: d, when: {keywords: [win]}, then: {label: spam}}
- {id: legal, description: d, when: {keywords: [lawyer]}, then: {escalate: next}}
""")
    r = evaluate(eng, DATA)
    by = {x["id"]: x for x in r["rules"]}
    # lottery matches 2 items alone (one of them ham) but acts only on the spam one: club takes the other
    assert (by["lottery"]["hits"], by["lottery"]["precision"]) == (1, 1.0)
    assert (by["lottery"]["matched"], by["lottery"]["match_precision"]) == (2, 0.5)
    assert (by["win"]["hits"], by["win"]["matched"]) == (1, 2)
    assert by["legal"]["precision"] is None and by["legal"]["hits"] == 1
    assert r["coverage"] == 3 / 5 and r["precision"] == 1.0 and r["escalated"] == 1
    assert by["club"]["coverage"] == 1 / 5
    conflicts = {tuple(c["rules"]): c for c in r["conflicts"]}
    assert conflicts[("club", "lottery")]["items"] == 1 and conflicts[("club", "lottery")]["examples"] == ["e2"]
    assert r["misclassified"] == [{"rule": "lottery", "items": ["e2"]}]


def test_bench_reports_throughput():
    eng = engine_of("- {id: a, description: d, when: {keywords: [x]}, then: {label: s}}")
    b = bench(eng, ["x y z"] * 50, repeat=2)
    assert b["messages_per_second"] > 0 and b["n"] == 50 and b["decided"] == 50
    assert b["seconds"] >= b["match_seconds"]
