"""What one process measures of itself: device sync, intra-op threads, peak memory, the matmul peak, and
two speeds compared in alternating rounds.

- Peak memory on CPU is the peak resident set size (Linux's VmHWM) above the RSS at `reset_peak_memory`;
  on CUDA it is `max_memory_allocated` above the bytes allocated then.
- The machine's peak is the best rate of a large square `torch.matmul` in a given dtype.
- Two things' speeds, on a machine whose speed drifts (a shared VM moves by a third within an hour), are
  compared round by round: a round times one call of each, the order alternating from round to round
  (A B, B A, ...), and the comparison is the median of the rounds' ratios with its quartiles and range
  (a ratio of two medians would set one's good moment against the other's bad one).
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(
    dtype: torch.dtype, device: str | torch.device = "cpu", min_seconds: float = 0.05, max_n: int = 8192
) -> float:
    """Best GFLOP/s of an n×n `torch.matmul` in `dtype`; n doubles from 256 until one product takes
    `min_seconds` (or n reaches `max_n`), so slow dtypes are measured quickly and fast ones at size."""
    device = torch.device(device)
    n = 256
    while True:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        a @ b
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        if time.perf_counter() - start >= min_seconds or n >= max_n:
            break
        n *= 2
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` inside the block."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:")) / 2**10


def reset_peak_memory(device: torch.device) -> float:
    """Start a new peak; returns the baseline (MB) that `peak_memory_mb` counts from: the bytes allocated
    on CUDA (whose allocator counts tensors only, so earlier rows measured in-process don't count), the
    current RSS on CPU."""
    gc.collect()
    if device.type == "cuda":
        _create_cuda_workspaces(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")
    return _proc_status_mb("VmRSS")


def _create_cuda_workspaces(device: torch.device) -> None:
    """cuBLAS gives each thread that multiplies matrices a handle and a workspace from the caching
    allocator (32 MB on Hopper), the autograd engine's device thread included. Made before a row's
    baseline (`reset_peak_memory`), they count in no row: otherwise the first row to run a backward
    pass in this process would carry them alone (+30 MB on ViT-S/16 measured in-process on an H200)."""
    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(64, 64, device=device, dtype=dtype, requires_grad=True)
        F.linear(w, w, w[0]).float().sum().backward()  # addmm with a bias: cuBLAS and cuBLASLt, both threads
    torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """The peak (MB) since `reset_peak_memory`: CUDA's max allocated, or the CPU's VmHWM."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _proc_status_mb("VmHWM")


def time_rounds(
    steps: list[Callable[[], object]], rounds: int, sync: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[list[float]]:
    """Time one call of each step per round, in the order given in even rounds and reversed in odd ones;
    `sync` waits for a step's queued work (a GPU's) before the clock is read. Returns seconds[i][r], step
    i's time in round r."""
    seconds: list[list[float]] = [[] for _ in steps]
    for r in range(rounds):
        order = range(len(steps)) if r % 2 == 0 else reversed(range(len(steps)))
        for i in order:
            start = clock()
            steps[i]()
            sync()
            seconds[i].append(clock() - start)
    return seconds


def ratio_summary(ratios: list[float]) -> dict[str, Any]:
    """Per-round ratios summarised: their median ("ratio"), quartiles, range, and the ratios themselves."""
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return {
        "ratio": statistics.median(ratios), "ratio_q1": q1, "ratio_q3": q3, "ratio_min": min(ratios),
        "ratio_max": max(ratios), "round_ratios": ratios,
    }  # fmt: skip
