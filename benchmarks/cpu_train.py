"""Training at the CPU's pace: make run's model and recipe and the data-scale study's families, each as
`vitkit train` runs it end to end and as a bare step on synthetic tensors, against the box's matmul peak.

    .venv/bin/python benchmarks/cpu_train.py [--rows make-run,resnet] [--baseline REF] [--rounds 3] [--avx2]

- end to end: `vitkit train --data fashion_mnist --steps N` in a fresh process; images/s between its first
  and last logged steps (the feed, augmentation and steps; start-up and the final evaluation, of 256
  images, left out);
- bare step: forward, backward, clipping and the recipe's optimiser at batch 128 on random tensors, in the
  precision `auto` picks, in a fresh process;
- the matmul peak (`vitkit.measure.matmul_peak_gflops`) in that precision, and the share of it a step uses
  (`vitkit.flops.step_flops` x images/s).

`--baseline REF` checks REF out into a git worktree and measures every row there too, alternating with this
tree round by round (A B, then B A); each row reports the median ratio (this tree / REF) and its spread.
`--compile` measures this tree with `torch.compile` (`vitkit train --compile`) against this tree eager (or
against REF, eager, with `--baseline`); each end-to-end run also records the seconds to its first logged step,
whose difference between the two is what compiling costs a run.
`--avx2` runs every process under `vitkit.hardware.AVX2_ENV` (the CPU kind without AVX512/bf16/VNNI).
`--profile` prints, for each row, where 5 bare steps spend their time (torch.profiler's operators by self time,
the optimiser's step as one line), and measures nothing else.
Updates this kind's entry ("native" or "avx2", with "_compile" for `--compile`, "_compile_vs_REF" with both) of
benchmarks/results/cpu_train.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "cpu_train.json"
# name -> (model, recipe): make run's pair, then the data-scale study's families at their recipes
ROWS = {
    "make-run": ("vit_fashion_patch7_28", "fashion-cpu"),
    "vit-patch4": ("vit_fashion_patch4_28", "small-data-vit"),
    "vit-patch7": ("vit_fashion_patch7_28", "small-data-vit"),
    "resnet": ("resnetv2_fashion_28", "small-data-resnet"),
    "hybrid": ("vit_fashion_hybrid_28", "small-data-hybrid"),
}
THREADS = 2


# ---- what runs inside a measured tree's process (its vitkit on PYTHONPATH) ----------------------------------
def bare_step(model_name: str, recipe_name: str, steps: int, compile: bool = False, profile: bool = False) -> dict:
    """Images/s of the recipe's training step at its batch on random tensors, after two warm-up steps; with
    `profile`, the operators' self times over those steps instead (the top 15, and the optimiser's step)."""
    import torch
    import torch.nn.functional as F

    import vitkit
    from vitkit.precision import autocast, resolve_precision
    from vitkit.train import get_recipe
    from vitkit.train.optim import build_optimizer

    torch.set_num_threads(THREADS)
    recipe = get_recipe(recipe_name)
    precision = resolve_precision("auto", "cpu").precision
    torch.manual_seed(0)
    model = vitkit.create_model(model_name, dropout=recipe.dropout, drop_path=recipe.drop_path).train()
    optimizer = build_optimizer(model, recipe)
    forward = torch.compile(model) if compile else model
    cfg = model.config
    images = torch.randn(recipe.batch_size, cfg.in_chans, *cfg.img_size)
    labels = torch.randint(0, cfg.num_classes, (recipe.batch_size,))

    def step() -> None:
        with autocast(torch.device("cpu"), precision):
            loss = F.cross_entropy(forward(images), labels, label_smoothing=recipe.label_smoothing)
        loss.backward()
        if recipe.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    if profile:
        return profiled(step, steps)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return {"images_per_s": steps * recipe.batch_size / (time.perf_counter() - start), "precision": precision}


def profiled(step: Callable[[], None], steps: int) -> dict:
    """The share of `steps` steps' self time of each of the 15 costliest operators, and of the optimiser's step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    optimiser = sum(e.cpu_time_total for e in events if e.key.startswith("Optimizer.step#"))
    return {"ms_per_step": total / steps / 1000, "optimizer_step": optimiser / total,
            "top": {e.key: e.self_cpu_time_total / total for e in top}}  # fmt: skip


def box_facts(model_names: list[str]) -> dict:
    """The matmul peak in the precision auto picks, the CPU as PyTorch uses it, and each model's step FLOPs."""
    import torch

    from vitkit import hardware
    from vitkit.flops import step_flops
    from vitkit.measure import matmul_peak_gflops
    from vitkit.models import get_config
    from vitkit.precision import DTYPES, resolve_precision

    torch.set_num_threads(THREADS)
    precision = resolve_precision("auto", "cpu").precision
    peak = matmul_peak_gflops(DTYPES.get(precision, torch.float32))
    flops = {name: step_flops(get_config(name, num_classes=10), "train") for name in model_names}
    cpu = hardware.cpu()
    return {"peak_gflops": peak, "precision": precision, "cpu": cpu.to_dict(), "cpu_summary": cpu.summary(),
            "torch": torch.__version__, "train_flops_per_image": flops}  # fmt: skip


# ---- the driver ----------------------------------------------------------------------------------------------
def _python(src: Path, env: dict[str, str], *args: str, timeout: float = 1800) -> str:
    environment = {**os.environ, **env, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(THREADS)}
    done = subprocess.run([sys.executable, *args], env=environment, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} failed under {src}:\n{done.stderr[-2000:]}")
    return done.stdout


def measure_bare(src: Path, env: dict[str, str], model: str, recipe: str, steps: int, compile: bool) -> float:
    out = _python(src, env, __file__, "--worker", "bare", "--worker-args", json.dumps([model, recipe, steps, compile]))
    return json.loads(out.strip().splitlines()[-1])["images_per_s"]


def measure_end_to_end(
    src: Path, env: dict[str, str], model: str, recipe: str, steps: int, data_root: str, compile: bool
) -> tuple[float, float]:
    """Images/s of `vitkit train` between its first and last logged training steps, and the seconds from its
    start to the first logged step (5 steps, and compiling with `compile`)."""
    with tempfile.TemporaryDirectory(prefix="vitkit-cpu-train-") as tmp:
        _python(src, env, "-m", "vitkit", "train", "--model", model, "--recipe", recipe, "--data", "fashion_mnist",
                "--data-root", data_root, "--steps", str(steps), "--log-every", "5", "--limit-eval", "256",
                "--no-progress", "--out", str(Path(tmp) / "run"), *(["--compile"] if compile else []))  # fmt: skip
        lines = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        config = (Path(tmp) / "run" / "config.yaml").read_text()
    logged = [r for r in lines if "loss" in r and "eval_top1" not in r]
    batch = int(next(line.split(":")[1] for line in config.splitlines() if line.strip().startswith("batch_size:")))
    first, last = logged[0], logged[-1]
    return (last["step"] - first["step"]) * batch / (last["time_s"] - first["time_s"]), first["time_s"]


def baseline_tree(ref: str) -> Path:
    """A git worktree of `ref` (made once, reused): its src/ is the baseline's vitkit."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], capture_output=True, text=True,
                            check=True).stdout.strip()  # fmt: skip
    tree = Path(tempfile.gettempdir()) / f"vitkit-baseline-{commit}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True,
                       capture_output=True)  # fmt: skip
    return tree / "src"


def spread(ratios: list[float]) -> dict:
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "n": len(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--baseline", help="a git ref measured from its own worktree, alternating with this tree")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of bare steps (each tree once a round)")
    parser.add_argument("--e2e-rounds", type=int, default=1, help="rounds of `vitkit train` (0: none)")
    parser.add_argument("--steps", type=int, default=40, help="steps of each `vitkit train` run")
    parser.add_argument("--bare-steps", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="this tree compiled, against itself (or REF) eager")
    parser.add_argument("--avx2", action="store_true", help="run under vitkit.hardware.AVX2_ENV")
    parser.add_argument("--profile", action="store_true", help="print where each row's bare step goes, and stop")
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--worker", choices=["bare", "facts"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-args", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work = bare_step if args.worker == "bare" else box_facts
        print(json.dumps(work(*json.loads(args.worker_args))))
        return
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"cpu_train.py: unknown row {unknown[0]!r}; expected some of {', '.join(ROWS)}")
    from vitkit.hardware import AVX2_ENV

    env = AVX2_ENV if args.avx2 else {}
    if args.profile:
        for row in rows:
            out = _python(ROOT / "src", env, __file__, "--worker", "bare", "--worker-args",
                          json.dumps([*ROWS[row], 5, args.compile, True]))  # fmt: skip
            print_profile(row, json.loads(out.strip().splitlines()[-1]))
        return
    trees = {"current": ROOT / "src"}
    if args.baseline or args.compile:
        trees["baseline"] = baseline_tree(args.baseline) if args.baseline else ROOT / "src"
    compiled = {"current": args.compile, "baseline": False}
    models = json.dumps([[ROWS[r][0] for r in rows]])
    facts = lambda: json.loads(  # noqa: E731
        _python(trees["current"], env, __file__, "--worker", "facts", "--worker-args", models).strip().splitlines()[-1]
    )
    before = facts()
    measured = {row: {tree: {"bare": [], "end_to_end": [], "first_log_s": []} for tree in trees} for row in rows}
    for kind, rounds in (("bare", args.rounds), ("end_to_end", args.e2e_rounds)):
        for r in range(rounds):
            for row in rows:
                for tree in list(trees) if r % 2 == 0 else list(trees)[::-1]:
                    model, recipe = ROWS[row]
                    if kind == "bare":
                        rate = measure_bare(trees[tree], env, model, recipe, args.bare_steps, compiled[tree])
                    else:
                        rate, first_log = measure_end_to_end(trees[tree], env, model, recipe, args.steps,
                                                             args.data_root, compiled[tree])  # fmt: skip
                        measured[row][tree]["first_log_s"].append(first_log)
                    measured[row][tree][kind].append(rate)
                    print(f"{kind:10} round {r} {row:10} {tree:8} {rate:7.1f} images/s", file=sys.stderr)
    after = facts()
    peak = statistics.median([before["peak_gflops"], after["peak_gflops"]])
    report = {
        "command": "benchmarks/cpu_train.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d %H:%M"),
        "avx2_caps": args.avx2, "env": env, "threads": THREADS, "current": _head(), "compile": args.compile,
        "baseline": args.baseline or ("this tree, eager" if args.compile else None),
        "cpu": before["cpu"], "cpu_summary": before["cpu_summary"], "cpu_flags": _cpu_flags(), "torch": before["torch"],
        "precision": before["precision"], "peak_gflops": [before["peak_gflops"], after["peak_gflops"]],
        "rows": {},
    }  # fmt: skip
    for row in rows:
        model, recipe = ROWS[row]
        flops = before["train_flops_per_image"][model]
        entry: dict = {"model": model, "recipe": recipe, "train_gflops_per_image": flops / 1e9, **measured[row]}
        for kind in ("bare", "end_to_end"):
            ours = measured[row]["current"][kind]
            if ours:
                entry[f"{kind}_share_of_peak"] = statistics.median(ours) * flops / 1e9 / peak
            if "baseline" in trees and ours:
                entry[f"{kind}_ratio"] = spread([a / b for a, b in zip(ours, measured[row]["baseline"][kind])])
        report["rows"][row] = entry
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    compiled_vs = ("_compile" + (f"_vs_{args.baseline}" if args.baseline else "")) if args.compile else ""
    results[("avx2" if args.avx2 else "native") + compiled_vs] = report
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print_table(report)


def _head() -> str:
    """This tree's commit, with '+changes' when its files differ from it."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return commit + ("+changes" if dirty.stdout.strip() else "")


def _cpu_flags() -> str:
    """The vector and matrix flags of /proc/cpuinfo (avx2, avx512*, amx*, ...)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return ""
    return " ".join(f for f in flags.split(":")[1].split() if f.startswith(("avx", "amx", "fma", "f16c")))


def print_profile(row: str, profile: dict) -> None:
    print(f"{row}: {profile['ms_per_step']:.0f} ms a step; the optimiser's step {profile['optimizer_step']:.0%}")
    print("\n".join(f"  {share:6.1%}  {name}" for name, share in profile["top"].items()))


def print_table(report: dict) -> None:
    kind = "AVX2 caps" if report["avx2_caps"] else "native"
    print(f"{report['cpu_summary']} ({kind}), {report['precision']}, peak {report['peak_gflops'][0]:.0f} GFLOP/s")
    print(f"{'row':10} {'model':22} {'recipe':18} {'e2e img/s':>9} {'share':>6} {'bare img/s':>10} {'share':>6}"
          f"{'  e2e ratio':>11} {'bare ratio (min-max)':>22}")  # fmt: skip
    for row, e in report["rows"].items():
        cur = e["current"]
        e2e = statistics.median(cur["end_to_end"]) if cur["end_to_end"] else float("nan")
        bare = statistics.median(cur["bare"]) if cur["bare"] else float("nan")
        ratio = lambda k: f"{e[k]['median']:.2f} ({e[k]['min']:.2f}-{e[k]['max']:.2f})" if k in e else "-"  # noqa: E731
        print(f"{row:10} {e['model']:22} {e['recipe']:18} {e2e:9.0f} {e.get('end_to_end_share_of_peak', 0):6.0%} "
              f"{bare:10.0f} {e.get('bare_share_of_peak', 0):6.0%} {ratio('end_to_end_ratio'):>11} "
              f"{ratio('bare_ratio'):>22}")  # fmt: skip


if __name__ == "__main__":
    main()
