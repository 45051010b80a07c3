"""Equal-effort tuning of the small-data recipes (vitkit.train.recipes, small-data-*): the same grid and the
same budget for every family, scored on held-out training images only (never the test split).

For each family's Fashion-MNIST model, each of the 6 grid points below is a one-run study at each tuning
size (default 3,000 and 30,000 images, seed 0, 128,000 images seen: half a study run), all else from the
family's recipe. The score is the best held-out top-1, averaged over the sizes. Per family: 6 points x 2
sizes = 12 runs, 1.54 M images seen. Writes benchmarks/results/tune_recipes.json and prints, per family,
the grid and the winner (to copy into recipes.py by hand).

    python benchmarks/tune_recipes.py          # 36 runs, about 1.5 hours on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vitkit.study import data_scale  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# The same six points for every family: Adam with decoupled weight decay (the paper's optimiser for every
# family, ResNets included, appendix D.1) and SGD with momentum (the classic from-scratch ResNet recipe),
# each at its usual learning rate, a third of it and three times it.
GRID: list[dict[str, Any]] = [
    *({"optimizer": "adamw", "lr": lr, "weight_decay": 0.05, "clip_grad": 1.0} for lr in (1e-3, 2e-3, 4e-3)),
    *({"optimizer": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 1e-4, "clip_grad": None} for lr in (0.03, 0.1, 0.3)),
]  # fmt: skip


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit,resnet,hybrid")
    parser.add_argument("--sizes", type=_ints, default=[3000, 30000])
    parser.add_argument("--images-seen", type=int, default=128_000)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--out", default="runs/tune-recipes")
    parser.add_argument("--result", default=str(RESULTS / "tune_recipes.json"))
    args = parser.parse_args()

    families: dict[str, Any] = {}
    for model in args.models.split(","):
        probes = []
        for i, point in enumerate(GRID):
            study = data_scale("fashion_mnist", args.sizes, [model], args.images_seen, 1, Path(args.out) / model / f"p{i}",
                               precision=args.precision, recipe_overrides=point, progress=False)  # fmt: skip
            held_out = [r["heldout_top1"] for r in study["runs"]]
            probes.append({"overrides": point, "heldout_top1": held_out, "score": statistics.mean(held_out)})
            print(f"{study['runs'][0]['model']} {point}: held-out top-1 {held_out} -> {probes[-1]['score']:.2%}")
        family = study["runs"][0]["family"]
        families[family] = {"model": study["runs"][0]["model"], "probes": probes,
                            "best": max(probes, key=lambda p: p["score"])}  # fmt: skip
    budget = {"grid_points": len(GRID), "sizes": args.sizes, "images_seen_per_probe": args.images_seen,
              "images_seen_per_family": len(GRID) * len(args.sizes) * args.images_seen}  # fmt: skip
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps({"budget": budget, "families": families}, indent=1) + "\n")
    for family, f in families.items():
        print(f"{family} ({f['model']}): best {f['best']['overrides']} held-out {f['best']['score']:.2%}")


if __name__ == "__main__":
    main()
