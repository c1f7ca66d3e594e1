"""Entry points behind the CLI: train the large tier (one or N processes), score and select data.

With ``nproc > 1`` the parent featurizes once (the frozen encoder runs one time, not N), writes the feature
table to ``OUT/_ddp/``, and starts N processes that join a gloo (CPU) or NCCL (GPU) process group and train
the head with DDP, each on its slice of every batch; rank 0 writes the trained weights, and the parent saves
the artifact as a one-process run would. Every process uses ``cpu_count // N`` threads.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from tiergate.errors import ConfigError, TiergateError


def run_training(data: str, out, *, preset: str = "quick", nproc: int = 1, selection=None, seed: int = 0,
                 checkpoint_every: int = 200, resume: bool = True, progress: bool = True,
                 max_steps: int | None = None, overrides=()) -> dict:
    from tiergate.data import load_dataset
    from tiergate.models.large import preset as large_preset
    from tiergate.models.large import train_large
    from tiergate.training.pruning import read_selection

    if overrides:  # checked before the data set is read
        check_overrides(preset, overrides)
    ds = load_dataset(data)
    sel = read_selection(selection) if selection is not None else None
    if preset.startswith("finetune"):
        from tiergate.training.finetune_run import train_finetune

        return train_finetune(ds, out, cfg=preset, nproc=nproc, seed=seed, max_steps=max_steps, selection=sel,
                              progress=progress, overrides=overrides)
    if max_steps is not None:
        cfg = large_preset(preset)
        cfg.train.max_steps = max_steps
        preset = cfg
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if nproc <= 1:
        return train_large(ds, out, preset=preset, selection=sel, seed=seed, progress=progress,
                           log_path=out / "train_log.jsonl", checkpoint_every=checkpoint_every, resume=resume)
    return _train_distributed(ds, out, preset=preset, nproc=nproc, selection=sel, seed=seed, progress=progress)


def check_overrides(preset: str, overrides) -> None:
    """A ConfigError unless every ``KEY=VALUE`` of ``overrides`` applies to ``preset``: a finetune* preset,
    existing keys, values of their types (tiergate.training.finetune_run.check_overrides)."""
    if not overrides:
        return
    if not preset.startswith("finetune"):
        raise ConfigError(f"KEY=VALUE overrides (train large --set, quickstart --large-set) change the fine-tuned presets' "
                          f"settings (finetune*); preset {preset!r} has none")
    from tiergate.training.finetune_run import check_overrides as check_finetune

    check_finetune(preset, overrides)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_table(path: Path, table) -> None:
    arrays = {"y": table.y}
    if table.emb is not None:
        arrays["emb"] = table.emb
    if table.wide is not None:
        arrays["wide"] = table.wide
    if table.bag is not None:
        arrays.update(bag_data=table.bag.data, bag_indices=table.bag.indices, bag_indptr=table.bag.indptr,
                      bag_shape=np.array(table.bag.shape))
    np.savez(path, **arrays)


def load_table(path: Path):
    from tiergate.training.data import FeatureTable

    z = np.load(path, allow_pickle=False)
    bag = None
    if "bag_data" in z:
        bag = sp.csr_matrix((z["bag_data"], z["bag_indices"], z["bag_indptr"]), shape=tuple(z["bag_shape"]))
    return FeatureTable(z["emb"] if "emb" in z else None, bag, z["y"], z["wide"] if "wide" in z else None)


def _train_distributed(ds, out: Path, *, preset, nproc: int, selection, seed: int, progress: bool) -> dict:
    import torch.multiprocessing as mp

    from tiergate.models.large import (
        _preset_cfg,
        config_to_dict,
        fit_wide,
        head_metrics,
        prepare_training,
        save_large,
        scale_to_budget,
    )

    t0 = time.perf_counter()
    cfg = _preset_cfg(preset)
    cfg.train.seed = seed
    if cfg.train.batch_size % nproc:
        raise ConfigError(f"batch size {cfg.train.batch_size} does not split over {nproc} processes")
    prep = prepare_training(ds, cfg, selection=selection, seed=seed, progress=progress)
    cfg = prep.cfg = scale_to_budget(cfg, len(prep.fit_idx))
    if cfg.train.batch_size % nproc:
        raise ConfigError(f"batch size {cfg.train.batch_size} does not split over {nproc} processes")
    work = out / "_ddp"
    work.mkdir(parents=True, exist_ok=True)
    save_table(work / "table.npz", prep.table)
    np.savez(work / "split.npz", fit=prep.fit_idx, hold=prep.hold_idx)
    wide = fit_wide(prep)  # once, in the parent: every process starts from the same fitted wide path
    if wide is not None:
        np.savez(work / "wide.npz", w=wide[0], b=wide[1])
    (work / "job.json").write_text(json.dumps({"config": config_to_dict(cfg), "labels": prep.labels,
                                               "emb_dim": prep.featurizer.emb_dim, "progress": progress}))
    port = _free_port()
    mp.spawn(_worker, args=(nproc, str(work), port), nprocs=nproc, join=True)
    from safetensors.torch import load_file

    from tiergate.models.large import SparseClassifier
    model = SparseClassifier(cfg, len(prep.labels), prep.featurizer.emb_dim)
    model.load_state_dict(load_file(str(work / "head.safetensors")))
    result = json.loads((work / "result.json").read_text())

    class _Res:  # the shape head_metrics reads
        best, steps, seconds = result["best"], result["steps"], result["seconds"]

    metrics = head_metrics(prep, _Res)
    metrics.update(nproc=nproc, total_seconds=round(time.perf_counter() - t0, 2))
    manifest = save_large(out, model, prep.featurizer, cfg, prep.labels, prep.data_fingerprint, metrics,
                          history=result["history"])
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    return manifest


def _worker(rank: int, world: int, work: str, port: int) -> None:
    """One training process of a ``--nproc N`` run (started by torch.multiprocessing.spawn)."""
    from safetensors.torch import save_file

    from tiergate.models.large import build_head, config_from_dict
    from tiergate.training.loop import jsonl_logger, train
    from tiergate.training.parallel import Runtime, spawned_env

    spawned_env(rank, world, port)
    wd = Path(work)
    job = json.loads((wd / "job.json").read_text())
    cfg = config_from_dict(job["config"])
    rt = Runtime.from_env()
    try:
        table = load_table(wd / "table.npz")
        split = np.load(wd / "split.npz")
        wide = np.load(wd / "wide.npz") if (wd / "wide.npz").exists() else None
        model = rt.apply(build_head(cfg, len(job["labels"]), job["emb_dim"],
                                    None if wide is None else (wide["w"], wide["b"])))
        hold = table.subset(split["hold"]) if len(split["hold"]) else None
        res = train(model, table.subset(split["fit"]), hold, cfg.train, runtime=rt,
                    progress=job["progress"], log=jsonl_logger(wd.parent / "train_log.jsonl"))
        if rt.is_main:
            inner = rt.unwrap(model).cpu()
            save_file({k: v.contiguous() for k, v in inner.state_dict().items()}, str(wd / "head.safetensors"))
            (wd / "result.json").write_text(json.dumps({"best": res.best, "steps": res.steps,
                                                        "seconds": res.seconds, "history": res.history}))
        rt.barrier()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------- pruning
def score_dataset(data: str, metric: str, out, *, encoder: str = "hashed", n_seeds: int = 3, epochs: float = 6.0,
                  seed: int = 0, dataset=None, cfg=None) -> dict:
    """Score every training example of ``data`` with ``metric`` and write the scores file."""
    from tiergate.data import load_dataset, make_item
    from tiergate.models.large import SparseClassifier, prepare_training, preset
    from tiergate.training import pruning

    if metric not in pruning.METRICS:
        raise ConfigError(f"metric {metric!r}: use one of {', '.join(pruning.METRICS)}")
    ds = dataset if dataset is not None else load_dataset(data)
    if cfg is None:
        cfg = preset("hashed" if encoder == "hashed" else "quick")
        # the scoring proxy reads every feature through the head (a frozen LR fit on the very rows it scores
        # would make every row look easy)
        cfg.wide_features, cfg.deep_bag = "hashed", True
    cfg.holdout_frac = 0.0
    cfg.train.epochs = epochs
    cfg.train.seed = seed
    train_rows = ds.split("train")
    ids = [e.id for e in train_rows]
    t0 = time.perf_counter()
    if metric == "uncertainty":
        lab = {c: i for i, c in enumerate(sorted({e.label for e in train_rows}))}
        scores = pruning.score_uncertainty([make_item(e.text).model_text for e in train_rows],
                                           np.array([lab[e.label] for e in train_rows]), seed=seed)
    elif metric == "random":
        scores = np.random.default_rng(seed).random(len(ids))
    else:
        prep = prepare_training(ds, cfg, seed=seed)
        table = prep.table

        def make_model():
            return SparseClassifier(cfg, len(prep.labels), prep.featurizer.emb_dim)

        if metric in ("el2n", "grand"):
            scores = pruning.score_el2n_grand(make_model, table, cfg.train, n_seeds=n_seeds, metric=metric)
        elif metric == "forgetting":
            scores = pruning.score_forgetting(make_model, table, cfg.train, seed=seed)
        else:
            scores = pruning.score_prototypes(table, seed=seed)
    doc_extra = {"encoder": encoder, "seconds": round(time.perf_counter() - t0, 2), "n_seeds": n_seeds,
                 "epochs": epochs, "labels": {e.id: e.label for e in train_rows}}
    pruning.write_scores(out, ds, metric, ids, np.asarray(scores, float), doc_extra)
    return json.loads(Path(out).read_text())


def select_from_scores(scores_path, keep: float, out, *, mode: str = "hard", per_class: bool = True,
                       seed: int = 0) -> dict:
    from tiergate.training import pruning

    doc = pruning.read_scores(scores_path)
    ids = list(doc["scores"])
    labels_map = doc.get("labels") or {}
    labels = [labels_map.get(i, "") for i in ids]
    sel = pruning.select(ids, labels, np.array([doc["scores"][i] for i in ids]), keep, mode=mode,
                         per_class=per_class and bool(labels_map), seed=seed)
    res = {"ids": sel, "keep": keep, "mode": mode, "metric": doc.get("metric"), "dataset": doc.get("dataset"),
           "fingerprint": doc.get("fingerprint"), "per_class": per_class, "n_scored": len(ids)}
    Path(out).write_text(json.dumps(res))
    return res


__all__ = ["run_training", "score_dataset", "select_from_scores", "TiergateError"]
