"""The GIL convoy behind `vitkit serve`'s switch interval: a forward pass in a thread beside a thread that
runs pure Python (as the event loop does under load), by sys.setswitchinterval. Prints each interval's
forward time against the forward alone and the busy thread's pace against its pace alone.

    .venv/bin/python benchmarks/gil_convoy.py [--model vit_fashion_patch4_28] [--batch 16] [--precision bf16]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Callable

import torch

import vitkit
from vitkit import hardware
from vitkit.precision import autocast, resolve_precision

INTERVALS_S = (5e-3, 1e-3, 2e-4, 1e-4, 5e-5)  # 5 ms is Python's default


def busy(stop: threading.Event, counter: list[int]) -> None:
    """Pure Python until `stop`, counting rounds in counter[0]."""
    scratch: dict[int, str] = {}
    while not stop.is_set():
        for i in range(1000):
            scratch[i % 7] = str(i)
        counter[0] += 1


def rate(work: Callable[[], None], seconds: float, beside_busy: bool) -> tuple[float, float]:
    """(calls of `work` per second, the busy thread's rounds per second), with or without the busy thread."""
    stop, counter = threading.Event(), [0]
    thread = threading.Thread(target=busy, args=(stop, counter))
    if beside_busy:
        thread.start()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        work()
        calls += 1
    elapsed = time.perf_counter() - start
    stop.set()
    if beside_busy:
        thread.join()
    return calls / elapsed, counter[0] / elapsed


def busy_alone(seconds: float) -> float:
    """The busy thread's rounds per second with nothing beside it."""
    return rate(lambda: time.sleep(0.01), seconds, True)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_fashion_patch4_28")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", default="auto", help="auto (bf16 where native, else fp32), bf16, fp32")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a served worker's share of a small machine
    model = vitkit.create_model(args.model).eval()
    cfg = model.config
    x = torch.randn(args.batch, cfg.in_chans, *cfg.img_size)
    precision = resolve_precision(args.precision, "cpu").precision

    def forward() -> None:
        with torch.inference_mode(), autocast(torch.device("cpu"), precision):
            model(x)

    forward()
    print(f"{args.model}, batch {args.batch}, {precision}, 1 torch thread; {hardware.cpu().summary()}")
    for interval in INTERVALS_S:
        sys.setswitchinterval(interval)
        alone = rate(forward, args.seconds, False)[0]
        beside, rounds = rate(forward, args.seconds, True)
        pace = rounds / busy_alone(args.seconds)
        print(f"switch interval {interval * 1e3:.2f} ms: forward {1e3 / alone:.1f} ms alone, {1e3 / beside:.1f} ms "
              f"beside a busy thread ({alone / beside:.1f}x); the busy thread at {pace:.0%} of its pace alone",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
