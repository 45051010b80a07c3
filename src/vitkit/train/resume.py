"""Resumable checkpoints: a run directory's checkpoints/step-NNNNNNNN.{safetensors,state.pt} pairs.

`step-N.safetensors` holds the weights (vitkit.save, with a SHA-256 of the tensors); `step-N.state.pt`
the optimiser, gradient scaler, EMA, position and bookkeeping, as tensors, numbers and strings only
(torch.save, read back with torch.load(weights_only=True)). The state file is written first, and the
weights file records its length and SHA-256, so a weights file vouches for a complete pair. Each file is
written atomically; a crash at any moment leaves every earlier pair intact, and `--resume` takes the
newest pair that verifies, naming each one it has to pass over.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from safetensors import SafetensorError
from torch import nn

from ..checkpoints.io import CheckpointError, read_vitkit_file, save
from ..checkpoints.metadata import checkpoint_metadata
from ..files import atomic_write, sha256_file
from . import distributed
from .config import TrainConfig
from .ema import ModelEMA
from .rundir import RunDir

_PAIR = re.compile(r"step-(\d{8})\.safetensors")
META_STEP, META_STATE_BYTES, META_STATE_SHA = "step", "state_bytes", "state_sha256"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, I/O error); the message names the intact one."""


@dataclass
class Resumable:
    """A verified pair: its weights (a state dict) and training state."""

    path: Path
    step: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]


def weights_path(out: str | os.PathLike, step: int) -> Path:
    return RunDir(out).checkpoints / f"step-{step:08d}.safetensors"


def state_path(weights: str | os.PathLike) -> Path:
    """step-N.safetensors -> step-N.state.pt"""
    p = Path(weights)
    return p.with_name(p.name.removesuffix(".safetensors") + ".state.pt")


def checkpoints(out: str | os.PathLike) -> list[Path]:
    """The weights files of the run in `out`, newest first."""
    folder = RunDir(out).checkpoints
    found = [p for p in folder.iterdir() if _PAIR.fullmatch(p.name)] if folder.is_dir() else []
    return sorted(found, reverse=True)


def write_checkpoint(
    out: str | os.PathLike, step: int, model: nn.Module, state: dict[str, Any],
    metadata: Mapping[str, str], keep: int = 2, weights: Mapping[str, torch.Tensor] | None = None,
) -> Path:  # fmt: skip
    """Write the pair for `step`, then delete all but the newest `keep` pairs; returns the weights file.

    A failed write raises CheckpointWriteError naming the newest intact checkpoint (the files being
    written are removed, the earlier ones untouched)."""
    path = weights_path(out, step)
    previous = next(iter(checkpoints(out)), None)
    try:
        atomic_write(state_path(path), lambda tmp: torch.save(state, tmp))
        meta = {**metadata, META_STEP: str(step), META_STATE_BYTES: str(state_path(path).stat().st_size),
                META_STATE_SHA: sha256_file(state_path(path))}  # fmt: skip
        save(model, path, metadata=meta, state=weights)
    except OSError as e:
        state_path(path).unlink(missing_ok=True)
        kept = f"the newest intact checkpoint is {previous}" if previous else "no earlier checkpoint"
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {e.strerror or e}; {kept}") from None
    for old in checkpoints(out)[keep:]:
        state_path(old).unlink(missing_ok=True)
        old.unlink(missing_ok=True)
    return path


def verify(path: Path) -> Resumable:
    """Read a pair, checking the weights' checksum and the state file's length and checksum.
    Raises CheckpointError naming the file and what is wrong."""
    try:
        meta = checkpoint_metadata(path)
        step, size, digest = int(meta[META_STEP]), int(meta[META_STATE_BYTES]), meta[META_STATE_SHA]
        weights, _ = read_vitkit_file(path, meta)
    except CheckpointError:
        raise
    except (KeyError, ValueError, OSError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e}), truncated or not a checkpoint") from None
    spath = state_path(path)
    if not spath.is_file():
        raise CheckpointError(f"{spath}: missing (its weights file {path.name} is there)")
    if spath.stat().st_size != size:
        raise CheckpointError(f"{spath}: {spath.stat().st_size} bytes, expected {size} (truncated?)")
    if sha256_file(spath) != digest:
        raise CheckpointError(f"{spath}: checksum mismatch, the file is corrupted")
    state = torch.load(spath, map_location="cpu", weights_only=True)
    if state.get("step") != step:
        raise CheckpointError(f"{spath}: holds step {state.get('step')}, its weights file says {step}")
    return Resumable(path, step, weights, state)


def newest_intact(out: str | os.PathLike) -> Resumable | None:
    """The newest pair in `out` that verifies (warning about each newer one that does not); None when
    there is no checkpoint at all. Raises CheckpointError when there are some but none is intact."""
    found = checkpoints(out)
    for path in found:
        try:
            return verify(path)
        except (CheckpointError, RuntimeError, OSError, SafetensorError) as e:
            warnings.warn(f"passing over checkpoint {path}: {e}", stacklevel=2)
    if found:
        folder = RunDir(out).checkpoints
        raise CheckpointError(f"cannot resume: none of the {len(found)} checkpoints in {folder} is intact")
    return None


def remove_partial_writes(out: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a crash during atomic_write left in the checkpoint folder."""
    folder = RunDir(out).checkpoints
    stale = list(folder.glob(".*.tmp")) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def newest_checkpoint(cfg: TrainConfig, procs: distributed.Processes) -> Resumable | None:
    """The newest intact checkpoint of the run in cfg.out (None if there is none), once rank 0 has removed
    the partial writes of an interrupted one."""
    if procs.is_main:
        remove_partial_writes(Path(cfg.out))
    procs.barrier()
    return newest_intact(Path(cfg.out))


def restore(resumed: Resumable, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
             ema: ModelEMA | None, total_steps: int) -> dict[str, Any]:  # fmt: skip
    """Load a checkpoint's weights, optimiser, scaler and EMA; its state (step, best_top1, elapsed, ...)."""
    state = resumed.state
    if state["total_steps"] != total_steps:
        was = state["total_steps"]
        raise ValueError(f"cannot resume: the run was {was} steps long, with this data it would be {total_steps}")
    distributed.load_full_state(model, optimizer, resumed.weights, state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    if ema is not None:
        ema.module.load_state_dict(state["ema"])
    return state


def saved_workers(cfg: TrainConfig) -> int | None:
    """The loader workers of the run being resumed, as its config.yaml records them."""
    path = RunDir(cfg.out).config
    if not (cfg.resume and path.is_file()):
        return None
    return yaml.safe_load(path.read_text()).get("derived", {}).get("workers")


def resume_point(cfg: TrainConfig, procs: distributed.Processes, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, ema: ModelEMA | None, total_steps: int) -> Resumable | None:  # fmt: skip
    """With --resume, the newest intact checkpoint of cfg.out, its weights, optimiser, scaler and EMA loaded
    (`restore`); None for a new run, and for a resumed one without a checkpoint yet (said on stderr)."""
    if not cfg.resume:
        return None
    resumed, out = newest_checkpoint(cfg, procs), Path(cfg.out)
    if resumed is None:
        _say(procs, f"{out} has no checkpoint yet: starting from the beginning")
        return None
    restore(resumed, model, optimizer, scaler, ema, total_steps)
    _say(procs, f"resuming {out} at step {resumed.step} of {total_steps} from {resumed.path}")
    return resumed


def _say(procs: distributed.Processes, message: str) -> None:
    if procs.is_main:
        print(message, file=sys.stderr)
