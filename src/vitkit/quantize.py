"""Static int8 inference on CPU.

PyTorch: torchao's PT2E flow. `torch.export` captures the model, the x86 inductor quantizer marks every
linear layer and convolution for int8 weights (per output channel) and int8 activations (per tensor),
a few hundred calibration images fix the activations' scales, and `torch.compile` with freezing lowers
the result to oneDNN's int8 kernels (VNNI, or AMX where the CPU has it). Chosen by measurement against
ONNX Runtime's static QDQ quantisation and OpenVINO (docs/int8.md).

The int8 ONNX export (ONNX Runtime's static quantisation) is `vitkit.export.export_onnx_int8`; it reads
`calibration_batches` and `logit_fidelity` from here.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch._inductor import config as inductor_config
from torch.utils.data import Subset

from . import hardware

# Inductor's int8 lowering copies a tensor the way torch advises against; harmless, and not the user's to fix.
warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning, "torch._inductor.mkldnn_lowerings")

CALIBRATION_IMAGES = 256  # what --calibrate DATASET draws from the training split
# ResNets and hybrids (weight-standardised convolutions, whose weights are computed at run time) are not yet checked.
SUPPORTED_FAMILIES = ("vit",)


def check_int8_support(model: nn.Module) -> None:
    """Raise a one-line ValueError where int8 inference cannot run: torchao missing, the model on a GPU, a
    model family not supported, a CPU without int8 dot-product instructions (AVX512-VNNI or AMX:
    `vitkit.hardware`), in that order: what the user can change first, the machine last."""
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ValueError("int8 inference needs torchao: pip install 'vitkit[int8]'") from None
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"int8 inference runs on CPU only; the model is on {device} (use --precision bf16 there)")
    family = model.config.family
    if family not in SUPPORTED_FAMILIES:
        supported = ", ".join(SUPPORTED_FAMILIES)
        raise ValueError(f"int8 inference supports {supported} models; {model.config.name} is a {family}")
    cpu = hardware.cpu()
    if not cpu.int8:
        raise ValueError(
            f"int8 inference needs a CPU with {cpu.missing_int8}, which this one lacks ({cpu.summary()}; without "
            "them int8 is slower than fp32); use --precision auto, bf16 or fp32"
        )


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
    check_int8_support(model)  # before torchao's modules are imported: its refusal names what to install
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

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


# ---- how close int8 is to fp32 ---------------------------------------------------------------------
def logit_fidelity(reference: torch.Tensor, approx: torch.Tensor) -> dict[str, float]:
    """The logits (B, K) of an approximation against the reference: the smallest cosine over the batch
    and the fraction of images whose top-1 class agrees."""
    reference, approx = reference.float(), approx.float()
    return {
        "logit_cosine_vs_fp32": F.cosine_similarity(approx, reference, dim=-1).min().item(),
        "top1_agreement_vs_fp32": (approx.argmax(-1) == reference.argmax(-1)).float().mean().item(),
    }
