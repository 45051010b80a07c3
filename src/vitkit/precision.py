"""Numeric precision of a forward pass: fp32, or bf16/fp16 autocast (mixed precision); and `auto`, the
default of every command, which picks bf16 where the hardware runs it natively and fp32 elsewhere."""

from __future__ import annotations

import contextlib
import copy
import itertools
from dataclasses import asdict, dataclass
from typing import Iterable, get_args

import torch

from . import hardware
from .precision_kinds import InferencePrecision, Precision, Requested  # noqa: F401 (imported from here too)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# One training step of the CPU recipes (benchmarks/cpu_kinds.py, contended 2-core VM) under ATEN_CPU_CAPABILITY=avx2
# ONEDNN_MAX_CPU_ISA=AVX2, bf16 autocast against fp32 (benchmarks/results/cpu_kinds.json).
EMULATED_BF16_SLOWDOWN = "5-15x"


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run asked for (`requested`), what it runs in (`precision`: a Precision or "int8"), and why."""

    requested: str
    precision: str
    reason: str
    warning: str = ""

    def line(self) -> str:
        """The one line a command prints: 'precision: fp32 (auto: ...)', then the warning, if any."""
        text = f"precision: {self.precision} ({self.requested}: {self.reason})"
        return f"{text}\nvitkit: warning: {self.warning}" if self.warning else text

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v}


def resolve_precision(requested: str, device: torch.device | str) -> PrecisionChoice:
    """`requested` (auto, fp32, bf16, fp16 or int8) made concrete for `device`, with the reason.

    auto is bf16 where bf16 is native (a CUDA GPU with bf16, a CPU with AVX512-BF16/AMX or aarch64's BF16),
    else fp32. Raises a one-line ValueError for an unknown name, bf16 on a GPU without it, and int8 off a CPU
    with VNNI/AMX; explicit bf16 on a CPU that emulates it runs, with a warning."""
    device = torch.device(device)
    choices = get_args(InferencePrecision)
    if requested not in choices:
        raise ValueError(f"unknown precision {requested!r}; expected one of {', '.join(choices)}")
    where = "this GPU" if device.type == "cuda" else f"this CPU ({hardware.cpu().summary()})"
    native = hardware.native_bf16(device)
    if requested == "auto":
        if device.type not in ("cpu", "cuda"):
            return PrecisionChoice(requested, "fp32", f"bf16 is not checked on {device.type}")
        return PrecisionChoice(requested, "bf16" if native else "fp32",
                               f"bf16 is {'native' if native else 'emulated'} on {where}")  # fmt: skip
    if requested == "int8":
        if device.type != "cpu":
            raise ValueError(f"int8 inference runs on CPU only, not {device} (use --precision bf16 or auto there)")
        if not hardware.cpu().int8:
            raise ValueError(f"int8 inference needs {hardware.cpu().missing_int8}, which this CPU lacks "
                             f"({hardware.cpu().summary()}); use --precision auto or fp32")  # fmt: skip
        return PrecisionChoice(requested, "int8", f"VNNI/AMX int8 on {where}")
    if requested == "bf16" and device.type == "cuda" and not native:
        raise ValueError("this GPU has no native bf16 (compute capability 8.0 or later): use --precision fp16 or auto")
    if requested == "bf16" and device.type == "cpu" and not native:
        return PrecisionChoice(requested, "bf16", "as asked", f"bf16 is emulated on {where}, lacking "
                               f"{hardware.cpu().missing_bf16}: expect it to run {EMULATED_BF16_SLOWDOWN} slower "
                               "than fp32 (--precision auto picks fp32 here)")  # fmt: skip
    return PrecisionChoice(requested, requested, "as asked")


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
