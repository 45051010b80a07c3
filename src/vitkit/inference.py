"""A checkpoint made ready to run: `vitkit eval`, `predict`, `serve` and `analyze` load through
`load_for_inference`, and `vitkit bench` quantises its rows through `quantize_for_inference`.

Two rules live here and nowhere else:
- the device: the one asked for, else `hardware.default_device` (CUDA when present, CPU for int8);
- int8's calibration images: a few hundred of the training split of `calibrate`, else of the command's
  default (`calibrate_default`: eval's --data, the checkpoint's training data for serve, none for predict,
  which therefore needs --calibrate); with neither, a one-line ValueError. Only bench, whose models have
  random weights and no data, calibrates on photographs instead.

The checks come in the order of what the user can change: calibration images named, then the precision on
the device (`resolve_precision`: an unknown name, int8 off a VNNI/AMX CPU, ...), then the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .checkpoints.load import load
from .hardware import default_device
from .precision import InferencePrecision, Precision, PrecisionChoice, resolve_precision

if TYPE_CHECKING:
    from .quantize import Int8Model

__all__ = [
    "InferenceModel", "InferencePrecision", "calibration_dataset", "inference_device", "load_for_inference",
    "quantize_for_inference",
]  # fmt: skip


@dataclass(frozen=True)
class InferenceModel:
    """A loaded checkpoint: `model` (fp32 weights, eval mode, on its device), the precision `choice` made for
    it, and with int8 `int8`, `model` quantised (it takes fp32 images (B, C, H, W) and gives logits (B, K))."""

    model: nn.Module
    choice: PrecisionChoice
    int8: Int8Model | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def precision(self) -> Precision:
        """What the forward pass runs under (`precision.autocast`): fp32 for int8, whose model is quantised."""
        return "fp32" if self.int8 is not None else self.choice.precision  # type: ignore[return-value]

    @property
    def classifier(self) -> nn.Module:
        """What computes the logits: the int8 model, else `model`."""
        return self.int8 if self.int8 is not None else self.model


def inference_device(precision: str = "auto", device: str | None = None) -> tuple[str, PrecisionChoice]:
    """The device to run on (`device`, else CUDA when present, CPU for int8) and `precision` resolved there.
    Raises a one-line ValueError for a precision that is unknown or cannot run there."""
    device = device or default_device(precision)
    return device, resolve_precision(precision, device)


def calibration_dataset(precision: str, calibrate: str | None, calibrate_default: str | None = None) -> str | None:
    """The dataset whose training split calibrates int8: `calibrate`, else `calibrate_default`; None for any
    other precision. A one-line ValueError for int8 with neither (checked before any work)."""
    if precision != "int8":
        return None
    dataset = calibrate or calibrate_default
    if not dataset:
        raise ValueError("--precision int8 needs calibration images: --calibrate DATASET (its training split)")
    return dataset


def quantize_for_inference(
    model: nn.Module, dataset: str | None, root: str | os.PathLike | None = None, compile: bool = True
) -> Int8Model:
    """`model` (fp32, CPU) quantised to int8 (`vitkit.quantize`), calibrated on a few hundred training images
    of `dataset`; with None, on photographs (bench's random-weight models, which have no data)."""
    from .data.photos import photo_batches
    from .quantize import calibration_batches, quantize

    cfg = model.config
    images = calibration_batches(dataset, cfg, root=root) if dataset else photo_batches(cfg.data_config)
    return quantize(model, images, compile)


def load_for_inference(
    path: str | os.PathLike,
    device: str | None = None,
    precision: InferencePrecision = "auto",
    calibrate: str | None = None,
    *,
    calibrate_default: str | None = None,
    data_root: str | os.PathLike | None = None,
    compile: bool = True,
) -> InferenceModel:
    """The checkpoint at `path` on `device` (default: CUDA when present, CPU for int8), in eval mode, with
    `precision` resolved for it (`auto`: bf16 where native, else fp32). For int8, also quantised and
    calibrated on the training split of `calibrate`, else of `calibrate_default` (datasets found under
    `data_root`); compile=False runs the int8 graph eagerly (the same numbers, slowly)."""
    dataset = calibration_dataset(precision, calibrate, calibrate_default)
    device, choice = inference_device(precision, device)  # bad input fails before the checkpoint is read
    model = load(path).to(device).eval()
    int8 = quantize_for_inference(model, dataset, data_root, compile) if dataset else None
    return InferenceModel(model, choice, int8)
