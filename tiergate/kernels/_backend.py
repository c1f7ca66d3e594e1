"""Which path runs an op: the Triton kernels (CUDA tensors, triton importable) or the PyTorch reference."""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import torch

BACKENDS = ("auto", "triton", "reference")


@functools.cache
def triton_available() -> bool:
    """True when ``triton`` imports (on CPU it then runs only with TRITON_INTERPRET=1, as the tests do)."""
    try:
        importlib.import_module("triton")
    except Exception:  # noqa: BLE001 - a broken install counts as absent: the reference path still works
        return False
    return True


def use_triton(backend: str, *tensors: torch.Tensor) -> bool:
    """Resolve ``backend``: "auto" picks Triton for CUDA tensors when triton imports, else the reference."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
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
