"""Data pruning: score every training example, then keep the hard (or easy) share per class.

Every score is "higher = harder / less typical":

* ``el2n`` (Paul et al. 2021): ``||softmax(f(x)) - onehot(y)||_2`` after an early share of training
  (``early_frac`` of the epochs), averaged over ``n_seeds`` independently initialised runs.
* ``grand``: ``||grad_w loss(x, y)||_2`` at the same early point, averaged over seeds. For the head's last
  linear layer the gradient has a closed form, ``||p - y|| * sqrt(||h||^2 + 1)``, which is what we compute
  (last-layer GraNd; at initialisation GraNd tracks the input norm and does not beat random: Kirsch 2023).
* ``forgetting`` (Toneva et al. 2019): correct -> incorrect transitions per example over the epochs of a full
  run; an example never learned is the *most* forgettable and scores ``n_epochs + 1``.
* ``prototypes`` (Sorscher et al. 2022): label-free; k-means on the encoder's embeddings (or on a random
  projection of the n-gram bag for the hashed encoder), score = distance to the nearest centroid.
* ``uncertainty``: cascade-aware; ``1 - max p`` of a TF-IDF + logistic-regression small model, cross-fitted
  (each fold scored by a model that did not see it), i.e. how likely the small tier is to escalate the item.

A scores file is JSON ``{"dataset", "fingerprint", "metric", "higher_is_harder": true, "scores": {id: s}}``;
a selection file is JSON ``{"ids": [...], "keep", "mode", "metric", ...}`` that ``train_large`` reads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tiergate.errors import ConfigError
from tiergate.training.data import FeatureTable

METRICS = ("el2n", "grand", "forgetting", "prototypes", "uncertainty", "random")


def _train_copy(make_model, table: FeatureTable, tcfg, seed: int, epochs: float, on_epoch=None, runtime=None):
    """Train a fresh model for ``epochs``; ``on_epoch(model, epoch)`` is called after each whole epoch."""
    from tiergate.training.loop import train

    torch.manual_seed(seed)
    model = make_model()
    cfg = replace(tcfg, epochs=epochs, seed=seed, keep_best=False, eval_every=0)
    if on_epoch is None:
        train(model, table, None, cfg, runtime=runtime)
        return model
    whole = max(int(round(epochs)), 1)
    for ep in range(whole):  # one call per epoch keeps the loop simple; the schedule restarts (documented)
        cfg_ep = replace(cfg, epochs=1.0, seed=seed * 1000 + ep, warmup_frac=cfg.warmup_frac if ep == 0 else 0.0,
                         schedule="constant")
        train(model, table, None, cfg_ep, runtime=runtime)
        on_epoch(model, ep)
    return model


@torch.no_grad()
def _probs_and_hidden(model, table: FeatureTable, batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    device = next(model.parameters()).device
    probs, hid = [], []
    feats: list[torch.Tensor] = []
    hook = model.head.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach()))
    try:
        for s in range(0, len(table), batch):
            b = table.batch(np.arange(s, min(s + batch, len(table))), device)
            probs.append(torch.softmax(model(b).float(), -1).cpu().numpy())
            hid.append(feats.pop().float().cpu().numpy())
    finally:
        hook.remove()
    return np.concatenate(probs), np.concatenate(hid)


def score_el2n_grand(make_model, table: FeatureTable, tcfg, *, n_seeds: int = 3, early_frac: float = 0.2,
                     metric: str = "el2n", runtime=None) -> np.ndarray:
    out = np.zeros(len(table))
    onehot = np.eye(int(table.y.max()) + 1)[table.y]
    for seed in range(n_seeds):
        model = _train_copy(make_model, table, tcfg, seed, max(early_frac * tcfg.epochs, 0.25), runtime=runtime)
        p, h = _probs_and_hidden(model, table)
        err = np.linalg.norm(p[:, : onehot.shape[1]] - onehot, axis=1)
        out += err if metric == "el2n" else err * np.sqrt((h ** 2).sum(1) + 1.0)
    return out / n_seeds


def score_forgetting(make_model, table: FeatureTable, tcfg, *, seed: int = 0, runtime=None,
                     checks_per_epoch: int = 4) -> np.ndarray:
    """Forgetting events over one continuous run (optimizer state kept), checking every example
    ``checks_per_epoch`` times an epoch (Toneva et al. check at every presentation; a few checks an epoch
    keep the cost at a few evaluations). Never learned: ``n_checks + 1``, the most forgettable."""
    from tiergate.training.loop import train

    n_epochs = max(int(round(tcfg.epochs)), 2)
    cfg = replace(tcfg, epochs=float(n_epochs), seed=seed, keep_best=False, eval_every=0)
    every = max(len(table) // cfg.batch_size // checks_per_epoch, 1)
    prev = np.zeros(len(table), bool)
    ever = np.zeros(len(table), bool)
    forgets = np.zeros(len(table))
    n_checks = 0

    def on_step(step: int, model) -> None:
        nonlocal prev, n_checks
        if step % every:
            return
        p, _ = _probs_and_hidden(model, table)
        model.train()
        correct = p.argmax(1) == table.y
        forgets[prev & ~correct] += 1
        ever[:] |= correct
        prev = correct
        n_checks += 1

    torch.manual_seed(seed)
    train(make_model(), table, None, cfg, runtime=runtime, on_step=on_step)
    forgets[~ever] = n_checks + 1  # never learned: most forgettable, not least
    return forgets


def score_prototypes(table: FeatureTable, *, k: int | None = None, seed: int = 0) -> np.ndarray:
    from sklearn.cluster import KMeans

    if table.emb is not None:
        X = table.emb
    else:  # a random projection of the TF-IDF bag keeps distances (Johnson-Lindenstrauss) and needs no labels
        rng = np.random.default_rng(seed)
        R = rng.standard_normal((table.bag.shape[1], 128)).astype(np.float32) / np.sqrt(128)
        X = np.asarray(table.bag @ R)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    k = k or max(2, min(64, len(X) // 50))
    km = KMeans(n_clusters=k, n_init=2, random_state=seed).fit(X)
    return np.sqrt(((X - km.cluster_centers_[km.labels_]) ** 2).sum(1))


def score_uncertainty(texts: Sequence[str], y: np.ndarray, *, folds: int = 4, seed: int = 0) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    out = np.zeros(len(texts))
    counts = np.bincount(y)
    n_splits = max(2, min(folds, int(counts[counts > 0].min()) if (counts > 0).any() else 2))
    strat = y if (counts[counts > 0] >= n_splits).all() else np.zeros_like(y)
    texts = list(texts)
    for fit_i, score_i in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(texts, strat):
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=200_000)
        Xf = vec.fit_transform([texts[i] for i in fit_i])
        if len(np.unique(y[fit_i])) < 2:
            continue
        lr = LogisticRegression(C=10.0, max_iter=500).fit(Xf, y[fit_i])
        p = lr.predict_proba(vec.transform([texts[i] for i in score_i]))
        out[score_i] = 1.0 - p.max(1)
    return out


def score_uncertainty_linear(table: FeatureTable, *, folds: int = 4, epochs: int = 5, seed: int = 0,
                             device: torch.device | str = "cpu") -> np.ndarray:
    """The same cross-fitted small-tier uncertainty with a linear softmax model on the hashed TF-IDF bag,
    trained in torch: for corpora where scikit-learn's solver takes minutes (debian-packages: 58 classes)."""
    from torch import nn

    from tiergate.training.loop import TrainConfig, train
    from tiergate.training.parallel import Runtime

    class Linear(nn.Module):
        def __init__(self, n_buckets: int, n_classes: int):
            super().__init__()
            self.bag = nn.EmbeddingBag(n_buckets, n_classes, mode="sum")
            nn.init.zeros_(self.bag.weight)
            self.bias = nn.Parameter(torch.zeros(n_classes))
            self.head = nn.Identity()

        def forward(self, b):
            return self.head(self.bag(b["bag_ids"], b["bag_offsets"], per_sample_weights=b["bag_weights"]) + self.bias)

    host = table.host if hasattr(table, "host") else table
    n, C = len(host), int(host.y.max()) + 1
    rng = np.random.default_rng(seed)
    fold = rng.integers(0, folds, n)
    out = np.zeros(n)
    rt = Runtime(device=torch.device(device))
    for k in range(folds):
        fit_rows, score_rows = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        t_fit, t_score = host.subset(fit_rows), host.subset(score_rows)
        if rt.device.type == "cuda":
            from tiergate.training.data import DeviceTable
            t_fit, t_score = DeviceTable(t_fit, rt.device), DeviceTable(t_score, rt.device)
        torch.manual_seed(seed + k)
        model = Linear(host.bag.shape[1], C).to(rt.device)
        train(model, t_fit, None, TrainConfig(lr=0.05, batch_size=256, epochs=epochs, weight_decay=0.0,
                                              keep_best=False, seed=seed + k), runtime=rt)
        p, _ = _probs_and_hidden(model, t_score)
        out[score_rows] = 1.0 - p.max(1)
    return out


def select(ids: Sequence[str], labels: Sequence[str], scores: np.ndarray, keep: float, *, mode: str = "hard",
           per_class: bool = True, seed: int = 0) -> list[str]:
    """Ids of the kept examples: the ``keep`` share with the highest (``hard``) or lowest (``easy``) scores,
    per class when ``per_class`` (every class keeps at least one example), ``random`` ignores the scores."""
    if not 0.0 < keep <= 1.0:
        raise ConfigError(f"keep={keep}: give a fraction in (0, 1]")
    if mode not in ("hard", "easy", "random"):
        raise ConfigError(f"mode {mode!r}: use hard, easy or random")
    rng = np.random.default_rng(seed)
    ids = np.asarray(ids)
    labels = np.asarray(labels)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if per_class else [np.arange(len(ids))]
    kept: list[int] = []
    for rows in groups:
        n_keep = max(1, int(round(keep * len(rows))))
        if mode == "random":
            kept.extend(rng.choice(rows, n_keep, replace=False))
            continue
        # ties broken at random so equal scores (forgetting counts) do not favour file order
        order = np.lexsort((rng.random(len(rows)), scores[rows]))
        chosen = order[::-1][:n_keep] if mode == "hard" else order[:n_keep]
        kept.extend(rows[chosen])
    return [str(i) for i in ids[np.sort(np.asarray(kept, dtype=int))]]


def write_scores(path, dataset, metric: str, ids: Sequence[str], scores: np.ndarray, extra: dict | None = None):
    doc = {"dataset": dataset.name, "fingerprint": dataset.fingerprint(), "metric": metric,
           "higher_is_harder": True, "scores": {str(i): float(s) for i, s in zip(ids, scores, strict=True)}}
    doc.update(extra or {})
    Path(path).write_text(json.dumps(doc))


def read_scores(path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read a scores file ({e}); make one with `tiergate prune score`") from e
    if not isinstance(doc, dict) or "scores" not in doc:
        raise ConfigError(f"{path}: not a scores file (no 'scores'); make one with `tiergate prune score`")
    return doc


def read_selection(path) -> list[str]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read a selection file ({e}); make one with `tiergate prune select`") from e
    ids = doc.get("ids") if isinstance(doc, dict) else doc
    if not isinstance(ids, list) or not ids:
        raise ConfigError(f"{path}: a selection needs a non-empty 'ids' list")
    return [str(i) for i in ids]
