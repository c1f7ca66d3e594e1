"""Kernel tests run the Triton kernels on CPU through Triton's interpreter.

TRITON_INTERPRET must be set before triton is first imported, hence at this module's import time (pytest
imports a conftest before the test modules of its folder). On a CUDA machine, set TIERGATE_KERNEL_TESTS_CUDA=1
to run the same tests compiled on the GPU instead.
"""

import os

import pytest
import torch

ON_GPU = os.environ.get("TIERGATE_KERNEL_TESTS_CUDA") == "1"
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"

import triton  # noqa: E402,F401 - imported here, after TRITON_INTERPRET is set, and required: never skipped


@pytest.fixture
def device() -> str:
    if ON_GPU:
        assert torch.cuda.is_available(), "TIERGATE_KERNEL_TESTS_CUDA=1 but no CUDA device"
        return "cuda"
    return "cpu"
