"""int8 CPU inference against timm's fastest CPU path (bf16 weights, eager), ONNX Runtime and OpenVINO.

Speed (seeded random weights, 224 px): for each model and batch size, the rows
  timm bf16 eager | vitkit int8 (torchao PT2E, compiled) | ONNX Runtime int8 (QDQ, `vitkit export --int8`)
  | OpenVINO fp32 | OpenVINO int8 (nncf.quantize) on the same fp32 ONNX export,
measured in rounds whose order alternates (ABAB), so that a neighbour on the machine or the clocks weigh on
every row alike. torch and ONNX Runtime rows run in fresh processes (vitkit.bench.measure_row); OpenVINO rows
in this one. All are calibrated on the same scikit-image photographs; each int8 row's logits are compared
with fp32's on the three others (logit_cosine_vs_fp32: the smallest; top1_agreement_vs_fp32).

Agreement (--checkpoint, a Fashion-MNIST model): int8 (torch, compiled; and the int8 ONNX file in ONNX
Runtime) against fp32 on the 10,000 test images, calibrated on 256 training images.

    .venv/bin/python benchmarks/int8.py                                 # ViT-S/16, ViT-B/16; batch 16 and 1
    .venv/bin/python benchmarks/int8.py --models vit_test_patch4_16 --batch-sizes 4 --rounds 1   # smoke test
    .venv/bin/python benchmarks/int8.py --checkpoint runs/fashion/best.safetensors --skip-speed

Writes benchmarks/results/int8.json (or int8_<first model>.json when --models is given) and prints tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from vitkit.bench import RowSpec, _measure, bench_model
from vitkit.data.photos import photo_batches, sample_images
from vitkit.export import INPUT_NAME, export_onnx, export_onnx_int8, int8_onnx_images, quantize_onnx
from vitkit.quantize import calibration_batches, logit_fidelity, quantize

RESULTS = Path(__file__).parent / "results"
TORCH_ROWS = ("timm bf16 eager", "vitkit int8", "onnxruntime int8")
OPENVINO_ROWS = ("openvino fp32", "openvino int8")


def openvino_models(onnx_path: str, calibration: list[torch.Tensor], threads: int) -> dict[str, Any]:
    """OpenVINO's fp32 and int8 (nncf.quantize, transformer preset) compilations of the ONNX file."""
    import nncf
    import openvino as ov

    core = ov.Core()
    model = ov.convert_model(onnx_path)
    dataset = nncf.Dataset([b.numpy() for b in calibration])
    quantized = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(calibration))  # fmt: skip
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    return {
        "openvino fp32": core.compile_model(model, "CPU", {**config, "INFERENCE_PRECISION_HINT": "f32"}),
        "openvino int8": core.compile_model(quantized, "CPU", config),
    }


def time_openvino(compiled: Any, images: torch.Tensor, warmup: int, repeats: int) -> float:
    """Median latency (ms) of one synchronous inference of `images`."""
    request = compiled.create_infer_request()
    feed = {0: images.numpy()}
    for _ in range(warmup):
        request.infer(feed)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        request.infer(feed)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds) * 1e3


def photo_fidelity(run: Callable[[torch.Tensor], Any], reference: torch.Tensor, photos: torch.Tensor) -> dict:
    return logit_fidelity(reference, torch.as_tensor(run(photos)))


def speed(model_name: str, batch_sizes: list[int], rounds: int, threads: int, warmup: int, repeats: int) -> list:
    """The rows of `model_name` at each batch size; returns one dict per (batch size, row)."""
    import onnxruntime as ort

    model = bench_model(model_name).eval()
    cfg = model.config
    calibration = photo_batches(cfg.data_config)
    photos = sample_images(cfg.data_config)
    with torch.inference_mode():
        reference = model(photos)
    results = []
    with tempfile.TemporaryDirectory(prefix="vitkit-int8-bench-") as tmp:
        weights = str(Path(tmp) / "weights.safetensors")
        save_file(model.state_dict(), weights)
        fp32_onnx = export_onnx(model, Path(tmp) / "fp32.onnx")["path"]
        int8_onnx = str(Path(tmp) / "int8.onnx")
        quantize_onnx(fp32_onnx, int8_onnx, calibration)
        session = ort.InferenceSession(int8_onnx, providers=["CPUExecutionProvider"])
        openvino = openvino_models(fp32_onnx, calibration, threads)
        fidelity = {
            "onnxruntime int8": photo_fidelity(
                lambda x: session.run(None, {INPUT_NAME: x.numpy()})[0], reference, photos
            ),
            "openvino int8": photo_fidelity(lambda x: openvino["openvino int8"](x.numpy())[0], reference, photos),
            "openvino fp32": photo_fidelity(lambda x: openvino["openvino fp32"](x.numpy())[0], reference, photos),
        }
        for batch_size in batch_sizes:
            base = RowSpec(model_name, None, "vitkit", batch_size, "int8", "infer", True, "torch", "cpu", warmup,
                           repeats, threads, seed=0, weights_path=weights)  # fmt: skip
            specs = {
                "timm bf16 eager": replace(base, library="timm", precision="bf16", compile=False),
                "vitkit int8": base,
                "onnxruntime int8": replace(base, precision="fp32", compile=False, runtime="onnxruntime",
                                            onnx_path=int8_onnx),  # fmt: skip
            }
            images = torch.randn(batch_size, cfg.in_chans, *cfg.img_size, generator=torch.Generator().manual_seed(1))
            rows: dict[str, list[float]] = {name: [] for name in (*TORCH_ROWS, *OPENVINO_ROWS)}
            names = list(rows)
            for r in range(rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    if name in specs:
                        row = _measure(specs[name], isolate=True)
                        if name == "vitkit int8":
                            fidelity[name] = {k: row[k] for k in ("logit_cosine_vs_fp32", "top1_agreement_vs_fp32")}
                        ms = row["latency_ms"]
                    else:
                        ms = time_openvino(openvino[name], images, warmup, repeats)
                    rows[name].append(batch_size / ms * 1e3)
                    rate = rows[name][-1]
                    print(f"{model_name} batch {batch_size} round {r}: {name:<17} {rate:8.1f} img/s", flush=True)
            timm = statistics.median(rows["timm bf16 eager"])
            for name, rates in rows.items():
                median = statistics.median(rates)
                results.append({
                    "model": model_name, "batch_size": batch_size, "row": name, "images_per_s": rates,
                    "median_images_per_s": median, "latency_ms": batch_size / median * 1e3, "vs_timm": median / timm,
                    **fidelity.get(name, {}),
                })  # fmt: skip
    return results


def agreement(checkpoint: str, data: str, batch_size: int = 256) -> dict[str, Any]:
    """int8 (torch, compiled; ONNX Runtime) against fp32 on `data`'s test split, calibrated on its training split."""
    import onnxruntime as ort

    from vitkit import load
    from vitkit.data import load_data
    from vitkit.evaluate import eval_loader
    model = load(checkpoint).eval()
    source = load_data(data)
    batches = list(eval_loader(source.test, model.config.data_config, source.channels, batch_size))
    test, labels = [x for x, _ in batches], torch.cat([y for _, y in batches])
    int8 = quantize(model, calibration_batches(data, model.config))
    with torch.inference_mode():
        fp32_logits = torch.cat([model(x) for x in test])
        int8_logits = torch.cat([int8(x) for x in test])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "int8.onnx"
        export_onnx_int8(model, path, *int8_onnx_images(data, model.config))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        onnx_logits = torch.cat([torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0]) for x in test])

    def accuracy(logits: torch.Tensor) -> float:
        return (logits.argmax(-1) == labels).float().mean().item()

    return {
        "checkpoint": checkpoint, "data": data, "n": len(labels), "fp32_top1": accuracy(fp32_logits),
        "int8": {**logit_fidelity(fp32_logits, int8_logits), "top1": accuracy(int8_logits)},
        "onnxruntime_int8": {**logit_fidelity(fp32_logits, onnx_logits), "top1": accuracy(onnx_logits)},
    }  # fmt: skip


def print_table(rows: list[dict]) -> None:
    print(f"{'model':<24} {'batch':>5} {'row':<18} {'img/s':>8} {'ms/batch':>9} {'vs timm':>8} {'cos':>7} {'top-1':>6}")
    for r in rows:
        cos = f"{r['logit_cosine_vs_fp32']:.4f}" if "logit_cosine_vs_fp32" in r else ""
        top1 = f"{r['top1_agreement_vs_fp32']:.0%}" if "top1_agreement_vs_fp32" in r else ""
        print(f"{r['model']:<24} {r['batch_size']:>5} {r['row']:<18} {r['median_images_per_s']:>8.1f} "
              f"{r['latency_ms']:>9.1f} {r['vs_timm']:>7.2f}x {cos:>7} {top1:>6}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 1])
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of every row")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--checkpoint", help="a Fashion-MNIST model: top-1 agreement on its 10,000 test images")
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"settings": vars(args), "torch": torch.__version__}
    if not args.skip_speed:
        rows = [r for m in args.models for r in speed(m, args.batch_sizes, args.rounds, args.threads, args.warmup,
                                                         args.repeats)]  # fmt: skip
        result["speed"] = rows
        print_table(rows)
    if args.checkpoint:
        result["agreement"] = agreement(args.checkpoint, args.data)
        print(json.dumps(result["agreement"], indent=2))
    RESULTS.mkdir(exist_ok=True)
    default = args.models == parser.get_default("models")
    out = RESULTS / ("int8.json" if default else f"int8_{args.models[0]}.json")
    out.write_text(json.dumps(result, indent=2))
    print(f"-> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
