"""The checks of a run's config that need no data, run once before anything is read or written: a config
rejected for any of them leaves no run directory behind. (What needs the data, a batch larger than the
training split or a device feed that cannot be had, is checked as the feed is built, also before any write.)"""

from __future__ import annotations

from dataclasses import dataclass

from ..hardware import compile_missing
from . import distributed
from .config import TrainConfig
from .feed import micro_batches
from .graphs import graphs_allowed
from .resume import checkpoints
from .rundir import RunDir


@dataclass(frozen=True)
class RunShape:
    """How each optimiser step is taken, as the checks found it."""

    micro: int  # images per forward pass and process
    accum: int  # forward passes (micro-batches) per optimiser step
    graphs: bool  # capture the step as a CUDA graph (vitkit.train.graphs)
    graphs_why: str  # why, or why not


def check_run(cfg: TrainConfig, procs: distributed.Processes) -> RunShape:
    """A one-line ValueError for a config that cannot run; else how its steps are taken."""
    recipe, out = cfg.recipe, RunDir(cfg.out)
    if not cfg.resume and (checkpoints(out.path) or out.final.exists()):
        raise ValueError(f"{out.path} already holds a run; pass --resume to continue it, or another --out")
    if cfg.fsdp and recipe.optimizer == "muon":
        raise ValueError("--fsdp shards each weight matrix, and Muon orthogonalises whole ones: leave out --fsdp (DDP) "
                         "or use --optimizer adamw")  # fmt: skip
    if cfg.fsdp and not procs.distributed:
        raise ValueError("--fsdp shards the model over several processes: launch with torchrun --nproc-per-node K")
    if cfg.fsdp and recipe.ema_decay:
        raise ValueError("--fsdp keeps no EMA of the weights: leave out --ema-decay")
    if recipe.steps is None and recipe.epochs is None:
        raise ValueError("the run length is not set: give --steps or --epochs")
    if cfg.compile and (why := compile_missing(procs.device)):
        raise ValueError(f"--compile: {why}; leave out --compile to train eagerly (the same steps, unfused)")
    micro, accum = micro_batches(cfg, procs)
    graphs, why = graphs_allowed(cfg, procs, accum)  # a step that cannot be captured fails here
    return RunShape(micro, accum, graphs, why)
