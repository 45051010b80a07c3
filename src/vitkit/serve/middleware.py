"""ASGI middleware of the server: load shedding (a full queue's 503 before routing), the upload size limit,
enforced while the body streams in, and the Prometheus metrics (requests by path and status, latency, batch
sizes, the batch queue).

With several worker processes (`vitkit serve --workers N`) every worker writes its metrics to the directory
named by PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, set before the workers start) and
/metrics, whichever worker answers it, sums them over the workers."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Awaitable, Callable

from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

from .batcher import Reservation

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# Paths reported by name in the metrics; any other is "other", so a scan cannot grow the label set.
KNOWN_PATHS = ("/v1/predict", "/v1/explain", "/v1/model", "/healthz", "/livez", "/readyz", "/metrics", "/",
               "/openapi.json", "/v2/health/live", "/v2/health/ready")  # fmt: skip
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A refused body is still read, up to these bounds, before the 413 is sent (a lingering close, as nginx
# does): a client that writes its whole body before it reads (Python's urllib) then reads the 413 instead
# of a connection reset. Beyond them the connection is closed unread.
DRAIN_MAX_BYTES = 64 << 20
DRAIN_MAX_SECONDS = 10.0
LABEL = "vitkit.path_label"  # the scope key where Shed leaves the metrics label of a request it refused
ADMITTED = "vitkit.admitted"  # the scope key of the room Shed took in the batch queue for a request


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The server's error response: {"error": "<one line>"}."""
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"upload too large: the limit is {max_bytes:,} bytes (--max-upload-mb)")


async def drain(receive: Receive, received: int, bound: int) -> None:
    """Read and discard the rest of a request body until it ends, `bound` bytes in all have been received,
    or DRAIN_MAX_SECONDS have passed."""
    deadline = time.monotonic() + DRAIN_MAX_SECONDS
    while received <= bound and (remaining := deadline - time.monotonic()) > 0:
        try:
            message = await asyncio.wait_for(receive(), remaining)
        except asyncio.TimeoutError:
            return
        received += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class BodyLimit:
    """Refuse a body over `max_bytes` with a 413: when its Content-Length says so, or as soon as the bytes
    received pass the limit (a chunked upload). The computation never sees the rest; it is drained (up to
    max(2 x max_bytes, 1 MiB), at most DRAIN_MAX_BYTES) so that the client reads the 413, except when the
    client asked for `Expect: 100-continue` and so has sent nothing yet."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.drain_bytes = min(DRAIN_MAX_BYTES, max(2 * max_bytes, 1 << 20))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            if headers.get(b"expect", b"").lower() != b"100-continue" and int(length) <= self.drain_bytes:
                await drain(receive, 0, self.drain_bytes)
            too_large = BodyTooLarge(self.max_bytes)
            return await error(too_large.status_code, too_large.detail)(scope, receive, send)
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                if message.get("more_body", False):
                    await drain(receive, received, self.drain_bytes)
                raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


class Shed:
    """Admit or refuse a POST to a route that computes before routing, the API key check and reading its
    body: `admit(kind)` takes room in batch queue `kind` for the request's first image (kept in
    scope[ADMITTED] for the route to extend to all its images, and released when the request ends) or
    raises the 503. Refused by the route, one worker answered 2.7 times fewer a second (`serve_load.py`'s
    refusal check); and a check that took no room let the requests that arrived together all pass while
    there was room for one, to be refused by the route after all (docs/serving.md, round 5). `routes`:
    route template -> the batcher `kind` it queues on, with `{model_name}` standing for `model_name` alone
    (another model's request goes on to its 404)."""

    def __init__(self, app: ASGIApp, routes: dict[str, str], model_name: str,
                 admit: Callable[[str], Reservation]) -> None:  # fmt: skip
        self.app, self.admit = app, admit
        self.routes = [(compile_path(template.replace("{model_name}", model_name))[0], template, kind)
                       for template, kind in routes.items()]  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._computing(scope)
        if route is None:
            return await self.app(scope, receive, send)
        try:
            scope[ADMITTED] = self.admit(route[1])
        except HTTPException as refused:
            scope[LABEL] = route[0]
            return await error(refused.status_code, refused.detail, refused.headers)(scope, receive, send)
        try:
            await self.app(scope, receive, send)
        finally:
            scope[ADMITTED].release()

    def _computing(self, scope: Scope) -> tuple[str, str] | None:
        """(route template, batcher kind) of a POST to a route that computes, else None."""
        if scope["type"] == "http" and scope["method"] == "POST":
            for regex, template, kind in self.routes:
                if regex.match(scope["path"]):
                    return template, kind
        return None


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (one per app). `batch_sizes`: the
    batch-size histogram's buckets."""

    def __init__(self, batch_sizes: list[int]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("vitkit_requests", "HTTP requests by path and status", ["path", "status"],
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram("vitkit_request_latency_seconds", "Time to answer a request, by path", ["path"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.batch_size = Histogram("vitkit_batch_size", "Images per forward pass", buckets=batch_sizes,
                                    registry=self.registry)  # fmt: skip
        self.queue_depth = Gauge("vitkit_queue_depth", "Images waiting for a forward pass", ["kind"],
                                 multiprocess_mode="livesum", registry=self.registry)  # fmt: skip
        self.queue_wait = Histogram("vitkit_queue_wait_seconds", "Time an image waited for its forward pass",
                                    buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.rejected = Counter("vitkit_rejected_requests", "Requests refused with 503: the queue was full",
                                registry=self.registry)  # fmt: skip
        self.timed_out = Counter("vitkit_timed_out_requests", "Requests answered 504: queued past --timeout-ms",
                                 registry=self.registry)  # fmt: skip

    def on_batch(self, size: int, waits: list[float]) -> None:
        """The batcher's callback: one forward pass of `size` images that waited `waits` seconds."""
        self.batch_size.observe(size)
        for wait in waits:
            self.queue_wait.observe(wait)

    def response(self) -> Response:
        """The exposition: this registry's, or with PROMETHEUS_MULTIPROC_DIR set, every worker's summed."""
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def path_label(scope: Scope) -> str:
    """The route's template once the router has matched it (/v2/models/{model_name}/infer) or Shed has, else
    a known path or "other": a scan of made-up paths cannot grow the label set."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return route.path
    if LABEL in scope:
        return scope[LABEL]
    return scope["path"] if scope["path"] in KNOWN_PATHS else "other"


class MetricsMiddleware:
    """Counts each response in `metrics` by path and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # unless a response starts

        async def record_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, record_status)
        finally:
            path = path_label(scope)
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
            self.metrics.requests.labels(path, str(status)).inc()
