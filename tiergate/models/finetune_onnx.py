"""The fine-tuned large tier as an ONNX graph for onnxruntime: built from the verified safetensors at load time.

:func:`export_onnx` traces a :class:`~tiergate.models.finetune.FinetuneClassifier` into an ONNX graph of
``(ids, attn[, wide_logits]) -> logits`` with the batch and the sequence length dynamic. The eager model's
mixture-of-experts layers sort tokens by expert and loop over the experts with counts known in Python, which a
trace would freeze; the exported graph routes the same way with tensor ops only: for each expert, the tokens
that chose it are found with ``NonZero``, gathered, passed through that expert's FFN and added back weighted by
their gate (``ScatterND``), so an expert costs the FLOPs of the tokens routed to it and no more. Pad tokens are
dropped before the experts, as in the eager model. The n-gram wide path runs outside the graph (it is a fitted
scikit-learn vocabulary) and its logits are an input.

The graph is never written to or read from disk: :class:`OnnxRunner` exports it from the model that
:func:`~tiergate.models.finetune_io.load_finetune` built from hash-checked safetensors, and hands the bytes to
onnxruntime. Parity with the eager model is tested (tests/models/test_finetune_onnx.py) and checked on the
real artifact by ``bench/finetune_serving.py``, which also measures both runtimes side by side.

>>> runner = OnnxRunner(model, threads=1)                  # doctest: +SKIP
>>> runner({"ids": ids_BT, "attn": attn_BT}).shape        # doctest: +SKIP
(2, 3)
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tiergate.errors import ModelError
from tiergate.models.finetune import FinetuneClassifier, UpcycledBlock
from tiergate.models.moe import MoEFFN

OPSET = 17


def _routed_experts(moe: MoEFFN, x_ND: torch.Tensor) -> torch.Tensor:
    """MoEFFN's forward (float32 router, top-k, gates renormalised) in traceable tensor ops."""
    cfg = moe.cfg
    probs_NE = F.linear(x_ND.float(), moe.router.weight.float()).softmax(-1)
    gate_NK, idx_NK = probs_NE.topk(cfg.top_k, dim=-1)
    if cfg.top_k > 1:
        gate_NK = gate_NK / gate_NK.sum(-1, keepdim=True)
    out_ND = torch.zeros_like(x_ND)
    for e in range(cfg.n_experts):
        chose_NK = idx_NK == e
        weight_N = (gate_NK * chose_NK).sum(-1)
        rows = torch.nonzero(chose_NK.any(-1)).squeeze(1)
        h = F.gelu(x_ND.index_select(0, rows) @ moe.w1[e] + moe.b1[e])
        y = (h @ moe.w2[e] + moe.b2[e]) * weight_N.index_select(0, rows).unsqueeze(1)
        out_ND = out_ND.index_put((rows,), out_ND.index_select(0, rows) + y)
    return out_ND


class _Graph(nn.Module):
    """The classifier's inference forward with the upcycled blocks rewritten for export (dropout is off)."""

    def __init__(self, model: FinetuneClassifier):
        super().__init__()
        self.model = model

    def forward(self, ids_BT: torch.Tensor, attn_BT: torch.Tensor, wide_BC: torch.Tensor | None = None):
        enc = self.model.encoder
        T = ids_BT.shape[1]
        x = enc.ln(enc.tok(ids_BT) + enc.pos.weight[:T] + enc.typ.weight[0])
        mask = (1.0 - attn_BT[:, None, None, :].to(x.dtype)) * -1e4
        real = torch.nonzero(attn_BT.reshape(-1) > 0).squeeze(1)  # flat positions of real tokens
        for blk in enc.blocks:
            if isinstance(blk, UpcycledBlock):
                x = blk.attend(x, mask)
                B, _, D = x.shape
                flat = x.reshape(-1, D)
                y = _routed_experts(blk.moe, flat.index_select(0, real))
                ffn = torch.zeros_like(flat).index_put((real,), y.to(flat.dtype)).reshape(B, T, D)
                x = blk.ln2(x + ffn)
            else:
                x = blk(x, mask)
        m = attn_BT.unsqueeze(-1).to(x.dtype)
        logits = self.model.head((x * m).sum(1) / m.sum(1).clamp_min(1.0))
        if wide_BC is not None:
            logits = logits.float() + wide_BC.float()
        return logits


def export_onnx(model: FinetuneClassifier) -> bytes:
    """The ONNX graph (bytes, opset :data:`OPSET`) of ``model`` in float32 on CPU, eval mode.

    Inputs ``ids`` and ``attn`` (int64, (B, T)) and, for a model with the vocabulary wide path,
    ``wide_logits`` (float32, (B, C)); output ``logits`` (float32, (B, C)). The hashed wide path
    (``wide_features="hashed"``) reads an EmbeddingBag over a bag the tier computes per text and is not exported.
    """
    if model.wide is not None:
        raise ModelError("the ONNX runtime serves models without the hashed wide path (wide_features: vocab or "
                         "none); serve this one with runtime: torch")
    graph = _Graph(model).eval()
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
    attn = (ids > 0).long()
    args: tuple = (ids, attn)
    names = ["ids", "attn"]
    axes = {"ids": {0: "B", 1: "T"}, "attn": {0: "B", 1: "T"}, "logits": {0: "B"}}
    if model.wide_input:
        args += (torch.zeros(2, model.head.out_features),)
        names.append("wide_logits")
        axes["wide_logits"] = {0: "B"}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python ints (the expert loop is unrolled on purpose)
        torch.onnx.export(graph, args, buf, input_names=names, output_names=["logits"], dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return buf.getvalue()


class OnnxRunner:
    """An onnxruntime session over :func:`export_onnx` of ``model``; called like the model on a token batch
    (``{"ids", "attn"[, "wide_logits"]}`` tensors) and returning float32 logits as a torch tensor."""

    def __init__(self, model: FinetuneClassifier, threads: int | None = None):
        import onnxruntime as ort

        from tiergate.models.small import session_options

        self.wide_input = model.wide_input
        self.session = ort.InferenceSession(export_onnx(model), sess_options=session_options(threads),
                                            providers=["CPUExecutionProvider"])

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        feed = {k: batch[k].cpu().numpy().astype(np.int64, copy=False) for k in ("ids", "attn")}
        if self.wide_input:
            feed["wide_logits"] = batch["wide_logits"].cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(self.session.run(["logits"], feed)[0])
