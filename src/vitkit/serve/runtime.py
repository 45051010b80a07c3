"""The runtime a worker's forward pass runs in: PyTorch (eager), or ONNX Runtime.

ONNX Runtime runs the whole forward pass in C++ without taking the GIL; eager PyTorch takes it back
between ops, so beside an event loop busy with requests each op waits its turn (benchmarks/gil_convoy.py).
The model is exported with vitkit.export (checked against PyTorch to 1e-4 before it is used) and served in
fp32 on the CPU. docs/serving.md ("Round 6") has the measurements.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # imported where used: the `vitkit serve` parser reads RUNTIMES without torch
    import torch

RUNTIMES = ("torch", "onnxruntime")
CHECK_IMAGES = 4  # random images the export is checked on (no photographs needed)


def check_runtime(runtime: str, precision: str, device: str | None) -> None:
    """ValueError unless `runtime` can serve at `precision` ("auto" resolves to fp32 for onnxruntime) on
    `device` (None: the default, which onnxruntime makes the CPU)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"--runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "onnxruntime" and (precision not in ("auto", "fp32") or device not in (None, "cpu")):
        raise ValueError(f"--runtime onnxruntime serves fp32 on the CPU, not --precision {precision} --device {device}")


def onnx_probabilities(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """An ONNX Runtime session of `model` (fp32, on the CPU) with torch's intra-op thread count
    -> fn: images (B, C, H, W) -> softmax probabilities (B, K), float32."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError("--runtime onnxruntime needs onnxruntime: pip install 'vitkit[onnx]'") from None
    import torch

    from ..export import INPUT_NAME, export_onnx

    cfg = model.config
    check = torch.randn(CHECK_IMAGES, cfg.in_chans, *cfg.img_size, generator=torch.Generator().manual_seed(0))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, check_images=check)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def probabilities(images: torch.Tensor) -> torch.Tensor:
        logits = session.run(None, {INPUT_NAME: images.numpy()})[0]
        return torch.from_numpy(logits).softmax(dim=-1)

    return probabilities
