"""The device-resident feed: a dataset held in memory trained on without a loader (airbench's way).

The uint8 images (N, C, H, W) and labels (N,) move to the training device once. Each micro-batch is then
a gather and two batched matrix products on that device: no loader workers, no host-to-device copy a step.
What it keeps of the loader's contract (vitkit.train.feed):

- the order: each epoch's indices are the loader's own (ResumableSampler: a permutation from (seed, epoch),
  this process's share of it), so a run resumed mid-epoch continues with the same images;
- the augmentation: vitkit.data.batched's inception crop, resize and flip (`CropResizeFlip.apply`, the same
  arithmetic: given the same boxes, the same batch bit for bit), Mixup/CutMix and label smoothing after it
  in the loop, all batched tensor operations on the device;
- every image's crop and flip is a function of (seed, epoch, index): the epoch's boxes for all N images are
  drawn at once, vectorised, from a CPU generator seeded by (seed, epoch), so CPU and GPU runs draw the same.

The one difference: the loader draws each box with torchvision's own `make_params` from a generator seeded
per image, in Python, item by item; with the collation around it that holds its batched path to ~8,400
images/s on a CPU thread (benchmarks/device_feed.py), 7 s a Fashion-MNIST epoch, far longer than the epoch's
steps take on a GPU.
Here the same rule (RandomResizedCrop's ten tries, then its centre-crop fallback) runs on all N images at
once, so the boxes follow the same distribution but are other draws: a device-fed run is a run of its own,
reproducible and resumable like the loader's, not the loader run's twin (except where the augmentation
draws nothing, e.g. crop_scale (1, 1) without flips, where the two feeds give the same batches).
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Literal

import torch
from torch.utils.data import Dataset

from ..data import DataSource, ResumableSampler, TensorImages, mix_seed
from ..data.batched import Batch, CropResizeFlip, in_memory, resize_weights
from ..data.preprocessing import DataConfig
from ..data.streaming import StreamedSplit
from ..evaluate import eval_loader
from . import distributed
from .config import TrainConfig

FeedKind = Literal["auto", "device", "loader"]
RATIO = (3 / 4, 4 / 3)  # v2.RandomResizedCrop's default aspect-ratio range
_TRIES = 10  # RandomResizedCrop's tries before its centre-crop fallback
_CROP_STREAM = 1 << 33  # the epoch's box draws: a generator apart from the images' (seed, epoch, index) ones
_MAX_TABLE = 1 << 26  # interpolation-table elements (256 MB): larger images stay on the loader
DEVICE_SHARE = 0.5  # of the device's free memory that the training images may take


def draw_boxes(n: int, height: int, width: int, scale: tuple[float, float], hflip: bool,
               generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """(n, 5) long: top, left, height, width, flip of n inception crops drawn as v2.RandomResizedCrop and
    v2.RandomHorizontalFlip draw them (area fraction in `scale`, log-uniform aspect ratio in RATIO, ten
    tries then the centre crop), all at once."""
    u = torch.rand(n, 2 * _TRIES + 3, generator=generator, dtype=torch.float64)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, :_TRIES])
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, _TRIES : 2 * _TRIES])
    w, h = torch.sqrt(area * aspect).round().long(), torch.sqrt(area / aspect).round().long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (n, tries)
    first = ok.long().argmax(dim=1, keepdim=True)
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], ok.any(dim=1)
    top = (u[:, -3] * (height - h + 1)).long().clamp(max=height - h)
    left = (u[:, -2] * (width - w + 1)).long().clamp(max=width - w)
    fallback = _centre_crop(height, width)
    top, left = top.where(found, fallback[0]), left.where(found, fallback[1])
    h, w = h.where(found, fallback[2]), w.where(found, fallback[3])
    flip = (u[:, -1] < 0.5) & hflip
    return torch.stack([top, left, h, w, flip.long()], dim=1)


def _centre_crop(height: int, width: int) -> tuple[int, int, int, int]:
    """RandomResizedCrop's fallback after ten failed tries: the whole image, clipped to RATIO."""
    in_ratio = width / height
    if in_ratio < min(RATIO):
        w, h = width, int(round(width / min(RATIO)))
    elif in_ratio > max(RATIO):
        h, w = height, int(round(height * max(RATIO)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_table(size: int, out: int, interpolation: str) -> torch.Tensor:
    """(size, size + 1, out, size): [start, length] holds `resize_weights(size, start, length, out)`, the
    weights of every crop of a line (zeros where start + length > size)."""
    table = torch.zeros(size, size + 1, out, size)
    for start in range(size):
        for length in range(1, size - start + 1):
            table[start, length] = resize_weights(size, start, length, out, interpolation)
    return table


class DeviceFeed:
    """The micro-batches (images (b, C', H', W') normalised, labels (b,)) of this process, made on the
    device from uint8 images held there; the interface of vitkit.train.feed.Feed."""

    workers, augmentation, reason = 0, "device", ""

    def __init__(self, images: TensorImages, data_cfg: DataConfig, data_channels: int, cfg: TrainConfig,
                 procs: distributed.Processes, micro: int, per_step: int) -> None:  # fmt: skip
        device, recipe = procs.device, cfg.recipe
        self.x, self.y = images.images.to(device), images.labels.to(device)  # once: uint8 (N, C, H, W), (N,)
        self.sampler = ResumableSampler(images, procs.world_size, procs.rank, shuffle=True, seed=cfg.seed,
                                        batch=micro)  # fmt: skip
        self.micro, self.per_step, self.seed = micro, per_step, cfg.seed
        self.steps_per_epoch = self.sampler.num_samples // (micro * per_step)
        self.images = len(images)
        self.scale, self.hflip = recipe.crop_scale, recipe.hflip
        self.collate = CropResizeFlip(data_cfg, data_channels)
        (out_h, out_w), mode = data_cfg.img_size, data_cfg.interpolation
        H, W = self.x.shape[-2:]
        self.rows = resize_table(H, out_h, mode).to(device)
        self.cols = resize_table(W, out_w, mode).to(device)
        self._boxes: tuple[int, torch.Tensor] | None = None

    def boxes(self, epoch: int) -> torch.Tensor:
        """(N, 5) on the device: every image's crop and flip in `epoch` (a function of (seed, epoch) only)."""
        if self._boxes is None or self._boxes[0] != epoch:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, _CROP_STREAM))
            H, W = self.x.shape[-2:]
            boxes = draw_boxes(len(self.x), H, W, self.scale, self.hflip, g)
            self._boxes = epoch, _to(boxes, self.x.device)
        return self._boxes[1]

    def batch(self, index: torch.Tensor, boxes: torch.Tensor) -> Batch:
        """The images at `index` (b,) cropped, resized and flipped by their `boxes` (b, 5), and their labels."""
        top, left, h, w, flip = boxes.unbind(1)
        A_y, A_x = self.rows[top, h], self.cols[left, w]  # (b, H', H), (b, W', W)
        A_x = torch.where(flip.bool()[:, None, None], A_x.flip(1), A_x)
        return self.collate.apply(self.x[index], A_y, A_x), self.y[index]

    def epoch(self, epoch: int, step: int) -> Iterator[Batch]:
        """The micro-batches of `epoch` from its `step`-th step on (the last partial micro-batch dropped)."""
        self.sampler.set_position(epoch, step * self.per_step)
        order = _to(torch.tensor(list(self.sampler), dtype=torch.long), self.x.device)  # one copy an epoch
        boxes = self.boxes(epoch)
        for k in range(len(order) // self.micro):
            index = order[k * self.micro : (k + 1) * self.micro]
            yield self.batch(index, boxes[index])

    def skipped(self, procs: distributed.Processes) -> int:
        return 0


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device` without waiting for the GPU's queue (a copy from pageable memory would)."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def _device_bytes(images: TensorImages) -> int:
    return images.images.numel() * images.images.element_size() + images.labels.numel() * 8


def choose_feed(kind: FeedKind, train_set: Dataset | StreamedSplit, cfg: TrainConfig,
                device: torch.device) -> tuple[bool, str]:  # fmt: skip
    """(whether to feed from the device, why): `auto` takes it on CUDA where the training images are in
    memory, the augmentation is crop and flip only and they fit; `device` raises a one-line ValueError
    naming the alternative where it cannot be had."""
    recipe = cfg.recipe
    if kind == "loader":
        return False, "--feed loader"
    if isinstance(train_set, StreamedSplit):
        return _refuse(kind, f"{cfg.data} is streamed from shards, not held in memory")
    images = in_memory(train_set)
    if images is None:
        return _refuse(kind, f"{cfg.data}'s training images are not held in memory as uint8 tensors")
    if recipe.randaugment is not None or recipe.random_erasing > 0 or recipe.crop_padding is not None:
        return _refuse(kind, "the recipe's RandAugment, random erasing or crop_padding run per image")
    H, W = images.images.shape[-2:]
    if max(H, W) ** 4 > _MAX_TABLE:
        return _refuse(kind, f"its {H}x{W} images need interpolation tables over {_MAX_TABLE * 4 >> 20} MB")
    need = _device_bytes(images)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        if need > DEVICE_SHARE * free:
            return _refuse(kind, f"the training images take {need / 2**30:.1f} GiB, more than half of the "
                                 f"{free / 2**30:.1f} GiB free on {device}")  # fmt: skip
    elif kind == "auto":
        return False, "on the CPU the loader is the default"
    return True, f"{len(images)} images ({need / 2**20:.0f} MB) held on {device}"


def _refuse(kind: FeedKind, why: str) -> tuple[bool, str]:
    if kind == "device":
        raise ValueError(f"--feed device: {why}; use --feed loader")
    return False, why


def device_feed(data: DataSource, train_set: Dataset, data_cfg: DataConfig, cfg: TrainConfig,
                procs: distributed.Processes, micro: int, per_step: int) -> DeviceFeed:  # fmt: skip
    images = in_memory(train_set)
    assert images is not None  # choose_feed said so
    return DeviceFeed(images, data_cfg, data.channels, cfg, procs, micro, per_step)


class DeviceBatches(list):
    """The evaluation batches (images (B, C', H', W') as the model expects them, labels (B,)), transformed
    once and held on the device: every evaluation is then the model's forward passes alone."""

    def __init__(self, dataset: Dataset, data_cfg: DataConfig, data_channels: int, device: torch.device,
                 batch_size: int = 1024) -> None:  # fmt: skip
        loader = eval_loader(dataset, data_cfg, data_channels, batch_size=batch_size)
        super().__init__((x.to(device), y.to(device)) for x, y in loader)
        self.dataset = dataset


def eval_batches(dataset: Dataset, data_cfg: DataConfig, data_channels: int, device: torch.device,
                 on_device: bool, workers: int) -> Any:  # fmt: skip
    """What the training loop evaluates on: with the device feed, the evaluation split transformed once and
    held on the device (it is deterministic); else the loader of vitkit.evaluate."""
    if on_device and in_memory(dataset) is not None:
        return DeviceBatches(dataset, data_cfg, data_channels, device)
    return eval_loader(dataset, data_cfg, data_channels, batch_size=256, workers=workers)
