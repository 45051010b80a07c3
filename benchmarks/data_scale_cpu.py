"""The data-scale study at a fair budget on two CPU cores (issue 37): tune, study, report, continued on any machine
from the ledgers committed in benchmarks/results/.

Every run's budget grows with its data: 50 passes over its training part (the subset less its held-out 10%),
capped at 20 passes over the 60k training part (1.08 M images), with early stopping after 3 held-out evaluations
(of 20) without a better one. Each step is a command that anyone can run by hand:

1. tune the ViT and the ResNet: benchmarks/tune_recipes.py's 6-point grid at 10k with that budget rule, the best
   held-out score wins (the rule fixed before it runs); a ledger per grid point in results/tune_cpu/;
2. study the ViT (patch 4 and patch 7) and the ResNet: Fashion-MNIST 1k-60k, 3 seeds at 1k-10k and 1 above,
   a transfer 10-shot on mnist5k, the tuned recipes; every finished run a line of results/data_scale_cpu.jsonl;
   each run's step compiled (`--compile`: 1.14-1.34x end to end on AVX512-BF16 cores, benchmarks/cpu_train.py
   --compile) where a C++ compiler is found, else eager (`--eager` asks for that; a ledger takes either);
3. tune the hybrid with the same grid and budget;
4. study all four (the ViTs' and the ResNet's runs come from the ledger; only the hybrid's train);
5. a check, not part of the study: the 1k runs again with every family at the ResNet's SGD lr 0.1
   (results/recipes_cpu_lr0.1.json; ledger results/data_scale_cpu_1k_lr0.1.jsonl), since the tuned lr 0.3 of
   the ViTs and the hybrid diverged there;
6. report, from the ledgers alone: results/data_scale_cpu.json, docs/study/cpu_fair_accuracy_vs_{size,flops}.png,
   and with --fill-docs the tables in README.md and docs/study.md.

A step whose runs are all in its ledger takes seconds, so the same command continues wherever the last stopped:

    nice -n 19 python benchmarks/data_scale_cpu.py              # hours; commit results/*.jsonl as it goes
    python benchmarks/data_scale_cpu.py --left                  # the runs that no ledger holds yet
    python benchmarks/data_scale_cpu.py --step report --fill-docs
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

from data_scale_gpu import fill_block  # noqa: E402
from vitkit.files import atomic_write  # noqa: E402
from vitkit.study_ledger import Ledger  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
LEDGER = RESULTS / "data_scale_cpu.jsonl"
TUNE_LEDGERS = RESULTS / "tune_cpu"
RECIPES = RESULTS / "recipes_cpu.json"
RESULT = RESULTS / "data_scale_cpu.json"
CHECK_RECIPES, CHECK_LEDGER = RESULTS / "recipes_cpu_lr0.1.json", RESULTS / "data_scale_cpu_1k_lr0.1.jsonl"
BLOCK = "cpu-study"  # <!-- cpu-study:begin --> ... <!-- cpu-study:end --> in each page
DOCS = {ROOT / "docs" / "study.md": "study", ROOT / "README.md": "docs/study"}
BUDGET = ["--epochs-per-size", "50", "--max-images-seen", "1080000", "--patience", "3", "--evaluations", "20"]
SIZES, SEEDS = "1000,3000,10000,30000,60000", "3,3,3,1,1"
FIRST, ALL = "vit,vit_p7,resnet", "vit,vit_p7,resnet,hybrid"


def tune(models: str, out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "tune_recipes.py"), "--models", models, "--sizes", "10000",
            *BUDGET, "--precision", "auto", "--ledger-dir", str(TUNE_LEDGERS), "--recipes-out", str(RECIPES),
            "--result", str(RESULTS / f"tune_recipes_cpu_{models.replace(',', '_')}.json"), "--out", str(out / "tune")]  # fmt: skip


def study(models: str, out: Path, compile: bool, sizes: str = SIZES, seeds: str = SEEDS, recipes: Path = RECIPES,
          ledger: Path = LEDGER, name: str = "study") -> list[str]:  # fmt: skip
    return [sys.executable, "-m", "vitkit", "study", "data-scale", "--data", "fashion_mnist", "--sizes", sizes,
            "--models", models, *BUDGET, "--transfer", "mnist5k", "--seeds", seeds, "--recipes", str(recipes),
            "--ledger", str(ledger), "--out", str(out / f"{name}-{models.replace(',', '_')}"), "--no-progress",
            *(["--compile"] if compile else [])]  # fmt: skip


def steps(out: Path, compile: bool = False) -> dict[str, list[str]]:
    """The steps in order, each the command it runs. The last is a check, not part of the study: the 1k runs
    again with every family at the ResNet's SGD lr 0.1, since the tuned lr 0.3 diverged there."""
    return {"tune-vit-resnet": tune("vit,resnet", out), "study-first": study(FIRST, out, compile),
            "tune-hybrid": tune("hybrid", out), "study-all": study(ALL, out, compile),
            "check-1k-lr0.1": study(ALL, out, compile, sizes="1000", seeds="3", recipes=CHECK_RECIPES,
                                    ledger=CHECK_LEDGER, name="check-1k")}  # fmt: skip


def run(command: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    started = time.time()
    print(f"data_scale_cpu: {' '.join(command)}", file=sys.stderr, flush=True)
    rc = subprocess.run(command, env=env, cwd=ROOT).returncode
    return {"rc": rc, "wall_s": round(time.time() - started, 1)}


def remaining() -> list[tuple[str, int, int]]:
    """The study's runs (all four models) that its ledger does not hold yet, in the study's order."""
    from vitkit.study_plan import resolve_models

    held = Ledger(LEDGER).lines if LEDGER.is_file() else {}
    done = {(model, size, seed) for _, model, size, seed in held}
    models = list(resolve_models("fashion_mnist", ALL.split(",")))
    sizes, seeds = [int(v) for v in SIZES.split(",")], [int(v) for v in SEEDS.split(",")]
    return [(m, n, s) for s in range(max(seeds)) for n, k in sorted(zip(sizes, seeds), reverse=True) if s < k
            for m in models if (m, n, s) not in done]  # fmt: skip


def tuning_table() -> str:
    """The recipe grid at 10k as tuned so far: per grid point each family's best held-out top-1, its steps and
    why it stopped, the winner in bold (results/tune_recipes_cpu_*.json and recipes_cpu.json)."""
    families: dict[str, Any] = {}
    for path in sorted(RESULTS.glob("tune_recipes_cpu_*.json")):
        families.update(json.loads(path.read_text())["families"])
    if not families:
        return ""
    chosen = json.loads(RECIPES.read_text()).get("recipes", {}) if RECIPES.is_file() else {}
    lines = ["| grid point at 10k | " + " | ".join(f"{fam} (`{f['model']}`)" for fam, f in families.items()) + " |",
             "|---" * (len(families) + 1) + "|"]  # fmt: skip
    for i in range(max(len(f["probes"]) for f in families.values())):
        point = next(f["probes"][i]["overrides"] for f in families.values() if i < len(f["probes"]))
        cells = []
        for fam, f in families.items():
            probe = f["probes"][i] if i < len(f["probes"]) else None
            cell = "-" if probe is None else f"{probe['score']:.1%} ({probe['steps'][0]:,} steps, {probe['stopped'][0]})"
            won = probe is not None and chosen.get(fam, {}).get("overrides") == probe["overrides"]
            cells.append(f"**{cell}**" if won else cell)
        lines.append(f"| {i + 1}: {point['optimizer']} lr {point['lr']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(result: dict[str, Any], figures: str | None = None, brief: bool = False) -> str:
    """The fair CPU study's tables as the docs show them, and with `figures` (their folder, relative to the
    page) the two figures. `brief` (the README): test top-1 and its gaps only; the 10-shot and transfer tables
    and the recipe grid stay in docs/study.md."""
    from vitkit.study_analysis import METRICS, format_analysis, format_by_size

    tuned = result.get("tuning_winners", {})
    recipes = "; ".join(f"{f} {o['optimizer']} lr {o['lr']:g}, weight decay {o['weight_decay']:g}"
                        + ("" if r["grid_points_done"] == tuned["grid_points"] else f" (so far: {r['grid_points_done']} "
                           f"of {tuned['grid_points']} grid points)")
                        for f, r in tuned.get("recipes", {}).items() if (o := r["overrides"]))  # fmt: skip
    head = (f"`python benchmarks/data_scale_cpu.py`; {len(result['runs'])} runs "
            f"({'complete' if result['complete'] else 'so far: ' + str(len(remaining())) + ' left'}); every run 50 "
            f"epochs of its training part, at most 1.08 M images, early stopping after 3 of 20 held-out evaluations "
            f"without a better one; {result['machine']}. Recipes tuned at 10k (batch 128): {recipes or 'untuned'}.")  # fmt: skip
    analysis = result["analysis"] or {"reference": "vit", "gaps": {}}
    if brief:
        analysis = {**analysis, "gaps": {k: v for k, v in analysis["gaps"].items() if k == "top1"}}
    parts = [head, format_by_size(result["summary"], ("top1",) if brief else tuple(METRICS)), format_analysis(analysis)]
    if not brief and result.get("check_1k"):
        parts.append("The check at 1k, not part of the study: every family at SGD lr 0.1, the rest as above "
                     f"(`--step check-1k-lr0.1`, `{CHECK_LEDGER.relative_to(ROOT)}`):\n\n"
                     + format_by_size(result["check_1k"]))  # fmt: skip
        if result.get("check_1k_gaps"):
            parts.append("With the check's 1k runs in place of the study's (two recipes in one fit: an indication, "
                         "not the study's result):\n\n" + format_analysis(result["check_1k_gaps"]))  # fmt: skip
    if not brief and (tuned := tuning_table()):
        parts.append("The recipe grid (held-out top-1 of each probe; the winner in bold):\n\n" + tuned)
    if figures:  # the fair study beside the starved one (benchmarks/data_scale.py's figures, in the same folder)
        parts += ["| every run 102,400 images (starved) | 50 epochs of each size, at most 1.08 M images (fair) |\n"
                  "|---|---|\n"
                  f"| ![starved study: accuracy against size]({figures}/accuracy_vs_size.png) "
                  f"| ![fair CPU study: accuracy against size]({figures}/cpu_fair_accuracy_vs_size.png) |",
                  f"Against training FLOPs: [starved]({figures}/accuracy_vs_flops.png), "
                  f"[fair]({figures}/cpu_fair_accuracy_vs_flops.png)."]
    return "\n\n".join(parts)


def report(out: Path, fill_docs: bool) -> None:
    from vitkit.study_analysis import analyse
    from vitkit.study_report import FIGURES
    from vitkit.study_report import report as from_ledger

    result = from_ledger(LEDGER, out / "report")
    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0] if Path("/proc/cpuinfo").is_file() else ""
    kinds = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f" {f}" in flags]
    tuned = json.loads(RECIPES.read_text()) if RECIPES.is_file() else {}
    result.update(command="python benchmarks/data_scale_cpu.py --step report", machine=f"{os.cpu_count()} CPU cores "
                  f"({', '.join(kinds)}) at report time; each run's precision is in its config", tuning_winners=tuned,
                  complete=not remaining())  # fmt: skip
    if CHECK_LEDGER.is_file():
        check = from_ledger(CHECK_LEDGER, out / "check-report")
        sizes = {r["size"] for r in check["runs"]}  # its runs in place of the study's at those sizes
        mixed = [r for r in result["runs"] if r["size"] not in sizes] + check["runs"]
        gaps = analyse(mixed, result["analysis"]["reference"], ["top1"])
        result.update(check_1k=check["summary"], check_1k_gaps=gaps)
    atomic_write(RESULT, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1) + "\n"))
    for name in FIGURES:
        shutil.copyfile(out / "report" / name, ROOT / "docs" / "study" / f"cpu_fair_{name}")
    if fill_docs:
        for page, folder in DOCS.items():
            fill_block(page, BLOCK, markdown(result, folder, brief=page.name == "README.md"))
    print(markdown(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "cpu-study"), help="run directories (lost: the "
                                                                                "ledgers are what lasts)")  # fmt: skip
    parser.add_argument("--step", choices=["all", *steps(Path(".")), "report"], default="all")
    parser.add_argument("--left", action="store_true", help="print the runs no ledger holds yet, and stop")
    parser.add_argument("--fill-docs", action="store_true", help="write the tables into README.md and docs/study.md")
    parser.add_argument("--eager", action="store_true", help="train the study's runs without --compile")
    args = parser.parse_args()
    if args.left:
        todo = remaining()
        print(f"{len(todo)} runs left (no line in {LEDGER.relative_to(ROOT)}):")
        print("\n".join(f"  {m} n{n} seed{s}" for m, n, s in todo))
        return
    out = Path(args.out)
    from vitkit.hardware import compile_missing

    compile = not args.eager and compile_missing("cpu") is None
    for name, command in steps(out, compile).items():
        if args.step in ("all", name):
            outcome = run(command)
            print(f"data_scale_cpu: {name}: {outcome}", file=sys.stderr, flush=True)
            if outcome["rc"] != 0:
                sys.exit(outcome["rc"])
    if args.step in ("all", "report"):
        report(out, args.fill_docs)


if __name__ == "__main__":
    main()
