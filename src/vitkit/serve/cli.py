"""The `vitkit serve` command: parse, build the app from the checkpoint, run it under uvicorn."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from ..options import nonnegative_float, port, positive_float, positive_int
from .runtime import RUNTIMES, check_runtime
from .workers import default_threads, run_workers


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .app import MB, app_from_checkpoint
    except ImportError as e:
        raise ValueError(f"needs the serve extra ({e.name} is missing): pip install 'vitkit[serve]'") from None
    import torch

    from ..inference import inference_device

    max_queue = 4 * args.max_batch if args.max_queue is None else args.max_queue
    check_runtime(args.runtime, args.precision, args.device)
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"no checkpoint file {args.checkpoint!r}")
    onnx = args.runtime == "onnxruntime"
    device, choice = inference_device("fp32" if onnx else args.precision, "cpu" if onnx else args.device)
    print(choice.line(), file=sys.stderr)
    options = dict(
        path=args.checkpoint, device=device, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        precision=choice.precision, calibrate=args.calibrate, api_key=args.api_key,
        max_upload_bytes=int(args.max_upload_mb * MB), max_queue=max_queue, timeout_ms=args.timeout_ms,
        max_images_per_request=args.max_images_per_request, runtime=args.runtime,
    )  # fmt: skip
    stack = http_stack(args.http, args.loop)
    print(f"HTTP: uvicorn with {stack['http']} and {stack['loop']}", file=sys.stderr)
    server = dict(host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=60, **stack)
    if args.workers > 1:
        run_workers(options, args.workers, args.threads_per_worker or default_threads(args.workers), **server)
        return 0
    if args.threads_per_worker is not None:
        torch.set_num_threads(args.threads_per_worker)
    app = app_from_checkpoint(**options)
    # uvicorn shuts down gracefully on SIGTERM or Ctrl-C (in-flight requests finish, then the batchers
    # drain), then re-raises the signal under the handler it found; these let that end as a clean exit 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: None)
    uvicorn.run(app, **server)
    return 0


def http_stack(http: str, loop: str) -> dict[str, str]:
    """uvicorn's HTTP parser and event loop, `auto` resolved: httptools and uvloop (C; the serve extra installs
    them) where they import, else h11 and asyncio (pure Python; on 2 cores no slower, docs/serving.md). A
    stack named explicitly must be installed."""
    import importlib.util

    chosen = {}
    for option, name, fast, fallback in (("--http", http, "httptools", "h11"), ("--loop", loop, "uvloop", "asyncio")):
        installed = importlib.util.find_spec(fast) is not None
        if name == fast and not installed:
            raise ValueError(f"{option} {name}: {fast} is not installed (pip install 'vitkit[serve]')")
        chosen[option[2:]] = name if name != "auto" else fast if installed else fallback
    return chosen


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="an HTTP API (predict, explain, metrics) and a web page for a checkpoint")
    p.add_argument("--checkpoint", required=True, help="vitkit .safetensors (or any format that carries a config)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only; 0.0.0.0: all)")
    p.add_argument("--port", type=port, default=8000, help="TCP port to listen on")
    p.add_argument("--max-batch", type=positive_int, default=32, help="most images in one forward pass")
    p.add_argument("--max-wait-ms", type=nonnegative_float, default=5.0, help="longest wait for a batch to fill (0: none)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="where the model runs (default: cuda when available)")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "int8"],
        default="auto",
        help="auto: bf16 where native, else fp32; int8: CPU only, quantised at start (docs/int8.md)",
    )
    p.add_argument(
        "--calibrate",
        metavar="DATASET",
        help="int8 calibration images: this dataset's training split (default: the checkpoint's)",
    )
    p.add_argument("--runtime", choices=RUNTIMES, default="torch",
                   help="the predictions' forward pass: PyTorch, or ONNX Runtime (fp32, CPU; holds no GIL)")
    p.add_argument("--api-key", help="require it on /v1/*, as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
    p.add_argument("--max-upload-mb", type=positive_float, default=20.0, help="largest request body accepted, in MiB")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes, each with its own model")
    p.add_argument("--threads-per-worker", type=positive_int, help="torch threads per worker (default: the cores "
                                                                   "split among the workers)")  # fmt: skip
    p.add_argument("--max-queue", type=positive_int, help="most images queued per worker; beyond, 503 "
                                                          "(default: 4 x --max-batch)")  # fmt: skip
    p.add_argument("--timeout-ms", type=positive_float, default=30_000.0, help="an image queued longer gets 504")
    p.add_argument("--max-images-per-request", type=positive_int, default=64, help="most images in one batch request")
    p.add_argument("--http", choices=["auto", "httptools", "h11"], default="auto",
                   help="uvicorn's HTTP parser (auto: httptools where installed, else h11)")
    p.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto",
                   help="uvicorn's event loop (auto: uvloop where installed, else asyncio)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (info: one line per request)")
    p.set_defaults(func=_serve)
