"""The H200 calls of the training-technique experiments, as one launcher with presets as Python functions.

One preset is one device call: jobs that run alone first (the large tier's step benchmark times steps, so
nothing shares the GPU with it), then jobs side by side (each experiment is launch-bound, far from filling an
H200), each under its own time limit, with its output in ``/tmp/w/NAME.log``. At the end the logs' last lines
are printed and the work folder is packed into ``$OUT/all.tgz`` (the device tool returns a few files, each at
most 16 MiB). Data travel compressed in the git-ignored ``.gpu/`` folder::

    gzip -c ~/.cache/tiergate/datasets/debian-packages.jsonl > .gpu/debian-packages.jsonl.gz   (and spamassassin)

Run on the device (carry ``.gpu``)::

    python3 experiments/launch.py call7             # what the 7th H200 call ran
    python3 experiments/launch.py call8 --dry-run   # print its commands only
    python3 experiments/launch.py --list

Held-out targets of baselines run in an earlier call are read from that call's merged results
(``experiments/results/<dir>/results.json``, the ``target_holdout_acc`` of each seed's baseline run), not pasted.
``T`` (time limit per job, s) and ``BUDGET`` (training budget per run, s) in the environment override a preset's.
"""

from __future__ import annotations

import argparse
import gzip
import json
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


PRESETS: dict[str, Callable[[], Preset]] = {f.__name__: f for f in (call1, call2, call3, call4, call5, call6, call7,
                                                                     call8)}


# ------------------------------------------------------------------------------------------------------- run
def _unpack(data: tuple[str, ...], home: Path) -> None:
    (home / "datasets").mkdir(parents=True, exist_ok=True)
    for d in data:
        src = ROOT / ".gpu" / f"{d}.jsonl.gz"
        if not src.is_file():
            raise SystemExit(f"{src}: missing; gzip the data set into .gpu/ and carry it (see this file's docstring)")
        with gzip.open(src, "rb") as f, open(home / "datasets" / f"{d}.jsonl", "wb") as g:
            shutil.copyfileobj(f, g)


def _start(job: Job, env: dict[str, str]) -> subprocess.Popen:
    log = open(WORK / f"{job.name}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(["timeout", str(int(job.timeout_s)), *job.cmd], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**env, **job.env})


def run(preset: Preset) -> int:
    env = {**os.environ, "TIERGATE_HOME": "/tmp/tg", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    WORK.mkdir(parents=True, exist_ok=True)
    _unpack(preset.data, Path(env["TIERGATE_HOME"]))
    subprocess.run(["python3", "-c", "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"],
                   env=env)
    t0, worst = time.time(), 0
    for job in (j for j in preset.jobs if j.alone):
        worst = max(worst, _start(job, env).wait())
    procs = [(job, _start(job, env)) for job in preset.jobs if not job.alone]
    for job, p in procs:
        rc = p.wait()
        worst = max(worst, rc)
        print(f"{job.name}: rc={rc}")
    for job in preset.jobs:
        lines = (WORK / f"{job.name}.log").read_text(errors="replace").strip().splitlines()
        print(f"== {job.name}: {lines[-1] if lines else '(no output)'}")
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
    if args.dry_run:
        for job in preset.jobs:
            env = " ".join(f"{k}={v}" for k, v in job.env.items())
            print(f"{'[alone] ' if job.alone else ''}{env + ' ' if env else ''}timeout {int(job.timeout_s)} "
                  f"{shlex.join(job.cmd)}")
        return
    sys.exit(run(preset))


if __name__ == "__main__":
    main()
