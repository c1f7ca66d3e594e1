"""The rules tier inside the certified cascade: rules whose decisions disagree with the final tier on the
selection part go to shadow mode, the choice is persisted, applied at load, and bound into the certificate."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from prometheus_client import REGISTRY

from tests.rules.conftest import rules_yaml
from tiergate.calibration.ltt import calibrate_cascade, certificate_status
from tiergate.calibration.metrics import update_certificate_metrics
from tiergate.calibration.shadow import apply_shadow_rules
from tiergate.cascade import Cascade
from tiergate.config import CostConfig, Thresholds, TierConfig, TiergateConfig, load_config, save_config
from tiergate.data import make_item
from tiergate.rules.tier import RulesTier
from tiergate.tiers import FunctionTier

RULES = rules_yaml("""
- id: lottery
  description: lottery mail is spam
  when: {keywords: [lottery]}
  then: {label: spam, confidence: 0.99}
  examples: {match: ["win the lottery"], no_match: ["hello"]}
- id: invoice
  description: invoices are ham (wrong for the phishing ones)
  when: {keywords: [invoice]}
  then: {label: ham, confidence: 0.95}
  examples: {match: ["your invoice"], no_match: ["hello"]}
""")


def _final(texts):  # the final tier: "urgent" invoices are spam (phishing), lotteries spam, the rest ham
    return np.array([[0.02, 0.98] if ("lottery" in t or "urgent" in t) else [0.97, 0.03] for t in texts])


def _small(texts):  # a small tier that is confident and agrees with the final tier except on 1 item in 200
    return np.array([[0.01, 0.99] if ("lottery" in t or "urgent" in t) != (i % 200 == 7) else [0.99, 0.01]
                     for i, t in enumerate(texts)])


@pytest.fixture
def corpus():
    rng = np.random.default_rng(1)
    kinds = rng.choice(["lottery", "invoice", "urgent invoice", "note"], size=3000, p=[0.2, 0.3, 0.05, 0.45])
    texts = [f"{k} number {i}" for i, k in enumerate(kinds)]
    items = [make_item(t) for t in texts]
    y = ["spam" if ("lottery" in t or "urgent" in t) else "ham" for t in texts]
    return items, y


def _cascade(rules: RulesTier) -> Cascade:
    cfg = TiergateConfig(labels=["ham", "spam"], tiers=[
        TierConfig(name="rules", kind="rules", path="rules.yaml", threshold=Thresholds(default=0.0)),
        TierConfig(name="small", kind="onnx", path="s", cost=CostConfig(seconds_per_item=0.001, usd_per_hour=1)),
        TierConfig(name="final", kind="onnx", path="f", cost=CostConfig(seconds_per_item=0.05, usd_per_hour=1)),
    ])
    return Cascade(cfg, [rules, FunctionTier("small", ["ham", "spam"], _small),
                         FunctionTier("final", ["ham", "spam"], _final)])


def test_disagreeing_rule_is_shadowed_and_certified_without_it(corpus):
    items, y = corpus
    c = _cascade(RulesTier.from_text(RULES))
    outputs = [t.predict(items) for t in c.tiers]
    res = calibrate_cascade(c, outputs, y, epsilon=0.02, delta=0.05, items=items, report=False)
    assert res["shadow_rules"] == {"rules": ["invoice"]}  # phishing "urgent invoice" mail disagreed
    assert c.config.calibration["shadow_rules"] == {"rules": ["invoice"]}
    assert c.tiers[0].engine.shadow_overrides == {"invoice"}
    cert = c.config.certificate
    assert cert["shadow_rules"] == {"rules": ["invoice"]} and cert["n_selection"] == 900 and cert["n"] == 2100
    assert not cert["final_only"] and cert["bound"] <= 0.02
    # Served as certified: an invoice now goes on to the models, a lottery is still decided by its rule.
    d = c.classify([make_item("urgent invoice 1"), make_item("lottery 2")])
    assert (d[0].label, d[0].tier) == ("spam", "small") and d[1].tier == "rules"
    assert certificate_status(c, cert)["stale"] is False
    # An operator brings the rule back: the certificate no longer describes what is served.
    c.tiers[0].set_shadow(["invoice"], shadow=False)
    st = certificate_status(c, cert)
    assert st["stale"] and any("shadow" in r for r in st["stale_reasons"])


def test_shadow_choice_is_redone_from_the_file_at_each_calibration(corpus):
    items, y = corpus
    c = _cascade(RulesTier.from_text(RULES))
    c.config.calibration = {"shadow_rules": {"rules": ["lottery"]}}  # an earlier, different choice
    apply_shadow_rules(c)
    assert c.tiers[0].engine.shadow_overrides == {"lottery"}
    outputs = [t.predict(items) for t in c.tiers]
    res = calibrate_cascade(c, outputs, y, epsilon=0.02, delta=0.05, items=items, report=False)
    assert res["shadow_rules"] == {"rules": ["invoice"]}


def test_small_splits_keep_the_rules_and_spend_every_item_on_testing(corpus):
    items, y = corpus
    c = _cascade(RulesTier.from_text(RULES))
    outputs = [t.predict(items[:780]) for t in c.tiers]
    calibrate_cascade(c, outputs, y[:780], epsilon=0.02, delta=0.05, items=items[:780], report=False)
    assert c.config.certificate["n"] == 780 and c.config.certificate["n_selection"] == 0
    assert c.config.calibration["shadow_rules"] == {"rules": []}


def test_persisted_shadow_rules_apply_when_the_config_loads(tmp_path, tiny_workdir):
    d = tmp_path / "w"
    shutil.copytree(tiny_workdir, d)
    (d / "rules.yaml").write_text(RULES)
    cfg, _ = load_config(d / "tiergate.yaml")
    cfg.tiers.insert(0, TierConfig(name="rules", kind="rules", path="rules.yaml", threshold=Thresholds(default=0.0)))
    cfg.calibration = {"shadow_rules": {"rules": ["invoice", "no-longer-there"]}}
    save_config(cfg, d / "tiergate.yaml")
    c = Cascade.from_config(d / "tiergate.yaml")
    assert c.tiers[0].engine.shadow_overrides == {"invoice"}  # unknown ids are skipped, not fatal


def test_certificate_metrics_follow_the_certificate(corpus):
    items, y = corpus
    c = _cascade(RulesTier.from_text(RULES))
    update_certificate_metrics(c)
    assert REGISTRY.get_sample_value("tiergate_certificate_present") == 0
    outputs = [t.predict(items) for t in c.tiers]
    calibrate_cascade(c, outputs, y, epsilon=0.02, delta=0.05, items=items, report=False)
    update_certificate_metrics(c)
    cert = c.config.certificate
    assert REGISTRY.get_sample_value("tiergate_certificate_present") == 1
    assert REGISTRY.get_sample_value("tiergate_certificate_epsilon") == 0.02
    assert REGISTRY.get_sample_value("tiergate_certificate_delta") == 0.05
    assert REGISTRY.get_sample_value("tiergate_certificate_bound") == pytest.approx(cert["bound"])
    assert REGISTRY.get_sample_value("tiergate_certificate_stale") == 0
    c.config.tiers[1].threshold = Thresholds(default=0.5)
    update_certificate_metrics(c)
    assert REGISTRY.get_sample_value("tiergate_certificate_stale") == 1
