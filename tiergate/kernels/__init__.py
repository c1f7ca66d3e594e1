"""tiergate.kernels: the ops that make the large sparse model fast, each with a PyTorch reference path.

Public API (shapes in the names: T tokens, D model width, H expert hidden width, E experts, k experts per
token, N = T*k routed rows, I/O input/output features):

MoE feed-forward (``tiergate.kernels.moe``):
    idx_Tk, gate_Tk = route(router_logits_TE, k, normalize=True)        # float32 softmax + top-k
    out_TD = moe_ffn(x_TD, idx_Tk, gate_Tk, w1_EDH, w2_EHD, activation="gelu", backend="auto", gemm="auto")
    moe_ffn_reference(...)                                               # same signature, plain torch
  out[t] = sum_j gate[t,j] * act(x[t] @ w1[e]) @ w2[e], e = idx[t,j]; dropless (no capacity, no token dropped);
  differentiable in x, gate, w1, w2; activation in {"gelu" (erf), "relu", "silu"}. The layer over it (router,
  auxiliary losses, capacity) is tiergate.models.moe.MoEFFN.

SWAT sparse linear (``tiergate.kernels.swat``):
    y = swat_linear(x_..I, weight_OI, bias_O=None, density=0.2, act_density=None, mode="topk"|"2:4",
                    backend="auto")
    (the layer over it, with warm-up, fixed masks and FLOP counts: tiergate.training.swat.SwatLinear)
    topk_threshold(t, density), two_four_mask(w_OI), semi_structured_status(device)

Dispatch: backend="auto" runs the Triton kernels when every tensor is on CUDA and ``triton`` imports, else the
plain-PyTorch reference (the CPU path); "triton" forces the kernels (on CPU only with TRITON_INTERPRET=1, which
is how the tests run them); "reference" forces plain torch. "auto" itself can be redirected from outside, for a
whole model: ``with force_backend("reference"): ...`` or ``TIERGATE_KERNELS=reference`` (``default_backend()``
says what "auto" means at the call site). Importing this package imports torch only; the
Triton modules (``_moe_triton``, ``_swat_triton``) are imported on first use. Design, measured results and the
notes log: docs/kernels.md.
"""

from tiergate.kernels._backend import default_backend, force_backend, triton_available
from tiergate.kernels.moe import moe_ffn, moe_ffn_reference, route, sort_by_expert
from tiergate.kernels.swat import (
    semi_structured_status,
    swat_linear,
    swat_linear_reference,
    topk_threshold,
    two_four_mask,
)

__all__ = [
    "default_backend",
    "force_backend",
    "moe_ffn",
    "moe_ffn_reference",
    "route",
    "semi_structured_status",
    "sort_by_expert",
    "swat_linear",
    "swat_linear_reference",
    "topk_threshold",
    "triton_available",
    "two_four_mask",
]
