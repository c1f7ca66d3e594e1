"""Optimizers written here: LAMB and LARS, and the parameter grouping every optimizer uses.

Both follow the papers' formulas (BRIEF §3) and avoid the traps seen elsewhere:

* weight decay enters the *update* (inside LAMB's trust ratio, beside the gradient in LARS's), never the
  gradient that feeds Adam's moments;
* biases and normalisation parameters (every parameter with fewer than two dimensions) are excluded from
  both the layer-wise adaptation and the decay: their trust ratio is 1 and their decay 0;
* no clipping inside the optimizer: the training loop clips the global gradient norm once per step.

LAMB (You et al. 2020), per parameter tensor ``w`` with gradient ``g`` at step ``t``::

    m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
    r = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    u = r + wd w;            trust = ||w|| / ||u||   (1 when either norm is 0)
    w = w - lr * trust * u

LARS (You et al. 2017)::

    local = eta * ||w|| / (||g|| + wd ||w||)        (1 when either norm is 0)
    buf = momentum * buf + lr * local * (g + wd w);   w = w - buf

>>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]])); w.grad = torch.tensor([[1.0, 0.0]])
>>> Lamb([w], lr=0.1, weight_decay=0.0).step(); [round(x, 4) for x in w.detach().flatten().tolist()]
[2.5, 4.0]
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import Optimizer

from tiergate.errors import ConfigError


def _trust(w_norm: torch.Tensor, u_norm: torch.Tensor) -> torch.Tensor:
    ok = (w_norm > 0) & (u_norm > 0)
    return torch.where(ok, w_norm / u_norm.clamp_min(1e-30), torch.ones_like(w_norm))


class Lamb(Optimizer):
    """Layer-wise adaptive moments (LAMB). Groups with ``adapt=False`` take plain Adam steps (trust 1)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, adapt: bool = True):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, adapt=adapt))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["m"] = torch.zeros_like(p, dtype=torch.float32)
                    st["v"] = torch.zeros_like(p, dtype=torch.float32)
                st["step"] += 1
                t = st["step"]
                st["m"].mul_(b1).add_(g, alpha=1 - b1)
                st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                r = (st["m"] / (1 - b1 ** t)) / ((st["v"] / (1 - b2 ** t)).sqrt() + group["eps"])
                w = p.float()
                u = r + group["weight_decay"] * w if group["weight_decay"] else r
                trust = _trust(w.norm(), u.norm()) if group["adapt"] else 1.0
                p.add_((-group["lr"] * trust * u).to(p.dtype))
        return loss


class Lars(Optimizer):
    """Layer-wise adaptive rate scaling on SGD with momentum. ``adapt=False`` groups: plain momentum SGD."""

    def __init__(self, params, lr: float = 1.0, momentum: float = 0.9, weight_decay: float = 5e-4,
                 trust_coef: float = 0.001, adapt: bool = True):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coef=trust_coef, adapt=adapt))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                w = p.float()
                if group["adapt"]:
                    w_norm, g_norm = w.norm(), g.norm()
                    local = group["trust_coef"] * _trust(w_norm, g_norm + wd * w_norm)
                    d = g + wd * w if wd else g
                else:
                    local, d = 1.0, g
                st = self.state[p]
                if "buf" not in st:
                    st["buf"] = torch.zeros_like(p, dtype=torch.float32)
                st["buf"].mul_(group["momentum"]).add_(group["lr"] * local * d)
                p.sub_(st["buf"].to(p.dtype))
        return loss


class LazyAdamW(Optimizer):
    """AdamW for parameters with *sparse* gradients (an ``EmbeddingBag(sparse=True)``): only the rows a step
    touched have their moments and weights updated, decay included ("lazy" Adam, as TensorFlow's LazyAdam).
    A dense AdamW step over a 16M-entry bag costs ~100 ms on 2 CPU cores; this costs what the batch reads."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["m"] = torch.zeros_like(p)
                    st["v"] = torch.zeros_like(p)
                st["step"] += 1
                t = st["step"]
                g = p.grad.coalesce() if p.grad.is_sparse else p.grad.to_sparse()
                rows, vals = g.indices()[0], g.values()
                m = st["m"][rows].mul_(b1).add_(vals, alpha=1 - b1)
                v = st["v"][rows].mul_(b2).addcmul_(vals, vals, value=1 - b2)
                st["m"][rows], st["v"][rows] = m, v
                w = p[rows]
                upd = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + group["eps"])
                p[rows] = w - group["lr"] * (upd + group["weight_decay"] * w)
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices and embeddings (decayed, adapted) and vectors/scalars (neither). Parameters whose
    gradients will be sparse (sparse embedding bags) are left out: :func:`build_optimizer` gives them
    :class:`LazyAdamW`.

    A model with a method ``lr_scale(name) -> float`` gets those two groups once per distinct scale, each
    with ``lr_scale`` set: the loop multiplies the scheduled rate by it (a freshly initialised head over a
    pretrained body wants a higher rate than the body)."""
    scale_of = getattr(model, "lr_scale", None)
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in _sparse_param_ids(model):
            continue
        key = (p.ndim >= 2, float(scale_of(name)) if scale_of is not None else 1.0)
        groups.setdefault(key, []).append(p)
    if scale_of is None:  # the historical two groups, in their order, even when one is empty
        return [{"params": groups.get((True, 1.0), []), "weight_decay": weight_decay, "adapt": True},
                {"params": groups.get((False, 1.0), []), "weight_decay": 0.0, "adapt": False}]
    return [{"params": ps, "weight_decay": weight_decay if mat else 0.0, "adapt": mat, "lr_scale": scale}
            for (mat, scale), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]


def _sparse_param_ids(model: nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules()
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse}


class _Composite(Optimizer):
    """One optimizer for dense and sparse parameter groups: steps both, exposes both groups' ``lr``."""

    def __init__(self, dense: Optimizer, sparse: Optimizer):
        self.dense, self.sparse = dense, sparse
        self.param_groups = dense.param_groups + sparse.param_groups
        self.defaults = dense.defaults
        self.state = dense.state  # (for inspection; both states are saved by state_dict)

    def step(self, closure=None):
        self.dense.step()
        self.sparse.step()

    def zero_grad(self, set_to_none: bool = True):
        self.dense.zero_grad(set_to_none)
        self.sparse.zero_grad(set_to_none)

    def state_dict(self):
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, sd):
        self.dense.load_state_dict(sd["dense"])
        self.sparse.load_state_dict(sd["sparse"])


def build_optimizer(model: nn.Module, cfg) -> Optimizer:
    opt = _build_dense(model, cfg)
    sparse = [p for p in model.parameters() if id(p) in _sparse_param_ids(model)]
    if not sparse:
        return opt
    if cfg.optimizer != "adamw":
        raise ConfigError(f"optimizer {cfg.optimizer!r} needs dense gradients: set the bag's sparse_grad off")
    return _Composite(opt, LazyAdamW(sparse, lr=cfg.lr, weight_decay=cfg.weight_decay))


def _build_dense(model: nn.Module, cfg) -> Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    name = cfg.optimizer
    if name == "adamw":
        for g in groups:
            g.pop("adapt")
        # fused: one kernel over all tensors (several times faster than foreach on CPU)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    if name == "lamb":
        return Lamb(groups, lr=cfg.lr)
    if name == "lars":
        return Lars(groups, lr=cfg.lr, momentum=cfg.momentum)
    if name == "sgd":
        for g in groups:
            g.pop("adapt")
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ConfigError(f"optimizer {name!r}: use adamw, lamb, lars or sgd")
