"""Preprocessing with torchvision.transforms.v2: the paper's inception crop and flip, DeiT's RandAugment,
random erasing and Mixup/CutMix, normalisation to the range the weights expect ([-1, 1] in the paper).

Per-image transforms map a PIL image or a uint8 (C, H, W) image to a float (C', H', W') tensor;
`batch_mix` maps a batch (B, C, H, W) with labels (B,) to mixed images and soft labels (B, K).
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .preprocessing import DataConfig, per_channel, resize_size


def match_channels(data_channels: int, model_channels: int) -> list[v2.Transform]:
    """Grayscale data into an RGB model repeats the channel; RGB data into a grayscale model takes luma."""
    if data_channels == model_channels:
        return []
    if model_channels in (1, 3):
        return [v2.Grayscale(num_output_channels=model_channels)]
    raise ValueError(f"cannot feed {data_channels}-channel images to a model with in_chans={model_channels}")


def normalize(cfg: DataConfig) -> v2.Normalize:
    """(x - mean) / std per channel, as the weights expect (x in [0, 1])."""
    return v2.Normalize(per_channel(cfg.mean, cfg.in_chans), per_channel(cfg.std, cfg.in_chans))


def _finish(cfg: DataConfig, data_channels: int) -> list[v2.Transform]:
    return match_channels(data_channels, cfg.in_chans) + [v2.ToDtype(torch.float32, scale=True), normalize(cfg)]


def train_transform(
    cfg: DataConfig,
    data_channels: int,
    crop_scale: tuple[float, float] = (0.05, 1.0),
    hflip: bool = True,
    randaugment: tuple[int, int] | None = None,
    random_erasing: float = 0.0,
    crop_padding: int | None = None,
) -> v2.Compose:
    """Inception crop (area fraction in `crop_scale`) resized to cfg.img_size, or with `crop_padding`
    a random img_size crop of the image padded by that many zero pixels (shifts, no resampling: the
    usual augmentation of small datasets at their own resolution); optional horizontal flip,
    RandAugment(num_ops, magnitude), normalisation, random erasing with probability `random_erasing`."""
    interpolation = v2.InterpolationMode(cfg.interpolation)
    crop = (
        v2.RandomResizedCrop(cfg.img_size, scale=crop_scale, interpolation=interpolation, antialias=True)
        if crop_padding is None
        else v2.Compose([v2.Resize(cfg.img_size, interpolation=interpolation, antialias=True),
                         v2.RandomCrop(cfg.img_size, padding=crop_padding)])
    )  # fmt: skip
    ops: list[v2.Transform] = [v2.ToImage(), crop]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    if randaugment is not None:
        ops.append(v2.RandAugment(num_ops=randaugment[0], magnitude=randaugment[1]))
    ops += _finish(cfg, data_channels)
    if random_erasing > 0:
        ops.append(v2.RandomErasing(p=random_erasing))
    return v2.Compose(ops)


class ResizeKeepRatio(v2.Transform):
    """timm's ResizeKeepRatio, its evaluation resize for a non-square target: the image, its aspect kept,
    scaled to the smallest size that covers `size` (H, W), each side rounded."""

    def __init__(self, size: tuple[int, int], interpolation: v2.InterpolationMode) -> None:
        super().__init__()
        self.size, self.interpolation = size, interpolation

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        ratio = min(h / self.size[0], w / self.size[1])
        return {"size": [round(h / ratio), round(w / ratio)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.resize(inpt, params["size"], interpolation=self.interpolation, antialias=True)


def eval_resize(cfg: DataConfig) -> v2.Transform:
    """timm's evaluation resize (`create_transform`, crop mode "center"): the shorter side to
    floor(size / crop_pct), the aspect kept: torchvision's Resize with one number for a square size, else
    ResizeKeepRatio."""
    (h, w), interpolation = resize_size(cfg), v2.InterpolationMode(cfg.interpolation)
    if h == w:
        return v2.Resize(h, interpolation=interpolation, antialias=True)
    return ResizeKeepRatio((h, w), interpolation)


def eval_transform(cfg: DataConfig, data_channels: int) -> v2.Compose:
    """timm's evaluation transform: the shorter side resized to floor(img_size / crop_pct), a centre crop
    to img_size, normalisation. A PIL image is resized by PIL, as timm does (a uint8 tensor by torchvision,
    which can differ by a grey level); an image that is already img_size with crop_pct 1 is not resampled."""
    return v2.Compose([eval_resize(cfg), v2.CenterCrop(cfg.img_size), v2.ToImage(), *_finish(cfg, data_channels)])


def batch_mix(mixup: float, cutmix: float, num_classes: int) -> v2.Transform | None:
    """Mixup and/or CutMix with Beta(alpha, alpha) mixing weights, one of them chosen per batch (DeiT).
    (images (B, C, H, W), labels (B,)) -> (images, soft labels (B, num_classes)); None when both are off."""
    mixers = ([v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []) + (
        [v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else []
    )
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
