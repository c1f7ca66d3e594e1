"""A final tier of several trained models whose probabilities are averaged: the ``finetune-ensemble`` preset.

Why: on these data sets one fine-tuned run lands anywhere in a range wider than the gap between recipes (the
seed moves spamassassin's test errors from 8 to 15 around the small tier's 11), and two runs of different
recipes err on different items: averaging an upcycled model with the vocabulary wide path and a dense one with
the hashed wide path made 7 errors on spamassassin and 12 on the five groups, where the single runs made 10-15
and 11-17 (docs/benchmarks.md, "The spread across seeds"). The price is one forward pass per member.

The artifact is a folder::

    ensemble.json        {"kind": "tiergate-ensemble", "format_version": 1, "members": ["0", "1"],
                          "weights": [0.5, 0.5], "labels": [...], "presets": [...], "seeds": [...]}
    members/0/ ...       each a complete tier artifact (a fine-tuned model, or the quick preset's)
    members/1/ ...

Every member is loaded by its own loader, with its own hash checks; a member that fails to load, a label set
that differs between members, or an ensemble.json that names a member outside ``members/`` is a ModelError.

>>> import numpy as np
>>> from tiergate.data import make_item
>>> from tiergate.tiers import FunctionTier
>>> a = FunctionTier("a", ["ham", "spam"], lambda t: np.tile([0.9, 0.1], (len(t), 1)))
>>> b = FunctionTier("b", ["spam", "ham"], lambda t: np.tile([0.3, 0.7], (len(t), 1)))
>>> [round(float(p), 2) for p in EnsembleTier([a, b], [0.5, 0.5]).predict_proba([make_item("x")])[0]]
[0.8, 0.2]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tiergate.errors import ModelError
from tiergate.tiers import Capabilities, Tier, TierOutput, outputs_from_proba

KIND = "tiergate-ensemble"
FORMAT_VERSION = 1
MANIFEST = "ensemble.json"


def is_ensemble_artifact(path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def write_manifest(out_dir, members: Sequence[str], weights: Sequence[float], labels: Sequence[str],
                   **extra) -> dict:
    """Write ``ensemble.json`` for members already saved under ``out_dir/members/<name>``."""
    doc = {"kind": KIND, "format_version": FORMAT_VERSION, "members": list(members),
           "weights": [float(w) for w in weights], "labels": list(labels), **extra}
    _check(doc, Path(out_dir))
    (Path(out_dir) / MANIFEST).write_text(json.dumps(doc, indent=1))
    return doc


def _check(doc: dict, root: Path) -> None:
    if doc.get("kind") != KIND or doc.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{root / MANIFEST}: not a tiergate ensemble of format {FORMAT_VERSION} "
                         f"(kind {doc.get('kind')!r}, format_version {doc.get('format_version')!r})")
    members, weights = doc.get("members"), doc.get("weights")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise ModelError(f"{root / MANIFEST}: 'members' must be a non-empty list of folder names")
    for m in members:
        if not m or m in (".", "..") or "/" in m or "\\" in m:
            raise ModelError(f"{root / MANIFEST}: member {m!r} must name a folder directly under members/")
    if (not isinstance(weights, list) or len(weights) != len(members)
            or not all(isinstance(w, int | float) and np.isfinite(w) and w > 0 for w in weights)):
        raise ModelError(f"{root / MANIFEST}: 'weights' must be one positive number per member")


def _proba(tier: Tier, items: Sequence) -> np.ndarray:
    """A member's probability matrix in its own label order."""
    if hasattr(tier, "predict_proba"):
        return np.asarray(tier.predict_proba(items), np.float64)
    outs = tier.predict(items)
    return np.array([[(o.probabilities or {}).get(lab, 0.0) for lab in tier.labels] for o in outs], np.float64)


class EnsembleTier(Tier):
    """The members' probabilities, averaged with ``weights`` (normalised), in the first member's label order.

    Its capabilities are its members': batch-invariant only if every member is, and no larger a batch than the
    smallest ``max_batch``; each member sees the whole batch."""

    name = "large"

    def __init__(self, members: Sequence[Tier], weights: Sequence[float], version: str = ""):
        if not members:
            raise ModelError("an ensemble needs at least one member")
        self.members = list(members)
        self.labels = list(members[0].labels)
        for m in self.members[1:]:
            if sorted(m.labels) != sorted(self.labels):
                raise ModelError(f"ensemble members disagree on the labels: {self.labels} vs {list(m.labels)}")
        self._cols = [[list(m.labels).index(lab) for lab in self.labels] for m in self.members]
        caps = [m.capabilities for m in self.members]
        limits = [c.max_batch for c in caps if c.max_batch is not None]
        self.capabilities = Capabilities(batch_invariant=all(c.batch_invariant for c in caps),
                                         max_batch=min(limits) if limits else None)
        w = np.asarray(weights, np.float64)
        self.weights = (w / w.sum()).tolist()
        self._version = version

    @classmethod
    def load(cls, path, load_member: Callable[[Path], Tier]) -> EnsembleTier:
        root = Path(path)
        try:
            doc = json.loads((root / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise ModelError(f"{root / MANIFEST}: unreadable ({e})") from e
        if not isinstance(doc, dict):
            raise ModelError(f"{root / MANIFEST}: not a JSON object")
        _check(doc, root)
        members: list[Tier] = []
        try:
            for name in doc["members"]:
                d = root / "members" / name
                if not d.is_dir():
                    raise ModelError(f"{d}: the member ensemble.json names is missing")
                members.append(load_member(d))
        except Exception:
            for t in members:
                t.close()
            raise
        h = hashlib.sha256(json.dumps(doc, sort_keys=True).encode())
        for t in members:
            h.update(t.version().encode())
        return cls(members, doc["weights"], version=h.hexdigest()[:16])

    def version(self) -> str:
        return self._version

    def predict_proba(self, items: Sequence) -> np.ndarray:
        out = np.zeros((len(items), len(self.labels)), np.float64)
        if not len(items):
            return out.astype(np.float32)
        for m, cols, w in zip(self.members, self._cols, self.weights, strict=True):
            out += w * _proba(m, items)[:, cols]
        return out.astype(np.float32)

    def predict(self, items: Sequence) -> list[TierOutput]:
        if not items:
            return []
        return outputs_from_proba(self.predict_proba(items), self.labels, reason="large")

    def close(self) -> None:
        for m in self.members:
            m.close()
