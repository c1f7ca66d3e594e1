"""The large tier: trains on a few hundred real rows, saves, loads, predicts, and rejects broken artifacts."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.conftest import spam_sample
from tiergate.data import Dataset, make_item
from tiergate.errors import ModelError
from tiergate.models.encoder import HashedNgramConfig
from tiergate.models.large import LargeConfig, LargeTier, preset, train_large
from tiergate.tiers import Tier
from tiergate.training.loop import TrainConfig


def _small_spam(n_train: int = 240, n_test: int = 60) -> Dataset:
    return Dataset("spam-small", spam_sample(n_train, seed=0) + spam_sample(n_test, seed=0, split="test"))


def _tiny_cfg(encoder: str) -> LargeConfig:
    cfg = preset("quick") if encoder == "minilm" else preset("hashed")
    cfg.max_chunks = 1
    cfg.bag = HashedNgramConfig(n_buckets=2 ** 14, max_per_text=128)
    cfg.train = TrainConfig(lr=3e-3, batch_size=32, epochs=8)
    return cfg


@pytest.fixture(scope="module")
def spam():
    return _small_spam()


@pytest.fixture(scope="module")
def trained(spam, tmp_path_factory):
    out = tmp_path_factory.mktemp("large")
    manifest = train_large(spam, out, preset=_tiny_cfg("minilm"), progress=False)
    return out, manifest


def test_train_writes_artifacts_and_manifest(trained, spam):
    out, manifest = trained
    for name in ("model.safetensors", "config.json", "manifest.json"):
        assert (out / name).is_file()
    assert manifest["training_data_fingerprint"].startswith(spam.fingerprint())
    assert manifest["labels"] == ["ham", "spam"]
    assert manifest["metrics"]["n_train"] + manifest["metrics"]["n_holdout"] == len(spam.split("train"))
    assert json.loads((out / "manifest.json").read_text())["weights_sha256"] == manifest["weights_sha256"]


def test_round_trip_predicts_well_and_deterministically(trained, spam):
    out, _ = trained
    tier = LargeTier.load(out)
    assert isinstance(tier, Tier) and tier.name == "large" and tier.labels == ["ham", "spam"]
    test = spam.split("test")
    items = [make_item(e.text) for e in test]
    proba = tier.predict_proba(items)
    assert proba.shape == (len(test), 2)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    acc = np.mean(np.array(tier.labels)[proba.argmax(1)] == np.array([e.label for e in test]))
    assert acc >= 0.85, acc  # 240 training mails already separate most spam
    outs = tier.predict(items[:5])
    assert [o.label for o in outs] == list(np.array(tier.labels)[proba[:5].argmax(1)])
    assert abs(outs[0].confidence - proba[0].max()) < 1e-6
    # a second load serves identical probabilities; one item alone gets what it got in the batch
    np.testing.assert_allclose(LargeTier.load(out).predict_proba(items[:3]), proba[:3], atol=1e-5)
    np.testing.assert_allclose(tier.predict_proba(items[1:2]), proba[1:2], atol=1e-4)
    assert tier.predict([]) == []


def test_training_never_reads_calibration_or_test(spam, tmp_path):
    poisoned = Dataset("p", [e if e.split == "train" else replace(e, text="POISON", label="zzz")
                             for e in spam.examples])
    manifest = train_large(poisoned, tmp_path, preset=_tiny_cfg("hashed"), progress=False)
    assert manifest["labels"] == ["ham", "spam"]


def test_selection_restricts_training_rows(spam, tmp_path):
    ids = [e.id for e in spam.split("train")[:100]]
    m = train_large(spam, tmp_path, preset=_tiny_cfg("hashed"), selection=ids, progress=False)
    assert m["metrics"]["n_train"] + m["metrics"]["n_holdout"] == 100
    assert m["training_data_fingerprint"] != spam.fingerprint()


def test_same_seed_same_model_up_to_float_order(spam, tmp_path):
    # Known defect (issue notes): CPU training is not bitwise reproducible (multi-threaded sparse-gradient
    # sums change the last bits, and early stopping can then pick another step), so the weights' hashes are
    # not compared; the same seed must still give the same model up to that noise.
    a = train_large(spam, tmp_path / "a", preset=_tiny_cfg("hashed"), seed=3, progress=False)
    b = train_large(spam, tmp_path / "b", preset=_tiny_cfg("hashed"), seed=3, progress=False)
    assert abs(a["metrics"]["holdout_acc"] - b["metrics"]["holdout_acc"]) <= 0.02
    items = [make_item(e.text) for e in spam.split("test")[:200]]
    pa = LargeTier.load(tmp_path / "a").predict_proba(items).argmax(1)
    pb = LargeTier.load(tmp_path / "b").predict_proba(items).argmax(1)
    assert (pa == pb).mean() >= 0.98

def test_corrupt_or_mismatched_artifacts_raise_model_error(trained, tmp_path):
    import shutil
    src, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    raw = bytearray((bad / "model.safetensors").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="sha256"):
        LargeTier.load(bad)

    shutil.rmtree(bad)
    shutil.copytree(src, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["d_model"] = 64  # config no longer matches the tensors
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="do not match"):
        LargeTier.load(bad)

    (bad / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="JSON"):
        LargeTier.load(bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(ModelError, match="missing"):
        LargeTier.load(bad)


def test_garbage_safetensors_with_matching_hash_is_rejected(trained, tmp_path):
    import hashlib
    import shutil
    src, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    (bad / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    man = json.loads((bad / "manifest.json").read_text())
    man["weights_sha256"] = hashlib.sha256((bad / "model.safetensors").read_bytes()).hexdigest()
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ModelError, match="safetensors"):
        LargeTier.load(bad)


def test_unknown_config_key_is_rejected(trained, tmp_path):
    import shutil
    src, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["surprise"] = 1
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="unknown keys"):
        LargeTier.load(bad)


def test_moe_and_dense_heads_both_train(spam, tmp_path):
    cfg = _tiny_cfg("hashed")
    cfg.ffn = "dense"
    m = train_large(spam, tmp_path, preset=cfg, progress=False)
    assert m["metrics"]["holdout_acc"] is not None
    tier = LargeTier.load(tmp_path)
    assert tier.predict_proba([make_item("hello")]).shape == (1, 2)
    assert torch.get_default_dtype() == torch.float32


def test_step_budget_grows_the_batch_with_sqrt_lr_and_ghost_bn():
    from tiergate.models.large import scale_to_budget
    cfg = preset("quick")
    cfg.train.batch_size, cfg.train.epochs, cfg.step_budget = 64, 12.0, 1500
    small = scale_to_budget(cfg, 4000)
    assert small.train.batch_size == 64 and small.ghost_size is None
    big = scale_to_budget(cfg, 42905)  # debian-packages: 8,000 steps at batch 64
    assert big.train.batch_size == 512 and big.ghost_size == 64
    assert big.train.lr == pytest.approx(cfg.train.lr * 8 ** 0.5)
    assert big.train.epochs * 42905 / big.train.batch_size <= cfg.step_budget
    assert cfg.train.batch_size == 64  # the caller's config is not changed


def _prepared(spam, cfg):
    from tiergate.models.large import prepare_training

    return prepare_training(spam, cfg)


def test_wide_path_starts_as_the_fitted_logistic_regression(spam):
    """At initialisation the model's probabilities are exactly sklearn's LR on the same bags (binary: one row
    of log-odds mapped to two logits), and the wide weights are frozen."""
    from sklearn.linear_model import LogisticRegression

    from tiergate.models.large import build_head, fit_wide
    from tiergate.training.loop import predict_logits

    cfg = _tiny_cfg("hashed")
    cfg.wide_C = [16.0]
    prep = _prepared(spam, cfg)
    model = build_head(prep.cfg, len(prep.labels), prep.featurizer.emb_dim, fit_wide(prep))
    assert not model.wide.weight.requires_grad
    part = prep.table.subset(prep.fit_idx)
    lr = LogisticRegression(C=16.0, max_iter=300).fit(part.bag, part.y)
    hold = prep.table.subset(prep.hold_idx)
    ours = torch.softmax(torch.tensor(predict_logits(model, hold)), -1).numpy()
    np.testing.assert_allclose(ours, lr.predict_proba(hold.bag), atol=1e-5)


def test_wide_fit_maps_every_class_of_a_multiclass_lr():
    from tiergate.data import Dataset, Example

    rng = np.random.default_rng(0)
    words = {"a": "alpha apple avocado", "b": "beta banana basil", "c": "gamma cherry cumin"}
    ex = [Example(f"{words[lab]} {rng.integers(1000)}", lab, "train", f"{lab}{i}") for lab in words for i in range(30)]
    from sklearn.linear_model import LogisticRegression

    from tiergate.models.large import build_head, fit_wide
    from tiergate.training.loop import predict_logits

    cfg = _tiny_cfg("hashed")
    cfg.wide_C = [16.0]
    prep = _prepared(Dataset("three", ex), cfg)
    model = build_head(prep.cfg, len(prep.labels), prep.featurizer.emb_dim, fit_wide(prep))
    part = prep.table.subset(prep.fit_idx)
    lr = LogisticRegression(C=16.0, max_iter=300).fit(part.bag, part.y)
    ours = torch.softmax(torch.tensor(predict_logits(model, prep.table)), -1).numpy()
    np.testing.assert_allclose(ours, lr.predict_proba(prep.table.bag), atol=1e-5)


def test_training_that_never_beats_the_start_keeps_it(spam):
    """keep_best considers step 0: with a learning rate that wrecks the deep path, the model that comes back is
    the fitted linear one, not the wreck."""
    from tiergate.models.large import build_head, fit_head, fit_wide
    from tiergate.training.loop import predict_logits

    cfg = _tiny_cfg("hashed")
    cfg.train = TrainConfig(lr=50.0, batch_size=32, epochs=2, clip_norm=None)
    prep = _prepared(spam, cfg)
    start = build_head(prep.cfg, len(prep.labels), prep.featurizer.emb_dim, fit_wide(prep))
    model, res = fit_head(prep)
    assert res.best["step"] == 0, res.best
    hold = prep.table.subset(prep.hold_idx)
    np.testing.assert_allclose(predict_logits(model, hold), predict_logits(start, hold), atol=1e-5)


def test_a_format_1_artifact_asks_for_retraining(trained, tmp_path):
    import shutil

    out, _ = trained
    old = tmp_path / "old"
    shutil.copytree(out, old)
    cfg = json.loads((old / "config.json").read_text())
    cfg["format_version"] = 1
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="format 1.*retrain"):
        LargeTier.load(old)


def test_wide_strength_is_chosen_on_the_held_out_slice_and_recorded(spam, tmp_path):
    from tiergate.models.large import fit_wide

    cfg = _tiny_cfg("hashed")
    cfg.wide_C = [0.01, 16.0]  # 0.01 all but erases the n-grams: the held-out loss must prefer 16
    prep = _prepared(spam, cfg)
    _, _, info = fit_wide(prep)
    losses = info["wide_holdout_log_loss"]
    assert set(losses) == {0.01, 16.0} and info["wide_C"] == min(losses, key=losses.get) == 16.0
    m = train_large(spam, tmp_path, preset=cfg, progress=False)
    assert m["metrics"]["wide_C"] == 16.0


def test_vocab_wide_path_starts_as_the_fitted_logistic_regression(spam):
    """wide_features='vocab': at initialisation the model's probabilities are exactly an sklearn LR fit on the
    fit rows' word + char TF-IDF features; the head's correction starts at zero."""
    from sklearn.linear_model import LogisticRegression

    from tiergate.models.large import build_head, fit_wide, texts_for
    from tiergate.training.loop import predict_logits

    cfg = _tiny_cfg("hashed")
    cfg.wide_features, cfg.wide_C = "vocab", [16.0]
    prep = _prepared(spam, cfg)
    assert fit_wide(prep) is None and prep.wide_info["wide_features"] == "vocab"
    model = build_head(prep.cfg, len(prep.labels), prep.featurizer.emb_dim)
    assert model.wide is None and not model.head.weight.any()
    texts = [texts_for(make_item(e.text))[1] for e in spam.split("train")]
    X = prep.featurizer.wide.features(texts)
    lr = LogisticRegression(C=16.0, max_iter=300).fit(X[prep.fit_idx], prep.table.y[prep.fit_idx])
    hold = prep.table.subset(prep.hold_idx)
    ours = torch.softmax(torch.tensor(predict_logits(model, hold)), -1).numpy()
    np.testing.assert_allclose(ours, lr.predict_proba(X[prep.hold_idx]), atol=1e-4)
    # the word block is the small tier's kind of feature, the char block is not: both are there
    assert prep.featurizer.wide.word.analyzer == "word" and prep.featurizer.wide.char.analyzer == "char_wb"


def test_cross_fitted_wide_logits_are_out_of_sample_on_fit_rows_only(spam):
    """vocab.oof_folds=K: the fit rows' logits in the training table come from LRs that did not see them (each
    row's equals an LR fitted on the other folds), so they are less sure than the served LR's in-sample ones;
    the held-out rows keep the served LR's logits, which is what serving computes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from tiergate.models.large import texts_for
    from tiergate.models.wide import logit_weights

    cfg = _tiny_cfg("hashed")
    cfg.wide_features, cfg.wide_C = "vocab", [16.0]
    plain = _prepared(spam, cfg)
    cfg.vocab = replace(cfg.vocab, oof_folds=4)
    oof = _prepared(spam, cfg)
    assert oof.wide_info["wide_oof_folds"] == 4 and "wide_oof_folds" not in plain.wide_info
    fit, hold = oof.fit_idx, oof.hold_idx
    np.testing.assert_array_equal(oof.table.wide[hold], plain.table.wide[hold])
    assert not np.allclose(oof.table.wide[fit], plain.table.wide[fit])

    def margin(z):
        return np.abs(z[:, 1] - z[:, 0]).mean()
    assert margin(oof.table.wide[fit]) < margin(plain.table.wide[fit])
    # one fold by hand: the same split, an LR on the other folds, its logits on this fold's rows
    texts = [texts_for(make_item(e.text))[1] for e in spam.split("train")]
    X, y = oof.featurizer.wide.features(texts)[fit], oof.table.y[fit]
    tr, te = next(StratifiedKFold(4, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
    coef, icpt = logit_weights(LogisticRegression(C=16.0, max_iter=300).fit(X[tr], y[tr]), 2)
    np.testing.assert_allclose(oof.table.wide[fit[te]], X[te] @ coef.T + icpt, atol=1e-3)


def test_vocab_wide_multiclass_maps_every_class():
    from tiergate.data import Dataset, Example
    from tiergate.models.large import build_head
    from tiergate.training.loop import predict_logits

    rng = np.random.default_rng(0)
    words = {"a": "alpha apple avocado", "b": "beta banana basil", "c": "gamma cherry cumin"}
    ex = [Example(f"{words[lab]} {rng.integers(1000)}", lab, "train", f"{lab}{i}") for lab in words for i in range(30)]
    cfg = _tiny_cfg("hashed")
    cfg.wide_features, cfg.wide_C = "vocab", [16.0]
    prep = _prepared(Dataset("three", ex), cfg)
    model = build_head(prep.cfg, len(prep.labels), prep.featurizer.emb_dim)
    pred = predict_logits(model, prep.table).argmax(1)
    assert (pred == prep.table.y).mean() == 1.0  # each class's words decide it


def test_the_quick_preset_reads_a_vocab_wide_path_and_checks_its_file(trained, tmp_path):
    import shutil

    out, manifest = trained
    assert (out / "wide.json").is_file() and manifest["wide_sha256"]
    assert json.loads((out / "config.json").read_text())["model"]["wide_features"] == "vocab"
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    doc = json.loads((bad / "wide.json").read_text())
    doc["word"]["idf"][0] += 1.0  # a changed idf: the hash no longer matches
    (bad / "wide.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="wide.json: sha256"):
        LargeTier.load(bad)
    (bad / "wide.json").unlink()
    with pytest.raises(ModelError, match="wide.json: missing"):
        LargeTier.load(bad)


def test_a_finished_run_leaves_no_checkpoint_behind(spam, tmp_path):
    """The checkpoint is for resuming an interrupted run; once the artifact is saved it goes (so one process
    and --nproc N write the same files, and a rerun into the folder does not resume a finished run)."""
    cfg = _tiny_cfg("hashed")
    cfg.train = TrainConfig(lr=3e-3, batch_size=32, epochs=2)
    train_large(spam, tmp_path, preset=cfg, progress=False, checkpoint_every=2)
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "checkpoint.pt").exists()


def test_lr_fits_side_by_side_equal_the_sequential_ones():
    """fit_lrs runs its fits in worker processes (on a machine of two or more cores), each slicing its own
    rows of X (memory-mapped once X passes joblib's 1 MB threshold; this one does not); each LR is the one a
    plain loop fits, and the order is the fits' order."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    from tiergate.models.wide import fit_lrs

    rng = np.random.default_rng(0)
    X = sp.random(300, 50, density=0.2, format="csr", random_state=0, dtype=np.float64)
    y = (X @ rng.normal(size=50) > 0).astype(int)
    fits = [(np.arange(0, 200), 1.0), (np.arange(100, 300), 4.0), (np.arange(300), 0.25)]
    got = fit_lrs(X, y, fits, max_iter=300)
    assert len(got) == 3
    for (rows, c), lr in zip(fits, got, strict=True):
        want = LogisticRegression(C=c, max_iter=300).fit(X[rows], y[rows])
        np.testing.assert_allclose(lr.coef_, want.coef_, rtol=1e-6, atol=1e-8)
        assert lr.C == c
