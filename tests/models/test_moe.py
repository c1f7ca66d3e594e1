"""MoE layer: top-k routing, load-balancing loss from the pre-drop assignment, z-loss, capacity dropping."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tiergate.models.moe import MoEConfig, MoEFFN


def _layer(**kw) -> MoEFFN:
    torch.manual_seed(0)
    return MoEFFN(MoEConfig(d_model=6, d_hidden=10, n_experts=4, **kw))


def _by_hand(layer: MoEFFN, x: torch.Tensor, keep=None) -> torch.Tensor:
    probs = F.softmax(x @ layer.router.weight.t(), -1)
    gate, idx = probs.topk(layer.cfg.top_k, -1)
    if layer.cfg.top_k > 1:
        gate = gate / gate.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(layer.cfg.top_k):
            if keep is not None and not keep[t, j]:
                continue
            e = idx[t, j]
            h = F.gelu(x[t] @ layer.w1[e] + layer.b1[e])
            out[t] += gate[t, j] * (h @ layer.w2[e] + layer.b2[e])
    return out


def test_top2_output_matches_a_per_token_loop_and_gradients_flow():
    layer = _layer(top_k=2)
    x = torch.randn(13, 6, requires_grad=True)
    y = layer(x)
    assert torch.allclose(y, _by_hand(layer, x.detach()), atol=1e-5)
    (y.sum() + layer.aux_loss).backward()
    for p in (layer.router.weight, layer.w1, layer.w2, layer.b1, layer.b2):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert layer.router.weight.grad.abs().sum() > 0


def test_aux_losses_by_hand_and_router_in_float32():
    layer = _layer(top_k=1, aux_loss_coef=0.01, z_loss_coef=0.001)
    x = torch.randn(20, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x.bfloat16())
    logits = x.bfloat16().float() @ layer.router.weight.t()
    probs = logits.softmax(-1)
    f = torch.bincount(probs.argmax(-1), minlength=4).float() / 20
    expect = 0.01 * 4 * (f * probs.mean(0)).sum() + 0.001 * torch.logsumexp(logits, -1).pow(2).mean()
    assert torch.allclose(layer.aux_loss, expect, atol=1e-5)
    assert layer.stats["load"].sum() == 20


def test_capacity_drops_overflow_but_balance_loss_counts_it():
    layer = _layer(top_k=1, capacity_factor=0.5)  # capacity ceil(0.5 * 16 / 4) = 2 per expert
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0] = 5.0  # every token prefers expert 0
    x = torch.rand(16, 6) + 0.1
    y = layer(x)
    assert int(layer.stats["dropped"]) == 14
    assert int(layer.stats["load"][0]) == 16  # the load (and the loss) see all 16, not the 2 kept
    assert (y.abs().sum(1) > 0).sum() == 2   # dropped tokens get nothing (the residual carries them)
