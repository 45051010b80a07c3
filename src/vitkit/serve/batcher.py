"""Dynamic batching with backpressure: images from concurrent requests share one forward pass.

Callers `await batcher.submit_many(images)`; a worker task takes the first waiting image, gathers more
until `max_batch` are waiting or `max_wait_ms` has passed, brings the batch to one of a few fixed sizes
(`batch_sizes`: 1, 2, 4, multiples of 8 and `max_batch`, the shapes the server warms up) by cutting a batch
over 8 down to the size below it (the rest go first into the next batch) or padding a smaller one with at
most 3 zero images, runs the model on it in a worker thread (so the event loop keeps answering other
requests), and hands each caller its own row. While one batch computes, the next one fills up.

Backpressure, as Ray Serve's `max_queued_requests` and Triton's queue policy do it: a request whose
images would take the queue past `max_queue` is refused at once (`QueueFull`, the server's 503); an image
still queued `timeout_s` after it was submitted is dropped (`QueueTimeout`, a 504); an image whose caller
has gone (its future cancelled) is dropped without being computed. The batcher counts nothing itself: the
`on_batch(size, waits)` and `on_depth(depth)` callbacks let the server keep its metrics.

The model thread needs the GIL between torch ops, and by default a thread that wants it waits up to
Python's 5-ms switch interval while the event loop holds it. Beside a busy event loop a forward pass of
the Fashion-MNIST ViT (about a hundred ops) then took 30 to 43 times as long (benchmarks/gil_convoy.py);
`model_thread_prompt` shortens the interval while the server runs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

# The GIL switch interval while a server runs: beside a busy thread, a forward pass took 2-3x its time alone
# rather than 30-43x, and the busy thread kept 80-93% of its pace (benchmarks/gil_convoy.py, two CPUs).
SWITCH_INTERVAL_S = 1e-4

# A batch (B, C, H, W) -> per-image results: one tensor or a tuple of tensors, each (B, ...).
BatchFn = Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]]
Row = torch.Tensor | tuple[torch.Tensor, ...]


class QueueFull(Exception):
    """The queue holds `max_queue` images: the request is refused without waiting."""


class Reservation:
    """Room for `n` images held in a batcher's queue from admission until they are queued (`submit_many`) or
    the request ends (`release`), so that requests admitted while their bodies are read and their images
    decode cannot all pass the bound together and be refused only after that work."""

    def __init__(self, batcher: Batcher, n: int) -> None:
        self.batcher, self.n = batcher, n

    def extend(self, n: int) -> None:
        """Hold room for `n` images in all: QueueFull unless those beyond the ones held fit (a queue empty
        but for this reservation takes any number)."""
        self.batcher.check_room(n - self.n, own=self.n)
        self.batcher.reserved += n - self.n
        self.n = n

    def release(self) -> None:
        """Give back what is still held (idempotent)."""
        self.batcher.reserved -= self.n
        self.n = 0


class QueueTimeout(Exception):
    """The image waited in the queue longer than the timeout: it was dropped without being computed."""


@contextlib.contextmanager
def model_thread_prompt(interval_s: float = SWITCH_INTERVAL_S) -> Iterator[None]:
    """Within the block, a thread that holds the GIL hands it over after `interval_s` when another wants it
    (sys.setswitchinterval; the previous interval is restored after)."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval_s)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def batch_sizes(max_batch: int) -> list[int]:
    """The padded batch sizes: 1, 2, 4, 8, then multiples of 8, then max_batch (32 -> [1, 2, 4, 8, 16, 24, 32]).
    The warm-up runs each size once."""
    sizes = [s for s in (1, 2, 4) if s < max_batch] + list(range(8, max_batch, 8))
    return sizes + [max_batch]


@dataclass(eq=False)
class _Item:
    image: torch.Tensor
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)
    started: bool = False


class Batcher:
    """Batches the images submitted concurrently (up to `max_batch`, waiting at most `max_wait_ms` for
    more once one is waiting) and runs `fn` on them, padded to a size of `batch_sizes(max_batch)`, in the
    executor given to `start`. `on_batch(size, waits)` gets each batch's real size and its images' seconds
    in the queue; `on_depth(n)` the number of queued images whenever it changes."""

    def __init__(
        self,
        fn: BatchFn,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int, list[float]], None] | None = None,
        *,
        max_queue: int | None = None,
        timeout_s: float | None = None,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch} and {max_wait_ms}")
        if (max_queue is not None and max_queue < 1) or (timeout_s is not None and timeout_s <= 0):
            raise ValueError(f"max_queue must be >= 1 and timeout_s > 0, got {max_queue} and {timeout_s}")
        self.fn = fn
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.max_queue, self.timeout = max_queue, timeout_s
        self.reserved = 0  # images of admitted requests not queued yet (Reservation)
        self.sizes = batch_sizes(max_batch)
        self.on_batch, self.on_depth = on_batch, on_depth
        self._queue: collections.deque[_Item] = collections.deque()
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._computing = False
        self._worker: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Images waiting in the queue (not those computing)."""
        return len(self._queue)

    def check_room(self, n: int, own: int = 0) -> None:
        """Raise QueueFull unless `n` more images fit beside those waiting and those reserved, the caller's
        `own` reserved images aside (an empty queue with nothing else reserved takes any number)."""
        held = len(self._queue) + self.reserved
        if self.max_queue is not None and held - own and held + n > self.max_queue:
            raise QueueFull(f"the queue is full ({len(self._queue)} images waiting, {self.reserved} admitted, "
                            f"--max-queue {self.max_queue})")  # fmt: skip

    def reserve(self, n: int) -> Reservation:
        """Admit a request of `n` images: QueueFull now, or room held for them until they are queued."""
        reservation = Reservation(self, 0)
        reservation.extend(n)
        return reservation

    def start(self, executor: Executor) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(executor))

    async def stop(self) -> None:
        """Finish every image already submitted, then stop the worker."""
        await self._idle.wait()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def submit(self, image: torch.Tensor) -> Row:
        """image: (C, H, W) -> its row of fn's output, once its batch has run."""
        return (await self.submit_many([image]))[0]

    async def submit_many(self, images: list[torch.Tensor], reservation: Reservation | None = None) -> list[Row]:
        """images: each (C, H, W) -> their rows of fn's output, in order. All are queued or none: `QueueFull`
        when they would pass `max_queue` (an empty queue takes any number). `QueueTimeout` when one waited
        longer than `timeout_s`; cancelling the call drops its images that have not started. With a
        `reservation` (from `reserve`), the images take its room instead of being checked again."""
        if self._worker is None or self._worker.done():
            raise RuntimeError("the batcher is not running")
        if reservation is not None:
            reservation.release()
        else:
            self.check_room(len(images))
        loop = asyncio.get_running_loop()
        items = [_Item(image, loop.create_future()) for image in images]
        self._queue.extend(items)
        self._idle.clear()
        self._arrived.set()
        self._depth_changed()
        try:
            done, _ = await asyncio.wait([i.future for i in items], timeout=self.timeout)
            if len(done) < len(items) and any(not i.started for i in items):
                raise QueueTimeout(f"waited over {self.timeout * 1000:.0f} ms in the queue (--timeout-ms)")
            return [await i.future for i in items]  # those that started finish even past the timeout
        finally:
            for item in items:
                if item.future.done() and not item.future.cancelled():
                    item.future.exception()  # retrieved: a failed batch is reported once, by the caller
                item.future.cancel()  # no-op once done; otherwise the worker drops the item
            if any(not i.started for i in items):
                self._drop_cancelled()

    def _drop_cancelled(self) -> None:
        kept = [item for item in self._queue if not item.future.done()]
        if len(kept) != len(self._queue):
            self._queue = collections.deque(kept)
            self._depth_changed()
            self._check_idle()

    def _depth_changed(self) -> None:
        if self.on_depth is not None:
            self.on_depth(len(self._queue))

    def _check_idle(self) -> None:
        if not self._queue and not self._computing:
            self._idle.set()

    async def _gather(self) -> list[_Item]:
        """The next batch: the first waiting image, then any that arrive before the deadline."""
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = time.monotonic() + self.max_wait
        while len(self._queue) < self.max_batch and (remaining := deadline - time.monotonic()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        batch = [item for item in batch if not item.future.done()]  # callers gone or timed out
        fits = max((size for size in self.sizes if size <= len(batch)), default=0)
        if fits >= 8:  # a big batch is cut to a padded size: the rest goes first into the next batch
            self._queue.extendleft(reversed(batch[fits:]))
            batch = batch[:fits]
        self._depth_changed()
        return batch

    def _pad(self, images: list[torch.Tensor]) -> torch.Tensor:
        """(B, C, H, W), B padded with zero images to the next padded batch size (at most 3 of them: a batch
        over 8 was cut to a padded size)."""
        size = next(s for s in self.sizes if s >= len(images))
        return torch.stack(images + [torch.zeros_like(images[0])] * (size - len(images)))

    async def _run(self, executor: Executor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                self._check_idle()
                continue
            now = time.monotonic()
            for item in batch:
                item.started = True
            self._computing = True
            try:
                out = await loop.run_in_executor(executor, self.fn, self._pad([item.image for item in batch]))
                outputs = out if isinstance(out, tuple) else (out,)
                for i, item in enumerate(batch):
                    if not item.future.done():  # a caller that went away has cancelled its future
                        row = tuple(o[i] for o in outputs)
                        item.future.set_result(row if isinstance(out, tuple) else row[0])
                if self.on_batch is not None:
                    self.on_batch(len(batch), [now - item.queued_at for item in batch])
            except Exception as e:  # the model failed: every caller of this batch gets the error
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
            finally:
                self._computing = False
                self._check_idle()
