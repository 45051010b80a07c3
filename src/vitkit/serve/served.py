"""What every route needs of the model being served: its config and class names, the decoding and the
eval transform, the batchers, and how a request's images become rows of a batch.

A request waits for its rows while it watches its connection: when the client goes away its images are
dropped from the queue without being computed (the answer, which nobody reads, is nginx's 499). The
batcher's refusals become HTTP answers here: a full queue is a 503 with Retry-After, an image queued past
--timeout-ms is a 504; the metrics count both.
"""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import torch
from starlette.exceptions import HTTPException
from starlette.requests import Request

from ..data.images import ImageDecodeError
from ..evaluate.predict import read_image
from .batcher import Batcher, QueueFull, QueueTimeout, Reservation, Row
from .middleware import ADMITTED, Metrics
from .readiness import Readiness

RETRY_AFTER_S = 1
CLIENT_GONE = 499  # nginx's "client closed request"
DECODE_THREADS = 2


@dataclass
class Served:
    """The model behind the routes. `batchers`: "predict" (probabilities (B, classes)) and, for models
    with attention, "explain" ((probabilities, rollout (B, gh, gw)))."""

    model: torch.nn.Module
    names: list[str]
    transform: Any
    batchers: dict[str, Batcher]
    metrics: Metrics
    readiness: Readiness
    info: dict[str, Any]
    max_images: int
    decoder: Executor | None = None  # the app's lifespan starts DECODE_THREADS threads (None: asyncio's)

    @property
    def cfg(self) -> Any:
        return self.model.config

    def decode(self, images: list[bytes | str], names: list[str] | None = None) -> list[torch.Tensor | str]:
        """Each image's bytes -> (C, H, W) as the model sees it, or the one-line error that refuses it, naming
        the image as `names` does (default: "upload")."""
        names = names or ["upload"] * len(images)
        return [image if isinstance(image, str) else self._decode_one(image, name) for image, name in zip(images, names)]

    def _decode_one(self, data: bytes, name: str = "upload") -> torch.Tensor | str:
        try:
            return self.transform(read_image(io.BytesIO(data), name=name))
        except ImageDecodeError as e:
            return str(e)

    async def decode_async(self, images: list[bytes | str], names: list[str] | None = None) -> list[torch.Tensor | str]:
        """decode, in `decoder` (DECODE_THREADS threads): under a flood, the admitted requests decoding at
        once in anyio's 40 threads fought over the GIL (6 ms a decode at 32 clients, 225 at 512)."""
        return await asyncio.get_running_loop().run_in_executor(self.decoder, self.decode, images, names)

    def admit_first(self, kind: str) -> Reservation:
        """Room in batcher `kind`'s queue for a request's first image, taken by the Shed middleware before
        the request is routed or its body read: a 503 when there is none."""
        try:
            return self.batchers[kind].reserve(1)
        except QueueFull as e:
            raise self._refused(e) from None

    def admit(self, request: Request, kind: str, n: int) -> Reservation:
        """Room for the request's `n` images before they are decoded: the room Shed took for its first image
        (scope[ADMITTED]) extended to all of them, or a new reservation; else a 503 at once. The caller
        releases it when the request ends."""
        held: Reservation | None = request.scope.get(ADMITTED)
        try:
            if held is None:
                return self.batchers[kind].reserve(n)
            held.extend(n)
            return held
        except QueueFull as e:
            raise self._refused(e) from None

    def _refused(self, e: QueueFull) -> HTTPException:
        self.metrics.rejected.inc()
        return HTTPException(503, str(e), headers={"Retry-After": str(RETRY_AFTER_S)})

    async def compute(self, request: Request, kind: str, images: list[torch.Tensor],
                      reservation: Reservation | None = None) -> list[Row]:  # fmt: skip
        """images: each (C, H, W) -> their rows of batcher `kind`'s output, in order, once the request's
        body has been read."""
        work = asyncio.ensure_future(self.batchers[kind].submit_many(images, reservation))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            raise HTTPException(CLIENT_GONE, "the client went away before its answer was computed")
        try:
            return work.result()
        except QueueFull as e:
            raise self._refused(e) from None
        except QueueTimeout as e:
            self.metrics.timed_out.inc()
            raise HTTPException(504, str(e)) from None


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (its body has been read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
