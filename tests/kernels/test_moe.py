"""MoE FFN: Triton launchers and the autograd path against float64 references, on awkward shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.kernels.helpers import assert_close
from tiergate.kernels import _moe_triton as km
from tiergate.kernels.moe import moe_ffn, moe_ffn_reference, route, sort_by_expert
from tiergate.models.moe import MoEConfig, MoEFFN

DTYPES = [torch.float32, torch.bfloat16]


def _routing(kind: str, t: int, e: int, k: int, g: torch.Generator) -> torch.Tensor:
    """expert_idx_Tk for a routing scenario; k distinct experts per token, as top-k routing gives."""
    scores = torch.rand(t, e, generator=g)
    if kind == "empty":  # experts 1 and e-1 never chosen
        scores[:, [1, e - 1]] = -1.0
    elif kind == "one-takes-all":  # expert 2 is in every token's top-k (with k=1 it takes every token)
        scores[:, 2] = 2.0
    idx = torch.topk(scores, k, dim=1).indices
    if kind == "dropped":  # about a third of the assignments dropped (-1), as a capacity limit would
        idx[torch.rand(t, k, generator=g) < 0.35] = -1
    return idx


def _dense_moe64(x, idx, gate, w1, w2, act, b1=None, b2=None):
    """Token-by-token float64 oracle, independent of the sort used by both paths; expert -1 contributes 0."""
    x, gate, w1, w2 = x.double(), gate.double(), w1.double(), w2.double()
    out = torch.zeros_like(x)
    for j in range(idx.shape[1]):
        live = (idx[:, j] >= 0).double()[:, None]
        e = idx[:, j].clamp_min(0)
        h = torch.einsum("td,tdh->th", x, w1[e])
        if b1 is not None:
            h = h + b1.double()[e]
        y = torch.einsum("th,thd->td", act(h), w2[e])
        if b2 is not None:
            y = y + b2.double()[e]
        out = out + live * gate[:, j, None] * y
    return out


ACT64 = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


def _inputs(t, d, h, e, k, kind, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    idx = _routing(kind, t, e, k, g)
    x = torch.randn(t, d, generator=g)
    gate = torch.rand(t, k, generator=g) + 0.1
    w1 = torch.randn(e, d, h, generator=g) / d**0.5
    w2 = torch.randn(e, h, d, generator=g) / h**0.5
    cast = [z.to(device=device, dtype=dtype).requires_grad_() for z in (x, w1, w2)]
    return cast[0], idx.to(device), gate.to(device).requires_grad_(), cast[1], cast[2]


# ------------------------------------------------------------------------------------------------ launchers
@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_combine_launchers(dtype, device):
    g = torch.Generator().manual_seed(0)
    t, d, e, k = 19, 45, 6, 2
    idx = _routing("random", t, e, k, g).to(device)
    perm, pos, counts, offs = sort_by_expert(idx, e)
    assert counts.sum().item() == t * k and offs[-1].item() == t * k
    x = torch.randn(t, d, generator=g).to(device, dtype)
    xs = km.gather_rows(x, perm, k)
    torch.testing.assert_close(xs, x[perm.long() // k], rtol=0, atol=0)  # a copy: exact
    pos2 = torch.full_like(perm, -1)
    xs2 = km.gather_rows(x, perm, k, pos_out=pos2)
    assert torch.equal(xs2, xs) and torch.equal(pos2.view(t, k), pos)  # the inverse permutation, every entry
    y = torch.randn(t * k, d, generator=g).to(device, dtype)
    gate = torch.rand(t, k, generator=g).to(device)
    out = km.combine(y, pos, idx, gate)
    ref = (y.double()[pos.long()] * gate.double()[..., None]).sum(1)
    assert_close(out, ref, dtype, "combine")
    do = torch.randn(t, d, generator=g).to(device, dtype)
    dy, dgate = km.combine_bwd(do, y, perm, idx, gate)
    tok = perm.long() // k
    assert_close(dy, do.double()[tok] * gate.reshape(-1).double()[perm.long(), None], dtype, "combine_bwd dy")
    assert_close(dgate.reshape(-1)[perm.long()], (do.double()[tok] * y.double()).sum(1), dtype, "dgate")


@pytest.mark.parametrize("activation", ["gelu", "relu", "silu"])
def test_activation_launchers(activation, device):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(7, 53, generator=g).to(device)
    da = torch.randn(7, 53, generator=g).to(device)
    h64 = h.double().requires_grad_()
    a64 = ACT64[activation](h64)
    (dh64,) = torch.autograd.grad(a64, h64, da.double())
    offs = torch.tensor([3, 7], dtype=torch.int32, device=device)  # all 7 rows live
    assert_close(km.act_fwd(h, activation, offs), a64, torch.float32, "act_fwd")
    a, dh = km.act_bwd_(h.clone(), da.clone(), activation, offs)
    assert_close(a, a64, torch.float32, "act_bwd a")
    assert_close(dh, dh64, torch.float32, "act_bwd dh")
    short = torch.tensor([2, 5], dtype=torch.int32, device=device)  # rows 5 and 6 dropped: left untouched
    a_out = km.act_fwd(h, activation, short)
    assert_close(a_out[:5], a64[:5], torch.float32, "act_fwd live rows")
    h2 = h.clone()
    km.act_bwd_(h2, da.clone(), activation, short)
    assert torch.equal(h2[5:], h[5:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "empty", "one-takes-all"])
def test_grouped_mm_launchers(dtype, kind, device):
    g = torch.Generator().manual_seed(2)
    t, d, h, e, k = 23, 40, 24, 5, 2
    idx = _routing(kind, t, e, k, g).to(device)
    perm, _, counts, offs = sort_by_expert(idx, e)
    x = torch.randn(t, d, generator=g).to(device, dtype)
    w = torch.randn(e, d, h, generator=g).to(device, dtype)
    ref_rows = x.double()[perm.long() // k]
    e_of_row = torch.repeat_interleave(torch.arange(e, device=device), counts)
    ref = torch.einsum("nd,ndh->nh", ref_rows, w.double()[e_of_row])
    assert_close(km.grouped_mm(x, w, offs, counts, perm, k), ref, dtype, "grouped_mm gathered")
    xs = ref_rows.to(dtype)
    assert_close(km.grouped_mm(xs, w, offs, counts), ref, dtype, "grouped_mm sorted")
    wt = w.transpose(1, 2).contiguous().transpose(1, 2)  # same values, transposed strides
    assert_close(km.grouped_mm(xs, wt, offs, counts), ref, dtype, "grouped_mm strided b")
    dy = torch.randn(t * k, h, generator=g).to(device, dtype)
    dw_ref = torch.zeros(e, d, h, dtype=torch.float64, device=device)
    dw_ref.index_add_(0, e_of_row, ref_rows[:, :, None] * dy.double()[:, None, :])
    dw = km.grouped_mm_wgrad(x, dy, offs, perm, k)
    assert_close(dw, dw_ref, dtype, "grouped_mm_wgrad gathered")
    assert_close(km.grouped_mm_wgrad(xs, dy, offs), dw_ref, dtype, "grouped_mm_wgrad sorted")
    empty = (counts == 0).nonzero().flatten()
    assert (dw[empty] == 0).all(), "an expert with no rows must get a zero weight gradient"


# --------------------------------------------------------------------------------------------- full layer
CASES = [  # (T, D, H, E, k, routing, activation, biases)
    (37, 24, 40, 5, 2, "random", "gelu", False),
    (29, 40, 24, 6, 1, "empty", "silu", True),
    (21, 16, 48, 4, 1, "one-takes-all", "relu", False),
    (26, 24, 40, 7, 2, "one-takes-all", "gelu", True),
    (33, 16, 24, 5, 2, "dropped", "gelu", True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[0]}D{c[1]}H{c[2]}E{c[3]}k{c[4]}-{c[5]}-{c[6]}"
                         + ("-bias" if c[7] else ""))
def test_moe_ffn_triton_matches_reference(case, dtype, device):
    t, d, h, e, k, kind, act, bias = case
    x, idx, gate, w1, w2 = _inputs(t, d, h, e, k, kind, dtype, device, seed=sum(case[:5]))
    g = torch.Generator().manual_seed(3)
    do = torch.randn(t, d, generator=g).to(device, dtype)
    b1 = b2 = None
    params = [x, gate, w1, w2]
    if bias:
        b1 = (torch.randn(e, h, generator=g) * 0.5).to(device, dtype).requires_grad_()
        b2 = (torch.randn(e, d, generator=g) * 0.5).to(device, dtype).requires_grad_()
        params += [b1, b2]
    ref = _dense_moe64(x, idx, gate, w1, w2, ACT64[act], b1, b2)
    ref_grads = torch.autograd.grad(ref, params, do.double())
    # the torch._grouped_mm path: on CUDA it takes bf16 only; torch's CPU fallback (2.9+) takes both
    grouped = hasattr(torch, "_grouped_mm") and d % 8 == 0 and h % 8 == 0
    gemms = ["triton"] + (["torch"] if grouped and (device == "cpu" or dtype == torch.bfloat16) else [])
    for gemm in gemms:
        out = moe_ffn(x, idx, gate, w1, w2, act, b1, b2, backend="triton", gemm=gemm)
        grads = torch.autograd.grad(out, params, do)
        assert_close(out, ref, dtype, f"out ({gemm})")
        for name, gr, rg in zip(("dx", "dgate", "dw1", "dw2", "db1", "db2"), grads, ref_grads, strict=False):
            assert_close(gr, rg, dtype, f"{name} ({gemm})")
        if kind == "dropped":
            assert (grads[1][idx < 0] == 0).all(), "a dropped assignment's gate gets no gradient"


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_matches_oracle(dtype):
    x, idx, gate, w1, w2 = _inputs(31, 24, 40, 6, 2, "dropped", dtype, "cpu", seed=5)
    b1 = torch.randn(6, 40).to(dtype).requires_grad_()
    b2 = torch.randn(6, 24).to(dtype).requires_grad_()
    do = torch.randn(31, 24).to(dtype)
    params = (x, gate, w1, w2, b1, b2)
    ref = _dense_moe64(x, idx, gate, w1, w2, F.gelu, b1, b2)
    ref_grads = torch.autograd.grad(ref, params, do.double())
    out = moe_ffn(x, idx, gate, w1, w2, "gelu", b1, b2, backend="auto")  # CPU tensors: the reference path
    assert_close(out, ref, dtype, "reference out")
    for name, gr, rg in zip(("dx", "dgate", "dw1", "dw2", "db1", "db2"), torch.autograd.grad(out, params, do),
                            ref_grads, strict=True):
        assert_close(gr, rg, dtype, f"reference {name}")


def test_backward_twice_raises(device):
    x, idx, gate, w1, w2 = _inputs(9, 16, 16, 3, 2, "random", torch.float32, device, seed=6)
    out = moe_ffn(x, idx, gate, w1, w2, backend="triton")
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        out.sum().backward()


def test_module_and_routing(device):
    cfg = MoEConfig(d_model=24, d_hidden=40, n_experts=5, top_k=2, backend="triton", bias=True)
    torch.manual_seed(7)
    mod = MoEFFN(cfg).to(device)
    x = torch.randn(3, 7, 24, device=device)
    out = mod(x)
    aux = mod.aux
    assert out.shape == x.shape and aux.counts_E.sum().item() == 3 * 7 * 2
    (out.square().mean() + 0.01 * aux.balance_loss + 1e-3 * aux.z_loss).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mod.parameters())
    ref_mod = MoEFFN(MoEConfig(**{**cfg.__dict__, "backend": "reference"})).to(device)
    ref_mod.load_state_dict(mod.state_dict())
    assert_close(out, ref_mod(x), torch.float32, "module triton vs reference")
    idx, gate = route(torch.randn(11, 5), k=3)
    assert idx.shape == (11, 3) and torch.allclose(gate.sum(1), torch.ones(11))


def test_bad_arguments():
    x = torch.randn(4, 8)
    idx, gate = route(torch.randn(4, 3), k=2)
    with pytest.raises(ValueError, match="activation"):
        moe_ffn(x, idx, gate, torch.randn(3, 8, 5), torch.randn(3, 5, 8), activation="tanh")
    with pytest.raises(ValueError, match="w1_EDH"):
        moe_ffn(x, idx, gate, torch.randn(3, 8, 5), torch.randn(3, 6, 8))
    with pytest.raises(ValueError, match="b1_EH"):
        moe_ffn(x, idx, gate, torch.randn(3, 8, 5), torch.randn(3, 5, 8), b1_EH=torch.randn(3, 4))
    with pytest.raises(ValueError, match="backend"):
        moe_ffn(x, idx, gate, torch.randn(3, 8, 5), torch.randn(3, 5, 8), backend="cuda")
    assert moe_ffn_reference(x, idx, gate, torch.randn(3, 8, 5), torch.randn(3, 5, 8)).shape == (4, 8)
