"""The large tier's wide path over a fitted vocabulary: word and character n-gram TF-IDF, one linear model.

A logistic regression over word 1-2-grams *and* character 3-5-grams (inside word boundaries) of the item's model
text, each block TF-IDF weighted and L2-normalised by :class:`~tiergate.models.small.TextFeatures`, the two
blocks side by side. Fit first, on the large tier's fit rows (the inverse L2 strength picked by held-out log
loss), and frozen: its logits are an *input* of the head, which learns a correction on top of them (see
:mod:`tiergate.models.large`).

Why a fitted vocabulary and not the hashed bag the deep path reads: on the five-group JSONL the hashed bag's
2,048-per-text cut and its unfiltered rare n-grams cost the linear model 19-23 test errors where this one makes
14-16 (docs/benchmarks.md, "The large tier"). It is not the small tier's model: the small tier reads word
n-grams only; this model reads three times as many features, most of them character n-grams.

State round-trips through JSON (the two vocabularies and idfs) and safetensors (the weights); nothing is
unpickled.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from tiergate.errors import ModelError
from tiergate.models.small import TextFeatures, softmax


@dataclass
class VocabWideConfig:
    word_features: int = 100_000    # most frequent word 1-2-grams kept (min_df 2)
    char_features: int = 300_000    # most frequent char_wb 3-5-grams kept (min_df 2)
    char_chars: int = 5_000         # characters of each text read for character n-grams (cost bound)
    max_iter: int = 300             # lbfgs iterations (100 when there are more than 10 classes)
    # Cross-fitting: the fit rows' logits, which the encoder learns to correct, from LRs that did not see them
    # (K folds of the fit rows, at the chosen C). 0 or 1: the served LR's own, in-sample logits, near-certain on
    # the rows it was fitted to, so the encoder sees little of where the LR errs on new items.
    oof_folds: int = 0


def _fit_lr(X: sp.csr_matrix, y: np.ndarray, rows: np.ndarray, C: float, max_iter: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=C, max_iter=max_iter).fit(X[rows], y[rows])


def fit_lrs(X: sp.csr_matrix, y: np.ndarray, fits: Sequence[tuple[np.ndarray, float]], max_iter: int) -> list:
    """One lbfgs LogisticRegression per ``(rows, C)`` on ``X[rows], y[rows]``, side by side in worker
    processes (one per fit, at most one per core; in this process when there is one fit or one core). ``X``
    travels to the workers once, memory-mapped; each slices its own rows. Each fit is single-threaded and
    independent, so K folds take about one fit's time where there are K cores, and the results are the ones a
    sequential loop gives (lbfgs is deterministic)."""
    import os

    from joblib import Parallel, delayed

    n_jobs = max(1, min(len(fits), os.cpu_count() or 1))
    if n_jobs == 1:
        return [_fit_lr(X, y, rows, c, max_iter) for rows, c in fits]
    return Parallel(n_jobs=n_jobs)(delayed(_fit_lr)(X, y, rows, c, max_iter) for rows, c in fits)


def fold_splits(y: np.ndarray, n_classes: int, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """K (train, test) index pairs over ``y``: stratified where each class has at least K rows, else plain."""
    from sklearn.model_selection import KFold, StratifiedKFold

    counts = np.bincount(y, minlength=n_classes)
    split = (StratifiedKFold(folds, shuffle=True, random_state=seed) if counts[counts > 0].min() >= folds
             else KFold(folds, shuffle=True, random_state=seed))
    return list(split.split(np.zeros(len(y)), y))


def cross_fitted_logits(X: sp.csr_matrix, y: np.ndarray, n_classes: int, C: float, max_iter: int,
                        folds: int, seed: int = 0, fitted: Sequence | None = None) -> np.ndarray:
    """Every row's logits (N, C) from an LR fitted on the other folds (:func:`fold_splits`): the out-of-fold
    view of a linear model, as stacking trains on it. ``fitted``: the folds' LRs when the caller fitted them
    already (with the C sweep, in one :func:`fit_lrs`), in :func:`fold_splits` order.

    >>> X = sp.csr_matrix(np.eye(6, dtype=np.float32)[[0, 1, 2, 3, 4, 5] * 4])
    >>> cross_fitted_logits(X, np.array([0, 1, 0, 1, 0, 1] * 4), 2, 1.0, 100, 4).shape
    (24, 2)
    """
    splits = fold_splits(y, n_classes, folds, seed)
    lrs = fitted if fitted is not None else fit_lrs(X, y, [(tr, C) for tr, _ in splits], max_iter)
    out = np.zeros((X.shape[0], n_classes), np.float32)
    for (_, te), lr in zip(splits, lrs, strict=True):
        coef, icpt = logit_weights(lr, n_classes)
        out[te] = X[te] @ coef.T + icpt
    return out


def focus_weights(logits_NC: np.ndarray, weight: float, below: float) -> np.ndarray:
    """Training weights that put the loss where a cascade sends its final tier: the rows a cheaper linear model
    is unsure of. ``logits_NC`` are that model's logits on rows it did not see; a row whose top probability is
    ``below`` or less gets ``1 + weight``, a certain one 1, linearly between (in 1 - max p); normalised to mean 1,
    so the learning rate keeps its meaning.

    >>> [round(float(w), 3) for w in focus_weights(np.array([[5.0, -5.0], [0.0, 0.0]]), 3.0, 0.9)]
    [0.4, 1.6]
    """
    pmax = softmax(logits_NC).max(1)
    unsure = np.clip((1.0 - pmax) / max(1.0 - below, 1e-9), 0.0, 1.0)
    w = 1.0 + weight * unsure
    return (w / w.mean()).astype(np.float32)


def logit_weights(lr, n_classes: int, absent: float = -30.0) -> tuple[np.ndarray, np.ndarray]:
    """A fitted scikit-learn LogisticRegression (classes = label ids) as one logit per class: ``(W (C, F),
    b (C,))``, so softmax(x W^T + b) is its predict_proba. Binary: its one row of log-odds goes to the second
    class. A class absent from the fit rows gets zero weights and the intercept ``absent``."""
    coef = np.zeros((n_classes, lr.coef_.shape[1]), np.float32)
    icpt = np.full(n_classes, absent, np.float32)
    cols = lr.classes_.astype(int)
    if len(cols) == 2 and lr.coef_.shape[0] == 1:
        coef[cols[1]], icpt[cols[0]], icpt[cols[1]] = lr.coef_[0], 0.0, lr.intercept_[0]
    else:
        coef[cols], icpt[cols] = lr.coef_, lr.intercept_
    return coef, icpt


class VocabWide:
    """Fitted word + char TF-IDF features and a linear model: ``logits(texts) -> (N, C)``."""

    def __init__(self, word: TextFeatures, char: TextFeatures, coef_CF: np.ndarray, intercept_C: np.ndarray):
        self.word, self.char = word, char
        self.coef_CF = np.ascontiguousarray(coef_CF, np.float32)
        self.intercept_C = np.ascontiguousarray(intercept_C, np.float32)
        if self.coef_CF.shape[1] != word.n_features_out + char.n_features_out:
            raise ModelError(f"wide path: {self.coef_CF.shape[1]} weights per class for "
                             f"{word.n_features_out + char.n_features_out} features")

    @staticmethod
    def _features(word: TextFeatures, char: TextFeatures, texts: Sequence[str]) -> sp.csr_matrix:
        return sp.hstack([word.transform(texts), char.transform(texts)], format="csr", dtype=np.float32)

    def features(self, texts: Sequence[str]) -> sp.csr_matrix:
        return self._features(self.word, self.char, texts)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.intercept_C)), np.float32)
        return np.asarray(self.features(texts) @ self.coef_CF.T + self.intercept_C, np.float32)

    @classmethod
    def fit(cls, texts: Sequence[str], y: np.ndarray, n_classes: int, fit_idx: np.ndarray, hold_idx: np.ndarray,
            Cs: Sequence[float], cfg: VocabWideConfig | None = None, *, unseen: bool = False
            ) -> tuple[VocabWide, dict, np.ndarray, np.ndarray | None]:
        """Learn the vocabularies on the fit rows, fit one LR per C there and keep the one with the lowest
        held-out log loss (the first C when there is no held-out slice). Classes absent from the fit rows get
        weights of zero and a very negative intercept. Returns the model, what was chosen, the logits of every
        row of ``texts`` (N, C) that the head reads (cross-fitted on the fit rows when ``cfg.oof_folds`` > 1),
        and, when ``cfg.oof_folds`` > 1 or ``unseen``, every row's logits from an LR that did not see it
        (cross-fitted with max(oof_folds, 5) folds on the fit rows, the served LR's on the others), else None."""
        from sklearn.metrics import log_loss

        cfg = cfg or VocabWideConfig()
        t0 = time.perf_counter()
        word = TextFeatures("word", 1, 2, 2, cfg.word_features, True, 20_000)
        char = TextFeatures("char_wb", 3, 5, 2, cfg.char_features, True, cfg.char_chars)
        fit_texts = [texts[i] for i in fit_idx]
        word.fit(fit_texts)
        char.fit(fit_texts)
        X = cls._features(word, char, texts)
        featurize_s = time.perf_counter() - t0
        max_iter = 100 if n_classes > 10 else cfg.max_iter
        cs = sorted(float(c) for c in Cs)
        folds = (cfg.oof_folds if cfg.oof_folds > 1 else 5) if cfg.oof_folds > 1 or unseen else 0
        fit_idx = np.asarray(fit_idx)
        # with one C, the folds' C is known before the sweep: every fit runs side by side in one go
        fold_fits = ([(fit_idx[tr], cs[0]) for tr, _ in fold_splits(y[fit_idx], n_classes, folds)]
                     if folds and len(cs) == 1 else [])
        lrs = fit_lrs(X, y, [(fit_idx, c) for c in cs] + fold_fits, max_iter)
        best, tried = None, {}
        for c, lr in zip(cs, lrs[:len(cs)], strict=True):
            score = (log_loss(y[hold_idx], lr.predict_proba(X[hold_idx]), labels=lr.classes_)
                     if len(hold_idx) else 0.0)
            tried[c] = round(float(score), 5)
            if best is None or score < best[0]:
                best = (score, c, lr)
        _, c_best, lr = best
        coef, icpt = logit_weights(lr, n_classes)
        fit_s = time.perf_counter() - t0 - featurize_s
        info = {"wide_features": "vocab", "wide_C": c_best, "wide_holdout_log_loss": tried,
                "wide_n_features": int(X.shape[1]), "wide_featurize_seconds": round(featurize_s, 2),
                "wide_fit_seconds": round(fit_s, 2), "wide_lr_fits_side_by_side": len(lrs)}
        model = cls(word, char, coef, icpt)
        logits = np.asarray(X @ model.coef_CF.T + model.intercept_C, np.float32)
        held_out = None
        if folds:
            t1 = time.perf_counter()
            held_out = logits.copy()
            held_out[fit_idx] = cross_fitted_logits(X[fit_idx], y[fit_idx], n_classes, c_best, max_iter, folds,
                                                    fitted=lrs[len(cs):] or None)
            seconds = round(time.perf_counter() - t1, 2)  # with one C the folds' fits are in wide_fit_seconds
            if cfg.oof_folds > 1:  # the head reads them
                logits = held_out.copy()
                info.update(wide_oof_folds=folds, wide_oof_seconds=seconds)
            else:  # only asked for (the cascade focus's weights)
                info.update(wide_unseen_folds=folds, wide_unseen_seconds=seconds)
        return model, info, logits, held_out

    # ------------------------------------------------------------------------------------ persistence
    def to_json(self) -> dict:
        return {"word": self.word.to_json(), "char": self.char.to_json()}

    def tensors(self) -> dict[str, np.ndarray]:
        return {"wide.coef": self.coef_CF, "wide.intercept": self.intercept_C}

    @classmethod
    def from_parts(cls, doc: dict, tensors: dict[str, np.ndarray]) -> VocabWide:
        try:
            word, char = TextFeatures.from_json(doc["word"]), TextFeatures.from_json(doc["char"])
            coef, icpt = tensors["wide.coef"], tensors["wide.intercept"]
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"wide path: incomplete or malformed ({type(e).__name__}: {e})") from e
        if coef.ndim != 2 or icpt.shape != (coef.shape[0],):
            raise ModelError(f"wide path: weights of shape {tuple(coef.shape)} and intercept {tuple(icpt.shape)}")
        return cls(word, char, coef, icpt)
