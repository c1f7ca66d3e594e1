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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from tiergate.data.items import Item
from tiergate.errors import ModelError
from tiergate.tiers import Tier, TierOutput, outputs_from_proba

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
    """The small tiers quickstart builds, cheapest first: ``[(tier name, config), ...]``."""
    return [("small", SmallConfig())]


def build_pipeline(cfg: SmallConfig) -> Pipeline:
    feats = TextFeatures(cfg.analyzer, cfg.ngram_min, cfg.ngram_max, cfg.min_df, cfg.max_features,
                         cfg.sublinear_tf, cfg.max_chars)
    clf = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, class_weight=cfg.class_weight)
    return Pipeline([("features", feats), ("clf", clf)])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_onnx(clf: LogisticRegression, n_features: int, path: Path) -> None:
    """Export the linear part to ONNX (probabilities as a plain tensor, columns = ``clf.classes_``)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(clf, initial_types=[("features", FloatTensorType([None, n_features]))],
                          options={id(clf): {"zipmap": False}}, target_opset=17)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(onx.SerializeToString())
    os.replace(tmp, path)


def train_small(texts: Sequence[str], labels: Sequence[str], out_dir: Path, cfg: SmallConfig | None = None,
                *, data_fingerprint: str = "", name: str = "small") -> dict:
    """Fit the pipeline on ``texts`` (model text of the train split), export it, return the manifest.

    >>> train_small(texts, labels, Path("runs/small"))   # doctest: +SKIP
    """
    cfg = cfg or SmallConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pipe = build_pipeline(cfg).fit(list(texts), list(labels))
    fit_s = time.perf_counter() - t0
    feats: TextFeatures = pipe.named_steps["features"]
    clf: LogisticRegression = pipe.named_steps["clf"]
    (out_dir / "features.json").write_text(json.dumps(feats.to_json()))
    export_onnx(clf, feats.n_features_out, out_dir / "model.onnx")
    manifest = {
        "format": "tiergate-small", "format_version": FORMAT_VERSION, "name": name,
        "labels": [str(c) for c in clf.classes_], "n_features": feats.n_features_out,
        "config": asdict(cfg), "train_items": len(texts), "train_seconds": round(fit_s, 2),
        "data_fingerprint": data_fingerprint,
        "sha256": {"model.onnx": _sha256(out_dir / "model.onnx"), "features.json": _sha256(out_dir / "features.json")},
    }
    manifest["version"] = hashlib.sha256(json.dumps(manifest["sha256"], sort_keys=True).encode()).hexdigest()[:12]
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


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
    return so


class OnnxTier(Tier):
    """A small tier served by onnxruntime from ``DIR`` (see module docstring)."""

    kind = "model"

    def __init__(self, path: Path, name: str = "small", threads: int | None = None, batch_size: int = 64):
        import onnxruntime as ort

        self.path = Path(path)
        self.name = name
        self.batch_size = batch_size
        try:
            self.manifest = json.loads((self.path / "manifest.json").read_text())
            for fname, digest in self.manifest.get("sha256", {}).items():
                if _sha256(self.path / fname) != digest:
                    raise ModelError(f"{self.path / fname}: checksum does not match manifest.json; the file is "
                                     "corrupt or was replaced: retrain or restore it")
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
        self._input = self.session.get_inputs()[0].name
        outs = [o.name for o in self.session.get_outputs()]
        self._proba_name = "probabilities" if "probabilities" in outs else outs[-1]
        if self.session.get_inputs()[0].shape[1] != self.features.n_features_out:
            raise ModelError(f"{self.path}: model.onnx expects {self.session.get_inputs()[0].shape[1]} features "
                             f"but features.json makes {self.features.n_features_out}")

    def version(self) -> str:
        return str(self.manifest.get("version", ""))

    def features_of(self, texts: Sequence[str]) -> sp.csr_matrix:
        return self.features.transform(texts)

    def proba_from_features(self, X: sp.csr_matrix) -> np.ndarray:
        out = []
        for i in range(0, X.shape[0], self.batch_size):
            dense = X[i : i + self.batch_size].toarray()
            out.append(self.session.run([self._proba_name], {self._input: dense})[0])
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def predict_proba(self, items: Sequence[Item]) -> np.ndarray:
        return self.proba_from_features(self.features_of([it.model_text for it in items]))

    def predict(self, items: Sequence[Item]) -> list[TierOutput]:
        if not items:
            return []
        return outputs_from_proba(self.predict_proba(items), self.labels)
