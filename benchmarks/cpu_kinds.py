"""One training step of each default CPU recipe, for each precision/optimiser choice, on each kind of CPU.

The kinds: this CPU as it is ("native"), and the same CPU under ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 ("avx2": PyTorch and oneDNN take the paths of an AVX2-only x86-64, bf16 emulated,
no VNNI). Each kind is measured in its own process (the variables are read when torch starts).

Choices: the step in fp32 or under bf16 autocast and, for the recipes that use Muon, its Newton-Schulz
iterations in bf16 (torch.optim.Muon's) or in fp32. For each recipe and kind: images/s of every choice
(median over interleaved rounds, so that load from other processes hits every choice alike), the choice
`--precision auto` makes there (vitkit.hardware), and each choice's ratio to the fastest. `make run`'s
training time is estimated from the fashion-cpu step rate of the auto choice.

Writes benchmarks/results/cpu_kinds.json and prints a table.

    python benchmarks/cpu_kinds.py [--threads 2] [--rounds 5] [--steps 3] [--kinds native,avx2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RECIPE_MODELS = {  # recipe -> the model it trains on Fashion-MNIST (the dataset's default, or the study's)
    "fashion-cpu": "vit_fashion_patch7_28",
    "fashion-cpu-long": "vit_fashion_patch4_28",
    "small-data-vit": "vit_fashion_patch4_28",
    "small-data-hybrid": "vit_fashion_hybrid_28",
    "small-data-resnet": "resnetv2_fashion_28",
}
FASHION_TRAIN_IMAGES = 60_000  # make run: fashion-cpu over the whole training split, the last partial batch dropped


def _choices(optimizer: str) -> list[tuple[str, str | None]]:
    """(precision, Muon Newton-Schulz precision or None) of a recipe's optimiser."""
    ns = ("bf16", "fp32") if optimizer == "muon" else (None,)
    return [(p, n) for p in ("fp32", "bf16") for n in ns]


def _measure_kind(threads: int, rounds: int, steps: int, recipes: list[str]) -> dict:
    """In this process: every recipe's choices, timed; what auto picks."""
    import torch

    import vitkit
    from vitkit import hardware
    from vitkit.precision import autocast, resolve_precision
    from vitkit.train import get_recipe
    from vitkit.train.optim import Muon, build_optimizer

    torch.set_num_threads(threads)
    device = torch.device("cpu")
    auto = resolve_precision("auto", device)
    auto_ns = "bf16" if hardware.native_bf16(device) else "fp32"
    out = {"cpu": hardware.cpu().to_dict(), "summary": hardware.cpu().summary(), "auto": auto.to_dict(),
           "auto_newton_schulz": auto_ns, "recipes": {}}  # fmt: skip
    for name in recipes:
        recipe, model_name = get_recipe(name), RECIPE_MODELS[name]
        torch.manual_seed(0)
        images = torch.randn(recipe.batch_size, 1, 28, 28)
        labels = torch.randint(0, 10, (recipe.batch_size,))
        runs = {}
        for precision, ns in _choices(recipe.optimizer):
            overrides = {"patch_drop": recipe.patch_drop} if recipe.patch_drop else {}
            model = vitkit.create_model(model_name, num_classes=10, in_chans=1, drop_path=recipe.drop_path,
                                        **overrides).train()  # fmt: skip
            optimizer = build_optimizer(model, recipe)
            for part in getattr(optimizer, "optimizers", (optimizer,)):
                if isinstance(part, Muon):
                    part.ns_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[ns]

            def step(model=model, optimizer=optimizer, precision=precision) -> None:
                with autocast(device, precision):
                    loss = torch.nn.functional.cross_entropy(model(images).float(), labels, label_smoothing=0.1)
                loss.backward()
                if recipe.clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            step()  # warm-up: allocations, oneDNN's primitive cache
            runs[(precision, ns)] = (step, [])
        for _ in range(rounds):  # interleaved: contention from other processes falls on every choice alike
            for step, seconds in runs.values():
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                seconds.append((time.perf_counter() - start) / steps)
        rows = []
        for (precision, ns), (_, seconds) in runs.items():
            rows.append({"precision": precision, "newton_schulz": ns, "step_ms": statistics.median(seconds) * 1e3,
                         "images_per_s": recipe.batch_size / statistics.median(seconds)})  # fmt: skip
        best = max(r["images_per_s"] for r in rows)
        for r in rows:
            r["ratio_to_best"] = r["images_per_s"] / best
            r["auto"] = r["precision"] == auto.precision and r["newton_schulz"] in (None, auto_ns)
        picked = next(r for r in rows if r["auto"])
        best_plain = max(r["images_per_s"] for r in rows if r["newton_schulz"] in (None, auto_ns))
        out["recipes"][name] = {
            "model": model_name, "optimizer": recipe.optimizer, "batch_size": recipe.batch_size, "rows": rows,
            "auto_images_per_s": picked["images_per_s"], "auto_ratio_to_best": picked["ratio_to_best"],
            # the target: auto against the faster of fp32 and bf16 (Muon's orthogonalisation as auto sets it)
            "auto_ratio_to_best_of_fp32_bf16": picked["images_per_s"] / best_plain,
        }  # fmt: skip
    fashion = out["recipes"].get("fashion-cpu")
    if fashion:
        recipe = get_recipe("fashion-cpu")
        out["make_run_steps"] = make_run_steps = recipe.epochs * (FASHION_TRAIN_IMAGES // recipe.batch_size)
        out["make_run_training_minutes_estimate"] = make_run_steps * recipe.batch_size / fashion["auto_images_per_s"] / 60
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (the targets are for 2 cores)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over the choices")
    parser.add_argument("--steps", type=int, default=3, help="training steps timed per choice and round")
    parser.add_argument("--kinds", default="native,avx2", help="native, avx2 (ATEN_CPU_CAPABILITY/ONEDNN_MAX_CPU_ISA)")
    parser.add_argument("--recipes", default=",".join(RECIPE_MODELS))
    parser.add_argument("--result", default=str(RESULTS / "cpu_kinds.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    if args.child:
        print(json.dumps(_measure_kind(args.threads, args.rounds, args.steps, recipes)))
        return

    from vitkit.hardware import AVX2_ENV

    kinds = {}
    for kind in args.kinds.split(","):
        env = {**os.environ, **(AVX2_ENV if kind == "avx2" else {})}
        if kind == "native":
            env = {k: v for k, v in env.items() if k not in AVX2_ENV}
        command = [sys.executable, __file__, "--child", "--threads", str(args.threads), "--rounds", str(args.rounds),
                   "--steps", str(args.steps), "--recipes", args.recipes]  # fmt: skip
        proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
        kinds[kind] = {"env": {k: env[k] for k in AVX2_ENV if k in env}, **json.loads(proc.stdout.splitlines()[-1])}
    import torch

    result = {
        "command": " ".join(["python", "benchmarks/cpu_kinds.py", *sys.argv[1:]]),
        "cpu_model": _cpu_model(), "machine": platform.machine(), "threads": args.threads, "rounds": args.rounds,
        "steps": args.steps, "torch_version": torch.__version__, "kinds": kinds,
        "note": "avx2 = this CPU under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2, not a real AVX2-only CPU",
    }  # fmt: skip
    path = Path(args.result)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)
    print(format_table(result))


def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def format_table(result: dict) -> str:
    lines = [f"{result['cpu_model']}, {result['threads']} threads, torch {result['torch_version']}"]
    for kind, k in result["kinds"].items():
        lines.append(f"\n{kind}: {k['summary']}; auto -> {k['auto']['precision']}, Muon Newton-Schulz "
                     f"{k['auto_newton_schulz']}")  # fmt: skip
        lines.append(f"  {'recipe':<18} {'precision':<9} {'NS':<5} {'img/s':>8} {'vs best':>8}  auto")
        for name, r in k["recipes"].items():
            for row in r["rows"]:
                lines.append(f"  {name:<18} {row['precision']:<9} {row['newton_schulz'] or '-':<5} "
                             f"{row['images_per_s']:>8.0f} {row['ratio_to_best']:>8.2f}  {'<-' if row['auto'] else ''}")  # fmt: skip
        if "make_run_training_minutes_estimate" in k:
            lines.append(f"  make run's training ({k['make_run_steps']:,} fashion-cpu steps at auto's rate): "
                         f"{k['make_run_training_minutes_estimate']:.1f} min")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
