"""A three-tier cascade for the serving tests: a real rule set, then the two real ONNX tiers of tiny_workdir."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.rules.conftest import rules_yaml

RULES = rules_yaml("""
- id: lottery-win
  description: lottery wins
  when: {keywords: [lottery]}
  then: {label: spam, confidence: 0.97}
  examples: {match: ["You won the lottery"], no_match: ["lotto"]}
""")
LOTTERY = "Subject: congratulations\n\nYou won the LOTTERY, claim now"
HAM = "Subject: meeting notes\n\nHi Bob, attached are the notes from Tuesday's design review."


@pytest.fixture(scope="session")
def serving_dir(tmp_path_factory, tiny_workdir) -> Path:
    d = tmp_path_factory.mktemp("serving")
    (d / "rules.yaml").write_text(RULES)
    return d


def write_config(d: Path, tiny_workdir: Path, name: str, server: dict | None = None, *,
                 final_threshold_small: float = 0.9, **sections) -> Path:
    """A config in ``d`` (rules, small, final) with the given ``server`` section (and any other top-level
    ``sections``, such as ``log``); models stay in tiny_workdir."""
    cfg = {
        "dataset": "spamassassin", "labels": ["ham", "spam"], "model_dirs": [str(tiny_workdir)],
        "tiers": [
            {"name": "rules", "kind": "rules", "path": "rules.yaml", "threshold": {"default": 0.0}},
            {"name": "small", "kind": "onnx", "path": str(tiny_workdir / "small"),
             "threshold": {"default": final_threshold_small},
             "cost": {"seconds_per_item": 0.001, "usd_per_hour": 0.09}},
            {"name": "final", "kind": "onnx", "path": str(tiny_workdir / "final"),
             "cost": {"seconds_per_item": 0.02, "usd_per_hour": 0.09}},
        ],
        "server": server or {},
        **sections,
    }
    p = d / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p
