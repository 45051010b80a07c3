"""Reproducible loading: each image's augmentation is a function of (seed, epoch, index) only, and the
sampler can start part-way through an epoch. Together they make a resumed run, or one split over
several processes, see exactly the inputs of a single uninterrupted run."""

from __future__ import annotations

import contextlib
import itertools
import signal
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

_MASK = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A generator seed that depends on every value: splitmix64's finaliser folded over them."""
    h = 0
    for v in values:
        h = (h + (v & _MASK) + 0x9E3779B97F4A7C15) & _MASK
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
        h ^= h >> 31
    return h >> 1  # torch.manual_seed takes up to 2**63 - 1


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """The global CPU generator seeded with `seed` inside, left as it was outside (the generator's own
    manual_seed: torch.manual_seed also seeds accelerators, and is 50x slower)."""
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)


class Transformed(Dataset):
    """(image, label) items of `dataset` with `transform` applied to the image."""

    def __init__(self, dataset: Dataset, transform: Callable[[Any], torch.Tensor]) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[i]
        return self.transform(image), label


class SeededTransform(Transformed):
    """Applies a random `transform` to dataset[i] with the torch generator seeded from (seed, epoch, i).

    torchvision's v2 transforms draw from the global torch generator; seeding it per item makes an
    image's augmentation independent of which process or worker loads it and of where the run began.
    """

    def __init__(self, dataset: Dataset, transform: Callable[[Any], torch.Tensor], seed: int = 0) -> None:
        super().__init__(dataset, transform)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[i]
        with seeded(mix_seed(self.seed, self.epoch, i)):
            return self.transform(image), label


class ResumableSampler(DistributedSampler):
    """DistributedSampler (a seeded permutation per epoch, this rank's share of it) that can skip the
    first `start` micro-batches of `batch` indices of this rank's share, to resume mid-epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 batch: int = 1) -> None:  # fmt: skip
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.batch, self.start = batch, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Draw `epoch`'s order and skip its first `start` micro-batches (as StreamedSplit.set_position)."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start * self.batch, None)

    def __len__(self) -> int:
        return self.num_samples - self.start * self.batch


def leave_signals_to_the_trainer(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group: the workers ignore it (and SIGTERM), so that the training
    process can finish its step and checkpoint (vitkit.train.signals.StopSignals); it stops them after."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    sampler: ResumableSampler,
    workers: int,
    drop_last: bool,
    pin_memory: bool,
    collate: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """A DataLoader whose own generator (not the global one) seeds its workers, so creating it mid-run
    leaves the global generator (dropout, Mixup) untouched."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=pin_memory, collate_fn=collate, generator=torch.Generator().manual_seed(0),
        worker_init_fn=leave_signals_to_the_trainer,
    )  # fmt: skip
