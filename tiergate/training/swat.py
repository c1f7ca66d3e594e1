"""SWAT: sparse weights and activations during training (Raihan & Aamodt 2020), on ``nn.Linear`` layers.

Forward uses the top-K weights by magnitude; backward uses the same sparse weights for the input gradient and
the top-K activations (saved in forward) for the weight gradient; the *update stays dense*, so a pruned weight
keeps learning and the mask moves from step to step. ``fixed_mask=True`` is the baseline where the mask chosen
at the end of warm-up never moves (gradients of masked weights are zeroed). The first ``warmup_steps`` run
dense (the paper's dense warm-up). Every layer counts the multiply-adds it would run on sparse hardware:
forward ``(1-s_w)``, input gradient ``(1-s_w)``, weight gradient ``(1-s_a)`` of the dense figure. On a CPU or a
GPU without 2:4 support these savings are *counted*, not timed (BRIEF §3: unstructured masks save no time).

The sparse step is the kernels' op, :func:`tiergate.kernels.swat_linear` (Triton on CUDA: masked-operand
matmuls and a radix-select threshold; its PyTorch reference on CPU), so this is tiergate's one SWAT layer. The
kernels speak of the share of weights *kept* (``density``); this config of the share *dropped*
(``weight_sparsity``), as the paper does: ``density = 1 - weight_sparsity``.

Applied from outside the model (:meth:`tiergate.training.parallel.Runtime.apply`)::

    sparsify(model, SwatConfig(weight_sparsity=0.8, act_sparsity=0.8, warmup_steps=100))
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from tiergate.kernels import swat_linear


@dataclass
class SwatConfig:
    weight_sparsity: float = 0.8    # share of each layer's weights zeroed in forward/backward
    act_sparsity: float = 0.8       # share of each layer's input activations dropped for the weight gradient
    warmup_steps: int = 0           # dense steps before sparsity starts
    fixed_mask: bool = False        # baseline: freeze the mask at the end of warm-up (no regrowth)
    skip: tuple[str, ...] = ("head",)  # layer names left dense (the classifier output layer, as in the paper)
    per_layer: dict[str, float] | None = None  # weight (and activation) sparsity by layer name, overriding the above
    backend: str = "auto"           # the kernel: "auto" (Triton on CUDA), "triton" or "reference"

    def __post_init__(self) -> None:
        for name in ("weight_sparsity", "act_sparsity"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)}: use 0 <= sparsity < 1 (the share of entries dropped)")


def topk_mask(x: torch.Tensor, keep: float) -> torch.Tensor:
    """Boolean mask of the ``keep`` share of entries of largest magnitude (ties may keep a few more)."""
    n = x.numel()
    k = max(int(round(keep * n)), 1)
    if k >= n:
        return torch.ones_like(x, dtype=torch.bool)
    thresh = x.detach().abs().flatten().float().kthvalue(n - k + 1).values
    return x.detach().abs() >= thresh


class SwatLinear(nn.Module):
    """A drop-in replacement of one ``nn.Linear`` that shares its parameters."""

    def __init__(self, linear: nn.Linear, cfg: SwatConfig):
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.cfg = cfg
        self.register_buffer("step", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("fixed", torch.ones_like(linear.weight, dtype=torch.bool), persistent=False)
        self.flops_dense = 0.0    # multiply-adds x 2 a dense layer would have run in training
        self.flops_counted = 0.0  # the same under SWAT's sparsity

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.weight, self.bias)  # serving: dense weights (the update kept them all)
        rows = x.numel() // x.shape[-1]
        dense = 2.0 * rows * self.in_features * self.out_features
        self.flops_dense += 3 * dense
        warm = int(self.step) < self.cfg.warmup_steps
        self.step += 1
        if warm:
            self.flops_counted += 3 * dense
            return F.linear(x, self.weight, self.bias)
        if self.cfg.fixed_mask:
            if int(self.step) == self.cfg.warmup_steps + 1:
                self.fixed.copy_(topk_mask(self.weight, 1.0 - self.cfg.weight_sparsity))
            mask = self.fixed
            # the fixed-mask baseline is plain static sparsity: masked weights get no gradient either
            w = self.weight * mask
            self.flops_counted += dense * (3 * (1 - self.cfg.weight_sparsity))
            return F.linear(x, w, self.bias)
        self.flops_counted += dense * (2 * (1 - self.cfg.weight_sparsity) + (1 - self.cfg.act_sparsity))
        return self._sparse(x)

    def _sparse(self, x: torch.Tensor) -> torch.Tensor:
        """The kernels' SWAT op; under autocast its operands are cast first (its backward runs in their dtype)."""
        c = self.cfg
        w, b = self.weight, self.bias
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            dt = torch.get_autocast_dtype(dev)
            with torch.autocast(dev, enabled=False):
                return swat_linear(x.to(dt), w.to(dt), None if b is None else b.to(dt), density=1.0 - c.weight_sparsity,
                                   act_density=1.0 - c.act_sparsity, backend=c.backend)
        return swat_linear(x, w, b, density=1.0 - c.weight_sparsity, act_density=1.0 - c.act_sparsity,
                           backend=c.backend)


def sparsify(model: nn.Module, cfg: SwatConfig) -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` (except names in ``cfg.skip``) for a :class:`SwatLinear`."""
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and not any(s == full or full.endswith("." + s) for s in cfg.skip):
                layer_cfg = cfg
                if cfg.per_layer and full in cfg.per_layer:
                    s_l = cfg.per_layer[full]
                    layer_cfg = replace(cfg, weight_sparsity=s_l, act_sparsity=s_l)
                setattr(mod, child_name, SwatLinear(child, layer_cfg))
    return model


def flop_counts(model: nn.Module) -> tuple[float, float]:
    """(dense, counted) training FLOPs summed over the model's SWAT layers so far."""
    dense = counted = 0.0
    for m in model.modules():
        if isinstance(m, SwatLinear):
            dense += m.flops_dense
            counted += m.flops_counted
    return dense, counted
