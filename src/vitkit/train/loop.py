"""The training loop: build everything from a TrainConfig, train, evaluate every epoch, checkpoint.

Reproducibility: the global torch generator (dropout, stochastic depth, Mixup/CutMix) is re-seeded
from (seed, step, rank) at every optimiser step, and each image's augmentation from (seed, epoch,
index) (vitkit.data.loader). A run resumed from a checkpoint therefore repeats, on CPU bit for bit,
what the uninterrupted run would have done; and K processes each given batch_size / K images see the
images that one process would have seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchvision.transforms import v2
from tqdm import tqdm

from ..data import DataSource, batch_mix, load_data, mix_seed
from ..data.batched import Batch
from ..data.streaming import first
from ..evaluate import Evaluation
from ..precision import autocast, resolve_precision
from . import distributed
from .checks import check_run
from .config import TrainConfig, resolve, write_run_config
from .ema import ModelEMA
from .device_feed import eval_batches
from .feed import build_feed, held_out
from .graphs import GraphStep
from .model_setup import placed_model
from .optim import build_optimizer, muon_dtype
from .recipes import Recipe
from .resume import saved_workers
from .run import Run
from .rundir import RunDir
from .runlog import RunLog
from .schedule import lr_factor
from .signals import Interrupted, NonFiniteLoss, StopSignals, stop_requested


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    checkpoint: Path  # the final weights (the EMA's when the recipe keeps one)
    evaluation: Evaluation | None
    best_top1: float | None
    skipped_images: int
    skipped_steps: int = 0
    evaluated: str = "test"  # the split evaluated during training: "test" or "held-out"

    def summary(self) -> str:
        lines = [f"run directory: {self.out_dir}", f"checkpoint: {self.checkpoint} (after {self.steps} steps)"]
        if self.evaluation is not None:
            ev = self.evaluation
            lines.append(f"{self.evaluated} accuracy: {ev.accuracy_text()} on {ev.n} images")
        if self.best_top1 is not None:
            lines.append(f"best top-1: {self.best_top1:.2%} ({RunDir(self.out_dir).best})")
        lines.append(f"metrics: {RunDir(self.out_dir).metrics}; plots: {self.out_dir}/{{loss,accuracy,lr}}.png")
        if self.skipped_images:
            lines.append(f"skipped {self.skipped_images} undecodable images (named in the warnings above)")
        if self.skipped_steps:
            lines.append(f"skipped {self.skipped_steps} steps whose loss was not finite (--skip-nonfinite)")
        return "\n".join(lines)


def _loss(
    logits: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """Cross-entropy against class indices (B,) or soft labels (B, K) from Mixup/CutMix. A distilled model
    (DeiT) returns the logits of both heads in training; vitkit has no teacher, so both learn the label
    and the loss is their mean (DeiT's hard distillation would give the second head the teacher's class)."""
    if isinstance(logits, tuple):
        return sum(_loss(head, target, label_smoothing) for head in logits) / len(logits)
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def train_step(
    model: nn.Module,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    recipe: Recipe,
    cfg: TrainConfig,
    procs: distributed.Processes,
    mix: v2.Transform | None,
) -> torch.Tensor:
    """One optimiser step over the accumulated micro-batches; returns the loss averaged over all of
    this step's images (and processes), before the update."""
    accum, device = len(micro_batches), procs.device
    total = torch.zeros((), device=device)
    for i, (images, labels) in enumerate(micro_batches):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if mix is not None:
            images, labels = mix(images, labels)
        last = i == accum - 1
        # accumulate locally, all-reduce once per step (a compiled DDP model all-reduces every micro-batch)
        sync = contextlib.nullcontext() if last or not isinstance(model, DistributedDataParallel) else model.no_sync()
        with sync:
            with autocast(device, cfg.precision):
                loss = _loss(model(images), labels, recipe.label_smoothing)
            scaler.scale(loss / accum).backward()
        total += loss.detach()
    loss = procs.mean(total / accum)
    if not torch.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        return loss
    if recipe.clip_grad is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss


def fit(cfg: TrainConfig, data: DataSource | None = None) -> TrainResult:
    """Train as `cfg` says (launched by torchrun: one of several processes); returns where things are.
    `data`: cfg.data already loaded, a streamed training split perhaps held (vitkit.data.streaming.indexable),
    as a study passes it to each of its runs; by default fit loads it."""
    procs = distributed.start(cfg.device)
    try:
        return _fit(cfg, procs, data)
    finally:
        distributed.stop(procs)


def _fit(cfg: TrainConfig, procs: distributed.Processes, data: DataSource | None) -> TrainResult:
    run = _setup(resolve(cfg, procs), procs, data)
    bar = tqdm(total=run.total_steps, initial=run.step, unit="step", disable=not (run.main and cfg.progress),
               dynamic_ncols=True)  # fmt: skip
    signals = run.signals = StopSignals().install()
    try:
        evaluated_at = _train(run, bar, signals)
        bar.close()
        if evaluated_at != run.step:
            run.evaluate()
        final = run.files.final
        run.save_weights(final, {**run.meta, "step": str(run.step)})
        if run.main:
            run.log.plot()
    finally:
        signals.restore()
        bar.close()
        run.log.close()
    skipped_images = len(run.data.skipped_files()) + run.feed.skipped(procs)
    return TrainResult(run.out, run.step, final, run.last_eval, run.best_top1, skipped_images, run.skipped_steps,
                       run.eval_name)  # fmt: skip


def _setup(cfg: TrainConfig, procs: distributed.Processes, data: DataSource | None = None) -> Run:
    """Everything before the first step: the checks, data, model, optimiser, the resumed state; then the
    first write, config.yaml. `data`: as fit's."""
    requested, choice = cfg, resolve_precision(cfg.precision, procs.device)
    cfg = dataclasses.replace(cfg, precision=choice.precision)  # config.yaml keeps what was asked ("auto")
    shape, recipe = check_run(cfg, procs), cfg.recipe
    micro, accum, graphs = shape.micro, shape.accum, shape.graphs
    data, eval_name = held_out(cfg, data if data is not None else load_data(cfg.data, cfg.data_root))
    model = placed_model(cfg, procs, data)
    feed = build_feed(data, model.config.data_config, cfg, procs, micro, accum, saved_workers(cfg))
    test_loader = eval_batches(first(data.split("test"), cfg.limit_eval), model.config.data_config, data.channels,
                               procs.device, feed.augmentation == "device", feed.workers)  # fmt: skip
    if procs.is_main:
        print(choice.line(), file=sys.stderr)  # the first line of a run that starts
        print(f"feed: {feed.augmentation} ({feed.reason}); CUDA graphs: {'on' if graphs else 'off'} "
              f"({shape.graphs_why})", file=sys.stderr)  # fmt: skip
    run = Run(
        cfg, procs, data, eval_name, model, feed, accum, test_loader,
        total_steps=recipe.steps or math.ceil(recipe.epochs * feed.steps_per_epoch),
        optimizer=build_optimizer(model, recipe),
        scaler=torch.amp.GradScaler(procs.device.type, enabled=cfg.precision == "fp16"),
        ema=ModelEMA(model, recipe.ema_decay) if recipe.ema_decay else None,
        mix=batch_mix(recipe.mixup, recipe.cutmix, len(data.classes)), graphs=graphs,
    )  # fmt: skip
    run.resume()
    if procs.is_main:
        write_run_config(requested, model, data, {"derived": {
            "precision": choice.to_dict(), "muon_newton_schulz": muon_dtype(run.optimizer),
            "total_steps": run.total_steps, "steps_per_epoch": feed.steps_per_epoch, "accumulation": accum,
            "micro_batch": micro, "world_size": procs.world_size, "workers": feed.workers,
            "augmentation": feed.augmentation, "train_images": feed.images, "eval_images": len(test_loader.dataset),
            "eval_split": eval_name, "cuda_graphs": graphs,
        }})  # fmt: skip
    procs.barrier()
    run.train_model, device = model, procs.device
    if procs.distributed and not cfg.fsdp:
        run.train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        run.train_model = torch.compile(run.train_model)
    run.log = RunLog(run.out, enabled=procs.is_main, resume_step=run.step if cfg.resume else None)
    return run


def _train(run: Run, bar: tqdm, signals: StopSignals) -> int | None:
    """Steps from run.step to the end, evaluating, logging and checkpointing as the config says; stops with a
    checkpoint on SIGINT/SIGTERM. Returns the step of the last evaluation (None if there was none)."""
    cfg, total = run.cfg, run.total_steps
    evaluated_at = None
    if run.eval_pending:  # the evaluation a signal cut short before the checkpoint this run resumed from
        run.evaluate()
        evaluated_at = run.step
    if cfg.patience and run.stale >= cfg.patience:  # resumed after it stopped early, before the final weights
        total = run.step
    run.t0 = time.time()
    run.model.train()
    busy = 0.0  # seconds spent loading and training, for images/s
    tick_busy, tick_step = busy, run.step
    while run.step < total:
        epoch, position = divmod(run.step, run.steps_per_epoch)
        batches = run.feed.epoch(epoch, position)
        for _ in range(position, min(run.steps_per_epoch, position + total - run.step)):
            started = time.time()
            loss, lr = _optimiser_step(run, batches)
            busy += time.time() - started
            bar.update(1)
            eval_due = run.step % (cfg.eval_every or run.steps_per_epoch) == 0
            checkpoint_due = run.step % cfg.checkpoint_every == 0 or run.step == total
            if run.step % cfg.log_every == 0 or run.step == total or (run.graphs and (eval_due or checkpoint_due)):
                started = time.time()
                metrics = _metrics(run, loss)  # the one host sync of a captured run, every few steps
                busy += time.time() - started
                speed = (run.step - tick_step) * cfg.recipe.batch_size / max(busy - tick_busy, 1e-9)
                tick_busy, tick_step = busy, run.step
                run.log.write({"step": run.step, "epoch": run.step / run.steps_per_epoch, **metrics,
                               "lr": lr, "images_per_s": speed, "time_s": run.time_s()})  # fmt: skip
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.0f}")
            if eval_due:
                run.evaluate()
                evaluated_at = run.step
                if cfg.patience and run.stale >= cfg.patience:  # early stopping: this step is the last
                    run.say(f"step {run.step}: no better {run.eval_name} top-1 in {run.stale} evaluations; stopping")
                    total = run.step
                    checkpoint_due = True
            if checkpoint_due:
                run.checkpoint()
            if stop_requested(signals, run.procs):
                if not checkpoint_due:
                    run.checkpoint()
                signum = signals.requested or signal.SIGTERM  # another rank may have been the one signalled
                message = (f"stopped by {signal.Signals(signum).name} at step {run.step} of {total}; "
                           f"{run.last_good()}; continue with: vitkit train --resume --out {run.out}")  # fmt: skip
                raise Interrupted(message, signum)
            if run.step == total:
                break
    return evaluated_at


def _optimiser_step(run: Run, batches: Iterator[Batch]) -> tuple[torch.Tensor, float]:
    """One optimiser step at run.step's learning rate (and patch dropout); returns (loss, lr). A non-finite
    loss skips the step, up to --skip-nonfinite times."""
    cfg, recipe, step = run.cfg, run.cfg.recipe, run.step
    lr = recipe.lr * lr_factor(step, run.total_steps, recipe.warmup, recipe.decay)
    if run.graphs:
        return _graph_step(run, batches, lr), lr
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    if recipe.patch_drop and hasattr(run.model, "set_patch_drop"):
        run.model.set_patch_drop(recipe.patch_drop if step < recipe.patch_drop_until * run.total_steps else 0.0)
    # dropout, stochastic depth, Mixup: a stream apart from the images' (seed, epoch, index)
    torch.manual_seed(mix_seed(cfg.seed, 1 << 32, step, run.procs.rank))
    micro_batches = [next(batches) for _ in range(run.accum)]
    loss = train_step(run.train_model, micro_batches, run.optimizer, run.scaler, recipe, cfg, run.procs, run.mix)
    if not torch.isfinite(loss):
        if run.skipped_steps >= cfg.skip_nonfinite:
            raise NonFiniteLoss(f"loss is {loss.item()} at step {step + 1}; stopping ({run.last_good()})")
        run.skipped_steps += 1
        warnings.warn(f"loss is {loss.item()} at step {step + 1}: step skipped, weights unchanged "
                      f"({run.skipped_steps} of at most {cfg.skip_nonfinite})", stacklevel=1)  # fmt: skip
    if run.ema is not None:
        run.ema.update(run.model)
    run.step += 1
    return loss, lr


def _graph_step(run: Run, batches: Iterator[Batch], lr: float) -> torch.Tensor:
    """The step replayed as a CUDA graph (captured at the first one); returns its loss, on the device."""
    torch.manual_seed(mix_seed(run.cfg.seed, 1 << 32, run.step, run.procs.rank))  # as the eager step
    images, labels = next(batches)
    images, labels = images.to(run.procs.device, non_blocking=True), labels.to(run.procs.device, non_blocking=True)
    if run.mix is not None:
        images, labels = run.mix(images, labels)
    recipe = run.cfg.recipe
    if run.graph is None:
        try:
            run.graph = GraphStep(run.model, run.optimizer, _loss, recipe.label_smoothing, recipe.clip_grad,
                                  run.cfg.precision, (images, labels))  # fmt: skip
        except RuntimeError as e:
            if run.cfg.cuda_graphs == "on":
                raise
            warnings.warn(f"capturing the step as a CUDA graph failed ({str(e)[:200]}); going on eagerly",
                          stacklevel=1)  # fmt: skip
            run.graphs = False
    if run.graph is None:  # this step, already drawn and mixed, eagerly
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        loss = train_step(run.train_model, [(images, labels)], run.optimizer, run.scaler, recipe, run.cfg, run.procs,
                          None)  # fmt: skip
    else:
        loss = run.graph.step(images, labels, lr)
    if run.ema is not None:
        run.ema.update(run.model)
    run.step += 1
    return loss


def _metrics(run: Run, loss: torch.Tensor) -> dict[str, float]:
    """The logged training metrics: the last step's loss and, for a captured step, the means since the last
    record; a non-finite loss there stops the run before anything is evaluated or saved."""
    if run.graph is None:
        return {"loss": loss.item()}
    means = run.graph.read()
    if means.pop("nonfinite"):
        raise NonFiniteLoss(f"a loss was not finite in the steps up to {run.step}; stopping ({run.last_good()}; "
                            "with --cuda-graphs off, --skip-nonfinite can skip such steps)")  # fmt: skip
    return {"loss": loss.item(), **means}
