"""Preprocessing whole batches of images held in memory: the fast path for small datasets.

Per-image torchvision transforms cost about 300 µs an image in Python, as much as a small ViT's
training step itself on two CPU cores. For datasets already in memory as uint8 tensors (fashion_mnist,
mnist5k, digits, cifar10/100) the loader instead

- draws each image's inception crop and flip with the v2 transforms' own `make_params`, from the
  generator seeded by (seed, epoch, index) as `SeededTransform` does, so the same images get the
  same crops as on the per-image path, and
- crops, resizes and flips the whole batch with two matrix products. Resizing is linear and separable:
  for image X (C, H, W), crop-and-resize is  Y = A_y X A_xᵀ,  A_y (H', H) and A_x (W', W) holding the
  interpolation weights of torchvision's own resize (found by resizing rows of the identity), and a
  horizontal flip reverses the rows of A_x.

The result equals the per-image pipeline run on float images and clipped to [0, 1] (uint8 images
are also rounded after the resize there). `TransformBatch` applies the deterministic evaluation
transform to stacked batches, which gives exactly the per-image result.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .datasets import TensorImages
from .loader import mix_seed, seeded
from .preprocessing import DataConfig
from .transforms import match_channels, normalize

Batch = tuple[torch.Tensor, torch.Tensor]


def in_memory(dataset: Dataset) -> TensorImages | None:
    """`dataset` as uint8 images (N, C, H, W) and labels (N,) when it is held in memory, else None."""
    if isinstance(dataset, TensorImages):
        return dataset
    if isinstance(dataset, Subset):
        inner = in_memory(dataset.dataset)
        index = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        return None if inner is None else TensorImages(inner.images[index], inner.labels[index])
    if isinstance(dataset, tvd.MNIST) and dataset.transform is None:  # and FashionMNIST, KMNIST, EMNIST
        return TensorImages(dataset.data.unsqueeze(1), torch.as_tensor(dataset.targets))
    if isinstance(dataset, tvd.CIFAR10) and dataset.transform is None:  # and CIFAR100
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
        return TensorImages(images, torch.as_tensor(dataset.targets))
    return None


class SeededCrops(Dataset):
    """Items (image uint8 (C, H, W), crop (5,) = top, left, height, width, flip; label) of in-memory images,
    the crop and flip drawn as v2.RandomResizedCrop and v2.RandomHorizontalFlip draw them, from the
    generator seeded by (seed, epoch, index)."""

    def __init__(self, images: TensorImages, crop: v2.RandomResizedCrop, hflip: bool, seed: int = 0) -> None:
        self.images, self.crop, self.hflip = images, crop, hflip
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image = self.images.images[i]
        with seeded(mix_seed(self.seed, self.epoch, i)):
            box = self.crop.make_params([image])
            flip = self.hflip and bool(torch.rand(1) < 0.5)
        crop = torch.tensor([box["top"], box["left"], box["height"], box["width"], flip])
        return image, crop, int(self.images.labels[i])


@functools.lru_cache(maxsize=8192)
def resize_weights(size: int, start: int, length: int, out: int, interpolation: str) -> torch.Tensor:
    """A (out, size): row k holds the weights of a line's `size` pixels in output pixel k of the
    crop [start, start + length) resized to `out` pixels, as torchvision resizes float images."""
    rows = torch.eye(size, dtype=torch.float64)[start : start + length]  # (length, size): the crop of each basis line
    mode = v2.InterpolationMode(interpolation)
    return TF.resize(rows[None], [out, size], interpolation=mode, antialias=True)[0].float()


class CropResizeFlip:
    """Collates SeededCrops items into a batch: (images (B, C', H', W') normalised floats, labels (B,)).

    Each image's crop is resized to cfg.img_size and flipped by Y = A_y X A_xᵀ (see the module's doc);
    then the channels are matched to the model's and the batch is normalised."""

    def __init__(self, cfg: DataConfig, data_channels: int) -> None:
        self.size, self.interpolation = cfg.img_size, cfg.interpolation
        matching = match_channels(data_channels, cfg.in_chans)
        self.channels = v2.Compose(matching) if matching else None
        norm = normalize(cfg)
        self.mean_std = [torch.tensor(v).view(-1, 1, 1) for v in (norm.mean, norm.std)]

    def __call__(self, items: list[tuple[torch.Tensor, torch.Tensor, int]]) -> Batch:
        images = torch.stack([image for image, _, _ in items])
        H, W = images.shape[-2:]
        (out_h, out_w), mode = self.size, self.interpolation
        A_y, A_x = [], []
        for _, (top, left, h, w, flip), _ in items:
            A_y.append(resize_weights(H, int(top), int(h), out_h, mode))
            a_x = resize_weights(W, int(left), int(w), out_w, mode)
            A_x.append(a_x.flip(0) if flip else a_x)
        labels = torch.tensor([label for _, _, label in items])
        return self.apply(images, torch.stack(A_y), torch.stack(A_x)), labels

    def apply(self, images: torch.Tensor, A_y: torch.Tensor, A_x: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, C, H, W), row weights A_y (B, H', H) and column weights A_x (B, W', W) (flipped
        images' reversed) -> the normalised batch (B, C', H', W'), on the images' device."""
        x = images.float() / 255  # (B, C, H, W) in [0, 1]
        Y = A_y[:, None] @ x @ A_x.transpose(1, 2)[:, None]  # (B, C, H', W')
        Y = Y.clamp_(0, 1)  # bicubic overshoot clipped, as in uint8 images
        if self.channels is not None:
            Y = self.channels(Y)
        if self.mean_std[0].device != Y.device:  # moved once: v2.Normalize's per-call copy would block on CUDA
            self.mean_std = [v.to(Y.device) for v in self.mean_std]
        mean, std = self.mean_std
        return Y.sub(mean).div_(std)  # v2.Normalize's arithmetic


def batched_training_data(
    dataset: Dataset, cfg: DataConfig, data_channels: int, crop_scale: tuple[float, float], hflip: bool, seed: int
) -> tuple[SeededCrops, Callable[[list[Any]], Batch]] | None:
    """(dataset, collate) of the batched path for an inception crop and flip, or None where `dataset` is
    not in memory."""
    images = in_memory(dataset)
    if images is None:
        return None
    crop = v2.RandomResizedCrop(cfg.img_size, scale=crop_scale)  # only its make_params is used
    return SeededCrops(images, crop, hflip, seed), CropResizeFlip(cfg, data_channels)


class TransformBatch:
    """Collates (image, label) items by stacking them and applying a deterministic `transform` once."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, items: list[tuple[torch.Tensor, int]]) -> Batch:
        images = torch.stack([torch.as_tensor(image) for image, _ in items])
        return self.transform(images), torch.tensor([label for _, label in items])
