"""Training throughput with the batched crops and flips of in-memory images against the per-image v2
transforms in the data loader: the same run (`fashion-cpu-long`, `vit_fashion_patch4_28`, bf16) twice,
the second with vitkit.data.batched switched off, each for --steps optimiser steps, in turn.

    .venv/bin/python benchmarks/batched_augmentation.py [--steps 120] [--rounds 2]

Writes benchmarks/results/batched_augmentation.json and prints the median images/s of each path
(the loop's own figure in metrics.jsonl, first 20 steps left out as warm-up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from unittest import mock

from vitkit.train import fit, make_config
from vitkit.train.rundir import RunDir

RESULTS = Path(__file__).parent / "results"


def images_per_s(steps: int, batched: bool, out: Path) -> float:
    # every patch kept, as when this was measured (the recipe's patch dropout would halve the model's share)
    recipe = {"steps": steps, "patch_drop": 0.0, "drop_path": 0.05}
    cfg = make_config(recipe, data="fashion_mnist", model="vit_fashion_patch4_28", recipe_name="fashion-cpu-long",
                      precision="bf16", out=str(out), progress=False, log_every=10, checkpoint_every=10**9,
                      limit_eval=512)  # fmt: skip
    if batched:
        fit(cfg)
    else:  # no batched data: the loop falls back to the per-image transforms, as it does for RandAugment
        with mock.patch("vitkit.train.loop.batched_training_data", return_value=None):
            fit(cfg)
    rows = [json.loads(line) for line in open(RunDir(out).metrics)]
    return statistics.median(r["images_per_s"] for r in rows if "images_per_s" in r and r["step"] > 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    measured: dict[str, list[float]] = {"batched": [], "per-image": []}
    with tempfile.TemporaryDirectory(prefix="vitkit-augmentation-") as tmp:
        for r in range(args.rounds):
            for name in ("batched", "per-image") if r % 2 == 0 else ("per-image", "batched"):
                measured[name].append(images_per_s(args.steps, name == "batched", Path(tmp) / f"{name}-{r}"))
                print(f"round {r}: {name:<9} {measured[name][-1]:.0f} img/s", flush=True)
    medians = {k: statistics.median(v) for k, v in measured.items()}
    result = {**vars(args), "images_per_s": measured, "median_images_per_s": medians,
              "speedup": medians["batched"] / medians["per-image"]}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batched_augmentation.json").write_text(json.dumps(result, indent=2))
    print(f"batched / per-image: {result['speedup']:.2f}x "
          f"({medians['batched']:.0f} vs {medians['per-image']:.0f} img/s)")


if __name__ == "__main__":
    main()
