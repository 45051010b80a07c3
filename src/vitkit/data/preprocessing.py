"""The preprocessing record: what the data pipeline needs to know about a model (timm's "data config").

Every model family's config gives one through `config.data_config`; the pipeline takes it, or anything
with the same attributes, and imports nothing from `vitkit.models`.

Evaluation resizes as timm's `create_transform` (and torchvision's presets) do: the image, its aspect kept,
is scaled so that its shorter side is `floor(size / crop_pct)`, then centre-cropped to the size.
`DataConfig.describe` states that rule for clients that preprocess themselves (/v1/model, ONNX metadata).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

# `describe()["resize_mode"]`: the evaluation resize keeps the aspect ratio and fits the shorter side (timm's
# "center" crop mode); for a non-square `resize` the image is scaled to the smallest size covering it.
RESIZE_MODE = "shorter_side"


def per_channel(values: Sequence[float], channels: int) -> list[float]:
    """Mean/std given for another number of channels (a 3-channel config on 1-channel inputs): the average."""
    if len(values) == channels:
        return list(values)
    return [sum(values) / len(values)] * channels


def resize_size(cfg: Any) -> tuple[int, int]:
    """(H, W) that the evaluation resize covers before the centre crop of a DataConfig (or anything with its
    attributes): floor(img_size / crop_pct), as timm's create_transform."""
    return (math.floor(cfg.img_size[0] / cfg.crop_pct), math.floor(cfg.img_size[1] / cfg.crop_pct))


@dataclass(frozen=True)
class DataConfig:
    """Input size, channels and normalisation the weights expect, and the evaluation resize (crop_pct)."""

    img_size: tuple[int, int]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    interpolation: str = "bicubic"

    def describe(self) -> dict[str, Any]:
        """The evaluation preprocessing as JSON-able data, for a client that runs it itself: resize (aspect
        kept, see RESIZE_MODE) with `interpolation`, centre crop to `crop` [H, W], then (x / 255 - mean) / std
        per channel with `channels` channels (mean and std given per channel)."""
        return {
            "resize": list(resize_size(self)), "resize_mode": RESIZE_MODE, "crop": list(self.img_size),
            "crop_pct": self.crop_pct, "interpolation": self.interpolation, "channels": self.in_chans,
            "mean": per_channel(self.mean, self.in_chans), "std": per_channel(self.std, self.in_chans),
        }  # fmt: skip


class HasDataConfig:
    """For model configs, which hold the fields of a DataConfig among their own."""

    img_size: tuple[int, int]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    interpolation: str

    @property
    def data_config(self) -> DataConfig:
        return DataConfig(self.img_size, self.in_chans, self.mean, self.std, self.crop_pct, self.interpolation)
