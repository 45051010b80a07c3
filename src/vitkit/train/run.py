"""One training run as the loop sees it (vitkit.train.loop): what `_setup` built, typed, and the loop's
counters; and what the run does between steps: evaluate, keep the best weights, checkpoint, resume."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from ..checkpoints.io import save
from ..checkpoints.metadata import run_metadata
from ..data import DataSource
from ..evaluate import Evaluation, evaluate
from . import distributed
from .config import TrainConfig
from .device_feed import DeviceBatches
from .ema import ModelEMA
from .feed import TrainingFeed
from .graphs import GraphStep
from .resume import resume_point, write_checkpoint
from .rundir import RunDir
from .runlog import RunLog
from .signals import StopSignals


@dataclass
class Run:
    """One training run: what the loop's setup builds, and the loop's state (step, best held-out or test top-1, ...)."""

    cfg: TrainConfig
    procs: distributed.Processes
    data: DataSource
    eval_name: str  # the split evaluated during training: "test" or "held-out"
    model: nn.Module
    feed: TrainingFeed  # the training batches of each epoch
    accum: int  # micro-batches per optimiser step
    test_loader: DataLoader | DeviceBatches
    total_steps: int
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None
    mix: v2.Transform | None  # Mixup/CutMix
    graphs: bool = False  # capture the step as a CUDA graph (vitkit.train.graphs), at the first step
    graph: GraphStep | None = None
    signals: StopSignals | None = None
    train_model: nn.Module | None = None  # the model as trained: DDP-wrapped and/or compiled
    log: RunLog | None = None
    step: int = 0
    best_top1: float | None = None
    stale: int = 0  # evaluations since the best one (early stopping with --patience)
    eval_pending: bool = False  # a signal cut this step's evaluation short: the resumed run does it first
    elapsed: float = 0.0  # seconds trained before this process started (a resumed run's)
    skipped_steps: int = 0
    last_checkpoint: Path | None = None
    last_eval: Evaluation | None = None
    t0: float = 0.0  # when this process's first step started

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def files(self) -> RunDir:
        return RunDir(self.cfg.out)

    @property
    def main(self) -> bool:
        return self.procs.is_main

    @property
    def steps_per_epoch(self) -> int:
        return self.feed.steps_per_epoch

    @property
    def meta(self) -> dict[str, str]:
        return run_metadata(self.data.classes, self.data.name)

    def say(self, message: str) -> None:
        if self.main:
            print(message, file=sys.stderr)

    def time_s(self) -> float:
        return self.elapsed + time.time() - self.t0

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def save_weights(self, path: Path, metadata: dict[str, str]) -> None:
        weights = distributed.full_state_dict(self.eval_model())  # sharded: gathered on rank 0, with every rank
        if self.main:
            save(self.eval_model(), path, metadata=metadata, state=weights)

    def checkpoint(self) -> None:
        weights = distributed.full_state_dict(self.model)
        optimizer_state = distributed.full_optimizer_state(self.model, self.optimizer)
        if not self.main:
            return
        self.last_checkpoint = write_checkpoint(self.out, self.step, self.model, {
            "step": self.step, "total_steps": self.total_steps, "best_top1": self.best_top1, "elapsed": self.time_s(),
            "stale": self.stale, "eval_pending": self.eval_pending,
            "skipped_steps": self.skipped_steps, "optimizer": optimizer_state, "scaler": self.scaler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
        }, self.meta, keep=self.cfg.keep_checkpoints, weights=weights)  # fmt: skip

    def resume(self) -> None:
        """With --resume, continue from the newest intact checkpoint (vitkit.train.resume.resume_point)."""
        resumed = resume_point(self.cfg, self.procs, self.model, self.optimizer, self.scaler, self.ema,
                               self.total_steps)  # fmt: skip
        if resumed is not None:
            state = resumed.state
            self.step, self.best_top1, self.elapsed = state["step"], state["best_top1"], state["elapsed"]
            self.skipped_steps, self.last_checkpoint = state.get("skipped_steps", 0), resumed.path
            self.stale, self.eval_pending = state.get("stale", 0), state.get("eval_pending", False)

    def last_good(self) -> str:
        return f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint yet"

    def stopping(self) -> bool:
        """SIGINT/SIGTERM arrived in this single-process run: no (more) evaluation, the loop stops after the step."""
        return not self.procs.distributed and self.signals is not None and self.signals.requested is not None

    def evaluate(self) -> None:
        """Evaluate on the held-out (or test) split, log it, and keep the best weights as best.safetensors. A
        SIGINT/SIGTERM cuts it short: then `eval_pending`, and the resumed run evaluates this step first."""
        sharded = distributed.is_sharded(self.model)
        if (self.main or sharded) and not self.stopping():  # a sharded model's forward pass needs every process
            started = time.time()
            try:
                ev = evaluate(self.eval_model(), self.test_loader, len(self.data.classes), self.procs.device,
                              self.cfg.precision, stop=self.stopping)  # fmt: skip
            except ValueError:  # "evaluation set is empty": stopped before its first batch
                if not self.stopping():
                    raise
            if not self.stopping():
                self._record(ev, time.time() - started)
        self.eval_pending = self.stopping()  # recorded in the checkpoint that the signal writes next
        self.procs.barrier()

    def _record(self, ev: Evaluation, seconds: float) -> None:
        self.last_eval = ev
        improved = self.best_top1 is None or ev.top1 > self.best_top1
        if distributed.is_sharded(self.model):  # every process gathers the weights to save, or none
            improved = self.procs.broadcast(improved)
        self.stale = 0 if improved else self.stale + 1
        if improved:
            self.best_top1 = ev.top1
            self.save_weights(self.files.best, {**self.meta, "step": str(self.step), "top1": str(ev.top1)})
        if self.main:
            self.log.write({
                "step": self.step, "epoch": self.step / self.steps_per_epoch, "eval_top1": ev.top1,
                "eval_top5": ev.top5, "eval_loss": ev.loss, "eval_images_per_s": ev.n / max(seconds, 1e-9),
                "time_s": self.time_s(),
            })  # fmt: skip
            self.log.plot(force=False)
            self.say(f"step {self.step}: {self.eval_name} {ev.accuracy_text()}, "
                     f"loss {ev.loss:.4f}")  # fmt: skip

