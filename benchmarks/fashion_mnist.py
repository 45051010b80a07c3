"""Fashion-MNIST from scratch with a pure ViT: time to accuracy, within a 60-minute budget on the CPU or
(`--device cuda --recipe fashion-gpu --budget-minutes 1`) a 60-second one on a GPU.

Trains with `vitkit train`, then reads the run's metrics.jsonl: final test top-1, the minutes at
which test top-1 first reached 90%, 92%, 93% and 94% (time to accuracy), training and evaluation
throughput, peak memory.
Writes benchmarks/results/fashion_mnist.json and prints a table.

    python benchmarks/fashion_mnist.py [--model vit_fashion_patch4_28] [--recipe fashion-cpu-long] [--out DIR]
    python benchmarks/fashion_mnist.py --device cuda --recipe fashion-gpu --budget-minutes 1 --result FILE

Options it does not know (--device, --epochs, --feed, --cuda-graphs, ...) go to `vitkit train`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from vitkit.train.rundir import RunDir

RESULTS = Path(__file__).parent / "results"
TARGETS = (90, 92, 93, 94)  # test top-1, %


def first_time_at(evals: list[dict], threshold: float) -> float | None:
    """Minutes of training at the first evaluation whose top-1 reached `threshold`."""
    return next((e["time_s"] / 60 for e in evals if e["eval_top1"] >= threshold), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_fashion_patch4_28")
    parser.add_argument("--recipe", default="fashion-cpu-long")
    parser.add_argument("--out", default="runs/bench-fashion-mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="bf16", help="bf16 autocast pays on CPUs with AVX512-BF16/AMX")
    parser.add_argument("--budget-minutes", type=float, default=60.0)
    parser.add_argument("--result", default=str(RESULTS / "fashion_mnist.json"))
    args, extra = parser.parse_known_args()

    command = [sys.executable, "-m", "vitkit", "train", "--data", "fashion_mnist", "--model", args.model,
               "--recipe", args.recipe, "--out", args.out, "--seed", str(args.seed), "--precision", args.precision,
               "--no-progress", *extra]  # fmt: skip
    start = time.time()
    log = []
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:  # its log passed on as it comes
        for line in process.stderr:
            sys.stderr.write(line)
            log.append(line)
    if process.returncode:
        raise SystemExit(process.returncode)
    wall_min = (time.time() - start) / 60

    rows = [json.loads(line) for line in open(RunDir(args.out).metrics)]
    evals = [r for r in rows if "eval_top1" in r]
    train = [r for r in rows if "images_per_s" in r]
    in_budget = [e for e in evals if e["time_s"] <= args.budget_minutes * 60]
    result = {
        "model": args.model, "recipe": args.recipe, "seed": args.seed, "precision": args.precision, "extra_args": extra,
        "budget_minutes": args.budget_minutes,
        "top1_within_budget": in_budget[-1]["eval_top1"] if in_budget else None,
        "test_top1": evals[-1]["eval_top1"], "best_test_top1": max(e["eval_top1"] for e in evals),
        "epochs": evals[-1]["epoch"], "training_minutes": evals[-1]["time_s"] / 60, "wall_minutes": wall_min,
        **{f"minutes_to_{t}": first_time_at(evals, t / 100) for t in TARGETS},
        **{f"seconds_to_{t}": (lambda m: None if m is None else round(m * 60, 1))(first_time_at(evals, t / 100))
           for t in TARGETS},
        "first_log_line": next((line for line in log if line.startswith("feed: ")), None),
        "train_images_per_s": sorted(r["images_per_s"] for r in train)[len(train) // 2],
        "eval_images_per_s": sorted(e["eval_images_per_s"] for e in evals)[len(evals) // 2],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "top1_per_epoch": [[e["epoch"], e["eval_top1"], round(e["time_s"] / 60, 2)] for e in evals],
        "command": " ".join(["python", "benchmarks/fashion_mnist.py", *sys.argv[1:]]),
    }  # fmt: skip
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
    fmt = lambda m: "-" if m is None else f"{m:.1f} min" if m >= 2 else f"{m * 60:.0f} s"  # noqa: E731
    pct = lambda x: "-" if x is None else f"{x:.2%}"  # noqa: E731
    to = " | ".join(f"to {t}%" for t in TARGETS)
    reached = " | ".join(fmt(result[f"minutes_to_{t}"]) for t in TARGETS)
    print(f"| model | top-1 within {args.budget_minutes:.0f} min | final | {to} | training time "
          f"| train img/s | eval img/s | peak RSS |\n|---|---|---|{'---|' * len(TARGETS)}---|---|---|---|\n"
          f"| {args.model} | {pct(result['top1_within_budget'])} | {pct(result['test_top1'])} | {reached} "
          f"| {fmt(result['training_minutes'])} | {result['train_images_per_s']:.0f} "
          f"| {result['eval_images_per_s']:.0f} | {result['peak_rss_mb']:.0f} MB |")  # fmt: skip


if __name__ == "__main__":
    main()
