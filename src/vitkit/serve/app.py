"""The HTTP API and the page, on FastAPI: `create_app(model, classes)` for any model family vitkit loads.

This module assembles the app; the rooms are: routes_v1 (vitkit's API), oip (the Open Inference Protocol
v2), served (decoding, batching, backpressure), readiness (warm-up, /livez, /readyz), uploads, explain,
batcher and middleware (the size limit, the metrics). Every image, uploaded or read by `vitkit predict`,
goes through the same decoding (`read_image`) and the checkpoint's eval transform (`image_transform`);
concurrent requests share forward passes through the dynamic batcher. Errors are JSON
`{"error": "<one line>"}` with a 4xx/5xx status. Nothing a request says is used as a path: the page's
files are read into memory when the app is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, AsyncIterator, Callable

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from torchvision.datasets import FashionMNIST

from .. import __version__
from ..analysis.rollout import attention_rollout
from ..checkpoints.metadata import checkpoint_classes, checkpoint_dataset
from ..evaluate.predict import class_names, image_transform, probabilities
from ..files import sha256_file
from ..inference import load_for_inference
from ..precision import InferencePrecision, Precision, autocast
from .batcher import Batcher, batch_sizes, model_thread_prompt
from .middleware import BodyLimit, Metrics, MetricsMiddleware, Shed, error
from . import oip, routes_v1
from .oip import add_oip_routes
from .readiness import Readiness, warm_up_then_ready
from .runtime import check_runtime, onnx_probabilities
from .routes_v1 import add_v1_routes
from .served import DECODE_THREADS, Served

MB = 1 << 20
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
}


def _page_files(samples: str) -> dict[str, tuple[bytes, str]]:
    """The page's files and one set of sample images, read once: name -> (bytes, media type)."""
    media = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
             ".css": "text/css; charset=utf-8", ".png": "image/png", ".jpg": "image/jpeg"}  # fmt: skip
    page = resources.files(__package__) / "page"
    files = {f.name: f for f in page.iterdir() if f.is_file()}
    files.update({f"samples/{f.name}": f for f in (page / "samples" / samples).iterdir()})
    return {name: (f.read_bytes(), media[os.path.splitext(name)[1]]) for name, f in files.items()}


def sample_set(classes: list[str], dataset: str | None) -> str:
    """Fashion-MNIST test images for a Fashion-MNIST model, photographs otherwise."""
    return "fashion_mnist" if dataset == "fashion_mnist" or classes == FashionMNIST.classes else "photos"


def _api_key_check(api_key: str | None) -> Callable[[Request], None]:
    def check(request: Request) -> None:
        if api_key is None:
            return
        auth = request.headers.get("authorization", "")
        given = request.headers.get("x-api-key") or (auth[7:] if auth.lower().startswith("bearer ") else "")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")

    return check


def _batch_fns(
    model: torch.nn.Module, precision: Precision, int8: torch.nn.Module | None = None, runtime: str = "torch"
) -> tuple[Callable, Callable | None]:
    """The forward passes the batchers run: probabilities, and (probabilities, rollout) for attention models.
    With `int8` (vitkit.quantize's model of `model`), it gives the probabilities; the rollout stays fp32.
    With runtime "onnxruntime", ONNX Runtime gives the probabilities (fp32); explain stays PyTorch's."""
    device = next(model.parameters()).device
    classifier = model if int8 is None else int8

    @torch.inference_mode()
    def predict(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return probabilities(classifier, x).cpu()

    @torch.inference_mode()
    def explain(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(device, precision):  # two passes: the forward keeps its fused attention kernel
            return probabilities(classifier, x).cpu(), attention_rollout(model, x, batch_size=len(x))

    if runtime == "onnxruntime":
        predict = onnx_probabilities(model)
    return predict, explain if hasattr(model, "attention_maps") else None


def create_app(
    model: torch.nn.Module,
    classes: list[str] | None = None,
    *,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    precision: Precision = "fp32",
    api_key: str | None = None,
    max_upload_bytes: int = 20 * MB,
    checksum: str | None = None,
    dataset: str | None = None,
    int8: torch.nn.Module | None = None,
    max_queue: int | None = None,
    timeout_ms: float = 30_000.0,
    max_images_per_request: int = 64,
    readiness: Readiness | None = None,
    model_name: str | None = None,
    runtime: str = "torch",
) -> FastAPI:
    """The app serving `model` (in eval mode, on its device) with `classes` as its class names.
    `checksum`: the checkpoint file's SHA-256, reported by /v1/model; `dataset`: the training data's
    name from the checkpoint, which picks the page's sample images; `int8`: `model` quantised by
    vitkit.quantize (warmed up to `max_batch`), which then computes every class probability.
    Backpressure: more than `max_queue` queued images (default 4 x max_batch) is a 503, an image queued
    over `timeout_ms` a 504. `readiness`: shared by the worker processes (default: this process alone);
    `model_name`: the name under /v2/models (default: the model's). `runtime`: "torch", or "onnxruntime" for the
    predictions (fp32, CPU; vitkit.serve.runtime)."""
    cfg = model.config
    check_runtime(runtime, "int8" if int8 is not None else precision, next(model.parameters()).device.type)
    model.eval()
    names = class_names(cfg.num_classes, classes)
    page = _page_files(sample_set(names, dataset))
    metrics = Metrics(batch_sizes(max_batch))
    readiness = readiness or Readiness()
    queue = dict(max_queue=max_queue or 4 * max_batch, timeout_s=timeout_ms / 1000)
    fns = zip(("predict", "explain"), _batch_fns(model, precision, int8, runtime))
    batchers = {kind: Batcher(fn, max_batch, max_wait_ms, metrics.on_batch, **queue,
                              on_depth=metrics.queue_depth.labels(kind).set)
                for kind, fn in fns if fn is not None}  # fmt: skip
    info = _model_info(cfg, names, checksum, "explain" in batchers, "int8" if int8 else precision, runtime,
                       max_batch=max_batch, max_wait_ms=max_wait_ms, max_upload_bytes=max_upload_bytes,
                       max_queue=queue["max_queue"], timeout_ms=timeout_ms,
                       max_images_per_request=max_images_per_request)  # fmt: skip
    served = Served(model, names, image_transform(cfg), batchers, metrics, readiness, info, max_images_per_request)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitkit-model")  # one forward at a time
        served.decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="vitkit-decode")
        for b in batchers.values():
            b.start(executor)
        warming = asyncio.ensure_future(warm_up_then_ready(batchers, (cfg.in_chans, *cfg.img_size), executor,
                                                           readiness))  # fmt: skip
        with model_thread_prompt():
            try:
                yield
            finally:
                readiness.mark_stopping()
                await asyncio.gather(warming, return_exceptions=True)
                await asyncio.gather(*(b.stop() for b in batchers.values()))
                executor.shutdown(wait=True)
                served.decoder.shutdown(wait=True)

    # The schema is on; the interactive docs pages are off (they load their scripts from a CDN).
    app = FastAPI(title="vitkit", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    computing = {**routes_v1.COMPUTING_ROUTES, **oip.COMPUTING_ROUTES}
    app.add_middleware(Shed, routes={t: k for t, k in computing.items() if k in batchers},
                       model_name=model_name or cfg.name, admit=served.admit_first)  # fmt: skip
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _install_error_handlers(app)
    protected = [Depends(_api_key_check(api_key))]
    add_v1_routes(app, served, protected)
    add_oip_routes(app, served, model_name or cfg.name, protected)
    _add_open_routes(app, page, served)
    return app


def _model_info(
    cfg: Any, names: list[str], checksum: str | None, explain: bool, precision: str, runtime: str, **limits: float
) -> dict[str, Any]:
    """What /v1/model reports: the model, its classes, the preprocessing a client must match, and the limits."""
    H, W = cfg.img_size
    return {
        "name": cfg.name, "family": getattr(cfg, "family", "vit"), "classes": names,
        "input_size": [cfg.in_chans, H, W], "explain": explain, "sha256": checksum,
        "preprocessing": cfg.data_config.describe(),
        "precision": precision, "runtime": runtime, **limits,
    }  # fmt: skip


def _add_open_routes(app: FastAPI, page: dict[str, tuple[bytes, str]], served: Served) -> None:
    """The unauthenticated routes: liveness, readiness, /metrics, and the web page with its assets and
    sample images."""

    @app.get("/livez")
    @app.get("/healthz")
    def livez() -> dict[str, Any]:
        """The worker answers (it does while a batch computes): `{"status": "ok", "worker": pid}`."""
        return {"status": "ok", "worker": os.getpid()}

    @app.get("/readyz", responses={503: {"description": "not every worker has warmed up yet"}})
    def readyz() -> JSONResponse:
        """200 once every worker has loaded the model and run a warm-up batch at each padded batch size."""
        status = served.readiness.status()
        return JSONResponse(status, status_code=200 if status["status"] == "ready" else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        """Prometheus text, summed over the worker processes."""
        return served.metrics.response()

    @app.get("/samples")
    def samples() -> list[str]:
        """The sample images' URLs."""
        return sorted(f"/{name}" for name in page if name.startswith("samples/"))

    def asset(name: str) -> Response:
        if name not in page:
            raise HTTPException(404, f"no such file: {name}")
        content, media_type = page[name]
        return Response(content, media_type=media_type, headers=SECURITY_HEADERS)

    app.get("/", summary="The page")(lambda: asset("index.html"))
    app.get("/static/{name}", summary="The page's files")(asset)
    app.get("/samples/{name}", summary="A sample image")(lambda name: asset(f"samples/{name}"))


def _install_error_handlers(app: FastAPI) -> None:
    """Every error as {"error": "<one line>"}; a failure inside the server is a 500 that names no internals."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return error(e.status_code, str(e.detail), e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        return error(400, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> JSONResponse:
        return error(500, f"internal error ({type(e).__name__})")


def app_from_checkpoint(
    path: str | os.PathLike,
    device: str | None = None,
    calibrate: str | None = None,
    *,
    precision: InferencePrecision = "auto",
    **options: Any,
) -> FastAPI:
    """create_app for a checkpoint file (loaded by `vitkit.inference.load_for_inference`): its model, class
    names, training data's name and checksum. With precision="int8", the model is quantised on a few hundred
    images of dataset `calibrate`'s training split (default: the checkpoint's own training data) and compiled
    for every batch size it will see. `precision`: auto (bf16 where native, else fp32), as `vitkit serve`'s.
    `options`: create_app's."""
    dataset = checkpoint_dataset(path)
    loaded = load_for_inference(path, device, precision, calibrate, calibrate_default=dataset)
    if loaded.int8 is not None:
        loaded.int8.warm_up(options.get("max_batch", 32))
    return create_app(loaded.model, checkpoint_classes(path), checksum=sha256_file(path), dataset=dataset,
                      precision=loaded.precision, int8=loaded.int8, **options)  # fmt: skip
