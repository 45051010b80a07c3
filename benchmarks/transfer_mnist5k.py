"""The paper's transfer claim, small: pretrain on Fashion-MNIST, fine-tune on mnist5k at a higher
resolution (position embeddings interpolated, new zero head), versus the same model trained on
mnist5k from scratch with the same budget (steps, batch, resolution). Several seeds each.

    python benchmarks/transfer_mnist5k.py --pretrained runs/bench-fashion-mnist/model.safetensors

Writes benchmarks/results/transfer_mnist5k.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from vitkit.train.rundir import RunDir

RESULTS = Path(__file__).parent / "results"


def train(out: Path, seed: int, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "vitkit", "train", "--data", "mnist5k", "--out", str(out), "--seed", str(seed),
               "--no-progress", *extra]  # fmt: skip
    subprocess.run(command, check=True)
    evals = [json.loads(line) for line in open(RunDir(out).metrics) if "eval_top1" in line]
    return {"seed": seed, "test_top1": evals[-1]["eval_top1"], "minutes": evals[-1]["time_s"] / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", required=True, help="a Fashion-MNIST checkpoint (benchmarks/fashion_mnist.py)")
    parser.add_argument("--model", default="vit_fashion_patch4_28")
    parser.add_argument("--img-size", type=int, default=36, help="fine-tuning resolution (the patch size stays)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/bench-transfer")
    args = parser.parse_args()

    budget = ["--model", args.model, "--img-size", str(args.img_size), "--steps", str(args.steps), "--batch-size", "128"]
    arms = {
        # Table 4's fine-tuning: SGD with momentum, no weight decay, clipping at 1, cosine, zero head
        "fine-tuned from Fashion-MNIST": [*budget, "--recipe", "paper-finetune", "--lr", "0.03",
                                          "--crop-scale", "0.85", "1", "--init-from", args.pretrained],
        # from scratch: the CPU recipe tuned for training these small ViTs from nothing, with the AdamW it
        # was measured with (docs/benchmarks.md)
        "from scratch": [*budget, "--recipe", "fashion-cpu", "--optimizer", "adamw"],
    }  # fmt: skip
    results = {}
    for arm, extra in arms.items():
        tag = "finetune" if "fine" in arm else "scratch"
        runs = [train(Path(args.out) / f"{tag}-seed{s}", s, extra) for s in range(args.seeds)]
        accs = [r["test_top1"] for r in runs]
        results[arm] = {"runs": runs, "mean": statistics.mean(accs), "std": statistics.pstdev(accs), "args": extra}
    result = {"budget": {"steps": args.steps, "batch_size": 128, "img_size": args.img_size, "model": args.model},
              "pretrained": args.pretrained, "arms": results,
              "command": " ".join(["python", "benchmarks/transfer_mnist5k.py", *sys.argv[1:]])}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "transfer_mnist5k.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"| mnist5k, {args.steps} steps at {args.img_size}px | test top-1 (mean ± std over {args.seeds} seeds) |")
    print("|---|---|")
    for arm, r in results.items():
        print(f"| {arm} | {r['mean']:.2%} ± {r['std']:.2%} |")


if __name__ == "__main__":
    main()
