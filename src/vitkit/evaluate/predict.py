"""Top-k predictions for image files, with the class names a training run stores in its checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..checkpoints.metadata import class_names
from ..data import eval_transform
from ..data.images import ImageDecodeError, Source, open_image


def topk_entries(probs: torch.Tensor, names: list[str], k: int) -> list[dict[str, Any]]:
    """The one result schema of vitkit's predictions (`vitkit predict --json`, /v1/predict, the page):
    probs (K,) -> the min(k, K) most probable classes, best first, each {"label", "index", "prob"}."""
    values, indices = probs.topk(min(k, len(names)))
    return [{"label": names[i], "index": i, "prob": p} for p, i in zip(values.tolist(), indices.tolist())]


@dataclass
class Prediction:
    """The top classes of one image, best first (topk_entries); or why it could not be read."""

    image: str
    topk: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "topk": self.topk}


def read_image(source: Source, name: str | None = None) -> Image.Image:
    """An image file as `vitkit predict` and the server read it: RGB, or L for a grayscale file (so that a
    1-channel model sees the file's own grey levels); ImageDecodeError (naming it) if it cannot be read."""
    return open_image(source, name=name, keep_gray=True)


class ImageTransform:
    """What every image read by `read_image` goes through before the model: the checkpoint's eval transform
    for its number of channels. PIL image (L or RGB) -> (C, H, W) float, resized, centre-cropped and
    normalised as the config says."""

    def __init__(self, cfg: Any) -> None:
        self.by_channels = {c: eval_transform(cfg.data_config, data_channels=c) for c in (1, 3)}

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.by_channels[len(image.getbands())](image)


def image_transform(cfg: Any) -> ImageTransform:
    """The transform of `read_image`'s images for the model of config `cfg` (see ImageTransform)."""
    return ImageTransform(cfg)


def probabilities(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """images: (B, C, H, W) -> softmax probabilities (B, K) in float32, on the model's device."""
    device = next(model.parameters()).device
    return model(images.to(device)).float().softmax(dim=-1)


@torch.no_grad()
def predict_files(
    model: nn.Module,
    paths: list[str],
    classes: list[str] | None = None,
    topk: int = 5,
    batch_size: int = 64,
) -> list[Prediction]:
    """Classify each image file (resized and centre-cropped as the model's config says); a file that
    cannot be decoded gets a Prediction with `error` set, the others are still classified."""
    cfg = model.config
    names = class_names(cfg.num_classes, classes)
    transform = image_transform(cfg)
    model.eval()
    results, batch = [], []
    for path in paths:
        try:
            results.append(Prediction(path))
            batch.append((results[-1], transform(read_image(path))))
        except ImageDecodeError as e:
            results[-1].error = e.reason
    for start in range(0, len(batch), batch_size):
        chunk = batch[start : start + batch_size]
        probs = probabilities(model, torch.stack([x for _, x in chunk]))
        for (pred, _), row in zip(chunk, probs):
            pred.topk = topk_entries(row, names, topk)
    return results
