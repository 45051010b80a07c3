"""The HTTP API and the page, on FastAPI: `create_app(model, classes)` for any model family vitkit loads.

Every image, uploaded or read by `vitkit predict`, goes through the same decoding (`open_image`) and the
checkpoint's eval transform (`image_transform`); concurrent requests share forward passes through the
dynamic batcher. Errors are JSON `{"error": "<one line>"}` with a 4xx/5xx status. Nothing a request says
is used as a path: the page's files are read into memory when the app is made.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, AsyncIterator, Callable

import numpy as np
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from matplotlib import colormaps
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from torchvision.datasets import FashionMNIST

from ..analysis.plots import HEAT_CMAP, denormalise, heat_map
from ..analysis.rollout import attention_rollout
from ..data.images import ImageDecodeError, open_image
from ..evaluate.predict import checkpoint_classes, checkpoint_metadata, class_names, image_transform, probabilities
from ..files import sha256_file
from ..precision import Precision, autocast
from .batcher import Batcher
from .middleware import BodyLimit, Metrics, MetricsMiddleware, error

MB = 1 << 20
# Uploads are either multipart (field `file`) or the image's bytes as the body, with one of these types.
RAW_TYPES = ("", "application/octet-stream")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
}


def _png_data_uri(pixels: np.ndarray) -> str:
    """(H, W), (H, W, 3) or (H, W, 4) uint8 -> a data:image/png;base64 URI."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def explanation(image: torch.Tensor, rollout: torch.Tensor, mean: Any, std: Any) -> dict[str, Any]:
    """image: (C, H, W) as the model saw it, rollout: (gh, gw) -> the input and the rollout as PNGs of
    (H, W) pixels, the heat map coloured with the analysis plots' colour map, and the rollout's numbers."""
    picture = denormalise(image[None], mean, std)[0]
    picture = picture.permute(1, 2, 0) if picture.shape[0] == 3 else picture[0]
    heat = colormaps[HEAT_CMAP](heat_map(rollout, tuple(image.shape[-2:])).numpy())  # (H, W, 4) in [0, 1]
    return {
        "input_png": _png_data_uri((picture.numpy() * 255).round().astype(np.uint8)),
        "overlay_png": _png_data_uri((heat * 255).round().astype(np.uint8)),
        "rollout": [[round(v, 6) for v in row] for row in rollout.tolist()],
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


async def read_upload(request: Request) -> bytes:
    """The uploaded image's bytes: multipart field `file`, or the raw body; a client that goes away before
    its upload ends gets a 400 (nobody reads it) instead of an error in the server's log."""
    try:
        return await _read_upload(request)
    except ClientDisconnect:
        raise HTTPException(400, "the client disconnected before its upload ended") from None


async def _read_upload(request: Request) -> bytes:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "the multipart upload has no file in field 'file'")
        data = await upload.read()
    elif kind in RAW_TYPES or kind.startswith("image/"):
        data = await request.body()
    else:
        raise HTTPException(415, f"content type {kind!r} not accepted: send image/*, application/octet-stream "
                                 "or multipart/form-data with the image in field 'file'")  # fmt: skip
    if not data:
        raise HTTPException(400, "empty upload: no image bytes")
    return data


def _batch_fns(
    model: torch.nn.Module, precision: Precision, int8: torch.nn.Module | None = None
) -> tuple[Callable, Callable | None]:
    """The forward passes the batchers run: probabilities, and (probabilities, rollout) for attention models.
    With `int8` (vitkit.quantize's model of `model`), it gives the probabilities; the rollout stays fp32."""
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
) -> FastAPI:
    """The app serving `model` (in eval mode, on its device) with `classes` as its class names.
    `checksum`: the checkpoint file's SHA-256, reported by /v1/model; `dataset`: the training data's
    name from the checkpoint, which picks the page's sample images; `int8`: `model` quantised by
    vitkit.quantize (warmed up to `max_batch`), which then computes every class probability."""
    cfg = model.config
    model.eval()
    names = class_names(cfg.num_classes, classes)
    transform = image_transform(cfg)
    page = _page_files(sample_set(names, dataset))
    metrics = Metrics(max_batch)
    predict_fn, explain_fn = _batch_fns(model, precision, int8)
    batchers = {kind: Batcher(fn, max_batch, max_wait_ms, metrics.batch_size.observe)
                for kind, fn in (("predict", predict_fn), ("explain", explain_fn)) if fn is not None}  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitkit-model")  # one forward at a time
        for b in batchers.values():
            b.start(executor)
        try:
            yield
        finally:
            await asyncio.gather(*(b.stop() for b in batchers.values()))
            executor.shutdown(wait=True)

    app = FastAPI(title="vitkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _install_error_handlers(app)
    protected = [Depends(_api_key_check(api_key))]

    def preprocess(data: bytes) -> torch.Tensor:
        try:
            return transform(open_image(io.BytesIO(data), name="upload"))
        except ImageDecodeError as e:
            raise HTTPException(400, str(e)) from None

    async def classify(request: Request, topk: int, kind: str) -> tuple[list[dict[str, Any]], Any, torch.Tensor]:
        """The upload's top-k classes, the batcher's output for it, and the image as the model saw it."""
        if topk < 1:
            raise HTTPException(400, f"topk must be at least 1, got {topk}")
        image = await run_in_threadpool(preprocess, await read_upload(request))
        out = await batchers[kind].submit(image)
        values, indices = (out[0] if isinstance(out, tuple) else out).topk(min(topk, cfg.num_classes))
        top = [{"label": names[i], "index": i, "prob": p} for p, i in zip(values.tolist(), indices.tolist())]
        return top, out, image

    def answer(top: list[dict[str, Any]], start: float, **extra: Any) -> dict[str, Any]:
        return {"topk": top, "model": cfg.name, **extra, "latency_ms": (time.perf_counter() - start) * 1000}

    @app.post("/v1/predict", dependencies=protected)
    async def predict(request: Request, topk: int = 5) -> dict[str, Any]:
        start = time.perf_counter()
        top, _, _ = await classify(request, topk, "predict")
        return answer(top, start)

    @app.post("/v1/explain", dependencies=protected)
    async def explain(request: Request, topk: int = 5) -> dict[str, Any]:
        start = time.perf_counter()
        if "explain" not in batchers:
            raise HTTPException(400, f"model {cfg.name!r} ({type(model).__name__}) has no attention to explain: "
                                     "/v1/explain needs a ViT or a hybrid; use /v1/predict")  # fmt: skip
        top, (_, rollout), image = await classify(request, topk, "explain")
        return answer(top, start, **await run_in_threadpool(explanation, image, rollout, cfg.mean, cfg.std))

    info = _model_info(cfg, names, checksum, "explain" in batchers, "int8" if int8 else precision,
                       max_batch=max_batch, max_wait_ms=max_wait_ms, max_upload_bytes=max_upload_bytes)  # fmt: skip
    app.get("/v1/model", dependencies=protected)(lambda: info)
    _add_page_routes(app, page, metrics)
    return app


def _model_info(
    cfg: Any, names: list[str], checksum: str | None, explain: bool, precision: str, **limits: float
) -> dict[str, Any]:
    """What /v1/model reports: the model, its classes, the preprocessing a client must match, and the limits."""
    H, W = cfg.img_size
    return {
        "name": cfg.name, "family": getattr(cfg, "family", "vit"), "classes": names,
        "input_size": [cfg.in_chans, H, W], "explain": explain, "sha256": checksum,
        "preprocessing": {"resize": [round(H / cfg.crop_pct), round(W / cfg.crop_pct)], "crop": [H, W],
                          "crop_pct": cfg.crop_pct, "interpolation": cfg.interpolation,
                          "mean": list(cfg.mean), "std": list(cfg.std), "channels": cfg.in_chans},
        "precision": precision, **limits,
    }  # fmt: skip


def _add_page_routes(app: FastAPI, page: dict[str, tuple[bytes, str]], metrics: Metrics) -> None:
    """The unauthenticated routes: /healthz, /metrics, and the web page with its assets and sample images."""

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    def prometheus() -> Response:
        return metrics.response()

    @app.get("/samples")
    def samples() -> list[str]:
        return sorted(f"/{name}" for name in page if name.startswith("samples/"))

    def asset(name: str) -> Response:
        if name not in page:
            raise HTTPException(404, f"no such file: {name}")
        content, media_type = page[name]
        return Response(content, media_type=media_type, headers=SECURITY_HEADERS)

    app.get("/", include_in_schema=False)(lambda: asset("index.html"))
    app.get("/static/{name}", include_in_schema=False)(asset)
    app.get("/samples/{name}", include_in_schema=False)(lambda name: asset(f"samples/{name}"))


def _install_error_handlers(app: FastAPI) -> None:
    """Every error as {"error": "<one line>"}; a failure inside the server is a 500 that names no internals."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return error(e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        return error(400, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> JSONResponse:
        return error(500, f"internal error ({type(e).__name__})")


def app_from_checkpoint(
    path: str | os.PathLike, device: str | None = None, calibrate: str | None = None, **options: Any
) -> FastAPI:
    """create_app for a checkpoint file: its model, class names, training data's name and checksum.
    With precision="int8", the model is quantised on a few hundred images of dataset `calibrate`'s training
    split (default: the checkpoint's own training data) and compiled for every batch size it will see."""
    from ..checkpoints.load import load

    precision = options.pop("precision", "fp32")
    on_gpu = torch.cuda.is_available() and precision != "int8"  # int8 runs on CPU
    model = load(path).to(device or ("cuda" if on_gpu else "cpu"))
    dataset = checkpoint_metadata(path).get("dataset")
    if precision == "int8":
        from ..quantize import quantize_calibrated

        options["int8"] = quantize_calibrated(model, calibrate or dataset)
        options["int8"].warm_up(options.get("max_batch", 32))
    else:
        options["precision"] = precision
    return create_app(model, checkpoint_classes(path), checksum=sha256_file(path), dataset=dataset, **options)

