"""Static int8 inference on CPU, and int8 ONNX export.

PyTorch: torchao's PT2E flow. `torch.export` captures the model, the x86 inductor quantizer marks every
linear layer and convolution for int8 weights (per output channel) and int8 activations (per tensor),
a few hundred calibration images fix the activations' scales, and `torch.compile` with freezing lowers
the result to oneDNN's int8 kernels (VNNI, or AMX where the CPU has it). Chosen by measurement against
ONNX Runtime's static QDQ quantisation and OpenVINO (docs/int8.md).

ONNX: the fp32 export, then ONNX Runtime's static quantisation in QDQ format with the same calibration
images; the file runs in ONNX Runtime and in OpenVINO.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch._inductor import config as inductor_config
from torch.utils.data import Subset

# Inductor's int8 lowering copies a tensor the way torch advises against; harmless, and not the user's to fix.
warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning, "torch._inductor.mkldnn_lowerings")

CALIBRATION_IMAGES = 256  # what --calibrate DATASET draws from the training split
MIN_COSINE = 0.99  # the int8 ONNX file is written only if every check image's logits are this close to fp32
# ResNets and hybrids (weight-standardised convolutions, whose weights are computed at run time) are not yet checked.
SUPPORTED_FAMILIES = ("vit",)
# Scikit-image photographs the bench model is calibrated on: none of export.SAMPLE_PHOTOS, which it is checked on.
CALIBRATION_PHOTOS = ("rocket", "immunohistochemistry", "hubble_deep_field", "retina", "colorwheel")


def check_int8_support(model: nn.Module) -> None:
    """Raise a one-line ValueError where int8 inference cannot run: torchao missing, the model on a GPU,
    a CPU without int8 dot-product instructions (AVX512-VNNI or AMX), a model family not supported."""
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ValueError("int8 inference needs torchao: pip install 'vitkit[int8]'") from None
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"int8 inference runs on CPU only; the model is on {device} (use --precision bf16 there)")
    if not (torch.cpu._is_vnni_supported() or torch.cpu._is_amx_tile_supported()):
        raise ValueError(
            "int8 inference needs a CPU with AVX512-VNNI or AMX int8 instructions, which this one lacks "
            "(without them int8 is slower than fp32); use --precision bf16 or fp32"
        )
    family = model.config.family
    if family not in SUPPORTED_FAMILIES:
        supported = ", ".join(SUPPORTED_FAMILIES)
        raise ValueError(f"int8 inference supports {supported} models; {model.config.name} is a {family}")


class Int8Model(nn.Module):
    """A model quantised by `quantize`: forward(x: (B, C, H, W) fp32) -> logits (B, K), for inference only.

    Each batch is zero-padded to the next power of two, so that inductor compiles (tens of seconds) at most
    once per size 1, 2, 4, ...; the padding is dropped from the logits. Carries the fp32 model's `config`.
    """

    def __init__(self, graph: nn.Module, config: Any, compile: bool = True) -> None:
        super().__init__()
        self.graph, self.config = graph, config
        self.run = torch.compile(graph, dynamic=False) if compile else graph
        self.training = False

    def train(self, mode: bool = True) -> "Int8Model":
        if mode:
            raise ValueError("an int8 model is for inference only")
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        padded = 1 << (n - 1).bit_length()
        if padded > n:
            x = torch.cat([x, x.new_zeros(padded - n, *x.shape[1:])])
        # Freezing makes the weights constants, which is what lets inductor prepack them for oneDNN's int8
        # kernels; it has to be the global setting (torch.compile's options do not reach that pass).
        with torch.inference_mode(), inductor_config.patch(freezing=True):
            return self.run(x.float())[:n]

    def warm_up(self, max_batch: int) -> None:
        """Compile now, for every padded batch size up to `max_batch` (1, 2, 4, ...), not at first use."""
        H, W = self.config.img_size
        for n in sorted({1 << (b - 1).bit_length() for b in range(1, max_batch + 1)}):
            self(torch.zeros(n, self.config.in_chans, H, W))


def quantize(model: nn.Module, calibration: Iterable[torch.Tensor], compile: bool = True) -> Int8Model:
    """`model` (fp32, CPU) with int8 weights and activations, calibrated on the image batches (B, C, H, W)
    of `calibration`; `model` itself is left as it was. compile=False runs the quantised graph eagerly with
    reference (fp32-simulated) int8 ops: the same numbers, slowly, without the compile."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    check_int8_support(model)
    batches = [b.float() for b in calibration]
    if not batches:
        raise ValueError("int8 quantisation needs calibration images; got none")
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    fp32 = copy.deepcopy(model).float().eval()
    example = torch.cat([batches[0], batches[0]])  # two or more images: export takes a batch of one as fixed
    with torch.no_grad():
        graph = torch.export.export(fp32, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},)).module()
        observed = prepare_pt2e(graph, quantizer)
        for images in batches:
            observed(images)
        return Int8Model(convert_pt2e(observed), model.config, compile)


def quantize_calibrated(
    model: nn.Module, calibrate: str | None, root: str | os.PathLike | None = None, compile: bool = True
) -> Int8Model:
    """`quantize` calibrated on a few hundred training images of dataset `calibrate` (`--calibrate`)."""
    if not calibrate:
        raise ValueError("--precision int8 needs calibration images: --calibrate DATASET (its training split)")
    return quantize(model, calibration_batches(calibrate, model.config, root=root), compile)


# ---- calibration images --------------------------------------------------------------------------
def calibration_batches(
    spec: str,
    config: Any,
    split: str = "train",
    num_images: int = CALIBRATION_IMAGES,
    batch_size: int = 32,
    root: str | os.PathLike | None = None,
    seed: int = 0,
) -> list[torch.Tensor]:
    """`num_images` images drawn at random (seeded) from dataset `spec`'s `split`, transformed as `config`
    (the model's) says: a list of (B, C, H, W) batches."""
    from .data import load_data
    from .evaluate import eval_loader

    data = load_data(spec, root)
    dataset = data.split(split)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_images]
    loader = eval_loader(Subset(dataset, order.tolist()), config.data_config, data.channels, batch_size)
    return [images for images, _ in loader]


def int8_onnx_images(spec: str | None, config: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(calibration batches from dataset `spec`'s training split, 64 check images from its test split)."""
    if not spec:
        raise ValueError("--int8 needs calibration images: --calibrate DATASET (its training split)")
    return calibration_batches(spec, config), torch.cat(calibration_batches(spec, config, "test", num_images=64))


def photo_batches(config: Any, names: Sequence[str] = CALIBRATION_PHOTOS) -> list[torch.Tensor]:
    """Scikit-image photographs and their mirror images, as the model expects them: [(2 · len(names), C, H, W)].
    The default calibration of the random-weight models `vitkit bench` measures."""
    from .export import sample_images

    photos = sample_images(config.data_config, names=names)
    return [torch.cat([photos, photos.flip(-1)])]


# ---- how close int8 is to fp32 ---------------------------------------------------------------------
def logit_fidelity(reference: torch.Tensor, approx: torch.Tensor) -> dict[str, float]:
    """The logits (B, K) of an approximation against the reference: the smallest cosine over the batch
    and the fraction of images whose top-1 class agrees."""
    reference, approx = reference.float(), approx.float()
    return {
        "logit_cosine_vs_fp32": F.cosine_similarity(approx, reference, dim=-1).min().item(),
        "top1_agreement_vs_fp32": (approx.argmax(-1) == reference.argmax(-1)).float().mean().item(),
    }


# ---- ONNX ------------------------------------------------------------------------------------------
def quantize_onnx(fp32_path: str, out_path: str, calibration: Iterable[torch.Tensor]) -> None:
    """ONNX Runtime's static quantisation of the fp32 file at `fp32_path`, QDQ format: int8 weights per
    output channel and uint8 activations for MatMul, Gemm and Conv, calibrated (min-max) on `calibration`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .export import INPUT_NAME

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
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm", "Conv"],
        )  # fmt: skip


def export_onnx_int8(
    model: nn.Module,
    path: str | os.PathLike,
    calibration: Sequence[torch.Tensor],
    check_images: torch.Tensor,
    img_size: int | tuple[int, int] | None = None,
    opset: int = 17,
    min_cosine: float = MIN_COSINE,
) -> dict[str, Any]:
    """Export `model` to an int8 (QDQ) ONNX file at `path`, calibrated on `calibration` [(B, C, H, W)].

    The fp32 export is checked against PyTorch first (export_onnx); then onnxruntime runs the int8 file on
    `check_images` (B, C, H, W), images the calibration did not see, and every image's logits must have a
    cosine of at least `min_cosine` with PyTorch's fp32 logits before the file is put in place. Returns a
    report: path, opset, img_size, num_images, logit_cosine_vs_fp32, top1_agreement_vs_fp32, size_mb, fp32_size_mb.
    """
    from .checkpoints.io import atomic_write
    from .export import INPUT_NAME, _onnxruntime, export_onnx

    ort = _onnxruntime()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vitkit-int8-") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", img_size=img_size, opset=opset)

        def write_and_check(out: str) -> None:
            quantize_onnx(fp32["path"], out, calibration)
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
        **report, "size_mb": Path(path).stat().st_size / 2**20, "fp32_size_mb": fp32["size_mb"],
    }  # fmt: skip
