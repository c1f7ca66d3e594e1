"""experiments/finetune_table.py: large records keep their probabilities in a sidecar that --pairs reads back."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def table(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("finetune_table", ROOT / "experiments" / "finetune_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "R", tmp_path)
    return mod


def _record(path: Path, proba: np.ndarray) -> None:
    path.write_text(json.dumps({"labels": ["a", "b"], "ids": [f"i{k}" for k in range(len(proba))],
                                "pred": proba.argmax(1).tolist(), "y": [0] * len(proba), "proba": proba.tolist()}))


def test_shrink_moves_large_probabilities_to_an_fp16_sidecar_that_load_puts_back(table, tmp_path):
    rng = np.random.default_rng(0)
    proba = rng.dirichlet([1, 1], size=400)
    _record(tmp_path / "runA.json", proba)
    _record(tmp_path / "runA-lr.json", proba)  # the wide path alone: nothing reads its probabilities
    _record(tmp_path / "tiny.json", proba[:3])
    table.shrink(limit=5_000)
    assert "proba" not in json.loads((tmp_path / "runA.json").read_text())
    assert not (tmp_path / "runA-lr.proba.npz").exists()
    assert "proba" not in json.loads((tmp_path / "runA-lr.json").read_text())
    assert "proba" in json.loads((tmp_path / "tiny.json").read_text())  # under the limit: untouched
    back = table.load("runA")["proba"]
    assert back.shape == proba.shape and np.abs(back - proba).max() < 1e-3
    assert (back.argmax(1) == proba.argmax(1)).mean() > 0.99
    assert table.load("missing") is None


def test_matching_takes_several_globs_and_leaves_out_the_wide_path_alone(table, tmp_path):
    for name in ("spamE0-ensemble", "spamE0-ensemble-m0", "spamU1-upcycled-vocab", "spamU1-upcycled-vocab-lr"):
        (tmp_path / f"{name}.json").write_text("{}")
    assert table.matching("spamU*-upcycled-vocab|spamE*-ensemble-m0") == ["spamE0-ensemble-m0",
                                                                          "spamU1-upcycled-vocab"]
    assert table.matching("spamE*-ensemble") == ["spamE0-ensemble"]
