"""ONNX export, checked against PyTorch on real photographs before the file is put in place.

`torch.onnx.export`'s TorchScript exporter is used: the torch.export-based one needs the
`onnxscript` package, which vitkit does not depend on. The batch axis is dynamic; the image size is
fixed at export time (the position embeddings are resampled, if at all, before tracing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints.io import atomic_write
from .data.preprocessing import DataConfig
from .models.config import to_2tuple

INPUT_NAME, OUTPUT_NAME = "images", "output"
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee")


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ValueError("ONNX export is checked with onnxruntime: pip install 'vitkit[onnx]'") from None
    return onnxruntime


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
    size = to_2tuple(img_size) if img_size is not None else cfg.img_size
    photos = [torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float() / 255 for name in names]
    x = torch.stack([F.interpolate(p[None], size=size, mode="bicubic", antialias=True)[0] for p in photos])
    x = x.clamp(0, 1)  # (N, 3, H, W) in [0, 1]
    if cfg.in_chans == 1:
        x = x.mean(dim=1, keepdim=True)
    mean = torch.tensor(cfg.mean).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std).view(1, -1, 1, 1)
    return (x - mean) / std


def _torch_export(model: nn.Module, example: torch.Tensor, path: str, opset: int) -> None:
    with warnings.catch_warnings():
        # The exporter warns that it is the legacy one, and that the input-size checks become constants
        # in the trace: both expected, since the image size is fixed at export.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(
            model, (example,), path, dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )  # fmt: skip


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    img_size: int | tuple[int, int] | None = None,
    opset: int = 17,
    check_images: torch.Tensor | None = None,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export `model` (fp32) to ONNX at `path`, input "images" (B, C, H, W) -> "output" (B, classes).

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

    def write_and_check(tmp: str) -> None:
        _torch_export(model, torch.randn(2, cfg.in_chans, *size, device=device), tmp, opset)
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


def _run(args: argparse.Namespace) -> int:
    from .checkpoints.load import load

    model = load(args.checkpoint, **({"img_size": args.img_size} if args.img_size else {}))
    if args.int8:
        from .quantize import export_onnx_int8, int8_onnx_images

        report = export_onnx_int8(model, args.out, *int8_onnx_images(args.calibrate, model.config), opset=args.opset)
        print(
            f"wrote {report['path']} (int8, {report['size_mb']:.1f} MB, fp32 {report['fp32_size_mb']:.1f} MB); "
            f"onnxruntime int8 vs PyTorch fp32 on {report['num_images']} test images: logit cosine >= "
            f"{report['logit_cosine_vs_fp32']:.4f}, top-1 agreement {report['top1_agreement_vs_fp32']:.1%}",
            file=sys.stderr,
        )
    else:
        report = export_onnx(model, args.out, opset=args.opset)
        print(
            f"wrote {report['path']} ({report['size_mb']:.1f} MB, opset {report['opset']}); onnxruntime vs PyTorch on "
            f"{report['num_images']} photographs: max |diff| {report['max_abs_diff']:.2e}, "
            f"top-1 agreement {report['top1_agreement']:.0%}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(report))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `vitkit export` subcommand."""
    p = sub.add_parser("export", help="export a checkpoint to ONNX, checked against PyTorch on real photographs")
    p.add_argument("--checkpoint", required=True, help="a checkpoint that carries its config (vitkit, Hugging Face)")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--int8", action="store_true", help="static int8 (QDQ) quantisation; needs --calibrate")
    p.add_argument("--calibrate", metavar="DATASET", help="--int8 calibration images: this dataset's training split")
    p.add_argument("--img-size", type=int, help="export at another resolution (position embeddings resampled)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    p.set_defaults(func=_run)
