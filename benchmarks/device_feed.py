"""How fast each training feed produces Fashion-MNIST batches, the step left out: the loader's batched path
(vitkit.data.batched, in the training process) against the device-resident feed (vitkit.train.device_feed).

One epoch of each, twice, alternating; the better pass of each is reported. Writes a JSON result.

    python benchmarks/device_feed.py [--device cpu|cuda] [--batch-size 1024] [--threads 1] [--result FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

import vitkit
from vitkit.data import load_data
from vitkit.train import make_config
from vitkit.train.distributed import start, stop
from vitkit.train.feed import build_feed

RESULTS = Path(__file__).parent / "results"


def epoch_rate(feed_kind: str, device: str, batch: int) -> float:
    """Images/s of one epoch of `feed_kind`'s batches (synchronised on CUDA)."""
    cfg = make_config({"batch_size": batch, "epochs": 1, "optimizer": "adamw"}, data="fashion_mnist",
                      model="vit_fashion_patch4_28", recipe_name="fashion-gpu", out=tempfile.mkdtemp() + "/run",
                      device=device, feed=feed_kind, workers=0, progress=False)  # fmt: skip
    procs = start(device)
    try:
        data_cfg = vitkit.get_config(cfg.model).data_config
        feed = build_feed(load_data(cfg.data, cfg.data_root), data_cfg, cfg, procs, batch, 1)
    finally:
        stop(procs)
    started, n = time.perf_counter(), 0
    for images, labels in feed.epoch(0, 0):
        images.to(device, non_blocking=True)
        n += len(labels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--result", default=str(RESULTS / "device_feed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rates: dict[str, list[float]] = {"loader": [], "device": []}
    for _ in range(2):
        for kind in rates:
            rates[kind].append(epoch_rate(kind, args.device, args.batch_size))
    result = {
        "device": args.device, "batch_size": args.batch_size, "threads": args.threads,
        "loader_images_per_s": max(rates["loader"]), "device_feed_images_per_s": max(rates["device"]),
        "ratio": max(rates["device"]) / max(rates["loader"]), "passes": rates,
        "command": "python benchmarks/device_feed.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                 vars(args).items() if k != "result"),
    }  # fmt: skip
    path = Path(args.result)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"loader {result['loader_images_per_s']:,.0f} img/s, device feed {result['device_feed_images_per_s']:,.0f} "
          f"img/s ({result['ratio']:.1f}x) on {args.device}, batch {args.batch_size}")  # fmt: skip


if __name__ == "__main__":
    main()
