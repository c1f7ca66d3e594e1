"""The training loop of the large tier's head: read it top to bottom.

One step = ``grad_accum`` micro-batches, one clip of the global gradient norm, one optimizer step, one
learning-rate update from :meth:`Schedule.lr_at`. Every ``eval_every`` steps the held-out slice is scored; with
``keep_best`` the weights of the best held-out loss are restored at the end (early stopping without a second
run). The loop knows nothing about devices or processes beyond what :class:`Runtime` (from
:mod:`tiergate.training.parallel`) gives it; DDP, compile and autocast are applied there, in one place.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tiergate.errors import ModelError
from tiergate.training.data import FeatureTable
from tiergate.training.optim import build_optimizer
from tiergate.training.schedule import Schedule


@dataclass
class TrainConfig:
    optimizer: str = "adamw"      # adamw | lamb | lars | sgd
    lr: float = 2e-3              # peak learning rate (after any batch scaling)
    weight_decay: float = 0.01    # decoupled; never applied to biases, norms or embeddings' bias-like rows
    momentum: float = 0.9         # sgd / lars momentum
    batch_size: int = 64          # rows per optimizer step, all processes and micro-batches together
    grad_accum: int = 1           # micro-batches per optimizer step
    epochs: float = 10.0          # passes over the training rows
    warmup_frac: float = 0.05     # share of steps spent warming up
    schedule: str = "cosine"      # cosine | poly | constant
    clip_norm: float | None = 1.0  # global gradient-norm clip, applied once per step (None: off)
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    eval_every: int = 0           # steps between held-out evaluations (0: once per epoch)
    keep_best: bool = True        # restore the weights of the best held-out loss at the end
    seed: int = 0                 # seeds the initialisation, the shuffling and dropout
    max_steps: int | None = None  # stop after this many optimizer steps (the schedule spans them); None: epochs
    eval_batch_size: int = 1024   # rows per held-out evaluation batch (token models need fewer)


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))


@torch.no_grad()
def evaluate(model: nn.Module, table: FeatureTable, batch_size: int = 1024,
             device: torch.device | str = "cpu") -> dict:
    """Loss and accuracy of ``model`` on ``table`` (eval mode: BatchNorm uses running statistics). Rows with
    weights (``w`` in the batch) weigh in the loss as in training; the accuracy counts every row once."""
    was = model.training
    model.eval()
    loss, weight, correct = 0.0, 0.0, 0
    for s in range(0, len(table), batch_size):
        b = table.batch(np.arange(s, min(s + batch_size, len(table))), device)
        logits = model(b).float()
        ce = F.cross_entropy(logits, b["y"], reduction="none")
        w = b.get("w")
        loss += float((ce * w).sum() if w is not None else ce.sum())
        weight += float(w.sum()) if w is not None else len(ce)
        correct += int((logits.argmax(1) == b["y"]).sum())
    model.train(was)
    return {"loss": loss / max(weight, 1e-12), "acc": correct / max(len(table), 1)}


def weighted_cross_entropy(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy, each row's term times its weight when ``w`` is given (weights of mean 1 over the
    table, not renormalised per batch: a batch of hard rows moves the model more, as it should)."""
    if w is None:
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    return (F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction="none") * w).mean()


@torch.no_grad()
def predict_logits(model: nn.Module, table: FeatureTable, batch_size: int = 1024) -> np.ndarray:
    model.eval()
    outs = [model(table.batch(np.arange(s, min(s + batch_size, len(table))))).float().numpy()
            for s in range(0, len(table), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


@torch.no_grad()
def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients so their global L2 norm is at most ``max_norm``; sparse gradients included (the
    torch helper refuses them). Returns the norm before clipping. One host sync per call, not one per tensor
    (on a GPU the per-tensor syncs cost more than the step)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    sq = [(g.coalesce().values() if g.is_sparse else g).float().pow(2).sum() for g in grads]
    norm_t = torch.stack(sq).sum().sqrt()
    scale_t = torch.clamp(max_norm / (norm_t + 1e-6), max=1.0)
    for g in grads:
        if g.is_sparse:
            g.mul_(float(scale_t))
        else:
            g.mul_(scale_t.to(g.dtype))
    return float(norm_t)


def rows_for(step: int, micro: int, n: int, batch_size: int, grad_accum: int, seed: int) -> np.ndarray:
    """Rows of micro-batch ``micro`` of optimizer step ``step``: a pure function of its arguments, so a resumed
    run reads exactly the batches the uninterrupted one would have, and ``grad_accum`` micro-batches cover
    the rows of one large batch (each epoch is one seeded permutation; a tail shorter than a batch is skipped)."""
    per_epoch = max(n // batch_size, 1)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    mrows = batch_size // grad_accum
    start = k * batch_size + micro * mrows
    return perm[start: start + mrows]


def train(model: nn.Module, train_table: FeatureTable, val_table: FeatureTable | None, cfg: TrainConfig,
          *, progress: bool = False, log: Callable[[dict], None] | None = None, runtime=None,
          checkpoint: Checkpointer | None = None, on_step: Callable[[int, nn.Module], None] | None = None
          ) -> TrainResult:
    """Train ``model`` in place; returns the history (one dict per evaluation) and the best evaluation.

    ``model(batch) -> logits``; ``model.aux_loss()`` (if present) is added to the cross-entropy. With a
    ``checkpoint``, state is saved every ``checkpoint.every`` steps and a run finding one resumes from it.
    Under DDP each rank takes its slice of every micro-batch, so N processes see the same rows per step as one.
    """
    from tiergate.training.parallel import Runtime

    rt = runtime or Runtime()
    threads = torch.get_num_threads()
    if rt.device.type == "cpu" and rt.cpu_threads:
        # the head's ops are small (64 rows): OpenMP fan-out costs more than it gains, and on a shared
        # machine a descheduled worker thread stalls every op at its barrier (measured: 5-10x slower steps)
        torch.set_num_threads(rt.cpu_threads)
    try:
        return _train(model, train_table, val_table, cfg, rt, progress, log, checkpoint, on_step)
    finally:
        torch.set_num_threads(threads)


def _train(model, train_table, val_table, cfg, rt, progress, log, checkpoint, on_step) -> TrainResult:
    seed_everything(cfg.seed)
    n = len(train_table)
    micro_rows = max(cfg.batch_size // cfg.grad_accum, 1)        # rows of one micro-batch, all ranks together
    mine_rows = max(micro_rows // rt.world_size, 1)                 # this rank's share of it
    steps_per_epoch = max(n // cfg.batch_size, 1)
    total = max(int(math.ceil(cfg.epochs * steps_per_epoch)), 1)
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    sched = Schedule(cfg.lr, total, int(cfg.warmup_frac * total), cfg.schedule)
    inner = rt.unwrap(model)
    opt = build_optimizer(inner, cfg)
    ddp_model = rt.wrap(model)
    eval_every = cfg.eval_every or steps_per_epoch
    result = TrainResult()
    best_state, best_loss, step = None, math.inf, 0
    if checkpoint is not None:
        state = checkpoint.load()
        if state is not None:
            inner.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            step, best_loss = state["step"], state["best_loss"]
            best_state, result.history = state["best_state"], state["history"]
            result.best = state["best"]
            torch.set_rng_state(state["torch_rng"])
    t0 = time.perf_counter() - (result.history[-1]["seconds"] if result.history else 0.0)
    bar = None
    if progress and rt.is_main:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=step, desc="train", unit="step", leave=False)
    if cfg.keep_best and step == 0 and val_table is not None and len(val_table):
        # the starting point is a candidate too: a model that starts from a fitted solution (the large tier's
        # wide path) keeps it when no step of training beats it on the held-out rows
        with torch.no_grad():
            v = evaluate(inner, val_table, batch_size=cfg.eval_batch_size, device=rt.device)
        best_loss, best_state = v["loss"], copy.deepcopy(inner.state_dict())
        result.best = {"step": 0, "epoch": 0.0, "val_loss": v["loss"], "val_acc": v["acc"]}
    model.train()
    while step < total:
        for g in opt.param_groups:
            g["lr"] = sched.lr_at(step) * g.get("lr_scale", 1.0)  # lr_scale: see optim.param_groups
        loss_sum = 0.0
        for i in range(cfg.grad_accum):
            rows = rows_for(step, i, n, cfg.batch_size, cfg.grad_accum, cfg.seed)
            b = train_table.batch(rows[rt.rank * mine_rows: (rt.rank + 1) * mine_rows], rt.device)
            with rt.autocast():
                logits = ddp_model(b)
                loss = weighted_cross_entropy(logits.float(), b["y"], b.get("w"), cfg.label_smoothing)
                aux = getattr(inner, "aux_loss", None)
                if aux is not None:
                    loss = loss + aux().to(loss.device)
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.item() / cfg.grad_accum
        if cfg.clip_norm:  # once per step, on the summed (and, under DDP, averaged) gradient
            clip_grad_norm(inner.parameters(), cfg.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if on_step is not None:
            on_step(step, inner)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.4f}", refresh=False)  # the bar redraws at its own interval
        if step % eval_every == 0 or step == total:
            rec = {"step": step, "epoch": round(step / steps_per_epoch, 4), "lr": sched.lr_at(step - 1),
                   "train_loss": loss_sum, "seconds": time.perf_counter() - t0,
                   "rows_per_s": step * cfg.batch_size / max(time.perf_counter() - t0, 1e-9)}
            if val_table is not None and len(val_table):
                v = evaluate(inner, val_table, batch_size=cfg.eval_batch_size, device=rt.device)
                rec.update(val_loss=v["loss"], val_acc=v["acc"])
                if cfg.keep_best and v["loss"] < best_loss:
                    best_loss = v["loss"]
                    best_state = copy.deepcopy(inner.state_dict())
                    result.best = dict(rec)
            result.history.append(rec)
            if log is not None and rt.is_main:
                log(rec)
        if checkpoint is not None and rt.is_main and (step % checkpoint.every == 0 or step == total):
            checkpoint.save({"model": inner.state_dict(), "optimizer": opt.state_dict(), "step": step,
                             "best_loss": best_loss, "best_state": best_state, "best": result.best,
                             "history": result.history, "torch_rng": torch.get_rng_state(),
                             "config": asdict(cfg)})
    if bar is not None:
        bar.close()
    if best_state is not None:
        inner.load_state_dict(best_state)
    elif result.history:
        result.best = dict(result.history[-1])
    result.steps, result.seconds = step, time.perf_counter() - t0
    return result


class Checkpointer:
    """Saves training state atomically to ``path`` every ``every`` steps; ``extra`` (the data selection, the
    model config) is stored with it. Loading uses ``torch.load(weights_only=True)``: tensors, numbers,
    strings and containers only, never arbitrary pickled objects."""

    def __init__(self, path, every: int = 100, extra: dict | None = None):
        self.path = Path(path)
        self.every = max(int(every), 1)
        self.extra = extra or {}

    def save(self, state: dict) -> None:
        state = {**state, "extra": self.extra}
        tmp = self.path.with_suffix(".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
            raise ModelError(f"{self.path}: checkpoint cannot be read ({e}); delete it to start afresh") from e
        if state.get("extra") != self.extra:
            raise ModelError(f"{self.path}: checkpoint was made for another config or data selection; "
                             "delete it or use another --out")
        return state


def jsonl_logger(path) -> Callable[[dict], None]:
    """A ``log`` callback appending one JSON object per record to ``path``."""
    def write(rec: dict) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
    return write


def config_dict(cfg) -> dict:
    return asdict(cfg)
