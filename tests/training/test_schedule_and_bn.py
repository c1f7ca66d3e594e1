"""LR scaling rules, warm-up + decay schedules, Ghost Batch Norm."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tiergate.errors import ConfigError
from tiergate.models.layers import GhostBatchNorm1d
from tiergate.training.schedule import Schedule, scale_lr


def test_lr_scaling_rules():
    assert scale_lr(0.1, 2048, 256, "linear") == pytest.approx(0.8)
    assert scale_lr(0.1, 2048, 256, "sqrt") == pytest.approx(0.1 * math.sqrt(8))
    assert scale_lr(0.1, 2048, 256, "none") == 0.1
    with pytest.raises(ConfigError):
        scale_lr(0.1, 2, 1, "cubic")


def test_warmup_then_cosine_and_poly():
    s = Schedule(base_lr=1.0, total_steps=110, warmup_steps=10, kind="cosine")
    assert [s.lr_at(i) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert s.lr_at(60) == pytest.approx(0.5)
    assert s.lr_at(110) == pytest.approx(0.0, abs=1e-12)
    p = Schedule(base_lr=2.0, total_steps=100, warmup_steps=0, kind="poly", power=2.0)
    assert p.lr_at(50) == pytest.approx(2.0 * 0.25)
    assert Schedule(1.0, 10, 0, "constant").lr_at(7) == 1.0
    lrs = [s.lr_at(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))  # monotone decay after warm-up


def test_ghost_bn_normalises_each_chunk_with_its_own_statistics():
    torch.manual_seed(0)
    bn = GhostBatchNorm1d(3, ghost_size=4)
    x = torch.cat([torch.randn(4, 3), 10 + 5 * torch.randn(4, 3)])
    y = bn(x)
    for chunk in (y[:4], y[4:]):  # each chunk is zero-mean, unit-variance on its own
        assert chunk.mean(0).abs().max() < 1e-5
        assert (chunk.var(0, unbiased=False) - 1).abs().max() < 1e-3
    plain = torch.nn.BatchNorm1d(3)(x)
    assert (plain[:4].mean(0)).abs().max() > 0.5  # a plain BN does not


def test_ghost_bn_running_stats_match_one_plain_update_per_batch():
    torch.manual_seed(0)
    x = torch.randn(64, 2) * 3 + 1
    g = GhostBatchNorm1d(2, ghost_size=16, momentum=0.1)
    g(x)
    # four chunk updates with m' = 1 - 0.9^(1/4) weigh the old statistics by 0.9 in total
    assert g.running_mean.abs().max() > 0.05
    m = 1 - 0.9 ** 0.25
    expect = torch.zeros(2)
    for c in x.split(16):
        expect = (1 - m) * expect + m * c.mean(0)
    assert torch.allclose(g.running_mean, expect, atol=1e-6)


def test_ghost_bn_eval_uses_running_stats_and_lone_last_row_is_handled():
    g = GhostBatchNorm1d(2, ghost_size=4)
    y = g(torch.randn(9, 2))  # chunks 4, 4, 1: the lone row joins the chunk before it
    assert torch.isfinite(y).all() and y.shape == (9, 2)
    g.eval()
    z = torch.randn(5, 2)
    expect = (z - g.running_mean) / torch.sqrt(g.running_var + g.eps) * g.weight + g.bias
    assert torch.allclose(g(z), expect, atol=1e-5)
    g.train()
    assert torch.isfinite(g(torch.randn(1, 2))).all()  # a batch of one row in training


@pytest.mark.parametrize("n", [64, 67, 65, 130, 7])
def test_ghost_bn_batched_chunks_match_one_batchnorm_per_chunk(n):
    """The batched forward equals normalising each chunk with its own F.batch_norm call (outputs, input and
    affine gradients, running statistics), including a remainder chunk and a folded lone last row."""
    torch.manual_seed(0)
    g = GhostBatchNorm1d(5, ghost_size=16)
    with torch.no_grad():
        g.weight.uniform_(0.5, 1.5)
        g.bias.uniform_(-1, 1)
    ref = GhostBatchNorm1d(5, ghost_size=16)
    ref.load_state_dict(g.state_dict())
    x = (torch.randn(n, 5) * 3 + 1).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y = g(x)
    bounds = list(range(0, n, 16)) + [n]
    if n > 16 and bounds[-1] - bounds[-2] == 1:
        bounds.pop(-2)
    if n <= 16:
        y_ref = torch.nn.BatchNorm1d.forward(ref, x2)
    else:
        m = 1.0 - (1.0 - ref.momentum) ** (1.0 / (len(bounds) - 1))
        y_ref = torch.cat([F.batch_norm(x2[a:b], ref.running_mean, ref.running_var, ref.weight, ref.bias, True, m,
                                        ref.eps) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g.weight.grad, ref.weight.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g.running_mean, ref.running_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g.running_var, ref.running_var, atol=1e-6, rtol=1e-5)
