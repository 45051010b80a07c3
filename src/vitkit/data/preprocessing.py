"""The preprocessing record: what the data pipeline needs to know about a model (timm's "data config").

Every model family's config gives one through `config.data_config`; the pipeline takes it, or anything
with the same attributes, and imports nothing from `vitkit.models`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataConfig:
    """Input size, channels and normalisation the weights expect; resize = img_size / crop_pct for evaluation."""

    img_size: tuple[int, int]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    interpolation: str = "bicubic"


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
