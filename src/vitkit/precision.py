"""Numeric precision of a forward pass: fp32, or bf16/fp16 autocast (mixed precision)."""

from __future__ import annotations

import contextlib
import copy
from typing import Iterable, Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """The autocast context for `precision` on `device`'s type; fp32 runs as is."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}; expected fp32, bf16 or fp16")
    return torch.autocast(device.type, dtype=DTYPES[precision])


@torch.inference_mode()
def top1_agreement(model: torch.nn.Module, batches: Iterable[torch.Tensor], dtype: torch.dtype = torch.bfloat16) -> dict:
    """How often `model` with its weights cast to `dtype` picks the same class as in fp32, over the images
    (B, C, H, W) of `batches`: {"agreement", "n", "max_abs_logit_diff"}. `model` itself is left in fp32."""
    low = copy.deepcopy(model).to(dtype).eval()
    model.eval()
    same, n, worst = 0, 0, 0.0
    for images in batches:
        reference, approx = model(images.float()), low(images.to(dtype)).float()
        same += int((reference.argmax(-1) == approx.argmax(-1)).sum())
        n += len(images)
        worst = max(worst, float((reference - approx).abs().max()))
    return {"agreement": same / max(n, 1), "n": n, "max_abs_logit_diff": worst}
