"""The backend switch: force_backend / TIERGATE_KERNELS redirect "auto" for a whole model, explicit names win."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.kernels.helpers import rel_err
from tiergate.kernels import _moe_triton  # noqa: F401 - imported under TRITON_INTERPRET (conftest)
from tiergate.kernels import moe as moe_mod
from tiergate.kernels._backend import ENV_VAR, default_backend, force_backend, use_triton
from tiergate.kernels.moe import moe_ffn, moe_ffn_reference, route


def test_default_is_auto_and_cpu_auto_is_reference(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert default_backend() == "auto"
    assert use_triton("auto", torch.zeros(2)) is False


def test_force_backend_redirects_auto_and_restores(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    x = torch.zeros(2)
    with force_backend("triton"):
        assert default_backend() == "triton"
        assert use_triton("auto", x) is True  # CPU tensor, but forced (runs under TRITON_INTERPRET in tests)
        with force_backend("reference"):  # innermost block wins
            assert use_triton("auto", x) is False
        assert use_triton("auto", x) is True
        assert use_triton("reference", x) is False  # an explicit backend beats the block
    assert default_backend() == "auto"


def test_force_backend_is_per_thread(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    seen = []
    with force_backend("triton"):
        t = threading.Thread(target=lambda: seen.append(default_backend()))
        t.start()
        t.join()
    assert seen == ["auto"]


def test_env_var_redirects_auto_and_block_beats_it(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "triton")
    assert use_triton("auto", torch.zeros(2)) is True
    with force_backend("reference"):
        assert use_triton("auto", torch.zeros(2)) is False


def test_bad_names_raise_naming_the_source(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(ValueError, match=ENV_VAR):
        default_backend()
    with pytest.raises(ValueError, match="backend='fast'"), force_backend("fast"):
        pass


def _problem(device, t=37, d=24, h=40, e=5, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, d, generator=g)
    w1 = torch.randn(e, d, h, generator=g) / d ** 0.5
    w2 = torch.randn(e, h, d, generator=g) / h ** 0.5
    idx, gate = route(torch.randn(t, e, generator=g), k)
    return tuple(a.to(device) for a in (x, idx, gate, w1, w2))


def test_forced_triton_reaches_the_op_through_auto(monkeypatch, device):
    """moe_ffn(backend="auto") under force_backend("triton") takes the autograd Function over the kernels."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    calls = []
    real = moe_mod.MoEFFNFunction.apply
    monkeypatch.setattr(moe_mod.MoEFFNFunction, "apply", lambda *a: calls.append(1) or real(*a))
    x, idx, gate, w1, w2 = _problem(device)
    ref = moe_ffn_reference(x, idx, gate, w1, w2)
    with force_backend("reference"):
        assert rel_err(moe_ffn(x, idx, gate, w1, w2), ref) <= 1e-6
    assert calls == []
    with force_backend("triton"):
        out = moe_ffn(x, idx, gate, w1, w2)
    assert calls == [1]
    assert rel_err(out, ref) <= 1e-4  # fp32 both ways, different summation order (helpers.TOL)


def test_triton_path_follows_autocast_dtype(monkeypatch, device):
    """Under autocast the Triton path computes in the autocast dtype, as the reference's matmuls do: its
    output is bf16 and matches the reference under the same autocast within bf16 rounding; gradients reach
    the fp32 weights in fp32."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    x, idx, gate, w1, w2 = _problem(device, seed=1)
    w1.requires_grad_(True)
    with torch.autocast(device, dtype=torch.bfloat16):
        ref = moe_ffn_reference(x, idx, gate, w1, w2)
        with force_backend("triton"):
            out = moe_ffn(x, idx, gate, w1, w2)
    assert out.dtype == torch.bfloat16
    # bf16 operands (8 mantissa bits) and a bf16 hidden activation: ~1e-2 relative, as for the bf16 tests
    assert rel_err(out, ref) <= 2e-2
    out.float().sum().backward()
    assert w1.grad is not None and w1.grad.dtype == torch.float32 and torch.isfinite(w1.grad).all()
