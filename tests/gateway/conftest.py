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


@pytest.fixture(scope="session")
def labelled_data(tmp_path_factory) -> Path:
    """A JSONL data set of real messages with its own splits: 60 train, 400 calibration, 300 test."""
    import json

    from tests.conftest import spam_sample

    d = tmp_path_factory.mktemp("labelled")
    rows = ([(e, "train") for e in spam_sample(60, seed=5)] + [(e, "calibration") for e in spam_sample(400, 6, "calibration")]
            + [(e, "test") for e in spam_sample(300, 7, "test")])
    path = d / "data.jsonl"
    path.write_text("".join(json.dumps({"id": e.id, "text": e.text, "label": e.label, "split": s}) + "\n"
                            for e, s in rows))
    return path


@pytest.fixture(scope="session")
def calibrated_config(serving_dir, tiny_workdir, labelled_data) -> Path:
    """The three-tier serving cascade, calibrated for real (epsilon 0.05) on ``labelled_data``: a certificate
    with versions, thresholds and each tier's calibrated share."""
    from tiergate.pipeline import calibrate

    cfg = write_config(serving_dir, tiny_workdir, "calibrated", {"anonymous_privileges": ["final_only"]},
                       dataset=str(labelled_data), shadow_audit={"share": 1.0, "max_per_s": 1000})
    calibrate(cfg, str(labelled_data), epsilon=0.05, delta=0.05, progress=False, budget=None)
    return cfg
