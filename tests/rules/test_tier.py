"""RulesTier: the Tier contract, validated atomic swaps, runtime shadow mode, and its metrics."""

import os
import threading
import time

import pytest
from prometheus_client import REGISTRY

from tests.rules.conftest import GOOD, engine_of, rules_yaml
from tiergate.data import make_item
from tiergate.errors import RuleError, UnavailableError
from tiergate.rules.loader import load_text
from tiergate.rules.tier import RulesTier, pack_path
from tiergate.tiers import Capabilities, Tier


def sample(name, labels):
    v = REGISTRY.get_sample_value(name, labels)
    return 0.0 if v is None else v


def test_predict_contract(write):
    tier = RulesTier.from_path(write("r.yaml", GOOD))
    assert isinstance(tier, Tier) and tier.name == "rules"
    assert tier.capabilities == Capabilities(distribution=False, light=True)
    outs = tier.predict([make_item("You won the lottery"), make_item("Subject: Meeting notes\n\nx"),
                         make_item("nothing")])
    assert [(o.label, o.confidence, o.reason, o.escalate_to) for o in outs] == [
        ("spam", 0.97, "lottery", None), ("ham", 0.9, "meeting", None), (None, 0.0, "", None)]
    assert tier.predict([]) == []
    assert len(tier.version()) == 16
    assert tier.rules_hit([make_item("lottery"), make_item("x")]) == ["lottery", None]


def test_escalate_and_abstain_outputs():
    tier = RulesTier.from_text(rules_yaml("""
- {id: up, description: d, when: {keywords: [lawyer]}, then: {escalate: final}, examples: {match: [lawyer], no_match: [x]}}
- {id: quiet, description: d, when: {keywords: [hush]}, then: {abstain: true}, examples: {match: [hush], no_match: [x]}}
"""))
    up, quiet = tier.predict([make_item("lawyer"), make_item("hush")])
    assert (up.label, up.escalate_to, up.reason) == (None, "final", "up")
    assert (quiet.label, quiet.escalate_to, quiet.reason) == (None, None, "quiet")


def test_from_path_refuses_invalid_sets_with_every_problem(write):
    bad = rules_yaml("""
- {id: a, description: d, when: {regex: '('}, then: {label: s}}
- {id: a, description: d, when: {keywords: [x]}, then: {label: s}, examples: {match: [y]}}
""")
    with pytest.raises(RuleError) as e:
        RulesTier.from_path(write("bad.yaml", bad))
    assert len(e.value.problems) == 2  # invalid regex and duplicate id (examples only run on a valid set)


def test_failing_examples_block_loading(write):
    with pytest.raises(RuleError) as e:
        RulesTier.from_path(write("f.yaml", rules_yaml(
            "- {id: a, description: d, when: {keywords: [x]}, then: {label: s}, examples: {match: [y]}}")))
    assert "example match[0]" in e.value.problems[0]


def test_reload_and_replace_swap_or_keep(write):
    path = write("r.yaml", GOOD)
    tier = RulesTier.from_path(path)
    v1 = tier.version()
    fails = sample("tiergate_rules_reload_failures_total", {"source": "api"})
    with pytest.raises(RuleError) as e:
        tier.replace_text("rules:\n  - {id: x, description: d, when: {regex: '(('}, then: {label: s}}\n")
    assert e.value.problems[0].startswith(str(path)) and tier.version() == v1
    assert tier.predict([make_item("lottery")])[0].reason == "lottery"
    assert sample("tiergate_rules_reload_failures_total", {"source": "api"}) == fails + 1
    assert sample("tiergate_rules_version_info", {"version": v1}) == 1
    new = GOOD.replace("confidence: 0.97", "confidence: 0.5")
    v2 = tier.replace_text(new)
    assert v2 != v1 and tier.version() == v2 and tier.predict([make_item("lottery")])[0].confidence == 0.5
    assert sample("tiergate_rules_version_info", {"version": v2}) == 1
    assert REGISTRY.get_sample_value("tiergate_rules_version_info", {"version": v1}) is None
    path.write_text(GOOD.replace("0.97", "0.6"))
    tier.reload()
    assert tier.predict([make_item("lottery")])[0].confidence == 0.6


def test_replace_text_can_persist(write):
    path = write("r.yaml", GOOD)
    tier = RulesTier.from_path(path)
    text = GOOD.replace("0.97", "0.7")
    v = tier.replace_text(text, persist=True)
    assert path.read_text() == text
    assert tier.reload() == v  # the same text read back from the file is the same version


def test_set_shadow_stops_a_rule_acting_and_survives_reload(write):
    path = write("r.yaml", GOOD)
    tier = RulesTier.from_path(path)
    tier.set_shadow(["lottery"])
    out = tier.predict([make_item("lottery")])[0]
    assert out.label is None and out.extras["shadow_hits"] == ["lottery"]
    tier.reload()
    assert tier.predict([make_item("lottery")])[0].label is None
    tier.set_shadow(["lottery"], shadow=False)
    assert tier.predict([make_item("lottery")])[0].label == "spam"
    with pytest.raises(RuleError):
        tier.set_shadow(["no-such-rule"])


def test_metrics_are_labelled_by_loaded_ids(write):
    tier = RulesTier.from_path(write("r.yaml", GOOD))
    assert REGISTRY.get_sample_value("tiergate_rules_hits_total", {"rule": "meeting"}) is not None
    before = sample("tiergate_rules_hits_total", {"rule": "lottery"})
    tier.predict([make_item("lottery")] * 3)
    assert sample("tiergate_rules_hits_total", {"rule": "lottery"}) == before + 3
    tier.set_shadow(["lottery"])
    s0 = sample("tiergate_rules_shadow_hits_total", {"rule": "lottery"})
    tier.predict([make_item("lottery")])
    assert sample("tiergate_rules_shadow_hits_total", {"rule": "lottery"}) == s0 + 1
    tier.replace_text(rules_yaml("- {id: renamed, description: d, when: {keywords: [x]}, then: {label: s}}"))
    assert REGISTRY.get_sample_value("tiergate_rules_hits_total", {"rule": "lottery"}) is None
    assert REGISTRY.get_sample_value("tiergate_rules_hits_total", {"rule": "renamed"}) == 0.0


def test_predict_during_swaps_sees_one_set_per_batch(write):
    tier = RulesTier.from_path(write("r.yaml", GOOD))
    a, b = GOOD, GOOD.replace("0.97", "0.5")
    stop = threading.Event()
    errors: list[BaseException] = []

    def swapper():
        i = 0
        while not stop.is_set():
            tier.replace_text(a if i % 2 else b)
            i += 1

    t = threading.Thread(target=swapper)
    t.start()
    try:
        for _ in range(200):
            outs = tier.predict([make_item("lottery")] * 5)
            if len({o.confidence for o in outs}) != 1:
                errors.append(AssertionError("mixed sets in one batch"))
    finally:
        stop.set()
        t.join()
    assert not errors


def test_pack_path():
    assert pack_path("spamassassin").is_file()
    with pytest.raises(RuleError, match="debian-packages"):
        pack_path("nope")


def test_metric_names_and_label_sets(write):
    RulesTier.from_path(write("r.yaml", GOOD))
    want = {
        "tiergate_rules_hits_total": {"rule"}, "tiergate_rules_shadow_hits_total": {"rule"},
        "tiergate_rules_regex_timeouts_total": {"rule"}, "tiergate_rules_reload_attempts_total": {"source"},
        "tiergate_rules_reload_failures_total": {"source"}, "tiergate_rules_version_info": {"version"},
        "tiergate_rules_loaded": {"state"}, "tiergate_rules_last_reload_success_timestamp_seconds": set(),
        "tiergate_rules_items_total": set(), "tiergate_rules_skipped_items_total": set(),
    }
    seen: dict[str, set[str]] = {}
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if s.name.startswith("tiergate_rules_") and not s.name.endswith("_created"):
                seen.setdefault(s.name, set()).update(s.labels)
    assert seen == want
    for source in ("startup", "file", "api", "manual"):  # initialised up front, attempts beside failures
        assert REGISTRY.get_sample_value("tiergate_rules_reload_attempts_total", {"source": source}) is not None
        assert REGISTRY.get_sample_value("tiergate_rules_reload_failures_total", {"source": source}) is not None


# ------------------------------------------------------------------------------------------- budgets
REDOS = """
- {id: redos-1, description: d, priority: 9, when: {regex: '(a+)+$'}, then: {label: spam}}
- {id: redos-2, description: d, priority: 8, when: {regex: '(?:a|a?)+$'}, then: {label: spam}}
- {id: redos-3, description: d, priority: 7, when: {regex: '(\\w+\\s?)*$'}, then: {label: spam}}
- {id: redos-4, description: d, priority: 6, when: {regex: '(.*a){12}$'}, then: {label: spam}}
- {id: hello, description: d, when: {keywords: [hello]}, then: {label: ham}}
"""
BAD = "hello " + "a" * 5000 + "!"  # each pattern above backtracks on it for far longer than a second


def redos_tier(**budgets) -> RulesTier:
    return RulesTier(engine_of(REDOS), **budgets)  # built without lint, which refuses these patterns


def timeouts_total() -> float:
    return sum(sample("tiergate_rules_regex_timeouts_total", {"rule": f"redos-{i}"}) for i in range(1, 5))


def test_the_item_budget_holds_across_all_its_regexes():
    tier = redos_tier(item_budget_s=0.1)
    tier.predict([make_item(BAD)])  # the first time-out teaches the tier how loaded the machine is
    before = timeouts_total()
    start = time.perf_counter()
    out = tier.predict([make_item(BAD)])[0]
    elapsed = time.perf_counter() - start
    assert elapsed < 0.1 * 2, elapsed  # a limit per regex would take four times 0.1 s of CPU, or more
    assert (out.label, out.reason) == ("ham", "hello")  # timed-out regexes count as no match
    assert timeouts_total() == before + 4  # one cut off, three started after the budget was spent


def test_the_batch_budget_holds_and_the_rest_escalate():
    tier = redos_tier(item_budget_s=0.05, batch_budget_s=0.15)
    items0 = sample("tiergate_rules_items_total", None)
    skipped0 = sample("tiergate_rules_skipped_items_total", None)
    start = time.perf_counter()
    outs = tier.predict([make_item(BAD) for _ in range(40)])
    elapsed = time.perf_counter() - start
    assert len(outs) == 40 and elapsed < 0.15 + 0.1, elapsed  # without it: 40 x 50 ms at the very least
    skipped = [o for o in outs if o.extras.get("skipped") == "batch_budget"]
    assert len(skipped) >= 30 and outs[0].label == "ham"
    assert all((o.label, o.escalate_to, o.reason) == (None, None, "") for o in skipped)  # "no decision"
    assert outs[-len(skipped):] == skipped  # only the items after the budget ran out
    assert sample("tiergate_rules_skipped_items_total", None) == skipped0 + len(skipped)
    assert sample("tiergate_rules_items_total", None) == items0 + 40


def test_a_batch_within_its_budget_is_decided_whole():
    tier = RulesTier.from_text(GOOD, batch_budget_s=5.0)
    outs = tier.predict([make_item("lottery")] * 256)
    assert [o.label for o in outs] == ["spam"] * 256 and not any("skipped" in o.extras for o in outs)


# ---------------------------------------------------------------------------------- atomic uploads
def test_concurrent_persisted_uploads_never_interleave(write):
    path = write("rules/r.yaml", GOOD)
    os.chmod(path, 0o644)
    tier = RulesTier.from_path(path)
    texts = [GOOD.replace("confidence: 0.97", f"confidence: 0.{50 + i}") for i in range(8)]
    start = threading.Barrier(len(texts))
    errors: list[BaseException] = []

    def upload(text):
        start.wait()
        try:
            for _ in range(3):
                tier.replace_text(text, persist=True)
        except BaseException as e:  # noqa: BLE001 - collected and asserted on below
            errors.append(e)

    threads = [threading.Thread(target=upload, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    on_disk = path.read_text()
    assert on_disk in texts  # one whole upload, never a mix
    assert load_text(on_disk, name=str(path)).version() == tier.version()  # the file is what is served
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.yaml"]  # no temporary file left behind
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_keeps_the_old_file_and_the_old_rules(write, monkeypatch):
    path = write("rules/r.yaml", GOOD)
    tier = RulesTier.from_path(path)
    v1 = tier.version()
    fails = sample("tiergate_rules_reload_failures_total", {"source": "api"})

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(UnavailableError, match="No space left") as e:
        tier.replace_text(GOOD.replace("0.97", "0.5"), persist=True)
    assert e.value.context["rules_version"] == v1
    assert tier.version() == v1 and tier.predict([make_item("lottery")])[0].confidence == 0.97
    assert path.read_text() == GOOD
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.yaml"]
    assert sample("tiergate_rules_reload_failures_total", {"source": "api"}) == fails + 1
