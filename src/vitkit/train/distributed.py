"""Several processes, one model: the torchrun environment, the process group, and FSDP's sharding.

DistributedDataParallel keeps a whole copy of the model, gradients and optimiser state in every
process. FSDP (`fully_shard`, one unit per encoder block) keeps 1/K of each in each of K processes and
gathers a block's weights only while it runs; a whole ("full") state dict is assembled on rank 0 for
the checkpoint files, which therefore are the same as those of an unsharded run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
)  # fmt: skip
from torch.distributed.fsdp import FSDPModule, fully_shard

# On rank 0, whole tensors on the CPU; the other ranks take part in gathering them and get {}.
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass
class Processes:
    """This process's place among those training together (one, without torchrun)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The average of a scalar tensor over the processes."""
        if self.distributed:
            x = x.clone()
            dist.all_reduce(x)
            x /= self.world_size
        return x


def start(device: str | None = None) -> Processes:
    """Join the process group that torchrun describes in WORLD_SIZE/RANK/LOCAL_RANK (gloo on CPU,
    nccl on CUDA), or stay a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if world == 1:
        return Processes(device=dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), dev)


def stop(procs: Processes) -> None:
    if procs.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(model: nn.Module) -> None:
    """FSDP, in place: each encoder block's (a ResNet's: each bottleneck's) parameters are one unit, the
    embedding, final norm and head another; each process keeps 1/K of every unit (and of its gradients
    and optimiser state)."""
    blocks = model.blocks if hasattr(model, "blocks") else [b for stage in model.stages for b in stage.blocks]
    for block in blocks:
        fully_shard(block)
    fully_shard(model)


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict; for a sharded model gathered on rank 0 (every rank must call this)."""
    return get_model_state_dict(model, options=_FULL) if is_sharded(model) else model.state_dict()


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser's whole state dict (gathered on rank 0 for a sharded model, keyed by parameter name)."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL) if is_sharded(model) else optimizer.state_dict()


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
) -> None:
    """Load whole state dicts (as full_state_dict and full_optimizer_state give them) into a model that may
    be sharded: each process keeps its shards."""
    if is_sharded(model):
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, weights, options=options)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
    else:
        model.load_state_dict(weights)
        optimizer.load_state_dict(optimizer_state)
