"""The training loop: resume from a checkpoint gives the uninterrupted run's weights; gradient accumulation
equals the large batch; batches are a pure function of the step; logs are JSONL."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from tiergate.errors import ModelError
from tiergate.training.data import FeatureTable
from tiergate.training.loop import Checkpointer, TrainConfig, jsonl_logger, rows_for, train


class Tiny(nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(5, 8)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(8, 3)

    def forward(self, b):
        return self.head(self.drop(torch.tanh(self.fc(b["emb"]))))


def _table(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    return FeatureTable(x, None, y)


def _weights(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_resume_from_checkpoint_matches_uninterrupted(tmp_path):
    cfg = TrainConfig(lr=0.05, batch_size=16, epochs=3, eval_every=5, seed=4)
    tbl, val = _table(), _table(60, 1)
    torch.manual_seed(0)
    a = Tiny(dropout=0.3)
    train(a, tbl, val, cfg)

    class Stop(Exception):
        pass

    def stop_at(step, _m):
        if step == 23:
            raise Stop

    ck = Checkpointer(tmp_path / "ck.pt", every=10, extra={"cfg": "x"})
    torch.manual_seed(0)
    b = Tiny(dropout=0.3)
    with pytest.raises(Stop):
        train(b, tbl, val, cfg, checkpoint=ck, on_step=stop_at)
    assert torch.load(tmp_path / "ck.pt", weights_only=True)["step"] == 20
    torch.manual_seed(123)  # a fresh process: different initial weights and RNG, all restored from the file
    c = Tiny(dropout=0.3)
    res = train(c, tbl, val, cfg, checkpoint=ck)
    assert torch.allclose(_weights(a), _weights(c), atol=1e-6)
    assert res.steps == 36
    with pytest.raises(ModelError, match="another config"):
        Checkpointer(tmp_path / "ck.pt", every=10, extra={"cfg": "y"}).load()


def test_gradient_accumulation_equals_the_large_batch():
    tbl = _table()
    out = []
    for accum in (1, 4):
        torch.manual_seed(0)
        m = Tiny()
        train(m, tbl, None, TrainConfig(optimizer="sgd", momentum=0.0, lr=0.1, batch_size=32, grad_accum=accum,
                                        epochs=2, clip_norm=None, weight_decay=0.0))
        out.append(_weights(m))
    assert torch.allclose(out[0], out[1], atol=1e-5)


def test_batches_are_a_pure_function_of_the_step():
    a = [rows_for(i, 0, 100, 16, 1, 7) for i in range(14)]
    b = [rows_for(i, 0, 100, 16, 1, 7) for i in range(14)]
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    epoch0 = np.concatenate(a[:6])
    assert len(set(epoch0.tolist())) == 96  # one epoch: no row twice
    assert not (a[0] == a[6]).all()         # the next epoch is reshuffled
    halves = np.concatenate([rows_for(3, j, 100, 16, 2, 7) for j in range(2)])
    assert (halves == a[3]).all()           # two micro-batches of step 3 are step 3's batch


def test_jsonl_log_and_keep_best(tmp_path):
    log = tmp_path / "log.jsonl"
    torch.manual_seed(0)
    res = train(Tiny(), _table(), _table(60, 1), TrainConfig(lr=0.05, batch_size=20, epochs=4, eval_every=3),
                log=jsonl_logger(log))
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == len(res.history) and {"step", "train_loss", "val_acc", "rows_per_s"} <= set(rows[0])
    assert res.best["val_loss"] == min(r["val_loss"] for r in rows)
