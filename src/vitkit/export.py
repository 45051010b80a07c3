"""ONNX export, fp32 or int8, checked against PyTorch on real images before the file is put in place.

`torch.onnx.export`'s TorchScript exporter is used: the torch.export-based one needs the
`onnxscript` package, which vitkit does not depend on. The batch axis is dynamic; the image size is
fixed at export time (the position embeddings are resampled, if at all, before tracing).

The file describes itself, so that a client needs nothing else (docs/export.md): input "images" (B, C, H, W),
outputs "logits" and "probabilities" (B, classes), and in metadata_props (each value JSON text) the class
names, the input size and layout, and the preprocessing of `vitkit predict` (DataConfig.describe: the resize
rule, crop, interpolation, mean and std per channel).

int8: the fp32 export, then ONNX Runtime's static quantisation in QDQ format, calibrated on a few hundred
training images; the file runs in ONNX Runtime and in OpenVINO. Its weights are 7-bit by default
(ONNX Runtime's `reduce_range`): on a CPU without VNNI the int8 dot products run through 16-bit
intermediates (x86's pmaddubsw) that 8-bit weights can saturate, which is why ONNX Runtime and OpenVINO
recommend 7-bit weights there; with them the file is equally close to fp32 on every x86-64 CPU.
`--int8-full-range` keeps 8-bit weights, for deployments on VNNI/AMX CPUs only (docs/int8.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoints.io import atomic_write
from .checkpoints.metadata import checkpoint_classes, class_names
from .data.photos import sample_images
from .models.config import to_2tuple
from .quantize import calibration_batches, logit_fidelity
from .version import __version__

INPUT_NAME, LOGITS_NAME, PROBABILITIES_NAME = "images", "logits", "probabilities"
FEATURES_NAME = "features"  # the one output of a model without a head (num_classes=0)
MIN_COSINE = 0.99  # the int8 ONNX file is written only if every check image's logits are this close to fp32


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ValueError("ONNX export is checked with onnxruntime: pip install 'vitkit[onnx]'") from None
    return onnxruntime


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ValueError("ONNX export writes its metadata with onnx: pip install 'vitkit[onnx]'") from None
    return onnx


class _Outputs(nn.Module):
    """The exported graph: images (B, C, H, W) -> (logits (B, K), probabilities (B, K)), or the features
    (B, D) of a model without a head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return (out, out.softmax(dim=-1)) if self.model.config.num_classes else out


def output_names(cfg: Any) -> list[str]:
    """The names of an exported file's outputs, in order (the first is always the model's own output)."""
    return [LOGITS_NAME, PROBABILITIES_NAME] if cfg.num_classes else [FEATURES_NAME]


def onnx_metadata(cfg: Any, classes: list[str] | None = None) -> dict[str, str]:
    """The metadata_props of an exported file, each value JSON text: `model`, `classes` (`vitkit predict`'s
    names: those given, else class_0, ...), `input_size` [C, H, W], `layout`, `outputs`, and the evaluation
    preprocessing (DataConfig.describe: resize, resize_mode, crop, crop_pct, interpolation, channels, mean, std)."""
    props = {
        "model": cfg.name, "classes": class_names(cfg.num_classes, classes) if cfg.num_classes else [],
        "input_size": [cfg.in_chans, *cfg.img_size], "layout": "NCHW", "outputs": output_names(cfg),
        **cfg.data_config.describe(), "vitkit_version": __version__,
    }  # fmt: skip
    return {key: json.dumps(value) for key, value in props.items()}


def write_metadata(path: str | os.PathLike, props: dict[str, str]) -> None:
    """Set the ONNX file's metadata_props to `props` (in place)."""
    onnx = _onnx()
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(path))


def _torch_export(model: nn.Module, example: torch.Tensor, path: str, opset: int) -> None:
    outputs = output_names(model.config)
    with warnings.catch_warnings():
        # The exporter warns that it is the legacy one, and that the input-size checks become constants
        # in the trace: both expected, since the image size is fixed at export.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(
            # the wrapper in the model's own mode: the exporter restores the mode it found, recursively
            _Outputs(model).train(model.training), (example,), path, dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=[INPUT_NAME], output_names=outputs,
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
        )  # fmt: skip


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    img_size: int | tuple[int, int] | None = None,
    opset: int = 17,
    check_images: torch.Tensor | None = None,
    atol: float = 1e-4,
    classes: list[str] | None = None,
) -> dict[str, Any]:
    """Export `model` (fp32) to ONNX at `path`, input "images" (B, C, H, W) -> "logits" and "probabilities"
    (B, classes), described in its metadata_props (`onnx_metadata`, with class names `classes`).

    Before the file is renamed into place, onnxruntime runs it on `check_images` (B, C, H, W),
    normalised; by default the three scikit-image photographs of `sample_images`, and the largest
    absolute difference from PyTorch must be at most `atol`. Returns a report: path, opset, img_size,
    num_images, max_abs_diff, top1_agreement, size_mb.
    """
    ort = _onnxruntime()
    cfg = model.config
    size = to_2tuple(img_size) if img_size is not None else cfg.img_size
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("export_onnx exports fp32 models; call model.float() first")
    images = (check_images if check_images is not None else sample_images(cfg.data_config, size)).float().cpu()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    report: dict[str, Any] = {}
    props = onnx_metadata(dataclasses.replace(cfg, img_size=size), classes)

    def write_and_check(tmp: str) -> None:
        _torch_export(model, torch.randn(2, cfg.in_chans, *size, device=device), tmp, opset)
        write_metadata(tmp, props)
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {INPUT_NAME: images.numpy()})[0])
        with torch.inference_mode():
            want = model(images.to(device)).float().cpu()
        diff = (got - want).abs().max().item()
        if not diff <= atol:
            raise RuntimeError(
                f"the ONNX export of {cfg.name or 'the model'} differs from PyTorch by {diff:.3g} > {atol:g} "
                f"on {len(images)} images; {path} was not written"
            )
        agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item() if want.dim() == 2 else float("nan")
        report.update(max_abs_diff=diff, top1_agreement=agree)

    try:
        atomic_write(path, write_and_check)
    finally:
        model.train(was_training)
    return {
        "path": str(path), "opset": opset, "img_size": list(size), "num_images": len(images),
        **report, "size_mb": Path(path).stat().st_size / 2**20,
    }  # fmt: skip


# ---- int8 ------------------------------------------------------------------------------------------
def quantize_onnx(
    fp32_path: str, out_path: str, calibration: Iterable[torch.Tensor], full_range: bool = False
) -> None:
    """ONNX Runtime's static quantisation of the fp32 file at `fp32_path`, QDQ format: int8 weights per
    output channel (7-bit unless `full_range`) and uint8 activations for MatMul, Gemm and Conv, calibrated
    (min-max) on the batches (B, C, H, W) of `calibration`."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ValueError("int8 ONNX export needs onnxruntime: pip install 'vitkit[onnx]'") from None

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            images = next(self.batches, None)
            return None if images is None else {INPUT_NAME: images.float().numpy()}

    with tempfile.TemporaryDirectory(prefix="vitkit-int8-") as tmp:
        prepared = str(Path(tmp) / "prepared.onnx")
        quant_pre_process(fp32_path, prepared)  # shape inference and graph clean-up, as quantize_static wants
        quantize_static(
            prepared, out_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=not full_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm", "Conv"],
        )  # fmt: skip


def int8_onnx_images(spec: str | None, config: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(calibration batches from dataset `spec`'s training split, 64 check images (64, C, H, W) from its test split)."""
    if not spec:
        raise ValueError("--int8 needs calibration images: --calibrate DATASET (its training split)")
    return calibration_batches(spec, config), torch.cat(calibration_batches(spec, config, "test", num_images=64))


def export_onnx_int8(
    model: nn.Module,
    path: str | os.PathLike,
    calibration: Sequence[torch.Tensor],
    check_images: torch.Tensor,
    img_size: int | tuple[int, int] | None = None,
    opset: int = 17,
    min_cosine: float = MIN_COSINE,
    full_range: bool = False,
    classes: list[str] | None = None,
) -> dict[str, Any]:
    """Export `model` to an int8 (QDQ) ONNX file at `path`, calibrated on `calibration` [(B, C, H, W)], with
    7-bit weights (portable to CPUs without VNNI) unless `full_range` (8-bit: for VNNI/AMX CPUs only).

    The fp32 export is checked against PyTorch first (export_onnx); then onnxruntime runs the int8 file on
    `check_images` (B, C, H, W), images the calibration did not see, and every image's logits must have a
    cosine of at least `min_cosine` with PyTorch's fp32 logits before the file is put in place. Returns a
    report: path, opset, img_size, num_images, weight_bits, logit_cosine_vs_fp32, top1_agreement_vs_fp32,
    size_mb, fp32_size_mb. The file carries the fp32 export's outputs and metadata_props.
    """
    ort = _onnxruntime()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vitkit-int8-") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", img_size=img_size, opset=opset, classes=classes)

        def write_and_check(out: str) -> None:
            quantize_onnx(fp32["path"], out, calibration, full_range)
            write_metadata(out, {p.key: p.value for p in _onnx().load(fp32["path"]).metadata_props})
            session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {INPUT_NAME: check_images.float().numpy()})[0])
            with torch.inference_mode():
                want = model(check_images.to(next(model.parameters()).device)).float().cpu()
            report.update(logit_fidelity(want, got))
            if not report["logit_cosine_vs_fp32"] >= min_cosine:
                raise RuntimeError(
                    f"the int8 ONNX export's logits have a cosine of {report['logit_cosine_vs_fp32']:.4f} < "
                    f"{min_cosine} with fp32 on {len(check_images)} images; {path} was not written"
                )

        atomic_write(path, write_and_check)
    return {
        "path": str(path), "opset": opset, "img_size": fp32["img_size"], "num_images": len(check_images),
        "weight_bits": 8 if full_range else 7, **report, "size_mb": Path(path).stat().st_size / 2**20,
        "fp32_size_mb": fp32["size_mb"],
    }  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """The `vitkit` subcommand (its parser: vitkit.commands)."""
    from .checkpoints.load import load

    model = load(args.checkpoint, **({"img_size": args.img_size} if args.img_size else {}))
    classes = checkpoint_classes(args.checkpoint)
    if args.int8_full_range and not args.int8:
        raise ValueError("--int8-full-range is an option of --int8")
    if args.int8:
        images = int8_onnx_images(args.calibrate, model.config)
        report = export_onnx_int8(model, args.out, *images, opset=args.opset, full_range=args.int8_full_range,
                                  classes=classes)
        weights = ("8-bit weights: for CPUs with VNNI or AMX only, less accurate elsewhere" if args.int8_full_range
                   else "7-bit weights: as accurate on CPUs without VNNI")  # fmt: skip
        print(
            f"wrote {report['path']} (int8, {weights}; {report['size_mb']:.1f} MB, fp32 {report['fp32_size_mb']:.1f} MB); "
            f"onnxruntime int8 vs PyTorch fp32 on {report['num_images']} test images: logit cosine >= "
            f"{report['logit_cosine_vs_fp32']:.4f}, top-1 agreement {report['top1_agreement_vs_fp32']:.1%}",
            file=sys.stderr,
        )
    else:
        report = export_onnx(model, args.out, opset=args.opset, classes=classes)
        print(
            f"wrote {report['path']} ({report['size_mb']:.1f} MB, opset {report['opset']}); onnxruntime vs PyTorch on "
            f"{report['num_images']} photographs: max |diff| {report['max_abs_diff']:.2e}, "
            f"top-1 agreement {report['top1_agreement']:.0%}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(report))
    return 0
