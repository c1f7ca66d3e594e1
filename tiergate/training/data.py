"""Feature tables: the cached inputs of the large tier's head, sliced into batches.

The frozen encoder's embeddings (N, De) and the hashed n-gram bag (a CSR matrix, N x n_buckets) are computed
once; a training step only slices rows. A batch is a dict of tensors that :class:`SparseClassifier` reads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch


@dataclass
class FeatureTable:
    emb: np.ndarray | None          # (N, De) float32 pooled encoder embeddings, or None for the hashed encoder
    bag: sp.csr_matrix | None       # (N, n_buckets) TF-IDF weights of hashed n-grams
    y: np.ndarray                   # (N,) int64 label ids
    wide: np.ndarray | None = None  # (N, C) float32 logits of a fitted linear model the head adds to (large tier)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> FeatureTable:
        return FeatureTable(None if self.emb is None else self.emb[idx],
                            None if self.bag is None else self.bag[idx], self.y[idx],
                            None if self.wide is None else self.wide[idx])

    def batch(self, idx: np.ndarray, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {"y": torch.from_numpy(self.y[idx]).to(device)}
        if self.emb is not None:
            out["emb"] = torch.from_numpy(self.emb[idx]).to(device)
        if self.wide is not None:
            out["wide_logits"] = torch.from_numpy(self.wide[idx]).to(device)
        if self.bag is not None:
            b = self.bag[idx]
            out["bag_ids"] = torch.from_numpy(b.indices.astype(np.int64)).to(device)
            out["bag_offsets"] = torch.from_numpy(b.indptr[:-1].astype(np.int64)).to(device)
            out["bag_weights"] = torch.from_numpy(b.data.astype(np.float32)).to(device)
        return out


def bag_to_csr(ids: np.ndarray, offsets: np.ndarray, weights: np.ndarray, n_rows: int, n_cols: int) -> sp.csr_matrix:
    indptr = np.append(offsets, len(ids)).astype(np.int64)
    return sp.csr_matrix((weights, ids, indptr), shape=(n_rows, n_cols))


def train_examples(dataset, selection=None) -> tuple[list, np.ndarray, list[str], str]:
    """The training rows of ``dataset`` (restricted to the ``selection`` ids when given: data pruning), as
    ``(examples, y, labels, fingerprint)``; the fingerprint names the selection too, so a model trained on a
    pruned set never passes for one trained on the whole. Calibration and test rows are never read."""
    from tiergate.errors import ConfigError

    examples = dataset.split("train")
    if selection is not None:
        keep = set(selection)
        examples = [e for e in examples if e.id in keep]
        if not examples:
            raise ConfigError("the selection keeps no training example: check that it was made on this data set")
    labels = sorted({e.label for e in examples})
    if len(labels) < 2:
        raise ConfigError(f"training needs at least two labels; the training rows have {labels}")
    lab_id = {lab: i for i, lab in enumerate(labels)}
    y = np.array([lab_id[e.label] for e in examples], np.int64)
    fp = dataset.fingerprint()
    if selection is not None:
        fp += ":" + hashlib.sha256("\n".join(sorted({e.id for e in examples})).encode()).hexdigest()[:16]
    return examples, y, labels, fp


def stratified_holdout(y: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (fit, holdout), ``frac`` of each class held out (at least one row of any
    class that has three or more; rarer classes stay entirely in fit)."""
    rng = np.random.default_rng(seed)
    fit, hold = [], []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        rng.shuffle(rows)
        k = int(round(frac * len(rows))) if len(rows) >= 3 else 0
        k = max(k, 1) if len(rows) >= 3 and frac > 0 else k
        hold.append(rows[:k])
        fit.append(rows[k:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(hold))


class DeviceTable:
    """A :class:`FeatureTable` held on an accelerator: batches are cut with tensor ops on the device, so a
    GPU step does not wait on scipy slicing and a host-to-device copy (what bounds small steps on an H200)."""

    def __init__(self, table: FeatureTable, device: torch.device | str):
        self.device = torch.device(device)
        self.y_t = torch.from_numpy(table.y).to(self.device)
        self.emb_t = None if table.emb is None else torch.from_numpy(table.emb).to(self.device)
        self.wide_t = None if table.wide is None else torch.from_numpy(table.wide).to(self.device)
        self.indptr = self.indices = self.data = None
        if table.bag is not None:
            self.indptr = torch.from_numpy(table.bag.indptr.astype(np.int64)).to(self.device)
            self.indices = torch.from_numpy(table.bag.indices.astype(np.int64)).to(self.device)
            self.data = torch.from_numpy(table.bag.data.astype(np.float32)).to(self.device)
        self.y = table.y
        self.host = table

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> DeviceTable:
        return DeviceTable(self.host.subset(idx), self.device)

    def batch(self, idx, device=None) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(np.asarray(idx), device=self.device, dtype=torch.long)
        out = {"y": self.y_t[rows]}
        if self.emb_t is not None:
            out["emb"] = self.emb_t[rows]
        if self.wide_t is not None:
            out["wide_logits"] = self.wide_t[rows]
        if self.indptr is not None:
            start, end = self.indptr[rows], self.indptr[rows + 1]
            lengths = end - start
            offsets = torch.cumsum(lengths, 0) - lengths
            # position j of the flat batch belongs to row r: start[r] + (j - offsets[r])
            owner = torch.repeat_interleave(torch.arange(len(rows), device=self.device), lengths)
            pos = start[owner] + torch.arange(owner.numel(), device=self.device) - offsets[owner]
            out.update(bag_ids=self.indices[pos], bag_offsets=offsets, bag_weights=self.data[pos])
        return out
