"""Real photographs for checks and calibration: scikit-image's sample images, as a model expects them.

ONNX exports are checked on SAMPLE_PHOTOS; the random-weight models `vitkit bench` quantises are
calibrated on CALIBRATION_PHOTOS, none of which the check sees.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .preprocessing import DataConfig

SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee")
CALIBRATION_PHOTOS = ("rocket", "immunohistochemistry", "hubble_deep_field", "retina", "colorwheel")


def sample_images(
    cfg: DataConfig, img_size: int | tuple[int, int] | None = None, names: Sequence[str] = SAMPLE_PHOTOS
) -> torch.Tensor:
    """scikit-image's photographs `names` (astronaut, chelsea and coffee), resized to the model's input and
    normalised with its mean/std: -> (len(names), C, H, W) float32. One-channel models get the grey level."""
    try:
        from skimage import data
    except ImportError:
        raise ValueError("real sample images need scikit-image: pip install scikit-image") from None
    if cfg.in_chans not in (1, 3):
        raise ValueError(f"no sample photographs for {cfg.in_chans}-channel inputs; pass check_images")
    size = cfg.img_size if img_size is None else (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    photos = [torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float() / 255 for name in names]
    x = torch.stack([F.interpolate(p[None], size=size, mode="bicubic", antialias=True)[0] for p in photos])
    x = x.clamp(0, 1)  # (N, 3, H, W) in [0, 1]
    if cfg.in_chans == 1:
        x = x.mean(dim=1, keepdim=True)
    mean = torch.tensor(cfg.mean).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std).view(1, -1, 1, 1)
    return (x - mean) / std


def photo_batches(cfg: DataConfig, names: Sequence[str] = CALIBRATION_PHOTOS) -> list[torch.Tensor]:
    """Photographs `names` and their mirror images, as the model expects them: [(2 · len(names), C, H, W)].
    The default calibration of the random-weight models `vitkit bench` measures."""
    photos = sample_images(cfg, names=names)
    return [torch.cat([photos, photos.flip(-1)])]
