"""The configuration of a BiT ResNet-V2 classifier: one dataclass, serialisable to JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..data.preprocessing import HasDataConfig
from .config import MAX_WIDTH, check_fields, to_2tuple

# BiT's preprocessing: inputs scaled to [-1, 1] (timm's IMAGENET_INCEPTION_MEAN/STD), bilinear resizing.
BIT_MEAN, BIT_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def make_divisible(v: float, divisor: int = 8) -> int:
    """`v` rounded to a multiple of `divisor`, never more than 10% below it (timm's channel rounding)."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


@dataclass
class ResNetConfig(HasDataConfig):
    """ResNet-V2 of BiT: `layers` units per stage, stage widths `channels` × `width_factor` (R50x3: (3, 4, 6, 3), 3).

    `norm_groups` is GroupNorm's group count (BiT: 32; fewer for narrow CPU models). `dropout` applies
    before the head, `drop_path` is the stochastic depth of the last unit. `mean`, `std`, `crop_pct`
    and `interpolation` record the preprocessing the weights expect.
    """

    layers: tuple[int, ...] = (3, 4, 6, 3)
    width_factor: int = 1
    channels: tuple[int, ...] = (256, 512, 1024, 2048)
    stem_chs: int = 64
    norm_groups: int = 32
    in_chans: int = 3
    num_classes: int = 1000
    img_size: tuple[int, int] = (224, 224)
    dropout: float = 0.0
    drop_path: float = 0.0
    mean: tuple[float, ...] = BIT_MEAN
    std: tuple[float, ...] = BIT_STD
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    family = "resnet"

    def __post_init__(self) -> None:
        self.img_size = to_2tuple(self.img_size)
        self.layers, self.channels = tuple(int(n) for n in self.layers), tuple(int(c) for c in self.channels)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        self.validate()

    # ---- derived quantities -------------------------------------------------------------
    @property
    def stem_width(self) -> int:
        return make_divisible(self.stem_chs * self.width_factor)

    @property
    def widths(self) -> tuple[int, ...]:
        """Output channels of each stage."""
        return tuple(make_divisible(c * self.width_factor) for c in self.channels[: len(self.layers)])

    @property
    def num_features(self) -> int:
        return self.widths[-1]

    @property
    def stride(self) -> int:
        """Input pixels per position of the final feature map: the stem's 4, then 2 per later stage."""
        return 4 * 2 ** (len(self.layers) - 1)

    # ---- checks and (de)serialisation ---------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError, one line, for a configuration that cannot be built."""
        def bad(msg: str) -> None:
            raise ValueError(f"invalid ResNet config{f' {self.name!r}' if self.name else ''}: {msg}")

        for key in ("width_factor", "stem_chs", "norm_groups", "in_chans"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                bad(f"{key} must be a positive integer, got {value!r}")
        if not 1 <= len(self.layers) <= 4 or any(n <= 0 or n > 64 for n in self.layers):
            bad(f"layers must be 1 to 4 stages of 1..64 units, got {self.layers}")
        if len(self.channels) < len(self.layers) or min(self.channels) <= 0:
            bad(f"channels {self.channels} must give a positive width to each of the {len(self.layers)} stages")
        if self.num_classes < 0:
            bad(f"num_classes must be >= 0, got {self.num_classes}")
        if min(self.img_size) <= 0:
            bad(f"img_size must be positive, got {self.img_size}")
        if max(self.widths) > MAX_WIDTH:
            bad(f"stage widths {self.widths} are over {MAX_WIDTH}")
        grouped = sorted({w for w in self.widths} | {make_divisible(w / 4) for w in self.widths})
        if any(w % self.norm_groups for w in grouped):
            bad(f"norm_groups={self.norm_groups} does not divide every normalised width {grouped}")
        for key in ("dropout", "drop_path"):
            if not 0.0 <= getattr(self, key) < 1.0:
                bad(f"{key} must be in [0, 1), got {getattr(self, key)}")

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ResNetConfig":
        d = {k: v for k, v in d.items() if k != "family"}
        check_fields(cls, d, "ResNet config keys")
        return cls(**d)

    def replace(self, **overrides: Any) -> "ResNetConfig":
        return ResNetConfig.from_dict({**self.to_dict(), **overrides})
