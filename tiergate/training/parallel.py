"""Everything that is not single-device model code, applied in one place and in a fixed order.

:class:`Runtime` knows the process group (rank, world size), the device and the precision. ``apply`` takes a
plain single-device model and applies, in this order: SWAT sparsity on its linear layers (a module swap, so it
must come before anything wraps the module), ``torch.compile`` (optional), and DDP (outermost, so its gradient
hooks see the compiled/sparse module's parameters). ``autocast`` is bf16 on CUDA and off on CPU: CPU autocast
of the head's small matmuls costs more in casts than it saves.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    bf16: bool = False         # autocast to bfloat16 (CUDA only)
    compile: bool = False      # torch.compile the model
    swat: object | None = None  # a SwatConfig: sparsify linear layers (tiergate.training.swat)
    cpu_threads: int | None = 1  # threads for training steps on CPU (None: leave torch's setting)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, **kw) -> Runtime:
        """Join the process group that ``torchrun``/our launcher described in the environment, if any."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        cuda = torch.cuda.is_available()
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}") if cuda else torch.device("cpu")
        if world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
        if cuda:
            torch.cuda.set_device(device)
        return cls(rank=rank, world_size=world, device=device, bf16=cuda and kw.pop("bf16", True), **kw)

    def apply(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device and apply sparsity, then compile. DDP is added by :meth:`wrap`."""
        model = model.to(self.device)
        if self.swat is not None:
            from tiergate.training.swat import sparsify
            sparsify(model, self.swat)
        if self.compile:
            model.forward = torch.compile(model.forward)
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                   find_unused_parameters=True)

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        return model.module if hasattr(model, "module") else model

    def autocast(self):
        if self.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def spawned_env(rank: int, world: int, port: int) -> None:
    """Describe process ``rank`` of a ``world``-process run on this host (started by ``mp.spawn``) in the
    environment :meth:`Runtime.from_env` reads, and give it its share of the CPU threads."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(max((os.cpu_count() or 1) // world, 1))
