"""The small tier: parity between the served ONNX tier and the scikit-learn pipeline over the whole test split,
temperature scaling fitted on train only, bring-your-own ONNX classifiers, and its artifacts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tiergate.data import make_item
from tiergate.errors import ModelError
from tiergate.models.small import (
    OnnxTier,
    SmallConfig,
    ece,
    fit_small,
    fit_temperature,
    save_small,
    small_presets,
    softmax,
    train_small,
)


@pytest.fixture(scope="module")
def spam_small(tmp_path_factory, spam_ds):
    """The default small tier, fitted on a third of the spamassassin train split (for speed), exported."""
    train = spam_ds.split("train")[::3]
    texts = [make_item(e.text).model_text for e in train]
    labels = [e.label for e in train]
    cfg = SmallConfig()
    fitted = fit_small(texts, labels, cfg)
    d = tmp_path_factory.mktemp("small")
    manifest = save_small(fitted, d, cfg, train_items=len(texts), name="small")
    return fitted, manifest, d


def test_onnx_tier_matches_scikit_learn_on_the_whole_test_split(spam_small, spam_ds):
    fitted, _, d = spam_small
    test = spam_ds.split("test")
    items = [make_item(e.text) for e in test]
    tier = OnnxTier(d)
    served = tier.predict_proba(items)
    reference = fitted.pipeline.predict_proba([it.model_text for it in items])
    assert served.shape == (len(test), 2) and list(tier.labels) == list(fitted.pipeline.classes_)
    assert float(np.abs(served - reference).max()) <= 1e-4
    acc = np.mean([tier.labels[j] == e.label for j, e in zip(served.argmax(1), test, strict=True)])
    assert acc > 0.96  # the brief measured 97.9% for this model


def test_temperature_is_fitted_on_train_and_reported(spam_small):
    _, manifest, d = spam_small
    cal = manifest["probability_calibration"]
    assert cal["method"] == "temperature" and cal["temperature"] > 0
    assert "held-out train rows" in cal["fitted_on"]
    assert 0 <= cal["ece_after"] <= 1 and 0 <= cal["ece_before"] <= 1
    assert (d / "reliability.png").stat().st_size > 1000
    assert json.loads((d / "manifest.json").read_text())["probability_calibration"]["reliability"] == "reliability.png"


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 3, size=(20_000, 4))
    target = np.array([rng.choice(4, p=p) for p in softmax(true_logits)])
    t = fit_temperature(true_logits * 2.5, target)  # overconfident by 2.5x
    assert t == pytest.approx(2.5, rel=0.05)
    assert ece(softmax(true_logits * 2.5 / t), target) < ece(softmax(true_logits * 2.5), target)


def test_bring_your_own_onnx_with_a_label_map(tmp_path, spam_small):
    """A user's ONNX classifier on our features: model.onnx + labels.json (no manifest) loads and serves."""
    _, _, d = spam_small
    byo = tmp_path / "byo"
    byo.mkdir()
    for name in ("model.onnx", "features.json"):
        (byo / name).write_bytes((d / name).read_bytes())
    (byo / "labels.json").write_text(json.dumps({"0": "not-spam", "1": "junk"}))
    tier = OnnxTier(byo, name="mine")
    out = tier.predict([make_item("Subject: WIN MONEY NOW!!! click here $$$ free offer")])[0]
    assert tier.labels == ["not-spam", "junk"] and out.label == "junk"
    assert len(tier.version()) == 12
    (byo / "labels.json").write_text(json.dumps(["only-one"]))
    with pytest.raises(ModelError, match="labels"):
        OnnxTier(byo)


def test_bring_your_own_onnx_with_text_input(tmp_path):
    """An ONNX graph that takes the raw text (a string tensor) and returns probabilities."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = ["cheap pills now", "meeting at noon", "win cash now", "lunch with team"] * 10
    labels = [1, 0, 1, 0] * 10
    pipe = make_pipeline(CountVectorizer(), LogisticRegression()).fit(texts, labels)
    # locale: onnxruntime's StringNormalizer fails to start without an installed locale it can name (BRIEF §2).
    onx = convert_sklearn(pipe, initial_types=[("text", StringTensorType([None, 1]))],
                          options={id(pipe.steps[-1][1]): {"zipmap": False}, id(pipe.steps[0][1]): {"locale": "C.UTF-8"}},
                          target_opset=17)
    d = tmp_path / "text"
    d.mkdir()
    (d / "model.onnx").write_bytes(onx.SerializeToString())
    (d / "labels.json").write_text(json.dumps(["ham", "spam"]))
    tier = OnnxTier(d, name="text")
    outs = tier.predict([make_item("win cash now"), make_item("meeting at noon")])
    assert [o.label for o in outs] == ["spam", "ham"]


def test_corrupt_artifact_is_refused(tmp_path, spam_small):
    _, _, d = spam_small
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in d.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="checksum"):
        OnnxTier(bad)


def test_presets_are_cheap_first():
    presets = small_presets(4497, 2)
    assert presets and all(isinstance(c, SmallConfig) for _, c in presets)
    assert len({n for n, _ in presets}) == len(presets)


def test_solver_stop_is_recorded_not_warned(tmp_path, recwarn):
    """A many-class preset stops lbfgs early on purpose: the manifest says so, no warning floods the output."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    texts = [" ".join(rng.choice(words, 12)) for _ in range(300)]
    labels = [f"c{i % 6}" for i in range(300)]
    m = train_small(texts, labels, tmp_path / "s", SmallConfig(max_iter=2, temperature="off"))
    assert m["solver"] == {"name": "lbfgs", "n_iter": 2, "max_iter": 2, "converged": False}
    assert not [w for w in recwarn if "converge" in str(w.message).lower()]
    m = train_small(texts, labels, tmp_path / "t", SmallConfig(max_iter=500, temperature="off"))
    assert m["solver"]["converged"] and m["solver"]["n_iter"] < 500
