"""Token tables: WordPiece ids of every row, cut into padded batches for a fine-tuned encoder.

:class:`TokenTable` has the interface the training loop reads from a :class:`~tiergate.training.data.FeatureTable`
(``len``, ``y``, ``subset(idx)``, ``batch(idx, device)``), so :func:`tiergate.training.loop.train` fine-tunes a
whole encoder with the same code that trains the head. Rows are held ragged (one flat id array plus offsets);
a batch is padded to its own longest row, never to ``max_tokens``: short package descriptions then cost what
they are, not what the longest mail costs. A table may also hold each row's hashed n-gram bag (a CSR matrix, for
the fine-tuned model's wide path); its batches then carry ``bag_ids``, ``bag_offsets`` and ``bag_weights``.

>>> t = TokenTable.from_lists([[101, 7, 102], [101, 102]], np.array([0, 1]))
>>> t.batch(np.array([1, 0]))["attn"].tolist()
[[1, 1, 0], [1, 1, 1]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from tiergate.training.data import FeatureTable


@dataclass
class TokenTable:
    ids: np.ndarray       # (sum of lengths,) int32 token ids of all rows, row after row
    offsets: np.ndarray   # (N + 1,) int64: row i is ids[offsets[i]:offsets[i + 1]]
    y: np.ndarray         # (N,) int64 label ids
    bag: sp.csr_matrix | None = None  # (N, n_buckets) TF-IDF weights of hashed n-grams, or None
    wide: np.ndarray | None = None    # (N, C) float32 logits of a fitted vocabulary wide path, or None
    weight: np.ndarray | None = None  # (N,) float32 per-row loss weights (the cascade focus), or None: all 1

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]], y: np.ndarray, bag: sp.csr_matrix | None = None,
                   wide: np.ndarray | None = None, weight: np.ndarray | None = None) -> TokenTable:
        lengths = np.array([len(r) for r in rows], np.int64)
        if len(rows) != len(y):
            raise ValueError(f"{len(rows)} token rows for {len(y)} labels")
        if bag is not None and bag.shape[0] != len(rows):
            raise ValueError(f"{bag.shape[0]} bag rows for {len(rows)} token rows")
        if weight is not None and len(weight) != len(rows):
            raise ValueError(f"{len(weight)} weights for {len(rows)} token rows")
        if (lengths == 0).any():
            raise ValueError("a token row is empty: every row needs at least [CLS] and [SEP]")
        flat = np.fromiter((t for r in rows for t in r), np.int32, count=int(lengths.sum()))
        return cls(flat, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), np.asarray(y, np.int64), bag,
                   None if wide is None else np.asarray(wide, np.float32),
                   None if weight is None else np.asarray(weight, np.float32))

    def __len__(self) -> int:
        return len(self.y)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]: self.offsets[i + 1]]

    def subset(self, idx: np.ndarray) -> TokenTable:
        idx = np.asarray(idx, np.int64)
        return TokenTable.from_lists([self.row(i) for i in idx], self.y[idx], None if self.bag is None else self.bag[idx],
                                     None if self.wide is None else self.wide[idx],
                                     None if self.weight is None else self.weight[idx])

    def batch(self, idx: np.ndarray, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """``ids`` and ``attn`` (B, T) int64, T the longest row of the batch; ``y`` (B,); with a bag, its rows
        as ``nn.EmbeddingBag`` reads them (as :meth:`FeatureTable.batch` cuts them); with weights, ``w`` (B,)."""
        idx = np.asarray(idx, np.int64)
        lengths = self.lengths[idx]
        T = int(lengths.max()) if len(idx) else 1
        ids_BT = np.zeros((len(idx), T), np.int64)  # 0 is [PAD] in the BERT vocabulary
        attn_BT = np.zeros((len(idx), T), np.int64)
        for r, i in enumerate(idx):
            ids_BT[r, : lengths[r]] = self.row(i)
            attn_BT[r, : lengths[r]] = 1
        out = {"ids": torch.from_numpy(ids_BT).to(device), "attn": torch.from_numpy(attn_BT).to(device),
               "y": torch.from_numpy(self.y[idx]).to(device)}
        if self.bag is not None:
            out.update({k: v for k, v in FeatureTable(None, self.bag, self.y).batch(idx, device).items() if k != "y"})
        if self.wide is not None:
            out["wide_logits"] = torch.from_numpy(self.wide[idx]).to(device)
        if self.weight is not None:
            out["w"] = torch.from_numpy(self.weight[idx]).to(device)
        return out

    def save(self, path: Path) -> None:
        bag = {} if self.bag is None else {"bag_data": self.bag.data, "bag_indices": self.bag.indices,
                                           "bag_indptr": self.bag.indptr, "bag_shape": np.array(self.bag.shape)}
        wide = {} if self.wide is None else {"wide": self.wide}
        weight = {} if self.weight is None else {"weight": self.weight}
        np.savez(path, ids=self.ids, offsets=self.offsets, y=self.y, **bag, **wide, **weight)

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        z = np.load(path, allow_pickle=False)
        bag = None
        if "bag_data" in z:
            bag = sp.csr_matrix((z["bag_data"], z["bag_indices"], z["bag_indptr"]), shape=tuple(z["bag_shape"]))
        return cls(z["ids"], z["offsets"], z["y"], bag, z["wide"] if "wide" in z else None,
                   z["weight"] if "weight" in z else None)
