"""The shipped packs: lint clean, examples pass, and the calibration-split figures the issue asks for."""

import pytest

from tiergate.data import load_dataset
from tiergate.rules.engine import Engine
from tiergate.rules.evaluate import evaluate
from tiergate.rules.examples import run_examples
from tiergate.rules.lint import lint
from tiergate.rules.loader import load_path
from tiergate.rules.tier import RulesTier, pack_path

PACKS = ["spamassassin", "debian-packages"]


@pytest.mark.parametrize("name", PACKS)
def test_pack_lints_clean_and_its_examples_pass(name):
    src = load_path(pack_path(name))
    assert [str(p) for p in lint(src)] == []
    eng = Engine(src)
    assert run_examples(eng) == []
    assert all(r.examples.match and r.examples.no_match for r in src.rules)
    RulesTier.from_path(pack_path(name))  # the full validation a reload runs


@pytest.mark.parametrize("name,min_coverage", [("spamassassin", 0.20), ("debian-packages", 0.20)])
def test_pack_precision_on_calibration(name, min_coverage):
    report = evaluate(Engine(load_path(pack_path(name))), load_dataset(name).split("calibration"))
    weak = [(r["id"], r["hits"], r["precision"]) for r in report["rules"]
            if r["hits"] >= 5 and r["precision"] is not None and r["precision"] < 0.99]
    assert weak == []
    assert report["coverage"] >= min_coverage
    assert report["precision"] >= 0.99
