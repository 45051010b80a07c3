"""The data-scale study at a fair budget, on one GPU (issue 26): tune, then run, then report, in one command.

1. tune: benchmarks/tune_recipes.py's grid at batch 1024 (small-data-{family}-gpu recipes), the same grid and
   budget for every family, the rule fixed before it runs (the best held-out score wins); its winners go to
   DIR/recipes.json (the untuned bases until a grid point has finished for every family).
2. study: `vitkit study data-scale` on Fashion-MNIST at sizes 1k-60k, ViT, BiT ResNet and hybrid, every run
   `--epochs-of-largest` passes over 60k, early stopping on the held-out 10% (`--patience`), a transfer
   10-shot on `--transfer`, with the tuned recipes. Seed 0 at every size comes first, the further seeds after.
3. report: the finished runs (vitkit.study.collect, so a study cut short by its time limit still reports) ->
   benchmarks/results/data_scale_gpu.json, docs/study/gpu_accuracy_vs_{size,flops}.png, markdown tables
   (the docs' GPU blocks, with --fill-docs).

Each of the first two steps runs in its own process under `timeout -k 10 S`; results are written as runs
finish, and every run directory resumes, so the same command again continues where a cut left off.

    python benchmarks/data_scale_gpu.py --device cuda --out runs/study-gpu          # <= 7 minutes on one H200
    python benchmarks/data_scale_gpu.py --step report --out runs/study-gpu --fill-docs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vitkit.checkpoints.io import atomic_write  # noqa: E402
from vitkit.study import FIGURES, collect, resolve_models, transfer_task  # noqa: E402
from vitkit.study_analysis import format_analysis, format_by_size  # noqa: E402
from vitkit.train.rundir import RunDir  # noqa: E402
from vitkit.train.runlog import read_metrics  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "data_scale_gpu.json"
BLOCK = "gpu-study"  # <!-- gpu-study:begin --> ... <!-- gpu-study:end --> in each page, and its figures' folder
DOCS = {ROOT / "docs" / "study.md": "study", ROOT / "README.md": "docs/study"}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _timed(command: list[str], seconds: int) -> dict[str, Any]:
    """Run `command` under `timeout -k 10 seconds` with this checkout's src on the path; its return code
    (124: cut by the limit) and wall time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    started = time.time()
    rc = subprocess.run(["timeout", "-k", "10", str(seconds), *command], env=env).returncode
    return {"command": " ".join(command), "limit_s": seconds, "rc": rc, "timed_out": rc in (124, 137),
            "wall_s": round(time.time() - started, 1)}  # fmt: skip


def tune(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    command = [sys.executable, str(ROOT / "benchmarks" / "tune_recipes.py"), "--data", args.data, "--models", args.models,
               "--sizes", ",".join(map(str, args.tune_sizes)), "--images-seen", str(args.tune_images),
               "--batch-size", str(args.batch_size), "--base", "small-data-{family}-gpu", "--precision", args.precision,
               "--evaluations", str(args.tune_evaluations), "--patience", str(args.patience), "--out", str(out / "tune"),
               "--result", str(out / "tune_recipes.json"), "--recipes-out", str(out / "recipes.json"),
               "--ledger-dir", str(args.ledger_dir)]  # fmt: skip
    return _timed(command + (["--device", args.device] if args.device else []), args.tune_seconds)


def study(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "vitkit", "study", "data-scale", "--data", args.data,
               "--sizes", ",".join(map(str, args.sizes)), "--models", args.models,
               "--epochs-of-largest", str(args.epochs_of_largest), "--seeds", ",".join(map(str, args.seeds)),
               "--holdout", "0.1", "--evaluations", str(args.evaluations), "--patience", str(args.patience),
               "--precision", args.precision, "--out", str(out / "study"), "--no-progress", "--ledger", str(args.ledger)]  # fmt: skip
    recipes = out / "recipes.json"
    if not recipes.is_file():  # no tuning step: the untuned GPU recipes
        families = {f: {"recipe": f"small-data-{f}-gpu"} for f in resolve_models(args.data, args.models.split(",")).values()}
        atomic_write(recipes, lambda tmp: Path(tmp).write_text(json.dumps({"recipes": families}, indent=1)))
    command += ["--recipes", str(recipes)]
    command += ["--transfer", args.transfer] if args.transfer else []
    command += ["--device", args.device] if args.device else []
    return _timed(command, args.study_seconds)


def plan(args: argparse.Namespace) -> str:
    """The expected seconds of each step from bare training speeds (images/s per family) times an efficiency,
    and a fixed cost per run; an upper bound for the study (every run to the end of its budget)."""
    rates = {k: float(v) * args.efficiency for k, v in (kv.split("=") for kv in args.rates.split(","))}
    models = resolve_models(args.data, args.models.split(","))
    missing = sorted({f for m, f in models.items() if m.split("_")[0] not in rates and f not in rates})
    rate = {m: rates.get(f) for m, f in models.items()}
    if missing or None in rate.values():
        return f"no speed given for {', '.join(missing) or [m for m, r in rate.items() if r is None]}: pass --rates"
    per_point = sum(args.tune_images / r + args.run_overhead for r in rate.values()) * len(args.tune_sizes)
    budget = args.epochs_of_largest * max(args.sizes)
    per_size_seed = sum(budget / r + args.run_overhead for r in rate.values())
    lines = [f"tune: {per_point:.0f} s a grid point (all families), {6 * per_point:.0f} s for 6; limit {args.tune_seconds} s"]
    elapsed = 0.0
    for seed in range(max(args.seeds)):
        for n, k in sorted(zip(args.sizes, args.seeds), reverse=True):
            if seed < k:
                elapsed += per_size_seed
                lines.append(f"study seed {seed} size {n:,}: done by {elapsed:.0f} s at the latest (no early stop)")
    lines.append(f"study limit {args.study_seconds} s; the runs past it are cut, those before it reported")
    return "\n".join(lines)


def fill_block(path: Path, name: str, text: str) -> bool:
    """Replace what lies between <!-- NAME:begin --> and <!-- NAME:end --> in `path`; False if it has no block."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = path.read_text()
    if begin not in doc or end not in doc:
        return False
    head, rest = doc.split(begin, 1)
    new = f"{head}{begin}\n{text.strip()}\n{end}{rest.split(end, 1)[1]}"
    atomic_write(path, lambda tmp: Path(tmp).write_text(new))
    return True


def markdown(result: dict[str, Any], figures: str | None = None, prefix: str = "gpu_") -> str:
    """The GPU study's tables, as the docs show them, and with `figures` (their folder, relative to the page)
    the two figures."""
    s = result["study"]
    head = (f"`{result['command']}`; {result['machine']}; {len(result['runs'])} runs "
            f"({'complete' if result['complete'] else 'cut short by the time limit'}), every run "
            f"{s['epochs_of_largest']:g} epochs of {max(s['sizes']):,} images at most ({s['images_seen']:,} images), "
            f"early stopping after {s['patience']} held-out evaluations without a better one; "
            f"{result['wall_minutes']:.1f} minutes in all.")  # fmt: skip
    tuned = result.get("tuning_winners") or {}
    recipes = "; ".join(f"{f}: {r['recipe']} {r['overrides'] or '(untuned)'}" for f, r in tuned.get("recipes", {}).items())
    return "\n\n".join([head, f"Recipes ({tuned.get('grid_points_done', 0)} of {tuned.get('grid_points', 6)} grid "
                               f"points done for every family): {recipes or 'untuned'}",
                        format_by_size(result["summary"]), format_analysis(result["analysis"] or {"gaps": {}}),
                        *([f"![GPU study: accuracy against training-set size]({figures}/{prefix}{FIGURES[0]})",
                           f"![GPU study: accuracy against training FLOPs]({figures}/{prefix}{FIGURES[1]})"] if figures else [])])  # fmt: skip


def report(args: argparse.Namespace, out: Path, steps: dict[str, Any], started: float) -> dict[str, Any]:
    import torch

    study_dir = out / "study"
    result = collect(study_dir)
    read = lambda name: json.loads((out / name).read_text()) if (out / name).is_file() else None  # noqa: E731
    seconds = {r["run_dir"]: read_metrics(RunDir(r["run_dir"]).metrics)[-1]["time_s"] for r in result["runs"]}
    machine = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{os.cpu_count()} CPU cores"
    result.update(tuning=read("tune_recipes.json"), tuning_winners=read("recipes.json"), steps=steps,
                  train_seconds_per_run={k: round(v, 1) for k, v in seconds.items()}, machine=machine,
                  wall_minutes=(sum(s["wall_s"] for s in steps.values()) + time.time() - started) / 60,
                  command=" ".join(["python", "benchmarks/data_scale_gpu.py", *sys.argv[1:]]))  # fmt: skip
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(args.result), lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1) + "\n"))
    figures = Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:
        if (study_dir / name).is_file():
            shutil.copyfile(study_dir / name, figures / f"{args.figure_prefix}{name}")
    text = markdown(result)
    if args.fill_docs:
        filled = [str(p) for p, folder in DOCS.items() if fill_block(p, BLOCK, markdown(result, folder, args.figure_prefix))]
        print(f"filled the {', '.join(filled) or 'no'} GPU blocks", file=sys.stderr)
    print(text)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the run directories (tune/, study/) and DIR/recipes.json")
    parser.add_argument("--step", choices=["all", "tune", "study", "report"], default="all")
    parser.add_argument("--device", help="cuda (default: cuda when available)")
    parser.add_argument("--data", default="fashion_mnist", help="digits: a CPU smoke test of the script")
    parser.add_argument("--models", default="vit,resnet,hybrid", help="add vit_ti,vit_s for the model-size axis")
    parser.add_argument("--sizes", type=_ints, default=[1000, 3000, 10000, 30000, 60000])
    parser.add_argument("--seeds", type=_ints, default=[3, 3, 2, 1, 1], help="per size; seed 0 everywhere first")
    parser.add_argument("--epochs-of-largest", type=float, default=20)
    parser.add_argument("--patience", type=int, default=3, help="held-out evaluations without a better one")
    parser.add_argument("--evaluations", type=int, default=20, help="held-out evaluations per study run")
    parser.add_argument("--transfer", default="mnist5k", help="'' for none")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--tune-sizes", type=_ints, default=[10000])
    parser.add_argument("--tune-images", type=int, default=100_000, help="images seen per grid probe")
    parser.add_argument("--tune-evaluations", type=int, default=10)
    parser.add_argument("--tune-seconds", type=int, default=95)
    parser.add_argument("--study-seconds", type=int, default=270)
    parser.add_argument("--skip-tune", action="store_true", help="use DIR/recipes.json as it is (copy one in)")
    parser.add_argument("--result", default=str(RESULT))
    parser.add_argument("--ledger", default=str(RESULT.with_suffix(".jsonl")),
                        help="the study's ledger (vitkit study --ledger): commit it, and a later GPU continues")
    parser.add_argument("--ledger-dir", default=str(RESULT.parent / "tune_gpu"), help="the grid's ledgers")
    parser.add_argument("--figures", default=str(ROOT / "docs" / "study"))
    parser.add_argument("--figure-prefix", default="gpu_", help="docs/study/PREFIXaccuracy_vs_{size,flops}.png")
    parser.add_argument("--fill-docs", action="store_true", help="write the tables into docs/study.md and README.md")
    parser.add_argument("--plan", action="store_true", help="print the expected time of each step and stop")
    parser.add_argument("--rates", default="vit=85000,resnet=52000,hybrid=65000",
                        help="bare training images/s per family (H200, bf16, batch 1024, issue 26's figures)")
    parser.add_argument("--efficiency", type=float, default=0.6, help="end-to-end share of the bare rate")
    parser.add_argument("--run-overhead", type=float, default=4.0, help="seconds per run besides training")
    args = parser.parse_args()

    if args.plan:
        print(plan(args))
        return

    out = Path(args.out)
    if args.transfer and args.step in ("all", "study"):
        try:  # a transfer set that cannot be read fails here, before any GPU time
            transfer_task(args.transfer, [])
        except ValueError as e:
            print(f"data_scale_gpu: error: {e}", file=sys.stderr)
            sys.exit(2)
    out.mkdir(parents=True, exist_ok=True)
    steps_file = out / "steps.json"
    steps = json.loads(steps_file.read_text()) if steps_file.is_file() else {}
    for name, step in (("tune", tune), ("study", study)):
        if args.step == name or (args.step == "all" and not (name == "tune" and args.skip_tune)):
            steps[name] = step(args, out)
            print(f"{name}: {steps[name]}", file=sys.stderr, flush=True)
            atomic_write(steps_file, lambda tmp: Path(tmp).write_text(json.dumps(steps, indent=1)))
    if args.step in ("all", "report"):
        try:
            report(args, out, steps, time.time())
        except ValueError as e:  # the study step wrote nothing (cut before its first run's manifest)
            print(f"data_scale_gpu: error: {e}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    main()
