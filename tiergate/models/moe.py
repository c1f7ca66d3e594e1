"""The mixture-of-experts feed-forward layer (Switch/GShard style): tiergate's one MoE ``nn.Module``, used by the
quick preset's head (:mod:`tiergate.models.large`) and by the upcycled encoder blocks of the fine-tuned tier
(:mod:`tiergate.models.finetune`). The expert computation is the kernels' autograd op
(:func:`tiergate.kernels.moe_ffn`: Triton on CUDA, its plain-PyTorch reference elsewhere).

Every token picks its top-k experts from a softmax router computed in float32 (bf16 logits flip near-ties and
the z-loss needs the exact logsumexp). The load-balancing loss ``E * sum_i f_i * P_i`` takes ``f_i`` from the
top-k assignment *before* any capacity dropping (otherwise an overloaded expert looks less loaded than it is
and the loss stops pushing tokens away from it), and ``P_i`` is the mean router probability. The router z-loss
is ``mean(logsumexp(logits)^2)``. With ``capacity_factor=None`` the layer is dropless.

After each forward: ``aux`` holds the unweighted terms (:class:`MoEAux`), ``aux_loss`` their weighted sum
(``aux_loss_coef``, ``z_loss_coef``), ``stats`` the load and the dropped assignments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tiergate.kernels import moe_ffn


@dataclass
class MoEConfig:
    d_model: int = 256             # token width in and out
    d_hidden: int = 512            # hidden width of each expert
    n_experts: int = 8             # experts per layer
    top_k: int = 2                 # experts per token
    capacity_factor: float | None = None  # None: dropless; else each expert takes ceil(cf*T*k/E) assignments
    aux_loss_coef: float = 0.01    # load-balancing loss weight (Switch Transformer: 0.01)
    z_loss_coef: float = 1e-3      # router z-loss weight (ST-MoE: 1e-3)
    activation: str = "gelu"       # one of tiergate.kernels.moe.ACTIVATIONS
    bias: bool = True              # expert biases b1, b2 (zero at init)
    init_std: float | None = None  # expert weights ~ N(0, init_std); None: 1/sqrt(fan-in)
    backend: str = "auto"          # the kernel: "auto" (Triton on CUDA), "triton" or "reference"


@dataclass
class MoEAux:
    """The unweighted auxiliary terms of one forward."""

    balance_loss: torch.Tensor     # E * sum_i f_i * P_i
    z_loss: torch.Tensor           # mean(logsumexp(logits)^2)
    counts_E: torch.Tensor         # assignments per expert, before dropping


def expert_ffn(x_TD: torch.Tensor, idx_TK: torch.Tensor, gate_TK: torch.Tensor, w1_EDH: torch.Tensor,
               b1_EH: torch.Tensor | None, w2_EHD: torch.Tensor, b2_ED: torch.Tensor | None,
               activation: str = "gelu", backend: str = "auto") -> torch.Tensor:
    """Dispatch each token to its experts, run ``act(x W1 + b1) W2 + b2`` there, combine weighted by gate.

    ``idx_TK`` holds expert ids (``-1`` for a dropped assignment, which contributes nothing). Returns (T, D).
    """
    return moe_ffn(x_TD, idx_TK, gate_TK, w1_EDH, w2_EHD, activation, b1_EH, b2_ED, backend=backend)


class MoEFFN(nn.Module):
    """Top-k routed expert feed-forward. ``forward`` returns the output; ``aux_loss`` and ``stats`` are set."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        E, D, H = cfg.n_experts, cfg.d_model, cfg.d_hidden
        self.router = nn.Linear(D, E, bias=False)
        self.w1 = nn.Parameter(torch.empty(E, D, H))
        self.w2 = nn.Parameter(torch.empty(E, H, D))
        if cfg.bias:
            self.b1 = nn.Parameter(torch.zeros(E, H))
            self.b2 = nn.Parameter(torch.zeros(E, D))
        else:
            self.register_parameter("b1", None)
            self.register_parameter("b2", None)
        nn.init.normal_(self.router.weight, std=0.02)
        nn.init.normal_(self.w1, std=cfg.init_std or 1.0 / math.sqrt(D))
        nn.init.normal_(self.w2, std=cfg.init_std or 1.0 / math.sqrt(H))
        self.aux_loss = torch.zeros(())
        self.aux: MoEAux | None = None
        self.stats: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D); leading dimensions are flattened into tokens."""
        cfg = self.cfg
        x_TD = x.reshape(-1, cfg.d_model)
        T, E, K = x_TD.shape[0], cfg.n_experts, cfg.top_k
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            logits_TE = F.linear(x_TD.float(), self.router.weight.float())
            probs_TE = logits_TE.softmax(-1)
            gate_TK, idx_TK = probs_TE.topk(K, dim=-1)
            if K > 1:  # renormalise the chosen experts' weights (GShard top-2)
                gate_TK = gate_TK / gate_TK.sum(-1, keepdim=True)
            # f_i from the assignment before dropping (see module docstring)
            counts_E = torch.zeros(E, device=x_TD.device).index_add_(0, idx_TK.reshape(-1),
                                                                     torch.ones(T * K, device=x_TD.device))
            f_E = counts_E / max(T * K, 1)
            P_E = probs_TE.mean(0)
            balance = E * (f_E * P_E).sum()
            z = torch.logsumexp(logits_TE, -1).pow(2).mean()
        self.aux = MoEAux(balance_loss=balance, z_loss=z, counts_E=counts_E.detach())
        self.aux_loss = cfg.aux_loss_coef * balance + cfg.z_loss_coef * z
        if cfg.capacity_factor is not None:
            idx_TK = self._drop_over_capacity(idx_TK, math.ceil(cfg.capacity_factor * T * K / E))
        self.stats = {"load": counts_E.detach(), "dropped": (idx_TK < 0).sum().detach()}
        out_TD = expert_ffn(x_TD, idx_TK, gate_TK, self.w1, self.b1, self.w2, self.b2, cfg.activation, cfg.backend)
        return out_TD.reshape(x.shape)

    @staticmethod
    def _drop_over_capacity(idx_TK: torch.Tensor, capacity: int) -> torch.Tensor:
        """Mark assignments past each expert's capacity as -1; first choices of all tokens go first."""
        T, K = idx_TK.shape
        order = idx_TK.t().reshape(-1)  # priority: every token's 1st choice, then every 2nd choice
        onehot = F.one_hot(order, num_classes=int(idx_TK.max()) + 1)
        rank = (onehot.cumsum(0) * onehot).sum(-1) - 1  # position of each assignment in its expert's queue
        keep = (rank < capacity).view(K, T).t()
        return torch.where(keep, idx_TK, torch.full_like(idx_TK, -1))


class DenseFFN(nn.Module):
    """The dense baseline of the same shape as one expert (``d_hidden`` may be scaled for equal compute)."""

    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_model)
        self.aux_loss = torch.zeros(())
        self.stats: dict[str, torch.Tensor] = {}

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x_TD)))
