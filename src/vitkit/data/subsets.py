"""Nested, class-balanced subsets of a training split, and a held-out part of each for early stopping.

Every class's images are permuted once (from a seed), and the classes are dealt round-robin in a
seeded class order: round r holds the r-th image of every class that still has one. The subset of
size n is the first n images of that sequence, so a smaller subset lies inside every larger one,
classes differ in count by at most one (fewer only where a class runs out), and a size that K does
not divide gives its extra images to the classes first in the seeded order.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, IterableDataset, Subset


def class_permutations(labels: torch.Tensor, num_classes: int, seed: int) -> list[torch.Tensor]:
    """For each class, the indices of its examples in labels (N,) in a random order drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        out.append(idx[torch.randperm(len(idx), generator=generator)])
    return out


def balanced_order(labels: torch.Tensor, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """labels (N,) -> (indices (N,), rounds (N,)): every index once, dealt round-robin over the classes;
    rounds[i] is indices[i]'s rank within its class."""
    per_class = class_permutations(labels, num_classes, seed)
    class_order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed + 1))
    ranked = [(r, int(slot), int(i)) for slot, c in enumerate(class_order) for r, i in enumerate(per_class[c])]
    ranked.sort()
    return torch.tensor([i for _, _, i in ranked]), torch.tensor([r for r, _, _ in ranked])


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """The labels (N,) of a map-style dataset: its `targets` or `labels`, through Subsets, else read item by item.
    A streamed split (wds:, hf:) has no indices to draw subsets from: a one-line error."""
    if not hasattr(dataset, "__getitem__") or isinstance(dataset, IterableDataset):
        raise ValueError(f"class-balanced subsets need a dataset read by index; {getattr(dataset, 'name', 'this split')} "
                         f"is streamed: hold it in memory first (vitkit.data.streaming.indexable)")
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    for attribute in ("targets", "labels"):
        if hasattr(dataset, attribute):
            return torch.as_tensor(getattr(dataset, attribute), dtype=torch.long)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]


def check_size(size: int, num_classes: int, available: int) -> None:
    """A subset needs an image of every class and cannot be larger than the split: one-line ValueError."""
    if not num_classes <= size <= available:
        raise ValueError(f"subset size {size} must be between the {num_classes} classes and the {available} "
                         f"training images")  # fmt: skip


def nested_subset(labels: torch.Tensor, size: int, num_classes: int, seed: int) -> torch.Tensor:
    """Indices (size,) of the class-balanced subset of `size` images; nested across sizes for one seed."""
    check_size(size, num_classes, len(labels))
    return balanced_order(labels, num_classes, seed)[0][:size]


def held_out(rounds: torch.Tensor, fraction: float) -> torch.Tensor:
    """Which images (bool (N,)) of a balanced order to hold out: the ranks r at which ⌊(r + 1)·f⌋ grows,
    evenly spaced within every class, so the held-out part of a subset is nested across sizes too."""
    return torch.floor((rounds + 1) * fraction) > torch.floor(rounds * fraction)


def subset_indices(
    labels: torch.Tensor, num_classes: int, size: int | None, holdout: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(training indices, held-out indices or None) of the nested subset of `size` images (all of them when
    None), with a class-balanced `holdout` fraction set aside."""
    size = len(labels) if size is None else size
    check_size(size, num_classes, len(labels))
    indices, rounds = (t[:size] for t in balanced_order(labels, num_classes, seed))
    if not holdout:
        return indices, None
    aside = held_out(rounds, holdout)
    if not aside.any() or aside.all():
        raise ValueError(f"holdout {holdout} of a {size}-image subset leaves no held-out or no training image")
    return indices[~aside], indices[aside]


def split_subset(
    dataset: Dataset, num_classes: int, size: int | None, holdout: float, seed: int
) -> tuple[Dataset, Dataset | None]:
    """`subset_indices` of a map-style dataset, as Subsets of it."""
    train, aside = subset_indices(dataset_labels(dataset), num_classes, size, holdout, seed)
    return Subset(dataset, train.tolist()), None if aside is None else Subset(dataset, aside.tolist())
