"""Small layers of the large tier: Ghost Batch Norm.

Ghost BN (Hoffer et al. 2017) normalises each chunk of ``ghost_size`` rows of a large batch with that chunk's
own statistics, so that a batch of 4096 behaves, for the normalisation noise, like many batches of 64. The
running statistics are updated once per chunk, with the momentum of one chunk chosen so that after one full
batch the update weighs the same as a plain BatchNorm's single update: ``1 - (1 - m)^(1/n_chunks)``. Eval uses
the running statistics. A last chunk of one row has no variance: it is folded into the previous chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GhostBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with an optional ghost size (``None``: plain BatchNorm)."""

    def __init__(self, num_features: int, ghost_size: int | None = None, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__(num_features, momentum=momentum, eps=eps)
        self.ghost_size = ghost_size

    def forward(self, x_ND: torch.Tensor) -> torch.Tensor:
        g = self.ghost_size
        N = x_ND.shape[0]
        if not self.training or g is None or N <= g:
            if self.training and N == 1:  # a lone row has no batch statistics: use the running ones
                return F.batch_norm(x_ND, self.running_mean, self.running_var, self.weight, self.bias,
                                    False, 0.0, self.eps)
            return super().forward(x_ND)
        bounds = list(range(0, N, g)) + [N]
        if bounds[-1] - bounds[-2] == 1:  # a last chunk of one row joins the one before it
            bounds.pop(-2)
        n_chunks = len(bounds) - 1
        m = 1.0 - (1.0 - self.momentum) ** (1.0 / n_chunks)
        outs = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            outs.append(F.batch_norm(x_ND[a:b], self.running_mean, self.running_var, self.weight, self.bias,
                                     True, m, self.eps))
        self.num_batches_tracked += 1
        return torch.cat(outs, 0)
