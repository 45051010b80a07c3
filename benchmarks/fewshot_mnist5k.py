"""Few-shot linear evaluation on mnist5k of frozen features: a ViT trained on Fashion-MNIST versus a
randomly initialised network of the same shape (paper section 4.1, big_vision's closed-form ridge).

    python benchmarks/fewshot_mnist5k.py --checkpoint runs/bench-fashion-mnist/model.safetensors

Writes benchmarks/results/fewshot_mnist5k.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import vitkit

RESULTS = Path(__file__).parent / "results"


def fewshot(checkpoint: Path, shots: str, seeds: int) -> dict:
    command = [sys.executable, "-m", "vitkit", "fewshot", "--checkpoint", str(checkpoint), "--data", "mnist5k",
               "--shots", shots, "--seeds", str(seeds), "--json"]  # fmt: skip
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--shots", default="1,5,10,25")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()

    trained = vitkit.load(args.checkpoint)
    torch.manual_seed(0)
    random = vitkit.VisionTransformer(trained.config.replace())  # same shape, the official initialisation
    with tempfile.TemporaryDirectory() as tmp:
        random_path = Path(tmp) / "random.safetensors"
        vitkit.save(random, random_path)
        results = {"Fashion-MNIST ViT": fewshot(Path(args.checkpoint), args.shots, args.seeds),
                   "random init, same shape": fewshot(random_path, args.shots, args.seeds)}  # fmt: skip
    out = {"checkpoint": args.checkpoint, "results": results,
           "command": " ".join(["python", "benchmarks/fewshot_mnist5k.py", *sys.argv[1:]])}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fewshot_mnist5k.json").write_text(json.dumps(out, indent=2) + "\n")
    shots = args.shots.split(",")
    print(f"| mnist5k features from | {' | '.join(f'{k}-shot' for k in shots)} |")
    print("|---|" + "---|" * len(shots))
    for arm, r in results.items():
        cells = [f"{r['shots'][k]['mean']:.1%} ± {r['shots'][k]['std']:.1%}" for k in shots]
        print(f"| {arm} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
