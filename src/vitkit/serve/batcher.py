"""Dynamic batching: images from concurrent requests share one forward pass.

Callers `await batcher.submit(x)`; a worker task takes the first waiting image, gathers more until
`max_batch` are waiting or `max_wait_ms` has passed, runs the model on the stack in a worker thread
(so the event loop keeps answering other requests), and hands each caller its own row of the result.
While one batch computes, the next one fills up.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from typing import Callable

import torch

# A batch (B, C, H, W) -> per-image results: one tensor or a tuple of tensors, each (B, ...).
BatchFn = Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]]
Row = torch.Tensor | tuple[torch.Tensor, ...]


class Batcher:
    """Batches the images submitted concurrently (up to `max_batch`, waiting at most `max_wait_ms` for
    more once one is waiting) and runs `fn` on them in the executor given to `start`. `on_batch(size)` is
    called per batch."""

    def __init__(
        self,
        fn: BatchFn,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch} and {max_wait_ms}")
        self.fn = fn
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.on_batch = on_batch
        self._queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future[Row]]] = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    def start(self, executor: Executor) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(executor))

    async def stop(self) -> None:
        """Finish every image already submitted, then stop the worker."""
        await self._queue.join()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def submit(self, image: torch.Tensor) -> Row:
        """image: (C, H, W) -> its row of fn's output, once its batch has run."""
        if self._worker is None or self._worker.done():
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((image, future))
        return await future

    async def _gather(self) -> list[tuple[torch.Tensor, asyncio.Future[Row]]]:
        """The next batch: the first waiting item, then any that arrive before the deadline."""
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self._queue.get_nowait() if remaining <= 0 else
                             await asyncio.wait_for(self._queue.get(), remaining))  # fmt: skip
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
        return batch

    async def _run(self, executor: Executor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            try:
                out = await loop.run_in_executor(executor, self.fn, torch.stack([x for x, _ in batch]))
                outputs = out if isinstance(out, tuple) else (out,)
                for i, (_, future) in enumerate(batch):
                    if not future.done():  # a caller that went away has cancelled its future
                        row = tuple(o[i] for o in outputs)
                        future.set_result(row if isinstance(out, tuple) else row[0])
                if self.on_batch is not None:
                    self.on_batch(len(batch))
            except Exception as e:  # the model failed: every caller of this batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
            finally:
                for _ in batch:
                    self._queue.task_done()
