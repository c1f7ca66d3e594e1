"""LAMB and LARS against steps computed by hand from the papers' formulas (BRIEF §3)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tiergate.training.loop import TrainConfig
from tiergate.training.optim import Lamb, Lars, build_optimizer, param_groups


def _param(values, grad):
    p = nn.Parameter(torch.tensor(values, dtype=torch.float32))
    p.grad = torch.tensor(grad, dtype=torch.float32)
    return p


def test_lamb_two_steps_by_hand():
    w0, g1, g2 = [[1.0, -2.0], [0.5, 2.0]], [[0.1, 0.2], [-0.3, 0.4]], [[0.2, -0.1], [0.0, 0.5]]
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-6, 0.01
    p = _param(w0, g1)
    opt = Lamb([p], lr=lr, weight_decay=wd)
    opt.step()
    p.grad = torch.tensor(g2)
    opt.step()
    # by hand, in plain Python floats
    w = [x for row in w0 for x in row]
    m = [0.0] * 4
    v = [0.0] * 4
    for t, g in ((1, [x for row in g1 for x in row]), (2, [x for row in g2 for x in row])):
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g, strict=True)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g, strict=True)]
        r = [(mi / (1 - b1 ** t)) / (math.sqrt(vi / (1 - b2 ** t)) + eps) for mi, vi in zip(m, v, strict=True)]
        u = [ri + wd * wi for ri, wi in zip(r, w, strict=True)]
        trust = math.sqrt(sum(x * x for x in w)) / math.sqrt(sum(x * x for x in u))
        w = [wi - lr * trust * ui for wi, ui in zip(w, u, strict=True)]
    assert p.detach().flatten().tolist() == pytest.approx(w, abs=1e-6)


def test_lamb_weight_decay_is_in_the_update_not_the_moments():
    p = _param([[3.0, 4.0]], [[0.0, 0.0]])
    opt = Lamb([p], lr=0.1, weight_decay=0.5)
    opt.step()
    # zero gradient: moments stay zero, so the update is lr * trust * wd * w with trust = ||w|| / ||wd w||
    assert opt.state[p]["m"].abs().sum() == 0
    # u = wd*w = [1.5, 2]; trust = 5/2.5 = 2; w - 0.1*2*u = [2.7, 3.6]
    assert p.detach().flatten().tolist() == pytest.approx([2.7, 3.6], rel=1e-5)


def test_lamb_trust_is_one_when_weights_are_zero_and_for_unadapted_groups():
    p = _param([[0.0, 0.0]], [[1.0, 0.0]])
    Lamb([p], lr=0.1).step()  # ||w|| = 0: trust 1, plain Adam step of size lr
    assert p.detach().flatten().tolist() == pytest.approx([-0.1, 0.0], abs=1e-6)
    b = _param([3.0, 4.0], [1.0, 0.0])
    Lamb([{"params": [b], "adapt": False, "weight_decay": 0.0}], lr=0.1).step()
    assert b.detach().tolist() == pytest.approx([2.9, 4.0], abs=1e-6)


def test_lars_two_steps_by_hand():
    w0, g1, g2 = [[1.0, -2.0], [0.5, 2.0]], [[0.1, 0.2], [-0.3, 0.4]], [[0.2, -0.1], [0.0, 0.5]]
    lr, mom, wd, eta = 2.0, 0.9, 5e-4, 0.001
    p = _param(w0, g1)
    opt = Lars([p], lr=lr, momentum=mom, weight_decay=wd, trust_coef=eta)
    opt.step()
    p.grad = torch.tensor(g2)
    opt.step()
    w = [x for row in w0 for x in row]
    buf = [0.0] * 4
    for g in ([x for row in g1 for x in row], [x for row in g2 for x in row]):
        wn = math.sqrt(sum(x * x for x in w))
        gn = math.sqrt(sum(x * x for x in g))
        local = eta * wn / (gn + wd * wn)
        buf = [mom * bi + lr * local * (gi + wd * wi) for bi, gi, wi in zip(buf, g, w, strict=True)]
        w = [wi - bi for wi, bi in zip(w, buf, strict=True)]
    assert p.detach().flatten().tolist() == pytest.approx(w, abs=1e-6)


def test_bias_and_norm_parameters_are_neither_decayed_nor_adapted():
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    groups = param_groups(model, 0.01)
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(model[0].weight)}
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["adapt"] is False
    for name in ("adamw", "lamb", "lars", "sgd"):
        opt = build_optimizer(model, TrainConfig(optimizer=name))
        assert len(opt.param_groups) == 2 and opt.param_groups[1]["weight_decay"] == 0.0


def test_no_clipping_inside_the_optimizer():
    # a huge gradient is not clipped by LARS (the loop clips once): the step scales with trust, not a clip
    p = _param([[1.0, 0.0]], [[1e6, 0.0]])
    Lars([p], lr=1.0, momentum=0.0, weight_decay=0.0, trust_coef=0.001).step()
    assert p.detach().flatten().tolist() == pytest.approx([1.0 - 0.001 * 1.0 / 1e6 * 1e6, 0.0])
