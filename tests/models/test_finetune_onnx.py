"""The fine-tuned tier's ONNX graph (tiergate.models.finetune_onnx): onnxruntime computes what eager torch does,
for dense and upcycled blocks, top-1 and top-2 routing, padded batches and the vocabulary wide input; and the tier
picks its runtime as documented. Real onnxruntime sessions over graphs exported from tiny random models."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tiergate.errors import ModelError
from tiergate.models.encoder import BertConfig
from tiergate.models.finetune import FinetuneClassifier, FinetuneConfig
from tiergate.models.finetune_io import resolve_runtime
from tiergate.models.finetune_onnx import OnnxRunner, export_onnx

pytest.importorskip("onnxruntime")

TINY = BertConfig(hidden=32, n_layers=3, n_heads=2, intermediate=64, max_positions=64)


def model_of(**kw) -> FinetuneClassifier:
    torch.manual_seed(0)
    cfg = replace(FinetuneConfig(n_upcycled=2, n_experts=4, pretrained=False, bert=TINY), **kw)
    m = FinetuneClassifier(cfg, 3)
    with torch.no_grad():
        m.head.weight.normal_(std=0.5)
        for b in m.upcycled():  # a router of real magnitude: tokens spread unevenly over the experts
            b.moe.router.weight.normal_(std=1.0)
            b.moe.w1.add_(torch.randn_like(b.moe.w1) * 0.2)  # and the experts differ from each other
    return m.eval()


def padded_batch(B: int, T: int, seed: int = 0, wide: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (B, T), generator=g)
    attn = torch.ones(B, T, dtype=torch.long)
    for i in range(1, B):  # rows of decreasing length, as the tier sorts them
        attn[i, max(1, T - 3 * i):] = 0
    ids = ids * attn
    out = {"ids": ids, "attn": attn}
    if wide:
        out["wide_logits"] = torch.randn(B, 3, generator=g)
    return out


@pytest.mark.parametrize("kw", [{}, {"top_k": 1}, {"n_upcycled": 0}, {"n_upcycled": 3, "n_experts": 8}],
                         ids=["top2", "top1", "dense", "all-upcycled"])
def test_onnx_logits_equal_eager_torch(kw):
    model = model_of(**kw)
    runner = OnnxRunner(model, threads=1)
    for B, T in ((1, 5), (4, 17), (7, 40)):  # one shape to export with, others served
        batch = padded_batch(B, T, seed=B)
        with torch.no_grad():
            want = model(batch).float()
        got = runner(batch)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    if model.upcycled():  # the routing really spread tokens (else a one-expert graph would pass as well)
        counts = model.upcycled()[0].aux.counts_E
        assert int((counts > 0).sum()) >= 2


def test_pad_tokens_change_nothing_in_the_graph():
    model = model_of()
    runner = OnnxRunner(model, threads=1)
    batch = padded_batch(3, 12)
    alone = runner({"ids": batch["ids"][2:3, : int(batch["attn"][2].sum())],
                    "attn": batch["attn"][2:3, : int(batch["attn"][2].sum())]})
    torch.testing.assert_close(runner(batch)[2:3], alone, rtol=1e-4, atol=1e-5)


def test_vocab_wide_logits_are_an_input_of_the_graph():
    model = model_of(wide=True, wide_features="vocab")
    runner = OnnxRunner(model, threads=1)
    batch = padded_batch(3, 10, wide=True)
    with torch.no_grad():
        want = model(batch).float()
    torch.testing.assert_close(runner(batch), want, rtol=1e-4, atol=1e-5)
    shifted = dict(batch, wide_logits=batch["wide_logits"] + torch.tensor([5.0, 0.0, 0.0]))
    torch.testing.assert_close(runner(shifted) - runner(batch), torch.tensor([[5.0, 0.0, 0.0]] * 3),
                               rtol=1e-4, atol=1e-4)


def test_the_runtime_choice():
    cpu = torch.device("cpu")
    vocab, hashed = model_of(wide=True, wide_features="vocab"), model_of(wide=True, wide_features="hashed")
    assert resolve_runtime("auto", vocab, cpu) == "onnx"
    assert resolve_runtime("auto", hashed, cpu) == "torch"  # the graph does not cover the hashed bag
    assert resolve_runtime("auto", vocab, torch.device("cuda")) == "torch"
    assert resolve_runtime("torch", vocab, cpu) == "torch"
    with pytest.raises(ModelError, match="hashed wide path"):
        resolve_runtime("onnx", hashed, cpu)
    with pytest.raises(ModelError, match="hashed wide path"):
        export_onnx(hashed)
    with pytest.raises(ModelError, match="runtime 'tensorrt'"):
        resolve_runtime("tensorrt", vocab, cpu)


def test_exported_graph_is_plain_onnx_with_dynamic_batch_and_length():
    import onnx

    proto = onnx.load_from_string(export_onnx(model_of()))
    onnx.checker.check_model(proto)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims == {"ids": ["B", "T"], "attn": ["B", "T"]}
