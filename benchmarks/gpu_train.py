"""Training throughput on one GPU: the bare step against `vitkit train` end to end.

For each model and batch size, in one process:
- the bare step on synthetic device tensors (bf16 autocast, AdamW): eager (fused AdamW, as issue 28's table
  measured it) and captured as one CUDA graph (vitkit.train.graphs.GraphStep, capturable AdamW);
- `vitkit train`'s end-to-end training images/s through the Python API (the device-resident feed with its
  crops and flips, the captured step, metrics read every --log-every steps), from metrics.jsonl;
- the ratio of the two (targets on an H200: >= 0.85 at batch >= 1024; >= 40,000 img/s at batch 128).
With --profile DIR, a torch.profiler summary of a short end-to-end run per row (top kernels, GPU idle gaps)
goes to DIR, for a row that misses its target.

    python benchmarks/gpu_train.py [--device cuda] [--batches 128,1024,4096] [--result FILE] [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
import yaml

import vitkit
from vitkit.train import fit, make_config
from vitkit.train.graphs import GraphStep
from vitkit.train.rundir import RunDir

RESULTS = Path(__file__).parent / "results"
MODELS = ("vit_fashion_patch4_28", "resnetv2_fashion_28", "vit_fashion_hybrid_28")


def _timed(step: Callable[[], Any], device: torch.device, warmup: int, seconds: float) -> float:
    """Steps per second of `step`, after `warmup` steps, over about `seconds`."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize(device)
    n, started = 0, time.perf_counter()
    while True:
        for _ in range(10):
            step()
        n += 10
        torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return n / elapsed


def bare_step(model_name: str, batch: int, device: torch.device, graphs: bool, seconds: float) -> float:
    """Images/s of fwd + bwd + AdamW on synthetic device tensors, eager or as one CUDA graph."""
    torch.manual_seed(0)
    model = vitkit.create_model(model_name, num_classes=10).to(device).train()
    images = torch.randn(batch, model.config.in_chans, *model.config.img_size, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    if graphs:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loss_fn = lambda logits, y, ls: F.cross_entropy(logits.float(), y, label_smoothing=ls)  # noqa: E731
        step = GraphStep(model, optimizer, loss_fn, 0.0, None, "bf16", (images, labels))
        rate = _timed(lambda: step.step(images, labels, 1e-4), device, 5, seconds)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def eager() -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(images).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        rate = _timed(eager, device, 5, seconds)
    return rate * batch


def end_to_end(model_name: str, batch: int, device: str, steps: int, out: Path, cuda_graphs: str) -> dict[str, Any]:
    """`vitkit train` for `steps` steps (fashion-gpu, AdamW, the given batch): its median training images/s
    after the first record (which holds the capture), and what it chose."""
    log_every = max(1, steps // 6)
    cfg = make_config(
        {"batch_size": batch, "steps": steps, "optimizer": "adamw"}, data="fashion_mnist", model=model_name,
        recipe_name="fashion-gpu", out=str(out), device=device, precision="bf16", progress=False,
        log_every=log_every, checkpoint_every=10**9, eval_every=10**9, limit_eval=2048, cuda_graphs=cuda_graphs,
    )  # fmt: skip
    started = time.perf_counter()
    fit(cfg)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in RunDir(out).metrics.read_text().splitlines()]
    speeds = [r["images_per_s"] for r in rows if "images_per_s" in r]
    derived = yaml.safe_load(RunDir(out).config.read_text())["derived"]
    return {
        "images_per_s": statistics.median(speeds[1:] or speeds), "records": len(speeds), "steps": steps,
        "wall_s": round(wall, 2), "feed": derived["augmentation"], "cuda_graphs": derived["cuda_graphs"],
    }  # fmt: skip


def profile_row(model_name: str, batch: int, device: str, out: Path, summary: Path) -> None:
    """torch.profiler over a short end-to-end run: the top kernels by GPU time and the largest gaps
    between kernels (the GPU idle, waiting on the host) in `summary`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        end_to_end(model_name, batch, device, 60, out, "auto")
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)  # fmt: skip
    gaps, busy, end = [], 0.0, None
    for e in kernels:
        start, stop = e.time_range.start, e.time_range.end
        if end is not None and start > end:
            gaps.append((start - end, e.name))
        busy += max(0.0, stop - max(start, end or start))
        end = stop if end is None else max(end, stop)
    span = (end - kernels[0].time_range.start) if kernels else 0.0
    lines = [f"{model_name} batch {batch}: {len(kernels)} kernels over {span / 1e3:.1f} ms, GPU busy "
             f"{busy / max(span, 1e-9):.1%}", "largest gaps (µs, the kernel after):"]  # fmt: skip
    lines += [f"  {gap:10.0f}  {name[:100]}" for gap, name in sorted(gaps, reverse=True)[:15]]
    lines += ["", prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)]
    summary.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default="128,1024,4096")
    parser.add_argument("--seconds", type=float, default=1.0, help="timing of each bare step")
    parser.add_argument("--e2e-images", type=int, default=150_000, help="images of each end-to-end run")
    parser.add_argument("--result", default=str(RESULTS / "gpu_train.json"))
    parser.add_argument("--profile", metavar="DIR", help="also write a torch.profiler summary of each row here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise SystemExit("gpu_train.py: needs a CUDA device (--device cuda)")
    rows = []
    for model_name in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            row: dict[str, Any] = {"model": model_name, "batch": batch}
            for key, fn in [
                ("bare_eager", lambda: bare_step(model_name, batch, device, False, args.seconds)),
                ("bare_graph", lambda: bare_step(model_name, batch, device, True, args.seconds)),
                ("e2e", lambda: end_to_end(model_name, batch, args.device, max(30, args.e2e_images // batch),
                                           Path(tempfile.mkdtemp()) / "run", "auto")),
            ]:  # fmt: skip
                try:  # a failing measurement is recorded, and the others go on
                    row[key] = fn()
                except Exception as e:  # noqa: BLE001
                    row[key] = None
                    row[f"{key}_error"] = f"{type(e).__name__}: {e}"[:500]
                torch.cuda.empty_cache()
            if row.get("e2e") and row.get("bare_graph"):
                row["e2e_over_bare_graph"] = row["e2e"]["images_per_s"] / row["bare_graph"]
            if row.get("e2e") and row.get("bare_eager"):
                row["e2e_over_bare_eager"] = row["e2e"]["images_per_s"] / row["bare_eager"]
            if args.profile:
                Path(args.profile).mkdir(parents=True, exist_ok=True)
                try:
                    profile_row(model_name, batch, args.device, Path(tempfile.mkdtemp()) / "run",
                                Path(args.profile) / f"profile_{model_name}_b{batch}.txt")  # fmt: skip
                except Exception as e:  # noqa: BLE001
                    row["profile_error"] = f"{type(e).__name__}: {e}"[:500]
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "device": torch.cuda.get_device_name(device), "torch": torch.__version__, "precision": "bf16",
        "command": "python benchmarks/gpu_train.py " + " ".join(sys.argv[1:]), "rows": rows,
    }  # fmt: skip
    path = Path(args.result)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)  # whole or not at all
    print("| model | batch | bare eager | bare graph | vitkit train | / bare graph |\n|---|---:|---:|---:|---:|---:|")
    fmt = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
    for r in rows:
        e2e = (r.get("e2e") or {}).get("images_per_s")
        ratio = r.get("e2e_over_bare_graph")
        print(f"| {r['model']} | {r['batch']} | {fmt(r.get('bare_eager'))} | {fmt(r.get('bare_graph'))} | {fmt(e2e)} "
              f"| {'-' if ratio is None else f'{ratio:.2f}'} |")  # fmt: skip


if __name__ == "__main__":
    main()
