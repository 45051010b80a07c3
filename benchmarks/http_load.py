"""A closed-loop HTTP/1.1 load client on asyncio (uvloop where installed), for benchmarks/serve_load.py.

Each client keeps one connection and posts its next body as soon as its last answer has come, as wrk does,
but it records every answer's status and latency, so that the 200s' percentiles can be told from the
refusals', and with `retry_after=True` a client that gets a 503 waits the `Retry-After` seconds before it
asks again, as a well-behaved client (and a load balancer) does; wrk asks again at once. Plain sockets and
prepared requests keep it cheap: about 0.1 ms of CPU a request, against milliseconds for httpx. On a small
machine the clients share the server's cores, and an answer is timed only when this process's event loop
gets to it: the client's own loop lag (a 10-ms ticker's lateness) is reported, to tell its share of a tail.
"""

from __future__ import annotations

import asyncio
import random
import re
import statistics
import time
from urllib.parse import urlsplit

RETRY_AFTER = re.compile(rb"\r\nretry-after: *(\d+)", re.I)
LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.I)


def requests(url: str, bodies: list[bytes], content_type: str) -> list[bytes]:
    """POST requests to `url`, one per body, as bytes ready to write."""
    parts = urlsplit(url)
    return [f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body for body in bodies]  # fmt: skip


async def _client(host: str, port: int, prepared: list[bytes], end: float, retry_after: bool, seed: int,
                  answers: list[tuple[int, float]]) -> int:  # fmt: skip
    """One client until `end`: appends (status, seconds) per answer; returns its broken connections."""
    rng, broken, connection = random.Random(seed), 0, None
    while (now := time.perf_counter()) < end:
        try:
            if connection is None:
                connection = await asyncio.open_connection(host, port)
            reader, writer = connection
            writer.write(rng.choice(prepared))
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(int(LENGTH.search(head).group(1)))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, AttributeError):
            broken += 1
            connection = None
            continue
        status = int(head[9:12])
        answers.append((status, time.perf_counter() - now))
        if b"\r\nconnection: close" in head.lower():
            connection[1].close()
            connection = None
        if status == 503 and retry_after and (wait := RETRY_AFTER.search(head)):
            await asyncio.sleep(min(int(wait.group(1)), max(0.0, end - time.perf_counter())))
    if connection is not None:
        connection[1].close()
    return broken


async def _lag(end: float, lags: list[float], tick: float = 0.01) -> None:
    """Until `end`, how late this event loop wakes a `tick`-second sleep, appended to `lags` (seconds)."""
    while (start := time.perf_counter()) < end:
        await asyncio.sleep(tick)
        lags.append(time.perf_counter() - start - tick)


def _quantiles(seconds: list[float]) -> tuple[float | None, float | None]:
    """(p50, p99) in ms, or Nones for no answers."""
    if len(seconds) < 2:
        return (seconds[0] * 1e3,) * 2 if seconds else (None, None)
    q = statistics.quantiles(seconds, n=100, method="inclusive")
    return q[49] * 1e3, q[98] * 1e3


async def _load(url: str, prepared: list[bytes], clients: int, duration: float, retry_after: bool) -> dict:
    parts = urlsplit(url)
    answers: list[tuple[int, float]] = []
    lags: list[float] = []
    start = time.perf_counter()
    end = start + duration
    *broken, _ = await asyncio.gather(*(_client(parts.hostname, parts.port, prepared, end, retry_after, seed, answers)
                                        for seed in range(clients)), _lag(end, lags))  # fmt: skip
    elapsed = time.perf_counter() - start
    statuses: dict[int, int] = {}
    for status, _ in answers:
        statuses[status] = statuses.get(status, 0) + 1
    p50, p99 = _quantiles([s for _, s in answers])
    p50_ok, p99_ok = _quantiles([s for status, s in answers if status == 200])
    lag_p50, lag_p99 = _quantiles(lags)
    return {"statuses": statuses, "broken": sum(broken), "seconds": elapsed, "p50_ms": p50, "p99_ms": p99,
            "p50_200_ms": p50_ok, "p99_200_ms": p99_ok, "client_lag_p50_ms": lag_p50, "client_lag_p99_ms": lag_p99}


def load(url: str, prepared: list[bytes], clients: int, duration: float, retry_after: bool = False) -> dict:
    """`clients` closed-loop clients for `duration` seconds: statuses, broken connections, seconds, the
    p50/p99 (ms) of every answer and of the 200s, and of the client's own loop lag."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_load(url, prepared, clients, duration, retry_after))
    return uvloop.run(_load(url, prepared, clients, duration, retry_after))
