"""What the log keeps of a text: nothing by default; escalated, sampled or all when configured; redacted."""

from __future__ import annotations

import random

import pytest

from tiergate.config import LogConfig, Redaction, TiergateConfig, load_config
from tiergate.decisionlog.privacy import TextPolicy, text_sha256
from tiergate.errors import ConfigError


def test_the_default_keeps_no_text_at_all():
    cfg = TiergateConfig.model_validate({"tiers": [{"name": "m", "kind": "onnx", "path": "m"}]})
    assert cfg.log.enabled and cfg.log.store_text == "none"
    policy = TextPolicy(cfg.log)
    assert not policy.stores_any
    assert not policy.keeps(["rules", "small", "large"]) and not policy.keeps(["small"])


def test_escalated_keeps_items_a_tier_passed_on():
    policy = TextPolicy(LogConfig(store_text="escalated"))
    assert policy.keeps(["small", "large"]) and not policy.keeps(["small"]) and not policy.keeps(["large"], True)


def test_a_sample_keeps_about_its_share():
    policy = TextPolicy(LogConfig(store_text={"sample": 0.1}), rng=random.Random(0))
    kept = sum(policy.keeps(["small"]) for _ in range(10_000))
    assert 850 < kept < 1150


def test_default_redaction_removes_addresses_and_long_numbers_and_keeps_ordinary_text():
    policy = TextPolicy(LogConfig(store_text="all"))
    text = "From: Jo <jo.doe+x@mail.example.org>\nCall +44 (0)20 7946 0958 or 4111-1111-1111-1111 by 2024, v1.2"
    out = policy.redact(text)
    assert "jo.doe" not in out and "7946" not in out and "4111" not in out
    assert out.count("<email>") == 1 and out.count("<number>") == 2
    assert "by 2024, v1.2" in out


def test_operator_redactions_apply_and_bad_settings_are_config_errors(tmp_path):
    policy = TextPolicy(LogConfig(store_text="all", redact=[Redaction(pattern=r"(?i)account \w+", replacement="ACCT")]))
    assert policy.redact("your Account XY12 is closed") == "your ACCT is closed"
    for bad, why in [("log: {redact: [{pattern: '(unclosed'}]}", "does not compile"),
                     ("log: {store_text: sometimes}", "store_text"),
                     ("log: {store_text: {sample: 2}}", "sample")]:
        (tmp_path / "c.yaml").write_text(f"tiers: [{{name: m, kind: onnx, path: m}}]\n{bad}\n")
        with pytest.raises(ConfigError, match=why):
            load_config(tmp_path / "c.yaml")


def test_the_hash_is_defined_for_lone_surrogates():
    assert text_sha256("a\ud800b") != text_sha256("ab")
    assert TextPolicy(LogConfig(store_text="all")).redact("a\ud800b") == "a?b"
