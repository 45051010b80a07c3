"""Throughput, latency, peak memory and FLOP utilisation of a model, side by side with timm.

Conventions:
- FLOPs per image are `vitkit.flops.step_flops`'s, peak memory and the matmul peak `vitkit.measure`'s, the
  timm twin and the agreement check `vitkit.peers`'s.
- Speed against a peer is measured in one process, one step of each row per round, alternating which
  goes first; the ratio is the median of the rounds' ratios, reported with its quartiles and range.
- Peak memory on CPU is the peak resident set size (Linux's VmHWM) above the RSS just before the
  weights are loaded, over the row's build and warm-up: weights, activations, gradients, optimiser state
  and workspaces, not the libraries (importing timm alone adds ~200 MB). On CUDA it is
  `max_memory_allocated`. Each row's is measured in a fresh process by default, so that memory one row
  freed cannot be reused by the next.
- The machine's peak is the best rate of a large square `torch.matmul` in the row's compute dtype
  (bf16 for bf16 autocast), measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .flops import Mode, step_flops
from .bench_format import format_table
from .hardware import compile_missing, default_device
from .measure import (
    matmul_peak_gflops, num_threads, peak_memory_mb, ratio_summary, reset_peak_memory, sync, time_rounds,
)
from .models import build_model, get_config
from .peers import check_agreement, timm_architecture
from .precision import DTYPES, InferencePrecision, PrecisionChoice, autocast, resolve_precision

Runtime = Literal["torch", "onnxruntime"]
Library = Literal["vitkit", "timm"]
DeviceType = Literal["cpu", "cuda"]




# ---- the models ----------------------------------------------------------------------------------
def bench_model(model_name: str, img_size: int | None = None, seed: int = 0) -> nn.Module:
    """`model_name` with seeded random weights; the head, zero at init, gets random weights too, so
    that logits differ between images and comparisons of outputs mean something."""
    torch.manual_seed(seed)
    model = build_model(get_config(model_name, **({"img_size": img_size} if img_size else {})))
    head = getattr(model.head, "fc", model.head)  # a ResNet's head is a 1x1 conv, head.fc
    if isinstance(head, (nn.Linear, nn.Conv2d)):
        nn.init.normal_(head.weight, std=model.config.num_features**-0.5)
    return model


# ---- one row, measured -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RowSpec:
    """Everything a (possibly fresh) process needs to measure one row."""

    model_name: str
    img_size: int | None
    library: Library
    batch_size: int
    precision: InferencePrecision  # resolved: never auto
    mode: Mode
    compile: bool
    runtime: Runtime
    device: str
    warmup: int
    repeats: int  # timed steps (rounds, when rows are measured together)
    threads: int
    seed: int
    weights_path: str
    onnx_path: str | None = None
    cuda_graphs: bool = False  # the step captured as one CUDA graph and replayed (vitkit.train.graphs)
    calibrate: str | None = None  # int8: the dataset whose training images calibrate (default: photographs)


def _skeleton(spec: RowSpec) -> nn.Module | None:
    """The row's model on the meta device: its structure, no memory; None for onnxruntime."""
    if spec.runtime == "onnxruntime":
        import onnxruntime  # noqa: F401  (imported here, before the memory baseline, like the models' code)

        return None
    cfg = get_config(spec.model_name, **({"img_size": spec.img_size} if spec.img_size else {}))
    with torch.device("meta"):
        return build_model(cfg) if spec.library == "vitkit" else timm_architecture(cfg)


Step = Callable[[], None]


def _step_fn(spec: RowSpec, model: nn.Module | None, device: torch.device) -> tuple[Step, dict[str, float]]:
    """Load the weights into the row's `model` (from `_skeleton`); return one benchmark step (a batch's
    inference or training step) and what the row adds to its measurements (int8: its fidelity)."""
    g = torch.Generator().manual_seed(spec.seed + 1)
    cfg = get_config(spec.model_name, **({"img_size": spec.img_size} if spec.img_size else {}))
    images = torch.randn(spec.batch_size, cfg.in_chans, *cfg.img_size, generator=g)
    if spec.runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = spec.threads
        providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
        session = ort.InferenceSession(spec.onnx_path, options, providers=providers)
        feed = {session.get_inputs()[0].name: images.numpy()}
        return lambda: session.run(None, feed), {}

    assert model is not None
    model.load_state_dict(load_file(spec.weights_path), assign=True)  # the file's tensors become the parameters
    model = model.to(device)
    images = images.to(device)
    if spec.precision == "int8":
        return _int8_step(spec, model.eval(), images)
    # Inference compiles with inductor's freezing: the weights become constants, prepacked for the CPU's
    # matmul kernels and folded where they can be (it needs the module to stay in inference mode).
    options = {"freezing": True} if spec.mode == "infer" else None
    run = torch.compile(model, options=options) if spec.compile else model
    if spec.mode == "infer":
        model.eval()
        if spec.precision != "fp32":  # low-precision weights: no casts on the hot path, unlike autocast
            model.to(DTYPES[spec.precision])
            images = images.to(DTYPES[spec.precision])

        def infer() -> None:
            with torch.inference_mode():
                run(images)

        return (_captured(infer) if spec.cuda_graphs else infer), {}

    model.train()
    labels = torch.randint(0, max(cfg.num_classes, 1), (spec.batch_size,), generator=g).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, capturable=spec.cuda_graphs)
    scaler = torch.amp.GradScaler(device.type, enabled=spec.precision == "fp16")

    def train_step() -> None:
        with autocast(device, spec.precision):
            loss = F.cross_entropy(run(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return (_captured(train_step) if spec.cuda_graphs else train_step), {}


def _captured(step: Callable[[], None]) -> Callable[[], None]:
    from .train.graphs import captured  # the training stack only for graph rows

    return captured(step)


def _int8_step(spec: RowSpec, model: nn.Module, images: torch.Tensor) -> tuple[Step, dict[str, float]]:
    """Quantise `model` (calibrated on `spec.calibrate`'s training images, else on photographs other than
    the check's), then compare it with fp32 on scikit-image's sample photographs, run in batches of the
    row's size (the compiled shape): logit_cosine_vs_fp32 (the smallest) and top1_agreement_vs_fp32."""
    from .data.photos import sample_images
    from .inference import quantize_for_inference
    from .quantize import logit_fidelity

    cfg = model.config
    int8 = quantize_for_inference(model, spec.calibrate)
    photos = sample_images(cfg.data_config)  # (3, C, H, W)
    tiled = photos[torch.arange(-(-len(photos) // spec.batch_size) * spec.batch_size) % len(photos)]
    with torch.inference_mode():
        reference = model(photos)
        logits = torch.cat([int8(batch) for batch in tiled.split(spec.batch_size)])[: len(photos)]
    return lambda: int8(images), logit_fidelity(reference, logits)


def _ready(spec: RowSpec, device: torch.device) -> tuple[Step, dict[str, Any]]:
    """Build the row in this process and run its warm-up steps: its step, and what it adds to its
    measurements, peak_memory_mb (over the build and the warm-up) included."""
    # Libraries and module structure come before the baseline: they are not the row's memory.
    skeleton = _skeleton(spec)
    baseline = reset_peak_memory(device)
    step, extras = _step_fn(spec, skeleton, device)
    for _ in range(spec.warmup):
        step()
    sync(device)
    return step, {**extras, "peak_memory_mb": peak_memory_mb(device) - baseline}


def _timings(seconds: list[float], batch_size: int) -> dict[str, Any]:
    """One row's rounds: latency per batch (median, min, max) and images/s (the median of the rounds')."""
    return {
        "latency_ms": statistics.median(seconds) * 1e3, "latency_ms_min": min(seconds) * 1e3,
        "latency_ms_max": max(seconds) * 1e3, "images_per_s": statistics.median(batch_size / s for s in seconds),
    }  # fmt: skip


def measure_rows(specs: list[RowSpec]) -> tuple[list[dict[str, Any]], list[list[float]]]:
    """Build and warm up each row in this process, one after the other, then time `repeats` rounds of
    one step of each (`time_rounds`). Returns each row's measurements and its seconds per round. Peak
    memory is each row's over its build and warm-up: only the first row's is its own (a later row can
    reuse memory that an earlier one freed)."""
    device = torch.device(specs[0].device)
    with num_threads(specs[0].threads):
        ready = [_ready(spec, device) for spec in specs]
        seconds = time_rounds([step for step, _ in ready], specs[0].repeats, lambda: sync(device))
    rows = [
        {**(_timings(s, spec.batch_size) if s else {}), **extras} for spec, s, (_, extras) in zip(specs, seconds, ready)
    ]
    return rows, seconds


def measure_row(spec: RowSpec) -> dict[str, Any]:
    """One row measured alone: warm up, time `spec.repeats` steps one by one (none: its memory only); its
    peak memory from just before the weights were loaded, over the warm-up."""
    return measure_rows([spec])[0][0]


# A row's process prints its result, or a refusal (a ValueError: bad input, not a crash), as one JSON line.
_WORKER = """import json, sys
from vitkit.bench import RowSpec, measure_row
try:
    print(json.dumps(measure_row(RowSpec(**json.load(sys.stdin)))))
except ValueError as e:
    print(json.dumps({"error": str(e)}))
    sys.exit(2)
"""


def _start(spec: RowSpec) -> subprocess.Popen:
    """A fresh Python process that measures `spec`; its other output goes to this process's stderr."""
    proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(asdict(spec)))
    proc.stdin.close()
    return proc


def _result(proc: subprocess.Popen, spec: RowSpec) -> dict[str, Any]:
    """What a `_start`ed process printed; a refusal there is raised here as the same one-line ValueError."""
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.wait()
    last = out.splitlines()[-1] if out.strip() else "{}"
    if proc.returncode == 2 and last.startswith('{"error"'):
        raise ValueError(json.loads(last)["error"])
    if proc.returncode:
        raise RuntimeError(f"measuring the {spec.library} row failed in its own process (exit {proc.returncode})")
    return json.loads(last)


def _measure(spec: RowSpec, isolate: bool) -> dict[str, Any]:
    """measure_row here, or in a fresh Python process."""
    return _result(_start(spec), spec) if isolate else measure_row(spec)


def _compared(specs: list[RowSpec], isolate: bool) -> tuple[list[dict[str, Any]], list[float]]:
    """The rows measured in this process, alternating round by round (`measure_rows`), and the per-round
    ratios of the first row's images/s to the second's. `isolate`: each row's peak memory comes from a
    fresh process of its own that builds and warms it up (these run side by side, before the timing)."""
    fresh = [_start(replace(spec, repeats=0)) for spec in specs] if isolate else []
    try:
        peaks = [_result(proc, spec)["peak_memory_mb"] for proc, spec in zip(fresh, specs)]
    finally:  # one that refused leaves no other running
        for proc in fresh:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    rows, seconds = measure_rows(specs)
    for row, peak in zip(rows, peaks):
        row["peak_memory_mb"] = peak
    return rows, [theirs / ours for ours, theirs in zip(*seconds)]


# ---- the benchmark -------------------------------------------------------------------------------
def _check_settings(
    precision: str, mode: str, compile: bool, runtime: str, compare: str | None, device: DeviceType | None
) -> tuple[DeviceType, bool]:
    """Reject settings `benchmark` cannot measure, in one line; return the device and compile flag to use."""
    if precision not in ("auto", "fp32", "bf16", "fp16", "int8") or mode not in ("infer", "train"):
        raise ValueError(f"precision must be auto, fp32, bf16, fp16 or int8, mode infer or train; got {precision}, {mode}")
    if precision == "int8" and (mode != "infer" or runtime != "torch" or device == "cuda"):
        raise ValueError("--precision int8 is inference on CPU with --runtime torch")
    if precision == "int8":
        device, compile = "cpu", True  # the int8 row always compiles: that is what runs oneDNN's int8 kernels
    if runtime == "onnxruntime" and (precision not in ("auto", "fp32") or mode != "infer" or compile):
        raise ValueError("--runtime onnxruntime runs fp32 inference without --compile")
    if runtime not in ("torch", "onnxruntime") or compare not in (None, "timm"):
        raise ValueError(f"unknown runtime {runtime!r} or compare {compare!r}")
    device = device or default_device(precision)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device")
    if compile and (why := compile_missing(device)):
        alternative = "int8 runs compiled: use --precision auto" if precision == "int8" else "leave out --compile"
        raise ValueError(f"--compile: {why}; {alternative}")
    return device, compile


def _exported(model: nn.Module, spec: RowSpec, tmp: Path) -> tuple[RowSpec, float]:
    """Export `model` to ONNX under `tmp` (checked on photographs); the row spec that times that file, and
    the export's largest logit difference from PyTorch."""
    from .export import export_onnx

    if spec.device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError("--runtime onnxruntime --device cuda needs onnxruntime-gpu")
    report = export_onnx(model, tmp / "model.onnx")
    return replace(spec, onnx_path=report["path"]), report["max_abs_diff"]


def _add_rates(result: dict[str, Any], rows: dict[str, dict[str, Any]], gflops: float, peak: float) -> None:
    """Fill `result` with each row's timings and the rates derived from them (prefix "" or "timm_")."""
    result.update(gflops_per_image=gflops, matmul_peak_gflops_per_s=peak)
    for prefix, row in rows.items():
        result.update({f"{prefix}{k}": v for k, v in row.items()})
        result[f"{prefix}gflops_per_s"] = gflops * row["images_per_s"]
        result[f"{prefix}fraction_of_peak"] = gflops * row["images_per_s"] / peak


def benchmark(
    model_name: str,
    batch_size: int = 16,
    img_size: int | None = None,
    precision: InferencePrecision = "auto",
    compile: bool = False,
    mode: Mode = "infer",
    compare: Literal["timm"] | None = None,
    runtime: Runtime = "torch",
    device: DeviceType | None = None,
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
    isolate: bool = True,
    seed: int = 0,
    calibrate: str | None = None,
    cuda_graphs: bool = False,
) -> dict[str, Any]:
    """Measure `model_name` (seeded random weights) and, with compare="timm", timm's same architecture
    with the same weights, after checking that their outputs agree.

    Inference runs under `torch.inference_mode`, bf16/fp16 with weights in that dtype; a training step
    is forward, cross-entropy, backward and AdamW, bf16/fp16 under autocast. runtime="onnxruntime"
    exports the model (checked on real photographs) and times onnxruntime; the timm row stays PyTorch.
    `device`: None picks CUDA when present. `threads`: intra-op threads of the measured rows (default
    torch's, one per core; fewer when other work shares the cores, which stalls torch's thread pool).
    `repeats`: timed rounds, one step of each row in each.

    compare="timm": both rows are built and warmed up in this process, then timed alternately, one step
    each per round, in the order vitkit timm, timm vitkit, vitkit timm, ... (`time_rounds`): on a shared
    machine whose speed drifts, rows timed in turn in separate processes gave ratios 30% off. `isolate`:
    each row's peak memory comes from a fresh process that builds and warms up that row alone (without
    it, the timm row's counts after vitkit's); a row measured alone (no compare) runs whole in one.

    Returns one flat dict: images_per_s (the median of the rounds'), latency_ms (median; _min, _max),
    peak_memory_mb, gflops_per_image, gflops_per_s, matmul_peak_gflops_per_s, fraction_of_peak, the
    settings (rounds: `repeats`), and with compare="timm" the same measurements prefixed timm_,
    max_abs_diff, and the per-round ratios of vitkit's images/s to timm's: ratio (their median),
    ratio_q1 and ratio_q3, ratio_min and ratio_max, round_ratios (all of them, in order).

    precision="int8" (CPU inference): the vitkit row is quantised (`vitkit.quantize`, calibrated on
    `calibrate`'s training images, else photographs) and compiled; the timm row is timm's fastest CPU path,
    bf16 weights, eager; the peak is bf16's. Adds logit_cosine_vs_fp32 and top1_agreement_vs_fp32 on
    scikit-image's sample photographs, in place of max_abs_diff.
    """
    device, compile = _check_settings(precision, mode, compile, runtime, compare, device)
    if repeats < 1 or warmup < 0:
        raise ValueError(f"--rounds must be at least 1 and --warmup at least 0; got {repeats} and {warmup}")
    choice = resolve_precision("fp32" if runtime == "onnxruntime" else precision, device)
    precision = choice.precision
    if cuda_graphs:  # both libraries' rows replay a captured step
        from .train.graphs import check_graph_row

        check_graph_row(device, mode, precision, compile, runtime)
    dev = torch.device(device)
    threads = threads or torch.get_num_threads()
    model = bench_model(model_name, img_size, seed)
    cfg = model.config
    gflops = step_flops(cfg, mode) / 1e9
    result: dict[str, Any] = {
        "model": cfg.name, "batch_size": batch_size, "img_size": list(cfg.img_size), "precision": precision,
        "precision_choice": choice.to_dict(), "mode": mode, "compile": compile, "runtime": runtime, "device": device,
        "threads": threads, "warmup": warmup, "rounds": repeats, "torch_version": torch.__version__,
        "cuda_graphs": cuda_graphs,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vitkit-bench-") as tmp:
        spec = RowSpec(
            model_name, img_size, "vitkit", batch_size, precision, mode, compile, runtime, device, warmup, repeats,
            threads, seed, weights_path=str(Path(tmp) / "weights.safetensors"), calibrate=calibrate,
            cuda_graphs=cuda_graphs,
        )  # fmt: skip
        save_file(model.state_dict(), spec.weights_path)
        if runtime == "onnxruntime":
            spec, result["onnx_max_abs_diff"] = _exported(model, spec, Path(tmp))
        if compare == "timm" and precision != "int8":
            result["max_abs_diff"] = check_agreement(model, precision, mode, dev)  # needs timm, or says so
            import timm

            result["timm_version"] = timm.__version__
        del model
        compute_dtype = torch.float32 if precision == "fp32" else DTYPES.get(precision, torch.bfloat16)
        with num_threads(threads):
            peak = matmul_peak_gflops(compute_dtype, dev)
        if compare != "timm":
            rows = {"": _measure(spec, isolate)}
        else:
            timm_spec = replace(spec, library="timm", runtime="torch", onnx_path=None)
            if precision == "int8":  # the peer's fastest CPU path
                timm_spec = replace(timm_spec, precision="bf16", compile=False)
            (ours, theirs), ratios = _compared([spec, timm_spec], isolate)
            rows = {"": ours, "timm_": theirs}
            result.update(timm_runtime="torch", **ratio_summary(ratios))
    _add_rates(result, rows, gflops, peak)
    return result


def run(args: argparse.Namespace) -> int:
    """The `vitkit` subcommand (its parser: vitkit.commands)."""
    result = benchmark(
        args.model, batch_size=args.batch_size, img_size=args.img_size, precision=args.precision,
        compile=args.compile, mode=args.mode, compare=args.compare, runtime=args.runtime, device=args.device,
        warmup=args.warmup, repeats=args.repeats, threads=args.threads, isolate=not args.in_process,
        calibrate=args.calibrate, cuda_graphs=args.cuda_graphs,
    )  # fmt: skip
    print(PrecisionChoice(**result["precision_choice"]).line(), file=sys.stderr)
    print(format_table(result), file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    return 0
