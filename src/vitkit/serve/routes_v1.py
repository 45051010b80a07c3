"""vitkit's own API: POST /v1/predict, POST /v1/explain (one image or a batch of them), GET /v1/model.

One image (a raw body, or one multipart `file`) is answered `{"topk", "model", "latency_ms"}`, `topk` as
vitkit.evaluate.predict.topk_entries gives it (the schema of `vitkit predict --json` too); a batch
(several `file` fields, or JSON `{"images": [...]}`) is answered `{"results": [...], "model", "latency_ms"}`
in the same order, where an image that cannot be decoded gets `{"error"}` in its place.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..evaluate.predict import topk_entries
from .explain import explanation
from .served import Served
from .uploads import read_upload

# The routes that compute, by the batcher they queue on (the Shed middleware refuses them when it is full).
PREDICT, EXPLAIN = "/v1/predict", "/v1/explain"
COMPUTING_ROUTES = {PREDICT: "predict", EXPLAIN: "explain"}
# The request bodies /v1/predict and /v1/explain take, for the OpenAPI schema (the routes read the body
# themselves, so FastAPI cannot derive it).
UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
            "application/json": {"schema": {"type": "object", "required": ["images"], "properties": {
                "images": {"type": "array", "items": {"type": "string", "format": "byte"}}}}},
        },
    }
}  # fmt: skip


def add_v1_routes(app: FastAPI, served: Served, dependencies: list[Any]) -> None:
    cfg, names = served.cfg, served.names

    async def classify(request: Request, topk: int, kind: str, extra: Callable | None = None) -> dict[str, Any]:
        """The upload's answer: each image's top-k classes (and `extra(image, row)`'s fields)."""
        start = time.perf_counter()
        if topk < 1:
            raise HTTPException(400, f"topk must be at least 1, got {topk}")
        upload = await read_upload(request, served.max_images)
        reservation = served.admit(request, kind, len(upload.images))
        try:
            images = await served.decode_async(upload.images, upload.names)
            if not upload.batch and isinstance(images[0], str):
                raise HTTPException(400, images[0])
            good = [x for x in images if isinstance(x, torch.Tensor)]
            rows = iter(await served.compute(request, kind, good, reservation) if good else [])
        finally:
            reservation.release()
        results = []
        for image in images:
            if isinstance(image, str):
                results.append({"error": image})
                continue
            row = next(rows)
            result = {"topk": topk_entries(row[0] if isinstance(row, tuple) else row, names, topk)}
            if extra is not None:
                result.update(await run_in_threadpool(extra, image, row))
            results.append(result)
        body = {"results": results} if upload.batch else results[0]
        return {**body, "model": cfg.name, "latency_ms": (time.perf_counter() - start) * 1000}

    @app.post(PREDICT, dependencies=dependencies, openapi_extra=UPLOAD_SCHEMA)
    async def predict(request: Request, topk: int = 5) -> dict[str, Any]:
        """Classify one image, or a batch of them."""
        return await classify(request, topk, "predict")

    @app.post(EXPLAIN, dependencies=dependencies, openapi_extra=UPLOAD_SCHEMA)
    async def explain(request: Request, topk: int = 5) -> dict[str, Any]:
        """Classify one image, or a batch, with each one's attention rollout (appendix D.8)."""
        if "explain" not in served.batchers:
            raise HTTPException(400, f"model {cfg.name!r} ({type(served.model).__name__}) has no attention to "
                                     "explain: /v1/explain needs a ViT or a hybrid; use /v1/predict")  # fmt: skip
        return await classify(request, topk, "explain",
                              lambda image, row: explanation(image, row[1], cfg.mean, cfg.std))  # fmt: skip

    @app.get("/v1/model", dependencies=dependencies)
    def model_info() -> dict[str, Any]:
        """The model, its classes, the preprocessing a client must match, and the server's limits."""
        return served.info
