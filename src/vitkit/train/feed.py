"""The training images of one process: a loader that starts any epoch at any step.

Two kinds, one interface: a dataset held or indexed locally (a seeded sampler over indices, each
image's augmentation seeded by (seed, epoch, index): vitkit.data.loader), or a streamed one (shards or
Hugging Face, read in the order of vitkit.data.streaming). Either way the micro-batches of step s
are a function of (seed, s) and the run's shape, so a resumed run continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import torch
from torch.utils.data import DataLoader, Subset

from ..data import DataSource, ResumableSampler, SeededTransform, make_loader, train_transform
from ..data.batched import Batch, batched_training_data
from ..data.preprocessing import DataConfig
from ..data.loader import leave_signals_to_the_trainer
from ..data.streaming import StreamedSplit, first, indexable
from ..data.subsets import split_subset
from . import distributed
from .config import TrainConfig
from .device_feed import choose_feed, device_feed


class TrainingFeed(Protocol):
    """What the loop reads of a feed: this process's micro-batches, `per_step` of them an optimiser step."""

    steps_per_epoch: int
    workers: int
    augmentation: str  # "per-image", "batched", "streamed" or "device"
    images: int  # in the training split (after --limit-train)
    reason: str  # why this feed and not the device's (vitkit.train.device_feed)

    def epoch(self, epoch: int, step: int) -> Iterator[Batch]: ...

    def skipped(self, procs: distributed.Processes) -> int: ...


class Positioned(Protocol):
    """An epoch's order that can start at any micro-batch: ResumableSampler or StreamedSplit."""

    def set_position(self, epoch: int, start: int = 0) -> None: ...


@dataclass
class Feed:
    """Micro-batches (images (b, C, H, W), labels (b,)) of this process from a loader, `per_step` of them a step."""

    loader: DataLoader
    positioned: Positioned  # what set_position moves
    per_step: int  # micro-batches per optimiser step (gradient accumulation)
    steps_per_epoch: int
    workers: int
    augmentation: str
    images: int  # in the training split (after --limit-train)
    reason: str = ""  # why this feed and not the device's (vitkit.train.device_feed)

    def epoch(self, epoch: int, step: int) -> Iterator[Batch]:
        """The micro-batches of `epoch` from its `step`-th step on."""
        self.positioned.set_position(epoch, step * self.per_step)
        return iter(self.loader)

    def skipped(self, procs: distributed.Processes) -> int:
        """Samples that could not be read or decoded, over all processes (a stream's; none here)."""
        return 0


@dataclass
class IndexedFeed(Feed):
    """A split read by index: a sampler's order, each image's augmentation seeded by (seed, epoch, index)."""

    def epoch(self, epoch: int, step: int) -> Iterator[Batch]:
        self.loader.dataset.set_epoch(epoch)
        return super().epoch(epoch, step)


@dataclass
class StreamedFeed(Feed):
    """A streamed split (vitkit.data.streaming): the stream is its own order."""

    positioned: StreamedSplit

    def skipped(self, procs: distributed.Processes) -> int:
        return round(procs.mean(torch.tensor(float(self.positioned.skipped_samples))).item() * procs.world_size)


def loader_workers(cfg: TrainConfig, procs: distributed.Processes, batched: bool = False) -> int:
    """Loading processes: a core's worth of per-image transforms, or none for batched ones on 2 cores
    (their few ms a batch cost less than a worker's competition with the training threads)."""
    if cfg.workers is not None:
        return cfg.workers
    spare = (os.cpu_count() or 2) // procs.world_size - (2 if batched else 1)
    return max(0 if batched else 1, min(8, spare))


def _transform(data_cfg: DataConfig, data: DataSource, cfg: TrainConfig) -> Any:
    recipe = cfg.recipe
    hflip = recipe.hflip and data.hflip
    return train_transform(
        data_cfg, data.channels, recipe.crop_scale, hflip, recipe.randaugment, recipe.random_erasing,
        recipe.crop_padding,
    )


def _indexed_feed(train_set: Any, data_cfg: DataConfig, data: DataSource, cfg: TrainConfig,
                  procs: distributed.Processes, micro: int, per_step: int) -> Feed:  # fmt: skip
    """Crops and flips of in-memory images on whole batches where the recipe asks for no more
    (vitkit.data.batched), else the per-image v2 transforms."""
    recipe, collate, dataset = cfg.recipe, None, None
    if recipe.randaugment is None and recipe.random_erasing == 0 and recipe.crop_padding is None:
        batched = batched_training_data(train_set, data_cfg, data.channels, recipe.crop_scale,
                                        recipe.hflip and data.hflip, cfg.seed)  # fmt: skip
        if batched is not None:
            dataset, collate = batched
    if dataset is None:
        dataset = SeededTransform(train_set, _transform(data_cfg, data, cfg), seed=cfg.seed)
    sampler = ResumableSampler(train_set, procs.world_size, procs.rank, shuffle=True, seed=cfg.seed, batch=micro)
    workers = loader_workers(cfg, procs, batched=collate is not None)
    loader = make_loader(dataset, micro, sampler, workers, drop_last=True, pin_memory=procs.device.type == "cuda",
                         collate=collate)  # fmt: skip
    steps = sampler.num_samples // (micro * per_step)
    augmentation = "per-image" if collate is None else "batched"
    return IndexedFeed(loader, sampler, per_step, steps, workers, augmentation, len(train_set))


def _streamed_feed(train_set: StreamedSplit, data_cfg: DataConfig, data: DataSource, cfg: TrainConfig,
                   procs: distributed.Processes, micro: int, per_step: int, workers: int) -> Feed:  # fmt: skip
    """The stream of vitkit.data.streaming, one stream per loader worker."""
    stream = train_set.configured(
        _transform(data_cfg, data, cfg), seed=cfg.seed, world_size=procs.world_size, rank=procs.rank,
        streams=max(1, workers), batch=micro, train=True,
    )  # fmt: skip
    loader = DataLoader(stream, batch_size=micro, num_workers=workers, pin_memory=procs.device.type == "cuda",
                        worker_init_fn=leave_signals_to_the_trainer)  # fmt: skip
    steps = len(stream) // (micro * per_step)
    return StreamedFeed(loader, stream, per_step, steps, workers, "streamed", sum(train_set.counts))


def build_feed(data: DataSource, data_cfg: DataConfig, cfg: TrainConfig, procs: distributed.Processes, micro: int,
               per_step: int, saved_workers: int | None = None) -> TrainingFeed:  # fmt: skip
    """The training feed of this process (--feed: the device's or a loader); `saved_workers`: a resumed
    streamed run keeps its worker count, since the order of its samples depends on it."""
    train_set = first(data.split("train"), cfg.limit_train)
    on_device, why = choose_feed(cfg.feed, train_set, cfg, procs.device)
    if on_device:
        feed = device_feed(data, train_set, data_cfg, cfg, procs, micro, per_step)
    elif isinstance(train_set, StreamedSplit):
        workers = saved_workers if saved_workers is not None else loader_workers(cfg, procs)
        feed = _streamed_feed(train_set, data_cfg, data, cfg, procs, micro, per_step, workers)
    else:
        feed = _indexed_feed(train_set, data_cfg, data, cfg, procs, micro, per_step)
    feed.reason = why
    if feed.steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.recipe.batch_size} is larger than the {feed.images} training images")
    return feed


def held_out(cfg: TrainConfig, data: DataSource) -> tuple[DataSource, str]:
    """`data` with the run's nested subset (--subset) as its training split and, with --holdout, the held-out
    part of it in place of the test split, which is then left alone; and the name of the split evaluated."""
    if not (cfg.subset or cfg.holdout):
        return data, "test"
    train = indexable(data.split("train"))  # subsets are drawn by index
    train, kept_out = split_subset(train, len(data.classes), cfg.subset, cfg.holdout, cfg.subset_seed)
    if len(train) < cfg.recipe.batch_size:  # a subset smaller than a batch (a GPU batch on 1k images): an epoch
        copies = math.ceil(cfg.recipe.batch_size / len(train))  # passes over it that many times, each crop drawn anew
        train = Subset(train, torch.arange(len(train)).repeat(copies).tolist())
    if kept_out is None:
        return dataclasses.replace(data, train=train), "test"
    return dataclasses.replace(data, train=train, test=kept_out), "held-out"


def micro_batches(cfg: TrainConfig, procs: distributed.Processes) -> tuple[int, int]:
    """(images per forward pass and process, forward passes per step) that make up the global batch."""
    batch = cfg.recipe.batch_size
    if batch % procs.world_size:
        raise ValueError(f"batch_size {batch} is not divisible by the {procs.world_size} processes")
    per_rank = batch // procs.world_size
    micro = cfg.micro_batch or per_rank
    if per_rank % micro:
        raise ValueError(f"micro_batch {micro} does not divide the per-process batch {per_rank}")
    return micro, per_rank // micro
