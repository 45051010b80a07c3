"""The data-scale study on Fashion-MNIST: ViT, BiT ResNet and hybrid on 1k to 60k training images.

Runs `vitkit.study.data_scale` (`vitkit study data-scale`) with the plan below, writes
benchmarks/results/data_scale.json (the study's runs and summary, the gaps to the ViT per size and their
trend against log size (vitkit.study_analysis), timings), copies the two figures to docs/study/ and prints
the tables. The GPU study at a fair budget is benchmarks/data_scale_gpu.py.

The plan: 3 models x (3 + 3 + 1 + 1 + 1) = 27 runs of 102,400 images each (800 steps of 128; 114 passes
over the 900 training images of the 1k subset, 1.9 over the 54,000 of 60k), bf16 autocast, 10% of each
subset held out and evaluated 10 times a run: about 1.5 hours on the 2-core AVX512-BF16 VM (the ViT
trains at about 380 images/s there). `--estimate` measures each model's training speed with a 30-step run
of the study's own code and prints the predicted time of the plan instead; size the budget with it.

    python benchmarks/data_scale.py --estimate      # about 2 minutes
    python benchmarks/data_scale.py                 # about 1.5 hours
    python benchmarks/data_scale.py --analyse       # the gaps' trend, from benchmarks/results/data_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vitkit.study import data_scale, reference_vit  # noqa: E402
from vitkit.study_analysis import analyse, format_analysis, format_by_size  # noqa: E402
from vitkit.train.rundir import RunDir  # noqa: E402
from vitkit.train.runlog import read_metrics  # noqa: E402

RESULTS = Path(__file__).parent / "results"
FIGURES = Path(__file__).parents[1] / "docs" / "study"
PROBE_STEPS = 30


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def probe(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Each model's training and held-out evaluation speed (images/s, medians) and its fixed cost per run
    (test top-1, few-shot, checkpoints, plots: seconds), from a short study of its own on 3,000 images."""
    speeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            started = time.time()
            result = data_scale("fashion_mnist", [3000], [model], PROBE_STEPS * 128, 1, Path(tmp) / model,
                                precision=args.precision, progress=False, evaluations=args.evaluations)  # fmt: skip
            run = result["runs"][0]
            metrics = read_metrics(RunDir(run["run_dir"]).metrics)
            train = statistics.median(r["images_per_s"] for r in metrics[1:] if "images_per_s" in r)
            evals = statistics.median(r["eval_images_per_s"] for r in metrics if "eval_images_per_s" in r)
            held_out = args.evaluations * 300 / evals
            fixed = time.time() - started - PROBE_STEPS * 128 / train - held_out
            speeds[run["model"]] = {"train_images_per_s": train, "eval_images_per_s": evals, "fixed_s": fixed}
    return speeds


def predicted_minutes(args: argparse.Namespace, speeds: dict[str, dict[str, float]]) -> float:
    seconds = 0.0
    for speed in speeds.values():
        for size, seeds in zip(args.sizes, args.seeds):
            held_out = args.evaluations * args.holdout * size / speed["eval_images_per_s"]
            seconds += seeds * (args.images_seen / speed["train_images_per_s"] + held_out + speed["fixed_s"])
    return seconds / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_ints, default=[1000, 3000, 10000, 30000, 60000])
    parser.add_argument("--seeds", type=_ints, default=[3, 3, 1, 1, 1], help="per size")
    parser.add_argument("--models", default="vit,resnet,hybrid")
    parser.add_argument("--images-seen", type=int, default=102_400)
    parser.add_argument("--holdout", type=float, default=0.1)
    parser.add_argument("--evaluations", type=int, default=10)
    parser.add_argument("--precision", default="bf16", help="bf16 autocast pays on CPUs with AVX512-BF16/AMX")
    parser.add_argument("--out", default="runs/study-fashion-mnist")
    parser.add_argument("--result", default=str(RESULTS / "data_scale.json"))
    parser.add_argument("--figures", default=str(FIGURES))
    parser.add_argument("--estimate", action="store_true", help="measure speeds, print the plan's predicted time")
    parser.add_argument("--analyse", action="store_true", help="print the gap analysis of --result's runs, no training")
    args = parser.parse_args()

    if args.analyse:
        runs = json.loads(Path(args.result).read_text())["runs"]
        print(format_analysis(analyse(runs, reference_vit("fashion_mnist", {r["model"]: r["family"] for r in runs}))))
        return

    if args.estimate:
        speeds = probe(args)
        for model, s in speeds.items():
            print(f"{model}: train {s['train_images_per_s']:.0f} img/s, eval {s['eval_images_per_s']:.0f} img/s, "
                  f"{s['fixed_s']:.0f} s fixed per run")  # fmt: skip
        print(f"predicted: {predicted_minutes(args, speeds):.0f} minutes for the plan")
        return

    started = time.time()
    study = data_scale("fashion_mnist", args.sizes, args.models.split(","), args.images_seen, args.seeds, args.out,
                       args.holdout, args.precision, evaluations=args.evaluations)  # fmt: skip
    figures = Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    for name in ("accuracy_vs_size.png", "accuracy_vs_flops.png"):
        shutil.copyfile(study["files"][name], figures / name)
    train_seconds = {r["run_dir"]: read_metrics(RunDir(r["run_dir"]).metrics)[-1]["time_s"] for r in study["runs"]}
    result = {
        **study,
        "train_minutes_per_run": {k: round(v / 60, 2) for k, v in train_seconds.items()},
        "wall_minutes": (time.time() - started) / 60,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join(["python", "benchmarks/data_scale.py", *sys.argv[1:]]),
    }  # fmt: skip
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(result, indent=1) + "\n")
    print(format_by_size(study["summary"]))
    print(format_analysis(study["analysis"]))
    print(f"{result['wall_minutes']:.0f} minutes; {args.result}; figures in {figures}")


if __name__ == "__main__":
    main()
