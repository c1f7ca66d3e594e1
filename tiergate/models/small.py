"""The small tier: TF-IDF features + a linear classifier, served by onnxruntime.

Why the features are not inside the ONNX graph: skl2onnx's TF-IDF conversion does not reproduce
scikit-learn (``sublinear_tf`` becomes log(tf+1), ``char_wb`` is unsupported, the token pattern is replaced;
BRIEF §2). So the pipeline is split at one seam. :class:`TextFeatures` (scikit-learn's own vectorizer, its
fitted state saved as JSON, never pickled) turns text into a sparse TF-IDF row in *both* training and serving;
everything after it (the linear model, softmax) is exported to ONNX and run by onnxruntime. The same
feature code therefore feeds scikit-learn at training time and onnxruntime at serving time, and parity is a
property of the linear part alone (tested to 1e-4 on the whole test split).

Artifacts in ``DIR``: ``features.json`` (vectorizer parameters, vocabulary, idf), ``model.onnx``,
``manifest.json`` (version, hashes, labels, metrics, config).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from tiergate.data.items import Item
from tiergate.errors import ModelError
from tiergate.models.artifacts import sha256_file
from tiergate.models.threads import policy
from tiergate.tiers import Capabilities, Tier, TierOutput, outputs_from_proba

FORMAT_VERSION = 1


@dataclass
class SmallConfig:
    """How a small tier is built. Every field has a default that trains in seconds on 2 cores."""

    analyzer: str = "word"          # "word" | "char_wb" | "char"
    ngram_min: int = 1
    ngram_max: int = 2
    min_df: int = 2                 # drop n-grams seen in fewer documents (noise, and vocabulary size)
    max_features: int = 100_000     # cap: the ONNX input is a dense row of this width
    sublinear_tf: bool = True       # 1 + log(tf): long spam repeats words
    max_chars: int = 20_000         # characters of model text read per item
    C: float = 20.0                 # inverse L2 strength of the logistic regression
    max_iter: int = 300
    class_weight: str | None = None
    temperature: str = "holdout"    # "holdout": fit a temperature on a slice of train (never on calibration data)
    holdout_fraction: float = 0.2   # that slice: a probe model fit on the rest scores it


class TextFeatures(TransformerMixin, BaseEstimator):
    """TF-IDF features whose fitted state round-trips through JSON (scikit-learn convention: ``__init__``
    stores parameters only; learned state ends in ``_``)."""

    def __init__(self, analyzer: str = "word", ngram_min: int = 1, ngram_max: int = 2, min_df: int = 2,
                 max_features: int = 100_000, sublinear_tf: bool = True, max_chars: int = 20_000):
        self.analyzer = analyzer
        self.ngram_min = ngram_min
        self.ngram_max = ngram_max
        self.min_df = min_df
        self.max_features = max_features
        self.sublinear_tf = sublinear_tf
        self.max_chars = max_chars

    def _vectorizer(self, vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
        return TfidfVectorizer(analyzer=self.analyzer, ngram_range=(self.ngram_min, self.ngram_max),
                               min_df=1 if vocabulary else self.min_df, max_features=None if vocabulary else self.max_features,
                               sublinear_tf=self.sublinear_tf, dtype=np.float32, vocabulary=vocabulary)

    def _cut(self, texts: Sequence[str]) -> list[str]:
        return [t[: self.max_chars] for t in texts]

    def fit(self, texts: Sequence[str], y=None) -> TextFeatures:
        vec = self._vectorizer().fit(self._cut(texts))
        self.vocabulary_ = {k: int(v) for k, v in vec.vocabulary_.items()}
        self.idf_ = vec.idf_.astype(np.float64)
        self._vec_ = self._rebuild()
        return self

    def _rebuild(self) -> TfidfVectorizer:
        vec = self._vectorizer(self.vocabulary_)
        vec.idf_ = self.idf_
        return vec

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        return self._vec_.transform(self._cut(texts)).astype(np.float32)

    @property
    def n_features_out(self) -> int:
        return len(self.vocabulary_)

    def to_json(self) -> dict:
        return {"params": self.get_params(), "vocabulary": self.vocabulary_, "idf": self.idf_.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> TextFeatures:
        self = cls(**data["params"])
        self.vocabulary_ = {str(k): int(v) for k, v in data["vocabulary"].items()}
        self.idf_ = np.asarray(data["idf"], dtype=np.float64)
        if len(self.idf_) != len(self.vocabulary_):
            raise ModelError(f"features.json: {len(self.idf_)} idf values for {len(self.vocabulary_)} terms")
        self._vec_ = self._rebuild()
        return self


def small_presets(n_train: int, n_labels: int) -> list[tuple[str, SmallConfig]]:
    """The small tiers quickstart builds, cheapest first: ``[(tier name, config), ...]``.

    One tier: in front of a final tier ~50x its cost, and behind a rule pack that decides most items, a
    cheaper tier first could save at most the small tier's own share (~1-2% of the baseline) while costing a
    second threshold to certify. Many classes: lbfgs stops at 100 iterations (86.55% vs 86.61% at 300 on
    debian-packages test, at a third of the time)."""
    if n_labels > 10:
        return [("small", SmallConfig(max_iter=100))]
    return [("small", SmallConfig())]


def build_pipeline(cfg: SmallConfig) -> Pipeline:
    feats = TextFeatures(cfg.analyzer, cfg.ngram_min, cfg.ngram_max, cfg.min_df, cfg.max_features,
                         cfg.sublinear_tf, cfg.max_chars)
    clf = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, class_weight=cfg.class_weight)
    return Pipeline([("features", feats), ("clf", clf)])



def export_onnx(clf: LogisticRegression, n_features: int, path: Path) -> None:
    """Export the linear part to ONNX (probabilities as a plain tensor, columns = ``clf.classes_``)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(clf, initial_types=[("features", FloatTensorType([None, n_features]))],
                          options={id(clf): {"zipmap": False}}, target_opset=17)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(onx.SerializeToString())
    os.replace(tmp, path)


@dataclass
class FittedSmall:
    """A fitted pipeline (temperature already folded into its weights) and how its probabilities were calibrated."""

    pipeline: Pipeline
    seconds: float
    calibration: dict


def fit_small(texts: Sequence[str], labels: Sequence[str], cfg: SmallConfig | None = None, *,
              seed: int = 0, sample_weight: Sequence[float] | None = None) -> FittedSmall:
    """Fit features and classifier on ``texts``; with ``cfg.temperature == "holdout"`` also fit a temperature
    on a slice of these same (train) texts and fold it into the weights, so the exported ONNX graph serves
    calibrated probabilities with no extra operator (and parity with scikit-learn is untouched).
    ``sample_weight`` weighs rows in the classifier's loss (the vocabulary counts each text once)."""
    cfg = cfg or SmallConfig()
    # lbfgs stopping at max_iter is a choice here (many-class presets stop early on purpose), not an accident:
    # the warning scikit-learn prints per fit is replaced by ``converged`` / ``n_iter`` in the manifest.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _fit_small(texts, labels, cfg, seed, sample_weight)


def _fit_small(texts: Sequence[str], labels: Sequence[str], cfg: SmallConfig, seed: int,
               sample_weight: Sequence[float] | None = None) -> FittedSmall:
    texts, labels = list(texts), [str(v) for v in labels]
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if w is not None and len(w) != len(texts):
        raise ModelError(f"{len(w)} sample weights for {len(texts)} texts")
    t0 = time.perf_counter()
    pipe = build_pipeline(cfg)
    feats: TextFeatures = pipe.named_steps["features"]
    X = feats.fit_transform(texts)
    y = np.asarray(labels, dtype=object)
    calibration: dict = {"method": "none"}
    temperature = 1.0
    clf: LogisticRegression = pipe.named_steps["clf"]
    if cfg.temperature == "holdout" and len(texts) >= 100:
        temperature, calibration, probe = holdout_temperature(X, y, cfg, seed=seed, sample_weight=w)
        if len(probe.classes_) == len(set(labels)):
            # Start the final fit from the probe's solution (fit on 80% of the same rows): the convex problem
            # has the same optimum, and lbfgs gets there in far fewer steps, so the temperature costs about
            # one extra fit on 80% of the data rather than doubling training time.
            clf.set_params(warm_start=True)
            clf.coef_, clf.intercept_ = probe.coef_.copy(), probe.intercept_.copy()
    elif cfg.temperature not in ("holdout", "off"):
        raise ModelError(f"SmallConfig.temperature={cfg.temperature!r}: use 'holdout' or 'off'")
    clf.fit(X, y, sample_weight=w)
    clf.set_params(warm_start=False)
    # softmax(z / T) == softmax of the same linear model with weights and biases divided by T (binary too:
    # sigmoid(z / T) is the 2-class softmax of (0, z / T)).
    clf.coef_ = clf.coef_ / temperature
    clf.intercept_ = clf.intercept_ / temperature
    return FittedSmall(pipe, time.perf_counter() - t0, calibration)


def holdout_temperature(X: sp.csr_matrix, y: np.ndarray, cfg: SmallConfig, *, seed: int = 0,
                        sample_weight: np.ndarray | None = None) -> tuple[float, dict, LogisticRegression]:
    """Fit a temperature on a held-out slice of the training rows (the calibration split is never touched).

    A probe model, fit on the rest, scores the slice (and is returned: the final fit starts from it). The
    temperature is fit on half A of the slice and judged on half B (ECE before and after, honest), then refit
    on the whole slice for the model that ships. The TF-IDF vocabulary saw the slice; only the classifier did
    not, which is what the temperature corrects."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(X.shape[0])
    n_hold = max(50, int(cfg.holdout_fraction * len(perm)))
    hold, rest = perm[:n_hold], perm[n_hold:]
    probe = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, class_weight=cfg.class_weight).fit(
        X[rest], y[rest], sample_weight=None if sample_weight is None else sample_weight[rest])
    known = np.isin(y[hold], probe.classes_)
    hold = hold[known]
    z = probe.decision_function(X[hold])
    logits_NC = np.column_stack([np.zeros_like(z), z]) if z.ndim == 1 else z
    target_N = np.searchsorted(probe.classes_, y[hold])
    half = len(hold) // 2
    t_a = fit_temperature(logits_NC[:half], target_N[:half])
    before = ece(softmax(logits_NC[half:]), target_N[half:])
    after = ece(softmax(logits_NC[half:] / t_a), target_N[half:])
    t_all = fit_temperature(logits_NC, target_N)
    info = {"method": "temperature", "temperature": round(t_all, 6), "fitted_on": f"{len(hold)} held-out train rows "
            f"(probe model fit on {len(rest)} other train rows)", "ece_before": round(before, 5),
            "ece_after": round(after, 5), "ece_measured_on": f"{len(hold) - half} rows not used to fit it"}
    info["_reliability"] = (softmax(logits_NC[half:]), softmax(logits_NC[half:] / t_a), target_N[half:])
    return t_all, info, probe


def softmax(z_NC: np.ndarray) -> np.ndarray:
    z = z_NC - z_NC.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits_NC: np.ndarray, target_N: np.ndarray) -> float:
    """The T > 0 minimising the negative log-likelihood of softmax(logits / T) (1-D, on log T)."""
    from scipy.optimize import minimize_scalar

    if len(target_N) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        z = logits_NC / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(z)), target_N] - np.log(np.exp(z).sum(axis=1))).mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded").x))


def ece(proba_NC: np.ndarray, target_N: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence, equal-width bins."""
    conf = proba_NC.max(axis=1)
    right = proba_NC.argmax(axis=1) == target_N
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(right[m].mean() - conf[m].mean())
    return float(total)


def reliability_diagram(before: tuple[np.ndarray, np.ndarray], after: tuple[np.ndarray, np.ndarray], path: Path,
                        *, title: str = "small tier", bins: int = 15) -> None:
    """Accuracy against confidence per bin, before and after temperature scaling, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="#888888", lw=1, ls=":", label="perfect")
    edges = np.linspace(0, 1, bins + 1)
    for (proba, target), name, color in ((before, "raw", "#bbbbbb"), (after, "temperature-scaled", "#1f77b4")):
        conf, right = proba.max(axis=1), proba.argmax(axis=1) == target
        idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
        xs = [conf[idx == b].mean() for b in range(bins) if (idx == b).any()]
        ys = [right[idx == b].mean() for b in range(bins) if (idx == b).any()]
        ax.plot(xs, ys, marker="o", ms=4, color=color, label=f"{name} (ECE {ece(proba, target, bins):.4f})")
    lo = min(0.5, float(before[0].max(axis=1).min()))
    ax.set_xlim(lo, 1.005)
    ax.set_ylim(lo, 1.01)
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}: reliability on held-out train rows", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_small(fitted: FittedSmall, out_dir: Path, cfg: SmallConfig, *, train_items: int,
               data_fingerprint: str = "", name: str = "small") -> dict:
    """Write ``features.json``, ``model.onnx``, ``manifest.json`` (and ``reliability.png``); returns the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    feats: TextFeatures = fitted.pipeline.named_steps["features"]
    clf: LogisticRegression = fitted.pipeline.named_steps["clf"]
    (out_dir / "features.json").write_text(json.dumps(feats.to_json()))
    export_onnx(clf, feats.n_features_out, out_dir / "model.onnx")
    calibration = {k: v for k, v in fitted.calibration.items() if not k.startswith("_")}
    if "_reliability" in fitted.calibration:
        raw, scaled, target = fitted.calibration["_reliability"]
        reliability_diagram((raw, target), (scaled, target), out_dir / "reliability.png", title=name)
        calibration["reliability"] = "reliability.png"
    manifest = {
        "format": "tiergate-small", "format_version": FORMAT_VERSION, "name": name,
        "labels": [str(c) for c in clf.classes_], "n_features": feats.n_features_out,
        "config": asdict(cfg), "train_items": train_items, "train_seconds": round(fitted.seconds, 2),
        "data_fingerprint": data_fingerprint, "probability_calibration": calibration,
        "solver": {"name": clf.solver, "n_iter": int(np.max(clf.n_iter_)), "max_iter": clf.max_iter,
                   "converged": bool(np.max(clf.n_iter_) < clf.max_iter)},
        "sha256": {"model.onnx": sha256_file(out_dir / "model.onnx"), "features.json": sha256_file(out_dir / "features.json")},
    }
    manifest["version"] = hashlib.sha256(json.dumps(manifest["sha256"], sort_keys=True).encode()).hexdigest()[:12]
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def train_small(texts: Sequence[str], labels: Sequence[str], out_dir: Path, cfg: SmallConfig | None = None,
                *, data_fingerprint: str = "", name: str = "small", sample_weight: Sequence[float] | None = None) -> dict:
    """Fit the pipeline on ``texts`` (model text of the train split), export it, return the manifest.

    >>> train_small(texts, labels, Path("runs/small"))   # doctest: +SKIP
    """
    cfg = cfg or SmallConfig()
    fitted = fit_small(texts, labels, cfg, sample_weight=sample_weight)
    return save_small(fitted, out_dir, cfg, train_items=len(texts), data_fingerprint=data_fingerprint, name=name)


def session_options(threads: int | None = None):
    """onnxruntime session options, set deliberately: full graph optimisation; intra-op threads bounded
    (default 1: the gateway runs several requests at once, and a linear layer gains little from more);
    no inter-op parallelism (the graph is a chain)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or int(os.environ.get("TIERGATE_ORT_THREADS", "1"))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if policy() != "library":
        # With more than one intra-op thread, idle pool threads spin for work by default; beside busy
        # processes they take the cores the working thread needs (tiergate.models.threads, issue 12).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OnnxTier(Tier):
    """A small tier served by onnxruntime from ``DIR``.

    Two layouts: tiergate's own (``manifest.json`` + ``features.json`` + ``model.onnx``, see the module
    docstring), or a classifier you bring: ``model.onnx`` plus ``labels.json``, the label of each output column
    (a list, or ``{"0": "ham", "1": "spam"}``). A brought model either takes tiergate's features (put a
    ``features.json`` beside it) or the raw text as a string tensor (``[N]`` or ``[N, 1]``); it returns a
    probability matrix (the output named ``probabilities``, else the last one; a ZipMap list of dicts works too).
    Its version is the hash of its files, so a swap marks the certificate stale.
    """

    # Batch-invariant: each row's features come from its own text (vocabulary and idf are fixed), nothing is
    # padded, and the graph maps rows to rows. Any batch size: predict_proba feeds the graph in slices of
    # ``batch_size``. (A brought graph is taken to be row-wise too, as every sklearn/skl2onnx classifier is.)
    capabilities = Capabilities()

    def __init__(self, path: Path, name: str = "small", threads: int | None = None, batch_size: int = 64):
        import onnxruntime as ort

        self.path = Path(path)
        self.name = name
        self.batch_size = batch_size
        self.features: TextFeatures | None = None
        try:
            if (self.path / "manifest.json").is_file():
                self.manifest = json.loads((self.path / "manifest.json").read_text())
                for fname, digest in self.manifest.get("sha256", {}).items():
                    if sha256_file(self.path / fname) != digest:
                        raise ModelError(f"{self.path / fname}: checksum does not match manifest.json; the file is "
                                         "corrupt or was replaced: retrain or restore it")
            else:
                self.manifest = _brought_manifest(self.path)
            if (self.path / "features.json").is_file():
                self.features = TextFeatures.from_json(json.loads((self.path / "features.json").read_text()))
            self.session = ort.InferenceSession(str(self.path / "model.onnx"), sess_options=session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except ModelError:
            raise
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"cannot load small tier from {self.path}: {e}") from e
        except Exception as e:  # onnxruntime raises its own exception types for corrupt graphs
            raise ModelError(f"cannot load small tier from {self.path}: {type(e).__name__}: {e}") from e
        self.labels = list(self.manifest["labels"])
        inp = self.session.get_inputs()[0]
        self._input = inp.name
        self._text_input = "string" in inp.type
        self._text_rank = len(inp.shape or [None])
        outs = [o.name for o in self.session.get_outputs()]
        self._proba_name = "probabilities" if "probabilities" in outs else outs[-1]
        if self._text_input:
            self.features = None
        elif self.features is None:
            raise ModelError(f"{self.path}: model.onnx takes numbers ({inp.type}); put the features.json that makes "
                             "them beside it, or export a graph that takes the text as a string tensor")
        elif inp.shape[1] != self.features.n_features_out:
            raise ModelError(f"{self.path}: model.onnx expects {inp.shape[1]} features "
                             f"but features.json makes {self.features.n_features_out}")

    def version(self) -> str:
        return str(self.manifest.get("version", ""))

    def features_of(self, texts: Sequence[str]) -> sp.csr_matrix:
        if self.features is None:
            raise ModelError(f"{self.path}: this model takes raw text; it has no features")
        return self.features.transform(texts)

    def _run(self, feed: np.ndarray) -> np.ndarray:
        out = self.session.run([self._proba_name], {self._input: feed})[0]
        if isinstance(out, list):  # ZipMap: one {class: p} per row, classes in the label map's order
            keys = list(out[0].keys()) if out else []
            out = np.array([[row[k] for k in keys] for row in out], dtype=np.float32)
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 2 or out.shape[1] != len(self.labels):
            raise ModelError(f"{self.path}: model.onnx returns {out.shape} probabilities for {len(self.labels)} "
                             "labels; the label map must name every output column")
        return out

    def proba_from_features(self, X: sp.csr_matrix) -> np.ndarray:
        out = []
        for i in range(0, X.shape[0], self.batch_size):
            out.append(self._run(X[i : i + self.batch_size].toarray()))
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def predict_proba(self, items: Sequence[Item]) -> np.ndarray:
        texts = [it.model_text for it in items]
        if not self._text_input:
            return self.proba_from_features(self.features_of(texts))
        out = []
        for i in range(0, len(texts), self.batch_size):
            feed = np.array(texts[i : i + self.batch_size], dtype=object)
            out.append(self._run(feed.reshape(-1, 1) if self._text_rank == 2 else feed))
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def predict(self, items: Sequence[Item]) -> list[TierOutput]:
        if not items:
            return []
        return outputs_from_proba(self.predict_proba(items), self.labels)


def _brought_manifest(path: Path) -> dict:
    """A manifest for a classifier someone brought: labels from ``labels.json``, version from the files' hash."""
    lab_path = path / "labels.json"
    if not lab_path.is_file():
        raise ModelError(f"{path}: no manifest.json (a tiergate-trained tier) and no labels.json; to bring your "
                         "own classifier put model.onnx and labels.json (the label of each output column) there")
    raw = json.loads(lab_path.read_text())
    if isinstance(raw, dict):
        labels = [str(raw[k]) for k in sorted(raw, key=lambda k: int(k))]
    elif isinstance(raw, list):
        labels = [str(v) for v in raw]
    else:
        raise ModelError(f"{lab_path}: labels must be a list or an {{index: label}} mapping")
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ModelError(f"{lab_path}: need at least two distinct labels, got {labels}")
    files = ["model.onnx", "labels.json"] + (["features.json"] if (path / "features.json").is_file() else [])
    digests = {f: sha256_file(path / f) for f in files}
    version = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:12]
    return {"format": "brought-onnx", "labels": labels, "sha256": {}, "files": digests, "version": version}
