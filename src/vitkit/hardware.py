"""What this machine runs natively: bf16 and int8 dot products on the CPU, bf16 on the GPU.

Every choice that depends on the hardware reads this module (`--precision auto`, Muon's Newton-Schulz
precision, int8's refusal, the tests that need an instruction); nothing else asks the CPU.

PyTorch's own answers (`torch.cpu._is_avx512_bf16_supported()`, `_is_vnni_supported()`,
`_is_amx_tile_supported()`) read the CPU's feature flags and ignore the two variables that make PyTorch
and oneDNN take slower paths: `ATEN_CPU_CAPABILITY` (ATen's vectorised kernels: default, avx2, avx512)
and `ONEDNN_MAX_CPU_ISA` (oneDNN's matrix products: AVX2, AVX512_CORE, AVX512_CORE_BF16, ...). Under
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` an AVX512-BF16 CPU multiplies bf16 matrices about 80x
slower than in fp32 (emulated), as an AVX2-only CPU does; so a feature counts here only where the CPU has it
*and* both caps let PyTorch use it. That is what lets a test pretend to be an AVX2 machine on any x86-64.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch

# oneDNN's ISA names from least to most capable (its documentation of ONEDNN_MAX_CPU_ISA); the AMX and
# AVX10 levels include AVX512_CORE_BF16 and VNNI.
ONEDNN_ISAS = (
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16",
    "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16",
    "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL",
)  # fmt: skip
# Pretend to be an AVX2-only x86-64: ATen's kernels, oneDNN's, and MKL's (fp32 matrix products go to MKL's sgemm,
# which reads neither of the first two; on this project's AMD EPYC MKL takes its AVX2 path anyway).
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def _onednn_allows(isa: str) -> bool:
    """Whether ONEDNN_MAX_CPU_ISA (unset: no cap) lets oneDNN use instruction set `isa`."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").strip().upper() or "ALL"
    if cap not in ONEDNN_ISAS:
        return True  # oneDNN ignores a value it does not know
    return ONEDNN_ISAS.index(cap) >= ONEDNN_ISAS.index(isa)


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's features as PyTorch will use them.

    capability: ATen's vector level ("DEFAULT", "AVX2", "AVX512", "SVE256", ...), after ATEN_CPU_CAPABILITY.
    bf16: native bf16 matrix products (AVX512-BF16 or AMX-BF16 on x86, the BF16 extension on aarch64).
    int8: int8 dot-product instructions oneDNN's int8 kernels need (AVX512-VNNI or AMX).
    amx: AMX tiles. machine: platform.machine().
    """

    machine: str
    capability: str
    bf16: bool
    int8: bool
    amx: bool

    @property
    def missing_int8(self) -> str:
        """What int8 lacks here, for messages and skip reasons ("" where int8 runs natively)."""
        return "" if self.int8 else "AVX512-VNNI or AMX int8 instructions"

    @property
    def missing_bf16(self) -> str:
        """What native bf16 lacks here ("" where it is native)."""
        return "" if self.bf16 else "AVX512-BF16 or AMX (x86), or the BF16 extension (aarch64)"

    def summary(self) -> str:
        """One line: 'x86_64, ATen AVX512, bf16 native, int8 VNNI'."""
        int8 = "int8 AMX" if self.amx and self.int8 else "int8 VNNI" if self.int8 else "no VNNI/AMX int8"
        return f"{self.machine}, ATen {self.capability}, bf16 {'native' if self.bf16 else 'emulated'}, {int8}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@lru_cache(maxsize=1)
def cpu() -> CpuFeatures:
    """This process's CPU features (the environment variables are read once, as PyTorch reads them)."""
    machine = platform.machine().lower()
    capability = torch.backends.cpu.get_cpu_capability()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        aten_avx512 = capability.startswith("AVX512")
        amx = torch.cpu._is_amx_tile_supported() and _onednn_allows("AVX512_CORE_AMX") and aten_avx512
        bf16 = amx or (torch.cpu._is_avx512_bf16_supported() and _onednn_allows("AVX512_CORE_BF16") and aten_avx512)
        int8 = amx or (torch.cpu._is_vnni_supported() and _onednn_allows("AVX512_CORE_VNNI") and aten_avx512)
        return CpuFeatures(machine, capability, bf16, int8, amx)
    # aarch64: oneDNN (through ACL) reports bf16 only where the CPU has the BF16 extension
    bf16 = machine in ("aarch64", "arm64") and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return CpuFeatures(machine, capability, bool(bf16), False, False)


def cuda_bf16(device: torch.device | str | None = None) -> bool:
    """Whether the CUDA device runs bf16 natively (compute capability 8.0 and later), not emulated."""
    if not torch.cuda.is_available():
        return False
    return torch.cuda.is_bf16_supported(including_emulation=False)


def native_bf16(device: torch.device | str) -> bool:
    """Whether bf16 matrix products on `device` are native, so that bf16 is faster than fp32 there."""
    kind = torch.device(device).type
    if kind == "cuda":
        return cuda_bf16(device)
    if kind == "cpu":
        return cpu().bf16
    return False


def native_int8(device: torch.device | str) -> bool:
    """Whether vitkit's int8 inference (oneDNN's int8 kernels, CPU only) runs natively on `device`."""
    return torch.device(device).type == "cpu" and cpu().int8


def default_device(precision: str = "auto") -> str:
    """The device a command uses when none is given: CUDA when present, except for int8 (CPU only)."""
    return "cuda" if torch.cuda.is_available() and precision != "int8" else "cpu"


def compile_missing(device: torch.device | str) -> str | None:
    """Why torch.compile cannot compile for `device` here, in a few words, or None when it can: Inductor
    needs TorchDynamo on this Python, a C++ compiler for CPU kernels and Triton for CUDA ones."""
    from torch._dynamo import is_dynamo_supported

    if not is_dynamo_supported():
        return f"torch.compile does not run on this Python ({sys.version.split()[0]}) with torch {torch.__version__}"
    if torch.device(device).type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "torch.compile's CUDA kernels need Triton (pip install triton)"
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception:  # noqa: BLE001 (Inductor raises its own kinds; any of them means no compiler)
        return "torch.compile's CPU kernels need a C++ compiler and none was found (install g++, or set CXX)"
    return None
