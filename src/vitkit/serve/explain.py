"""The attention rollout of /v1/explain as a client draws it: the image as the model saw it and the heat
map, both PNG data URIs, and the rollout's numbers."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from ..analysis.plots import HEAT_CMAP, denormalise, heat_map


def _png_data_uri(pixels: np.ndarray) -> str:
    """(H, W), (H, W, 3) or (H, W, 4) uint8 -> a data:image/png;base64 URI."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def explanation(image: torch.Tensor, rollout: torch.Tensor, mean: Any, std: Any) -> dict[str, Any]:
    """image: (C, H, W) as the model saw it, rollout: (gh, gw) -> the input and the rollout as PNGs of
    (H, W) pixels, the heat map coloured with the analysis plots' colour map, and the rollout's numbers."""
    picture = denormalise(image[None], mean, std)[0]
    picture = picture.permute(1, 2, 0) if picture.shape[0] == 3 else picture[0]
    heat = colormaps[HEAT_CMAP](heat_map(rollout, tuple(image.shape[-2:])).numpy())  # (H, W, 4) in [0, 1]
    return {
        "input_png": _png_data_uri((picture.numpy() * 255).round().astype(np.uint8)),
        "overlay_png": _png_data_uri((heat * 255).round().astype(np.uint8)),
        "rollout": [[round(v, 6) for v in row] for row in rollout.tolist()],
    }
