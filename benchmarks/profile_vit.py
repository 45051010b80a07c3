"""Where the time of one ViT forward (or training step) goes on this machine: torch.profiler's
per-operator self time, grouped into matmuls, attention, and everything else, for vitkit and timm.

    .venv/bin/python benchmarks/profile_vit.py [--model vit_small_patch16_224] [--precision fp32] [--mode infer]

Writes benchmarks/results/profile_<model>_<precision>_<mode>.json and prints the groups.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from vitkit.bench import bench_model
from vitkit.peers import timm_twin
from vitkit.precision import DTYPES, autocast

RESULTS = Path(__file__).parent / "results"
GROUPS = {  # operator name fragment -> group
    "mm": "matmul (linear layers)", "addmm": "matmul (linear layers)", "linear": "matmul (linear layers)",
    "scaled_dot_product": "attention", "bmm": "attention", "softmax": "attention",
    "layer_norm": "layer norm", "gelu": "GELU", "add": "residual adds and biases", "copy_": "copies",
    "convolution": "patch embedding", "mkldnn_conv": "patch embedding",
}  # fmt: skip


def group_of(name: str) -> str:
    base = name.removeprefix("aten::").removeprefix("_")
    for key, group in GROUPS.items():
        if base == key or base.startswith(key) or key in base:
            return group
    return "other"


def profile_step(
    model: torch.nn.Module, precision: str, mode: str, shape: tuple[int, ...], threads: int
) -> dict[str, float]:
    """Milliseconds per step in each operator group, for inputs of `shape` (B, C, H, W)."""
    torch.set_num_threads(threads)
    x = torch.randn(shape)
    batch = shape[0]
    if mode == "infer":
        model.eval()
        if precision != "fp32":
            model.to(DTYPES[precision])
            x = x.to(DTYPES[precision])

        def step() -> None:
            with torch.inference_mode():
                model(x)
    else:
        model.train()
        labels = torch.zeros(batch, dtype=torch.long)

        def step() -> None:
            with autocast(torch.device("cpu"), precision):
                loss = F.cross_entropy(model(x), labels)
            loss.backward()

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        totals[group_of(event.key)] += event.self_cpu_time_total / 3 / 1e3  # ms per step
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--mode", default="infer", choices=["infer", "train"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    model = bench_model(args.model)
    shape = (args.batch_size, model.config.in_chans, *model.config.img_size)
    rows = {}
    for library, m in (("vitkit", model), ("timm", timm_twin(model))):
        rows[library] = profile_step(m, args.precision, args.mode, shape, args.threads)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"profile_{args.model}_{args.precision}_{args.mode}.json"
    out.write_text(json.dumps({"args": vars(args), "ms_per_step": rows}, indent=2) + "\n")
    groups = sorted({g for r in rows.values() for g in r}, key=lambda g: -rows["vitkit"].get(g, 0))
    print(f"| ms per batch of {args.batch_size} ({args.precision} {args.mode}) | vitkit | timm |\n|---|---:|---:|")
    for g in groups:
        print(f"| {g} | {rows['vitkit'].get(g, 0):.1f} | {rows['timm'].get(g, 0):.1f} |")
    print(f"| total | {sum(rows['vitkit'].values()):.1f} | {sum(rows['timm'].values()):.1f} |")


if __name__ == "__main__":
    main()
