"""Tier kinds: the registry builds real tiers, each kind declares what its tiers do, and tier paths stay inside
the folders a config is allowed to read."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from tests.rules.conftest import GOOD
from tiergate import registry
from tiergate.cascade import Cascade
from tiergate.config import TierConfig, TiergateConfig, load_config, save_config
from tiergate.data import make_item
from tiergate.errors import ConfigError
from tiergate.registry import build_tier, capabilities_of, register_tier_kind, tier_kinds, tier_path
from tiergate.tiers import Capabilities, FunctionTier


@pytest.fixture
def kinds(monkeypatch):
    """Registrations made in a test vanish after it."""
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))


@pytest.fixture
def items(spam_ds):
    return [make_item(e.text) for e in spam_ds.split("calibration")[:70]]


def _rel(target, base) -> str:
    return os.path.relpath(target, base)


def test_builtin_kinds_declare_what_their_tier_classes_declare():
    from tiergate.models.large import LargeTier
    from tiergate.models.small import OnnxTier
    from tiergate.rules.tier import RulesTier

    assert {"rules", "onnx", "torch"} <= set(tier_kinds())
    for kind, cls in (("rules", RulesTier), ("onnx", OnnxTier), ("torch", LargeTier)):
        assert capabilities_of(TierConfig(name="t", kind=kind, path="x")) == cls.capabilities, kind
    assert capabilities_of(TierConfig(name="t", kind="rules", path="x")) == Capabilities(distribution=False, light=True)
    assert capabilities_of(TierConfig(name="t", kind="onnx", path="x")).distribution


def test_onnx_tier_is_built_named_and_batch_invariant(tiny_workdir, items):
    tier = build_tier(TierConfig(name="cheap", kind="onnx", path="small"), tiny_workdir)
    assert tier.name == "cheap" and tier.labels == ["ham", "spam"]
    assert tier.capabilities.batch_invariant and tier.capabilities.max_batch is None
    # 70 items cross the tier's internal slice of 64: one call must give each item what it gets alone
    together = np.array([[o.probabilities[lab] for lab in tier.labels] for o in tier.predict(items)])
    alone = np.array([[o.probabilities[lab] for lab in tier.labels] for it in items for o in tier.predict([it])])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)


def test_rules_tier_is_built_without_a_distribution_and_batch_invariant(tmp_path):
    (tmp_path / "rules.yaml").write_text(GOOD, encoding="utf-8")
    tier = build_tier(TierConfig(name="filters", kind="rules", path="rules.yaml"), tmp_path)
    assert tier.name == "filters" and tier.capabilities == Capabilities(distribution=False, light=True)
    batch = [make_item("You won the lottery"), make_item("Subject: Meeting notes\n\nx"), make_item("nothing")]
    assert tier.predict(batch) == [o for it in batch for o in tier.predict([it])]


def test_a_rules_only_host_imports_no_model_library(tmp_path):
    (tmp_path / "rules.yaml").write_text(GOOD, encoding="utf-8")
    code = ("import sys; from pathlib import Path; from tiergate.config import TierConfig; "
            "from tiergate.registry import build_tier; "
            f"build_tier(TierConfig(name='r', kind='rules', path='rules.yaml'), Path({str(tmp_path)!r})); "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("path", ["../../etc", "/etc", "small/../../.."])
def test_a_path_outside_the_config_folder_is_refused(tiny_workdir, path):
    tc = TierConfig(name="small", kind="onnx", path=path)
    with pytest.raises(ConfigError) as e:
        build_tier(tc, tiny_workdir)
    msg = str(e.value)
    assert "tier small" in msg and repr(path) in msg and "model_dirs" in msg


def test_an_escaping_symlink_is_refused_unless_its_target_folder_is_listed(tiny_workdir, tmp_path):
    (tmp_path / "small").symlink_to(tiny_workdir / "small", target_is_directory=True)
    tc = TierConfig(name="small", kind="onnx", path="small")
    with pytest.raises(ConfigError, match="resolves to .*outside"):
        build_tier(tc, tmp_path)
    assert build_tier(tc, tmp_path, model_dirs=[_rel(tiny_workdir, tmp_path)]).labels == ["ham", "spam"]
    # listing a sibling folder does not open the rest of the disk
    with pytest.raises(ConfigError):
        tier_path(TierConfig(name="x", kind="onnx", path="/etc/passwd"), tmp_path, [_rel(tiny_workdir, tmp_path)])


def test_model_dirs_in_the_config_let_a_cascade_load_models_kept_elsewhere(tiny_workdir, tmp_path, items):
    cfg, _ = load_config(tiny_workdir / "tiergate.yaml")
    for tc in cfg.tiers:
        tc.path = str(tiny_workdir / tc.path)  # absolute, outside tmp_path
    save_config(cfg, tmp_path / "tiergate.yaml")
    with pytest.raises(ConfigError, match="model_dirs"):
        Cascade.from_config(tmp_path / "tiergate.yaml")
    cfg.model_dirs = [_rel(tiny_workdir, tmp_path)]
    save_config(cfg, tmp_path / "tiergate.yaml")
    served = Cascade.from_config(tmp_path / "tiergate.yaml").classify(items[:5])
    reference = Cascade.from_config(tiny_workdir / "tiergate.yaml").classify(items[:5])
    assert [(d.label, d.tier) for d in served] == [(d.label, d.tier) for d in reference]


def test_unknown_kind_names_the_known_ones(tmp_path):
    with pytest.raises(ValidationError, match="unknown tier kind 'grpc'.*onnx, remote, rules, torch"):
        TierConfig(name="api", kind="grpc", path="api.json")
    (tmp_path / "tiergate.yaml").write_text("tiers:\n- {name: api, kind: grpc, path: api.json}\n")
    with pytest.raises(ConfigError, match=r"tiers\.0\.kind.*unknown tier kind 'grpc'"):
        load_config(tmp_path / "tiergate.yaml")
    # a config built without validation still cannot reach an unregistered kind
    tc = TierConfig.model_construct(name="api", kind="grpc", path="api.json")
    with pytest.raises(ConfigError, match="tier api: unknown kind 'grpc'; known kinds: onnx, remote, rules, torch"):
        capabilities_of(tc)


def test_a_registered_kind_plugs_into_configs_and_the_cascade(kinds, tiny_workdir, tmp_path, items):
    seen = []

    def build(tc, path):
        seen.append(path)
        return FunctionTier("ignored", ["ham", "spam"], lambda texts: np.tile([0.2, 0.8], (len(texts), 1)),
                        capabilities=Capabilities(batch_invariant=False, max_batch=8))

    caps = Capabilities(batch_invariant=False, max_batch=8)
    register_tier_kind("plugin", build, caps)
    register_tier_kind("plugin", build, caps)  # the same registration again is harmless
    (tmp_path / "api.json").write_text("{}")
    cfg = TiergateConfig(labels=["ham", "spam"], tiers=[TierConfig(name="api", kind="plugin", path="api.json")])
    save_config(cfg, tmp_path / "tiergate.yaml")
    cascade = Cascade.from_config(tmp_path / "tiergate.yaml")
    assert seen == [(tmp_path / "api.json").resolve()]  # the builder gets the resolved, confined path
    assert cascade.tiers[0].name == "api" and cascade.tiers[0].capabilities == caps
    assert capabilities_of(cfg.tiers[0]) == caps
    assert {d.label for d in cascade.classify(items[:3])} == {"spam"}
    with pytest.raises(ConfigError, match="already registered"):
        register_tier_kind("onnx", build, Capabilities())
    with pytest.raises(ConfigError, match="tier kind 'no kind'"):
        register_tier_kind("no kind", build, Capabilities())


def test_a_kind_whose_tiers_contradict_its_registration_is_refused(kinds, tmp_path):
    register_tier_kind("liar", lambda tc, path: FunctionTier("x", ["a"], lambda t: None),
                       Capabilities(distribution=False))
    (tmp_path / "m").mkdir()
    with pytest.raises(ConfigError, match="tier m: kind 'liar' is registered with distribution=False"):
        build_tier(TierConfig(name="m", kind="liar", path="m"), tmp_path)
