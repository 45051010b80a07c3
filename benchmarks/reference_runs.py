"""Three tiny reference training runs (ViT, BiT ResNet, hybrid) whose weights and metrics are hashed.

A refactor that changes the shape of the code and not its behaviour leaves these hashes unchanged: run
this before and after and compare the JSON (issue 25). CPU, fp32, a few steps on 64 Fashion-MNIST images,
one thread, so that the runs are deterministic. Wall-clock fields of metrics.jsonl are left out of the hash.

    python benchmarks/reference_runs.py --out /tmp/ref --json ref.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from vitkit.train import fit, make_config
from vitkit.train.rundir import RunDir

RUNS = {"vit": "vit_fashion_patch4_28", "resnet": "resnetv2_fashion_28", "hybrid": "vit_fashion_hybrid_28"}
RECIPES = {"vit": "small-data-vit", "resnet": "small-data-resnet", "hybrid": "small-data-hybrid"}
TIMING_KEYS = ("time", "elapsed", "seconds", "per_s", "wall")  # metrics that measure the clock, not the run


def weights_sha256(path: Path) -> str:
    """SHA-256 over every tensor of a safetensors file, in key order: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(load_file(str(path)).items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def metrics_sha256(path: Path) -> str:
    """SHA-256 of metrics.jsonl with the wall-clock fields removed (floats as their exact repr)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [{k: v for k, v in row.items() if not any(t in k for t in TIMING_KEYS)} for row in rows]
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def reference_run(family: str, out: Path, data_root: str, steps: int) -> dict[str, str]:
    cfg = make_config(
        {"steps": steps, "batch_size": 16, "warmup": 0.25},
        data="fashion_mnist", model=RUNS[family], recipe_name=RECIPES[family], limit_train=64, limit_eval=32,
        data_root=data_root, progress=False, workers=0, out=str(out / family), device="cpu", precision="fp32",
        checkpoint_every=steps, log_every=1,
    )  # fmt: skip
    result = fit(cfg)
    return {
        "model": RUNS[family],
        "weights_sha256": weights_sha256(result.checkpoint),
        "metrics_sha256": metrics_sha256(RunDir(result.out_dir).metrics),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="a new directory for the three run directories")
    p.add_argument("--data-root", default=None, help="where Fashion-MNIST is unpacked (default: OUT/data)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--json", default=None, help="also write the hashes to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    data_root = args.data_root or str(out / "data")
    hashes = {family: reference_run(family, out, data_root, args.steps) for family in RUNS}
    text = json.dumps(hashes, indent=1, sort_keys=True)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
