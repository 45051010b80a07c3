"""Equal-effort tuning of the small-data recipes (vitkit.train.recipes, small-data-*): the same grid and the
same budget for every family, scored on held-out training images only (never the test split).

For each family's Fashion-MNIST model, each of the 6 grid points below is a one-run study at each tuning
size (default: 3,000 images, seed 0, 32,000 images seen, a third of a CPU study run), all else from the
family's recipe (`--base`). The score is the best held-out top-1 (10% of the subset), averaged over the sizes;
a setting that diverges scores 0. The rule, fixed before the grid runs: per family, the highest score wins
(the earlier grid point on a tie). The grid is written at batch 128; at another `--batch-size` its learning
rates are scaled as the GPU recipes are (AdamW by the square root of the batch ratio, SGD linearly).

The grid runs point by point across the families (every family's first point, then every family's second,
...), and the results are rewritten after every probe, so a run cut short (`timeout`) still has equal
effort per family: the winners come from the points that every family finished. `--recipes-out` writes them
as a recipes file that `vitkit study data-scale --recipes` reads (from the start: the untuned bases).

    python benchmarks/tune_recipes.py          # 18 runs, about 35 minutes on 2 CPU cores
    python benchmarks/tune_recipes.py --device cuda --batch-size 1024 --base 'small-data-{family}-gpu' \\
        --sizes 10000 --images-seen 120000 --precision bf16 --recipes-out DIR/recipes.json   # the GPU grid
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vitkit.checkpoints.io import atomic_write  # noqa: E402
from vitkit.study import data_scale, resolve_models  # noqa: E402

RESULTS = Path(__file__).parent / "results"
GRID_BATCH = 128
# The same six points for every family: Adam with decoupled weight decay (the paper's optimiser for every
# family, ResNets included, appendix D.1) and SGD with momentum (the classic from-scratch ResNet recipe),
# each at its usual learning rate, a third of it and three times it. They run in this order, the same for
# every family, so that a grid cut by a time limit has tried the CPU grid's three winners first (AdamW 2e-3:
# ViT, SGD 0.03: hybrid, AdamW 4e-3: ResNet), then AdamW 1e-3, SGD 0.1 and SGD 0.3.
_ADAMW: dict[str, Any] = {"optimizer": "adamw", "weight_decay": 0.05, "clip_grad": 1.0}
_SGD: dict[str, Any] = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "clip_grad": None}
GRID: list[dict[str, Any]] = [{**base, "lr": lr} for base, lr in [
    (_ADAMW, 2e-3), (_SGD, 0.03), (_ADAMW, 4e-3), (_ADAMW, 1e-3), (_SGD, 0.1), (_SGD, 0.3)]]  # fmt: skip
RULE = "per family, the highest mean best-held-out top-1 over the tuning sizes; the earlier grid point on a tie"


def scaled(point: dict[str, Any], batch: int) -> dict[str, Any]:
    """A grid point at `batch`: AdamW's lr times sqrt(batch / 128), SGD's times batch / 128; the batch set."""
    power = 0.5 if point["optimizer"] == "adamw" else 1.0
    return {**point, "lr": point["lr"] * (batch / GRID_BATCH) ** power, "batch_size": batch}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1) + "\n"))


def winners(families: dict[str, Any], base: str) -> dict[str, Any]:
    """The recipes file: per family the best probe among the grid points every family finished (equal effort),
    else the untuned base."""
    done = min((len(f["probes"]) for f in families.values()), default=0)
    recipes = {}
    for family, f in families.items():
        probes = f["probes"][:done]
        best = max(probes, key=lambda p: p["score"]) if probes else None  # max keeps the first on a tie
        recipes[family] = {"recipe": base.format(family=family), "overrides": best["overrides"] if best else {},
                           "tuned": best is not None, "heldout_top1": best["score"] if best else None,
                           "grid_points_done": done}  # fmt: skip
    return {"rule": RULE, "grid_points_done": done, "grid_points": len(GRID), "recipes": recipes}


def write_recipes(path: Path, families: dict[str, Any], base: str) -> None:
    """The winners of the families tuned here into the recipes file at `path`, keeping its other families (tuned
    by an earlier run of the same grid, e.g. the hybrid after the ViT and the ResNet)."""
    doc = winners(families, base)
    if path.is_file():
        held = json.loads(path.read_text())
        doc["recipes"] = {**held.get("recipes", {}), **doc["recipes"]}
        doc["grid_points_done"] = min(r.get("grid_points_done", 0) for r in doc["recipes"].values())
    _write(path, doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--models", default="vit,resnet,hybrid")
    parser.add_argument("--sizes", type=_ints, default=[3000])
    parser.add_argument("--images-seen", type=int, help="budget of every probe (default 32,000 images)")
    parser.add_argument("--epochs-per-size", type=float, help="instead: E passes over each probe's training part")
    parser.add_argument("--max-images-seen", type=int, help="with --epochs-per-size: at most M images a probe")
    parser.add_argument("--ledger-dir", help="a ledger per grid point (DIR/pI.jsonl): finished probes are not "
                                             "trained again, on any machine")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=GRID_BATCH)
    parser.add_argument("--base", default="small-data-{family}", help="recipe each grid point overrides")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--patience", type=int, help="stop a probe after N held-out evaluations without a better one")
    parser.add_argument("--evaluations", type=int, default=10, help="held-out evaluations per probe")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--out", default="runs/tune-recipes")
    parser.add_argument("--result", default=str(RESULTS / "tune_recipes.json"))
    parser.add_argument("--recipes-out", help="write the winners as a recipes file (vitkit study --recipes)")
    args = parser.parse_args()
    if args.images_seen is None and args.epochs_per_size is None:
        args.images_seen = 32_000

    models = resolve_models(args.data, args.models.split(","))
    families: dict[str, Any] = {family: {"model": model, "probes": []} for model, family in models.items()}
    budget = {"grid_points": len(GRID), "sizes": args.sizes, "images_seen_per_probe": args.images_seen,
              "epochs_per_size": args.epochs_per_size, "max_images_seen": args.max_images_seen,
              "evaluations": args.evaluations,
              "batch_size": args.batch_size, "base": args.base, "data": args.data, "device": args.device, "precision": args.precision,
              "patience": args.patience}  # fmt: skip
    command = " ".join(["python", "benchmarks/tune_recipes.py", *sys.argv[1:]])
    if args.recipes_out:
        write_recipes(Path(args.recipes_out), families, args.base)
    for i, point in enumerate(GRID):
        overrides = scaled(point, args.batch_size)
        for model, family in models.items():
            started = time.time()
            study = data_scale(args.data, args.sizes, [model], args.images_seen, 1, Path(args.out) / model / f"p{i}",
                               precision=args.precision, recipe_overrides=overrides, progress=False,
                               device=args.device, workers=args.workers, evaluations=args.evaluations,
                               patience=args.patience, recipes={family: {"recipe": args.base.format(family=family)}},
                               epochs_per_size=args.epochs_per_size, max_images_seen=args.max_images_seen,
                               ledger=Path(args.ledger_dir) / f"p{i}.jsonl" if args.ledger_dir else None)  # fmt: skip
            held_out = [r["heldout_top1"] for r in study["runs"]]
            diverged = [r["diverged"] for r in study["runs"] if r["diverged"]]
            score = statistics.mean(0.0 if h is None else h for h in held_out)  # a diverged setting scores 0
            families[family]["probes"].append({"overrides": overrides, "heldout_top1": held_out, "score": score,
                                               "diverged": diverged or None, "seconds": time.time() - started,
                                               "steps": [r["steps"] for r in study["runs"]],
                                               "stopped": [r.get("stopped") for r in study["runs"]]})  # fmt: skip
            print(f"{model} {overrides}: held-out top-1 {held_out} -> {score:.2%}", flush=True)
            _write(Path(args.result), {"budget": budget, "rule": RULE, "families": families, "command": command})
        if args.recipes_out:
            write_recipes(Path(args.recipes_out), families, args.base)
    for family, spec in winners(families, args.base)["recipes"].items():
        print(f"{family} ({families[family]['model']}): best {spec['overrides']} held-out {spec['heldout_top1']:.2%}")


if __name__ == "__main__":
    main()
