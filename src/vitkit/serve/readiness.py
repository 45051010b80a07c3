"""Liveness and readiness, as Kubernetes asks for them (Triton's /v2/health/*, BentoML's /livez, /readyz).

A worker is live as soon as it answers; it is ready once its model has run one warm-up batch at every
padded batch size of every batcher (the shapes the batcher will use, so that the first requests do not pay
for oneDNN's or torch.compile's first runs). With several worker processes a worker that answers /readyz
cannot see the others' memory: each ready worker leaves a file named by its pid in a directory the
supervisor made, and the server is ready when `workers` live workers have left one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import torch

from .batcher import Batcher

log = logging.getLogger("uvicorn.error")  # uvicorn's own log: it is configured wherever uvicorn runs


class Readiness:
    """This worker's state, and with `ready_dir` the readiness of all `workers` worker processes."""

    def __init__(self, ready_dir: str | os.PathLike | None = None, workers: int = 1) -> None:
        self.ready_dir = None if ready_dir is None else Path(ready_dir)
        self.workers = workers
        self.local = False
        self.warm_up_s: float | None = None

    def mark_ready(self, warm_up_s: float) -> None:
        self.local, self.warm_up_s = True, warm_up_s
        if self.ready_dir is not None:
            (self.ready_dir / str(os.getpid())).touch()

    def mark_stopping(self) -> None:
        """A draining worker is live but no longer ready: a load balancer stops sending it requests."""
        self.local = False
        if self.ready_dir is not None:
            (self.ready_dir / str(os.getpid())).unlink(missing_ok=True)

    def ready_workers(self) -> int:
        if self.ready_dir is None:
            return int(self.local)
        return sum(_alive(int(f.name)) for f in self.ready_dir.iterdir() if f.name.isdigit())

    def status(self) -> dict[str, Any]:
        ready = self.local and self.ready_workers() >= self.workers
        return {"status": "ready" if ready else "starting", "workers_ready": self.ready_workers(),
                "workers": self.workers}  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def warm_up(batchers: dict[str, Batcher], input_size: tuple[int, int, int], executor: Executor) -> float:
    """Run every batcher's function once at each of its padded batch sizes on zero images of
    `input_size` (C, H, W), in the model's executor; -> the seconds it took."""
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    for batcher in batchers.values():
        for size in batcher.sizes:
            await loop.run_in_executor(executor, batcher.fn, torch.zeros(size, *input_size))
    return time.perf_counter() - start


async def warm_up_then_ready(
    batchers: dict[str, Batcher], input_size: tuple[int, int, int], executor: Executor, readiness: Readiness
) -> None:
    try:
        seconds = await warm_up(batchers, input_size, executor)
    except Exception:  # the worker stays live and never ready: /readyz says so, the log says why
        log.exception("vitkit serve: the warm-up failed (worker %d)", os.getpid())
        return
    readiness.mark_ready(seconds)
    sizes = next(iter(batchers.values())).sizes
    log.info("vitkit serve: ready (worker %d): warmed up %s at batch sizes %s in %.2f s",
             os.getpid(), " and ".join(batchers), sizes, seconds)  # fmt: skip
