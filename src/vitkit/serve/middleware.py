"""ASGI middleware of the server: the upload size limit, enforced while the body streams in, and the
Prometheus metrics (requests by path and status, latency, batch sizes)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# Paths reported by name in the metrics; any other is "other", so a scan cannot grow the label set.
KNOWN_PATHS = ("/v1/predict", "/v1/explain", "/v1/model", "/healthz", "/metrics", "/")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def error(status: int, message: str) -> JSONResponse:
    """The server's error response: {"error": "<one line>"}."""
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"upload too large: the limit is {max_bytes:,} bytes (--max-upload-mb)")


class BodyLimit:
    """Refuse a body over `max_bytes`: at once when its Content-Length says so, else as soon as the bytes
    received pass the limit (a chunked upload), before the rest is read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            too_large = BodyTooLarge(self.max_bytes)
            return await error(too_large.status_code, too_large.detail)(scope, receive, send)
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("vitkit_requests", "HTTP requests by path and status", ["path", "status"],
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram("vitkit_request_latency_seconds", "Time to answer a request, by path", ["path"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        sizes = [2**i for i in range(max_batch.bit_length()) if 2**i < max_batch] + [max_batch]
        self.batch_size = Histogram("vitkit_batch_size", "Images per forward pass", buckets=sizes,
                                    registry=self.registry)  # fmt: skip

    def response(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts each response in `metrics` by path and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
        status = 500  # unless a response starts

        async def record_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.metrics.latency.labels(path).time():
            try:
                await self.app(scope, receive, record_status)
            finally:
                self.metrics.requests.labels(path, str(status)).inc()
