"""The `vitkit serve` command: parse, build the app from the checkpoint, run it under uvicorn."""

from __future__ import annotations

import argparse
import signal
import sys

from ..hardware import default_device
from ..precision import resolve_precision


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .app import MB, app_from_checkpoint
    except ImportError as e:
        raise ValueError(f"needs the serve extra ({e.name} is missing): pip install 'vitkit[serve]'") from None

    if args.max_batch < 1 or args.max_wait_ms < 0 or args.max_upload_mb <= 0:
        raise ValueError("--max-batch must be >= 1, --max-wait-ms >= 0 and --max-upload-mb > 0")
    device = args.device or default_device(args.precision)
    choice = resolve_precision(args.precision, device)
    print(choice.line(), file=sys.stderr)
    app = app_from_checkpoint(
        args.checkpoint, device, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        precision=choice.precision, calibrate=args.calibrate, api_key=args.api_key,
        max_upload_bytes=int(args.max_upload_mb * MB),
    )  # fmt: skip
    # uvicorn shuts down gracefully on SIGTERM or Ctrl-C (in-flight requests finish, then the batchers
    # drain), then re-raises the signal under the handler it found; these let that end as a clean exit 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=60)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="an HTTP API (predict, explain, metrics) and a web page for a checkpoint")
    p.add_argument("--checkpoint", required=True, help="vitkit .safetensors (or any format that carries a config)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="most images in one forward pass")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
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
    p.add_argument("--api-key", help="require it on /v1/*, as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body accepted")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=_serve)
