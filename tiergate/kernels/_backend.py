"""Which path runs an op: the Triton kernels (CUDA tensors, triton importable) or the PyTorch reference.

An op called with backend="auto" (the default everywhere, models included) resolves it through
:func:`default_backend`: the innermost :func:`force_backend` block, else the ``TIERGATE_KERNELS`` environment
variable, else "auto". So a whole model can be switched to the reference path from outside, without touching
its code: ``with force_backend("reference"): loss = model(batch)`` or ``TIERGATE_KERNELS=reference python ...``
(bench/large_tier_step.py times the large tier's training step both ways). An explicit backend="triton" or
"reference" passed to an op wins over both.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
from collections.abc import Iterator
from types import ModuleType

import torch

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "TIERGATE_KERNELS"

# a context variable rather than a module global: a block in one thread (a gateway worker) does not switch
# the backend of another
_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("tiergate_kernel_backend", default=None)


def default_backend() -> str:
    """The backend that "auto" means here: the innermost force_backend block, else $TIERGATE_KERNELS, else "auto"."""
    forced = _FORCED.get()
    if forced is not None:
        return forced
    env = os.environ.get(ENV_VAR, "").strip() or "auto"
    if env not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={env!r}: expected one of {BACKENDS} (or unset)")
    return env


@contextlib.contextmanager
def force_backend(backend: str) -> Iterator[None]:
    """Within the block, ops called with backend="auto" use ``backend`` ("auto", "triton" or "reference").

    >>> with force_backend("reference"):
    ...     use_triton("auto", torch.zeros(1))
    False
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    token = _FORCED.set(backend)
    try:
        yield
    finally:
        _FORCED.reset(token)


@functools.cache
def triton_available() -> bool:
    """True when ``triton`` imports (on CPU it then runs only with TRITON_INTERPRET=1, as the tests do)."""
    try:
        importlib.import_module("triton")
    except Exception:  # noqa: BLE001 - a broken install counts as absent: the reference path still works
        return False
    return True


def use_triton(backend: str, *tensors: torch.Tensor) -> bool:
    """Resolve ``backend`` ("auto" first through :func:`default_backend`): "auto" picks Triton for CUDA tensors
    when triton imports, else the reference."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    if backend == "auto":
        backend = default_backend()
    if backend == "reference":
        return False
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' asked for but triton does not import: install the 'dev' extra")
        return True
    return all(t.is_cuda for t in tensors) and triton_available()  # CPU tensors never import triton


def kernels(name: str) -> ModuleType:
    """Import a Triton kernel module lazily, so that importing tiergate.kernels never imports triton."""
    return importlib.import_module(f"tiergate.kernels.{name}")
