import numpy as np
import pytest

from tiergate.cascade import Cascade, route, step
from tiergate.config import CostConfig, Thresholds, TierConfig, TiergateConfig
from tiergate.data import make_item
from tiergate.errors import ConfigError
from tiergate.tiers import FunctionTier, TierOutput


def _cfg(thresholds=(0.9,), costs=(0.001, 0.02)):
    tiers = [TierConfig(name=f"t{i}", kind="onnx", path=".", threshold=Thresholds(default=t),
                        cost=CostConfig(seconds_per_item=c, usd_per_hour=3600)) for i, (t, c) in enumerate(zip(thresholds, costs, strict=False))]
    tiers.append(TierConfig(name="final", kind="onnx", path=".", cost=CostConfig(seconds_per_item=costs[-1], usd_per_hour=3600)))
    return TiergateConfig(labels=["a", "b"], tiers=tiers)


def _by_first_char(conf_a, conf_b):
    """a test double: texts starting with 'a' get label a at conf_a, others b at conf_b"""
    def fn(texts):
        return np.array([[conf_a, 1 - conf_a] if t.startswith("a") else [1 - conf_b, conf_b] for t in texts])
    return fn


def test_confident_items_stop_early_and_the_rest_escalate():
    cfg = _cfg()
    calls = []
    def final(texts):
        calls.append(list(texts))
        return np.tile([0.3, 0.7], (len(texts), 1))
    c = Cascade(cfg, [FunctionTier("t0", ["a", "b"], _by_first_char(0.95, 0.6)), FunctionTier("final", ["a", "b"], final)])
    ds = c.classify([make_item("a1"), make_item("b1"), make_item("a2")])
    assert [d.tier for d in ds] == ["t0", "final", "t0"]
    assert [d.label for d in ds] == ["a", "b", "a"]
    assert calls == [["b1"]]  # the final tier saw only the escalated item, in one batch
    assert ds[1].path == ["t0", "final"] and ds[1].reason == "final-tier"
    assert ds[0].reason.startswith("confidence 0.9500 >= threshold 0.9000")
    # cost: every tier passed through counts; baseline is the final tier's cost
    assert ds[0].cost_usd == pytest.approx(0.001) and ds[1].cost_usd == pytest.approx(0.021)
    assert all(d.baseline_cost_usd == pytest.approx(0.02) for d in ds)
    assert all(d.latency_ms >= 0 for d in ds)


def test_per_class_thresholds():
    cfg = _cfg()
    cfg.tiers[0].threshold = Thresholds(default=0.99, per_class={"a": 0.9})
    c = Cascade(cfg, [FunctionTier("t0", ["a", "b"], _by_first_char(0.95, 0.95)),
                      FunctionTier("final", ["a", "b"], lambda t: np.tile([0.5, 0.5], (len(t), 1)))])
    assert [d.tier for d in c.classify([make_item("a"), make_item("b")])] == ["t0", "final"]


def test_final_only_and_forced_escalation():
    cfg = _cfg(thresholds=(0.0, 0.0), costs=(0.001, 0.002, 0.02))
    class Escalator(FunctionTier):
        def predict(self, items):
            return [TierOutput(label=None, escalate_to="final", reason="r1") for _ in items]
    tiers = [Escalator("t0", ["a", "b"], None), FunctionTier("t1", ["a", "b"], _by_first_char(1, 1)),
             FunctionTier("final", ["a", "b"], lambda t: np.tile([0.2, 0.8], (len(t), 1)))]
    c = Cascade(cfg, tiers)
    d = c.classify([make_item("a")])[0]
    assert d.path == ["t0", "final"] and d.label == "b"  # skipped t1
    d = c.classify([make_item("a")], final_only=True)[0]
    assert d.path == ["final"]


def test_route_matches_live_classify():
    cfg = _cfg(thresholds=(0.8,))
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, size=40)
    texts = [f"{i}" for i in range(40)]
    t0 = FunctionTier("t0", ["a", "b"], lambda t: np.array([[p[int(x)], 1 - p[int(x)]] for x in t]))
    fin = FunctionTier("final", ["a", "b"], lambda t: np.tile([0.4, 0.6], (len(t), 1)))
    items = [make_item(t) for t in texts]
    live = Cascade(cfg, [t0, fin]).classify(items)
    replay = route([t0.predict(items), fin.predict(items)], cfg.tiers)
    assert [cfg.tiers[r.tier_index].name for r in replay] == [d.tier for d in live]
    assert [r.output.label for r in replay] == [d.label for d in live]


def test_step_last_tier_always_decides():
    cfg = _cfg()
    assert step(1, TierOutput(label=None), cfg.tiers) is None
    assert step(0, TierOutput(label="a", confidence=0.5), cfg.tiers) == 1


def test_config_rejects_rules_as_last_tier_and_duplicates():
    with pytest.raises(ValueError):
        TiergateConfig(tiers=[TierConfig(name="r", kind="rules", path="x")])
    with pytest.raises(ValueError):
        TiergateConfig(tiers=[TierConfig(name="a", kind="onnx", path="x"), TierConfig(name="a", kind="onnx", path="y")])
    with pytest.raises(ConfigError):
        Cascade(_cfg(), [])


def test_failing_final_tier_degrades_to_the_cheap_answer():
    cfg = _cfg()
    def broken(texts):
        raise RuntimeError("GPU fell off the bus")
    c = Cascade(cfg, [FunctionTier("t0", ["a", "b"], _by_first_char(0.95, 0.6)), FunctionTier("final", ["a", "b"], broken)])
    ds = c.classify([make_item("a"), make_item("b")])
    assert not ds[0].degraded and ds[0].tier == "t0"
    assert ds[1].degraded and ds[1].label == "b" and ds[1].tier == "t0" and "final failed" in ds[1].reason
    assert ds[1].to_dict()["degraded"] is True


def test_failing_first_tier_is_unavailable():
    from tiergate.errors import UnavailableError
    cfg = _cfg()
    def broken(texts):
        raise RuntimeError("boom")
    c = Cascade(cfg, [FunctionTier("t0", ["a", "b"], broken), FunctionTier("final", ["a", "b"], broken)])
    with pytest.raises(UnavailableError, match="no earlier tier"):
        c.classify([make_item("a")])


def test_per_call_thresholds_override():
    cfg = _cfg(thresholds=(0.9,))
    c = Cascade(cfg, [FunctionTier("t0", ["a", "b"], _by_first_char(0.95, 0.95)),
                      FunctionTier("final", ["a", "b"], lambda t: np.tile([0.5, 0.5], (len(t), 1)))])
    assert c.classify([make_item("a")])[0].tier == "t0"
    strict = [Thresholds(default=0.99), Thresholds()]
    assert c.classify([make_item("a")], thresholds=strict)[0].tier == "final"
    assert cfg.tiers[0].threshold.default == 0.9  # the configured thresholds are untouched
    with pytest.raises(ConfigError):
        c.classify([make_item("a")], thresholds=strict[:1])
