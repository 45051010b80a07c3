"""A hand-written interleaved A/B of vitkit against timm, to check `vitkit bench --compare timm` by.

It shares none of `vitkit.bench`'s timing code: the same two models (vitkit's seeded random weights and
timm's twin holding them), fp32 inference, each round timing a block of `--steps` batches of one model
and then of the other, in the order vitkit timm, timm vitkit, ... Prints one JSON object: the median of
the rounds' ratios (vitkit images/s over timm's) and their range.

    python benchmarks/compare_ab.py --model vit_small_patch16_224 --batch-size 16 [--rounds 6 --steps 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from vitkit.bench import bench_model
from vitkit.peers import timm_twin


def seconds_per_block(model: torch.nn.Module, images: torch.Tensor, steps: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(steps):
            model(images)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=2, help="batches of one model in a row, per round")
    args = parser.parse_args()

    ours = bench_model(args.model).eval()
    models = {"vitkit": ours, "timm": timm_twin(ours).eval()}
    images = torch.randn(args.batch_size, 3, *ours.config.img_size, generator=torch.Generator().manual_seed(1))
    for model in models.values():
        seconds_per_block(model, images, 2)  # warm-up
    ratios = []
    for r in range(args.rounds):
        order = ["vitkit", "timm"] if r % 2 == 0 else ["timm", "vitkit"]
        seconds = {name: seconds_per_block(models[name], images, args.steps) for name in order}
        ratios.append(seconds["timm"] / seconds["vitkit"])
        print(f"round {r}: vitkit / timm {ratios[-1]:.3f}", flush=True)
    print(json.dumps({**vars(args), "threads": torch.get_num_threads(), "ratio": statistics.median(ratios),
                      "ratio_min": min(ratios), "ratio_max": max(ratios), "round_ratios": ratios}))  # fmt: skip


if __name__ == "__main__":
    main()
