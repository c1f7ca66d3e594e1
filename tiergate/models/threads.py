"""How many CPU threads the model tiers use, and how idle ones wait: chosen on purpose (issue 12).

With the libraries' defaults, a tier on a machine whose cores other processes also want runs several times
slower than its share of the cores predicts (MiniLM on the 2-core dev machine: 5.6 chunks/s against 27.6 with
this policy, 1.6 against 10.7 beside two busy processes). torch's OpenMP pool (libgomp) spins after every
parallel region, so its idle thread burns a core between the many small ops of a chunk (128 ms of CPU per
chunk against 27 ms on one thread), and every op waits at a barrier for a thread the scheduler may have
parked. The policy, applied by :func:`set_wait_policy` (when ``tiergate.models`` is imported, before any of
its modules loads torch) and :func:`configure_torch` (when a torch model is loaded for inference):

* ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep instead of spinning. libgomp reads it once, when torch
  loads, so it is set as a default (an explicit value in the environment wins) and only works if torch was
  not imported before ``tiergate.models``.
* torch intra-op threads: :data:`TORCH_INFERENCE_THREADS` (see the measurement there), unless
  ``OMP_NUM_THREADS`` is set; training sets its own count (``tiergate.training.loop``).
* onnxruntime: ``session.intra_op.allow_spinning = 0`` (see :func:`tiergate.models.small.session_options`).

``TIERGATE_THREADS`` overrides it: an integer is the torch thread count (capped at :func:`usable_cpus`);
``library`` leaves every library's own defaults (how tiergate ran before issue 12; the baseline of
``bench/cpu_contention.py``).

>>> set_wait_policy(); configure_torch()   # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from tiergate.errors import ConfigError

ENV = "TIERGATE_THREADS"

# One torch thread for inference, measured with bench/cpu_contention.py on the 2-core dev machine (AMD EPYC,
# torch 2.13 CPU, float32 MiniLM, short texts one chunk at a time; other engineers' jobs shared the cores, so a
# pure-Python control loop itself slowed 2.3-2.8x beside two busy processes):
#   library defaults (2 threads, libgomp spinning)   5.6 chunks/s alone, 1.6 beside 2 busy; 128-230 ms CPU/chunk
#   PASSIVE, 1 thread (this policy)                  27.6-38 alone,   10.7-23 beside 2 busy;  27 ms CPU/chunk
#   PASSIVE, 2 threads                               43-46 alone,     16.9-18.6 beside 2 busy; 36 ms CPU/chunk
# Two threads gain 15-20% on one request at a third more CPU per chunk (a 128-token, 384-wide chunk's ops are
# too small to split well), and each op waits at a barrier for a thread the scheduler may have parked; the
# gateway runs requests concurrently, so one thread each fills the cores without that wait.
TORCH_INFERENCE_THREADS = 1


def policy() -> str:
    """``auto``, ``library`` or a thread count, from ``TIERGATE_THREADS`` (unset: ``auto``)."""
    return os.environ.get(ENV, "auto").strip().lower() or "auto"


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, cpusets), capped by a cgroup v2 CPU quota
    (containers), which ``os.cpu_count()`` ignores."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(n, 1)


def set_wait_policy() -> None:
    """Make idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) unless the environment says otherwise."""
    if policy() != "library":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def torch_threads() -> int | None:
    """The torch intra-op thread count the policy asks for; None (leave torch's) under ``library`` or when
    ``OMP_NUM_THREADS`` is set."""
    p = policy()
    if p == "library":
        return None
    if p == "auto":
        if os.environ.get("OMP_NUM_THREADS"):  # the operator chose, and torch already follows it
            return None
        return min(TORCH_INFERENCE_THREADS, usable_cpus())
    try:
        n = int(p)
    except ValueError:
        raise ConfigError(f"{ENV}={p!r}: use auto, library or a thread count such as 2") from None
    # more threads than the CPUs we may run on only adds barrier waits
    return max(1, min(n, usable_cpus()))


def configure_torch() -> None:
    """Set torch's intra-op thread count for inference (process-wide; cheap to call again)."""
    n = torch_threads()
    if n is None:
        return
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
