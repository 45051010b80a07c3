"""Numeric precision of a forward pass: fp32, or bf16/fp16 autocast (mixed precision)."""

from __future__ import annotations

import contextlib
import copy
import itertools
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
def top1_agreement(
    model: torch.nn.Module,
    batches: Iterable[torch.Tensor],
    dtype: torch.dtype = torch.bfloat16,
    labels: Iterable[torch.Tensor] | None = None,
) -> dict:
    """How often `model` with its weights cast to `dtype` picks the same class as in fp32, over the images
    (B, C, H, W) of `batches`: {"agreement", "n", "max_abs_logit_diff"}; with the `labels` (B,) of each
    batch, also both top-1 accuracies ("fp32_top1", "low_top1"). `model` itself is left in fp32."""
    low = copy.deepcopy(model).to(dtype).eval()
    model.eval()
    same, n, worst, right, low_right = 0, 0, 0.0, 0, 0
    for images, truth in zip(batches, labels if labels is not None else itertools.repeat(None)):
        reference, approx = model(images.float()), low(images.to(dtype)).float()
        picked, low_picked = reference.argmax(-1), approx.argmax(-1)
        same += int((picked == low_picked).sum())
        n += len(images)
        worst = max(worst, float((reference - approx).abs().max()))
        if truth is not None:
            right, low_right = right + int((picked == truth).sum()), low_right + int((low_picked == truth).sum())
    result = {"agreement": same / max(n, 1), "n": n, "max_abs_logit_diff": worst}
    if labels is not None:
        result.update(fp32_top1=right / max(n, 1), low_top1=low_right / max(n, 1))
    return result
