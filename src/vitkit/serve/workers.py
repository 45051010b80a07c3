"""`vitkit serve --workers N`: N worker processes on one port, each with its own model and batchers.

uvicorn's supervisor binds the socket once and spawns the workers, which accept on it in turn (as
TorchServe's workers per model and LitServe's `workers_per_device` do); it restarts a worker that dies and,
on SIGTERM, passes the signal on to every worker, which finishes its requests in flight and drains its
batchers before it exits. A spawned worker builds its app from the JSON this process leaves in the
environment. Every worker writes its metrics to one directory (prometheus_client's multiprocess mode) and
marks itself ready in another (serve/readiness.py), both made here and removed when the server stops.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

SPEC_ENV = "VITKIT_SERVE_WORKER"  # the worker's spec: app_from_checkpoint's arguments and its share of cores
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when it is imported


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads(workers: int) -> int:
    """torch's intra-op threads per worker: the cores split between the workers, at least one each."""
    return max(1, cores() // workers)


def run_workers(app_options: dict[str, Any], workers: int, threads: int, **uvicorn_options: Any) -> None:
    """Serve with `workers` processes of `threads` torch threads each, until SIGTERM or Ctrl-C.
    app_options: app_from_checkpoint's keyword arguments (JSON-serialisable)."""
    import uvicorn

    with tempfile.TemporaryDirectory(prefix="vitkit-serve-") as tmp:
        (Path(tmp) / "metrics").mkdir()
        (Path(tmp) / "ready").mkdir()
        os.environ[MULTIPROC_ENV] = str(Path(tmp) / "metrics")
        spec = {"app": app_options, "threads": threads, "workers": workers, "ready_dir": str(Path(tmp) / "ready"),
                "supervisor": os.getpid()}  # fmt: skip
        os.environ[SPEC_ENV] = json.dumps(spec)
        # The health check of a busy worker can wait behind its forward passes on a small machine: give it
        # time rather than have the supervisor kill a working worker (uvicorn's default is 5 s).
        uvicorn.run("vitkit.serve.workers:worker_app", factory=True, workers=workers,
                    timeout_worker_healthcheck=60, **uvicorn_options)  # fmt: skip


def worker_app() -> Any:
    """The app of one worker process, from the spec its supervisor left in the environment."""
    import torch

    from .app import app_from_checkpoint
    from .readiness import Readiness

    spec = json.loads(os.environ[SPEC_ENV])
    exit_with_supervisor(spec["supervisor"])
    torch.set_num_threads(spec["threads"])
    readiness = Readiness(spec["ready_dir"], spec["workers"])
    return app_from_checkpoint(**spec["app"], readiness=readiness)


def exit_with_supervisor(supervisor: int) -> None:
    """Have the kernel send this worker SIGTERM when its supervisor dies (Linux's PR_SET_PDEATHSIG): a
    supervisor killed with SIGKILL cannot pass the signal on, and its workers would serve on as orphans."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
