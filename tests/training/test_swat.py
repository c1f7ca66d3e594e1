"""SWAT on linear layers: sparse forward, sparse-activation weight gradient, dense update, counted FLOPs."""

from __future__ import annotations

import torch
from torch import nn

from tiergate.training.swat import SwatConfig, SwatLinear, flop_counts, sparsify, topk_mask


def test_topk_mask_keeps_the_largest_share():
    w = torch.tensor([[0.1, -5.0, 0.3, 2.0], [-0.2, 0.05, 4.0, -1.0]])
    m = topk_mask(w, 0.25)
    assert m.sum() == 2 and m[0, 1] and m[1, 2]


def test_forward_uses_topk_weights_and_gradient_stays_dense():
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    sw = SwatLinear(lin, SwatConfig(weight_sparsity=0.6, act_sparsity=0.5))
    x = torch.randn(7, 6, requires_grad=True)
    y = sw(x)
    mask = topk_mask(lin.weight, 0.4)
    assert torch.allclose(y, x @ (lin.weight * mask).t() + lin.bias, atol=1e-6)
    g = torch.randn_like(y)
    y.backward(g)
    # input gradient through the sparse weights
    assert torch.allclose(x.grad, g @ (lin.weight * mask), atol=1e-6)
    # weight gradient from the top-50% activations, for *every* weight (the update is dense)
    xs = x.detach() * topk_mask(x.detach(), 0.5)
    assert torch.allclose(lin.weight.grad, g.t() @ xs, atol=1e-6)
    assert (lin.weight.grad[~mask] != 0).any()


def test_fixed_mask_baseline_never_moves_and_warmup_is_dense():
    torch.manual_seed(0)
    lin = nn.Linear(8, 8)
    sw = SwatLinear(lin, SwatConfig(weight_sparsity=0.5, warmup_steps=2, fixed_mask=True))
    x = torch.randn(4, 8)
    assert torch.allclose(sw(x), lin(x))  # warm-up step 1: dense
    sw(x)
    sw(x)  # first sparse step fixes the mask
    fixed = sw.fixed.clone()
    with torch.no_grad():
        lin.weight.mul_(torch.randn_like(lin.weight))  # weights move...
    sw(x)
    assert torch.equal(sw.fixed, fixed)  # ...the mask does not
    out = sw(x)
    out.sum().backward()
    assert (lin.weight.grad[~fixed] == 0).all()  # static sparsity: masked weights get no gradient


def test_flop_counting_and_sparsify_skips_the_head():
    model = nn.Sequential()
    model.add_module("body", nn.Linear(10, 20))
    model.add_module("head", nn.Linear(20, 3))
    sparsify(model, SwatConfig(weight_sparsity=0.8, act_sparsity=0.8, skip=("head",)))
    assert isinstance(model.body, SwatLinear) and isinstance(model.head, nn.Linear)
    model(torch.randn(5, 10)).sum().backward()
    dense, counted = flop_counts(model)
    assert dense == 3 * 2 * 5 * 10 * 20
    assert abs(counted - dense * (0.2 + 0.2 + 0.2) / 3) < 1e-6
    model.eval()
    x = torch.randn(2, 10)
    assert torch.allclose(model.body(x), x @ model.body.weight.t() + model.body.bias)  # serving is dense


def test_per_layer_sparsity():
    model = nn.Sequential()
    model.add_module("a", nn.Linear(10, 10))
    model.add_module("b", nn.Linear(10, 10))
    sparsify(model, SwatConfig(weight_sparsity=0.8, per_layer={"b": 0.5}, skip=()))
    assert model.a.cfg.weight_sparsity == 0.8 and model.b.cfg.weight_sparsity == 0.5
