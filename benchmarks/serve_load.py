"""Load on `vitkit serve`: closed-loop clients on loopback against a real server process, per model, worker
count, images per request and concurrency level; requests/s, images/s, p50/p99 latency, 503s, 504s,
other errors and each worker's peak RSS, against the ceiling of in-process batched inference (the same
decoding and preprocessing, batches of --max-batch, no HTTP). Then the checks (Fashion-MNIST): uvicorn's
C HTTP stack against its pure-Python one, clients that honour Retry-After, --max-queue 64 and 16 at 512
clients (--overload-queues; every answer a 200 or a 503; the 200s' p99 against its value at 32 clients, and
their p50 against the wait a full queue implies by Little's law), the cost of a refusal
(answers/s at --max-queue 1), and an overload soak (the server still ready, RSS flat). To compare with
another commit's server, run this with PYTHONPATH=<its checkout>/src: the servers are spawned from it.

    .venv/bin/python benchmarks/serve_load.py [--duration 30] [--clients 1 8 32 128 512] [--workers 1 2]
        [--images-per-request 1 16] [--soak 300] [--fashion-checkpoint runs/quickstart/model.safetensors]

Models: the Fashion-MNIST ViT (vit_fashion_patch4_28; the given checkpoint, else random weights: speed
does not depend on them) on Fashion-MNIST test images, and vit_small_patch16_224 (random weights) on
photographs. A request of k images is a multipart body of k `file` fields. The clients of the levels are
wrk (Debian's `wrk`, a C load generator; `--client wrk`, the default where it is installed), or
benchmarks/http_load.py's asyncio clients in this process (`--client python`), which the checks use
because they tell the 200s' latency from the 503s' and can honour Retry-After. On a small machine the
clients share the server's cores. wrk's latency percentiles are over every answer, 503s included, and wrk
asks again at once after a 503. Writes benchmarks/results/serve_load.json (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import torch
from PIL import Image, ImageOps
from prometheus_client.parser import text_string_to_metric_families
from torchvision.datasets import FashionMNIST

import http_load
import vitkit
from vitkit.checkpoints.metadata import CLASSES_KEY
from vitkit.data import load_data
from vitkit.evaluate.predict import image_transform, probabilities, read_image
from vitkit.inference import load_for_inference
from vitkit.precision import autocast

RESULTS = Path(__file__).parent / "results"
PHOTOS = Path(__file__).parents[1] / "src" / "vitkit" / "serve" / "page" / "samples" / "photos"


def fashion_images(n: int = 256) -> list[bytes]:
    test = load_data("fashion_mnist").test
    return [_encode(test[i][0], "PNG") for i in range(n)]


def photo_images(n: int = 64) -> list[bytes]:
    """Random crops and mirror images of the page's sample photographs, as JPEG files."""
    rng = random.Random(0)
    photos = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("*.jpg"))]
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        w, h = im.size
        x, y = rng.randrange(w // 4), rng.randrange(h // 4)
        crop = im.crop((x, y, x + 3 * w // 4, y + 3 * h // 4))
        out.append(_encode(ImageOps.mirror(crop) if i % 2 else crop, "JPEG"))
    return out


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_checkpoint(name: str, directory: Path, source: str | None) -> Path:
    if source:
        return Path(source)
    path = directory / f"{name}.safetensors"
    model = vitkit.create_model(name)
    classes = FashionMNIST.classes if model.config.num_classes == 10 else None
    vitkit.save(model, path, {CLASSES_KEY: json.dumps(classes)} if classes else None)
    return path


@torch.inference_mode()
def ceiling(checkpoint: Path, images: list[bytes], max_batch: int, duration: float, device: str) -> tuple[float, str]:
    """Images per second of in-process batched inference at the server's precision (`--precision auto`):
    decode, preprocess, forward, max_batch at a time; the better of torch's default threads and one thread.
    Also the precision."""
    loaded = load_for_inference(checkpoint, device, "auto")
    model, precision, transform = loaded.model, loaded.choice.precision, image_transform(loaded.model.config)

    def batch(start: int) -> None:
        chunk = [images[(start + i) % len(images)] for i in range(max_batch)]
        with autocast(loaded.device, precision):
            probs = probabilities(model, torch.stack([transform(read_image(io.BytesIO(b), name="x")) for b in chunk]))
        probs.cpu()

    rates, default = {}, torch.get_num_threads()
    for threads in sorted({1, default}):  # on a shared machine one thread can be the faster
        torch.set_num_threads(threads)
        batch(0)  # warm-up
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < duration or done == 0:
            batch(done)
            done += max_batch
        rates[threads] = done / (time.perf_counter() - start)
    torch.set_num_threads(default)
    print(f"  in-process images/s ({precision}) by torch threads: {rates}", file=sys.stderr)
    return max(rates.values()), precision


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(checkpoint: Path, args: argparse.Namespace, workers: int, *options: str) -> Iterator[tuple[int, str]]:
    """A `vitkit serve` process on loopback, once /readyz answers 200: (its pid, its URL)."""
    port = _free_port()
    command = [sys.executable, "-m", "vitkit", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
               "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--device", args.device,
               "--workers", str(workers), "--log-level", "warning", *options]  # fmt: skip
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1500):
            if process.poll() is not None:
                raise RuntimeError(f"vitkit serve exited with {process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        yield process.pid, url
    finally:
        process.terminate()
        process.wait(timeout=120)


def _status(pid: int, key: str) -> float:
    """/proc/PID/status's `key` (VmHWM: peak resident set, VmRSS: resident set now), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for pid {pid}")


def worker_pids(pid: int) -> list[int]:
    """The processes that serve: the server itself, or with --workers N > 1 uvicorn's spawned workers."""
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    workers = [c for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()
               and "resource_tracker" not in Path(f"/proc/{c}/cmdline").read_text()]  # fmt: skip
    return workers or [pid]


def memory(pid: int) -> dict:
    workers = worker_pids(pid)
    return {"peak_rss_mb_per_worker": [round(_status(w, "VmHWM")) for w in workers],
            "rss_mb_per_worker": [round(_status(w, "VmRSS")) for w in workers]}  # fmt: skip


def batches(url: str) -> tuple[float, float]:
    """(forward passes, images in them) so far, summed over the workers, from the server's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name in ("vitkit_batch_size_count", "vitkit_batch_size_sum")}  # fmt: skip
    return samples["vitkit_batch_size_count"], samples["vitkit_batch_size_sum"]


def counting_batches(url: str, level: Callable[[], dict]) -> dict:
    """`level()`'s figures, with the forward passes it caused: `batches_per_s` and `mean_batch`."""
    before = batches(url)
    figures = level()
    count, images = (b - a for a, b in zip(before, batches(url)))
    return {**figures, "batches_per_s": count / figures["seconds"], "mean_batch": images / max(count, 1)}


def multipart(images: list[bytes], boundary: str = "vitkit-load-boundary") -> bytes:
    """A multipart/form-data body with each image in a `file` field."""
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + image + b"\r\n"
             for i, image in enumerate(images)]  # fmt: skip
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def bodies(images: list[bytes], per_request: int) -> tuple[list[bytes], str]:
    """Request bodies of `per_request` images each, and their content type."""
    if per_request == 1:
        return images, "application/octet-stream"
    rng = random.Random(per_request)
    batches = [multipart([rng.choice(images) for _ in range(per_request)]) for _ in range(32)]
    return batches, "multipart/form-data; boundary=vitkit-load-boundary"


def _summary(clients: int, statuses: dict[int, int], broken: int, seconds: float, p50: float, p99: float) -> dict:
    ok = statuses.get(200, 0)
    return {"clients": clients, "requests": ok, "status_503": statuses.get(503, 0),
            "status_504": statuses.get(504, 0), "errors": broken + sum(n for s, n in statuses.items()
                                                                       if s not in (200, 503, 504)),
            "seconds": seconds, "requests_per_s": ok / seconds, "p50_ms": p50, "p99_ms": p99}  # fmt: skip


# wrk posts the bodies in turn (Lua reads them from the files it is given) and counts the answers by status.
WRK_SCRIPT = """
local bodies, n, threads = {}, 0, {}
for path in string.gmatch(os.getenv("WRK_BODIES"), "[^:]+") do
  local f = io.open(path, "rb"); bodies[#bodies + 1] = f:read("*all"); f:close()
end
local content_type = os.getenv("WRK_CONTENT_TYPE")
setup = function(thread) table.insert(threads, thread) end
init = function(args) statuses = {} end
request = function()
  n = n % #bodies + 1
  return wrk.format("POST", "/v1/predict", {["Content-Type"] = content_type}, bodies[n])
end
response = function(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
done = function(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do io.write(string.format("status %d %d\\n", status, count)) end
  end
end
"""


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk_level(url: str, payloads: list[bytes], content_type: str, clients: int, duration: float) -> dict:
    """`clients` connections of wrk, each posting the next body as soon as its last answer came."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{i}.body" for i in range(len(payloads))]
        for path, data in zip(paths, payloads):
            path.write_bytes(data)
        (Path(tmp) / "post.lua").write_text(WRK_SCRIPT)
        command = ["wrk", "-t1", f"-c{clients}", f"-d{duration:g}s", "--timeout", "60s", "--latency",
                   "-s", str(Path(tmp) / "post.lua"), url]  # fmt: skip
        env = {"WRK_BODIES": ":".join(map(str, paths)), "WRK_CONTENT_TYPE": content_type}
        out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    seconds = float(done.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]
    statuses = {int(s): int(n) for s, n in re.findall(r"^status (\d+) (\d+)$", out, re.M)}
    broken = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    latency = [_ms(re.search(rf"^\s+{q}%\s+(\S+)\s*$", out, re.M).group(1)) for q in (50, 99)]
    return _summary(clients, statuses, sum(map(int, broken.groups())) if broken else 0, seconds, *latency)


def python_level(url: str, payloads: list[bytes], content_type: str, clients: int, duration: float,
                 retry_after: bool = False) -> dict:  # fmt: skip
    """`clients` clients of benchmarks/http_load.py: wrk's figures, plus the 200s' own p50/p99."""
    r = http_load.load(url, http_load.requests(url, payloads, content_type), clients, duration, retry_after)
    return {**_summary(clients, r["statuses"], r["broken"], r["seconds"], r["p50_ms"], r["p99_ms"]),
            "p50_200_ms": r["p50_200_ms"], "p99_200_ms": r["p99_200_ms"], "retry_after": retry_after,
            "client_lag_p50_ms": r["client_lag_p50_ms"], "client_lag_p99_ms": r["client_lag_p99_ms"]}  # fmt: skip


def run_level(url: str, images: list[bytes], per_request: int, clients: int, duration: float, client: str,
              retry_after: bool = False) -> dict:  # fmt: skip
    """One level; clients that honour Retry-After are always http_load.py's (wrk cannot)."""
    client = "python" if retry_after else client
    payloads, content_type = bodies(images, per_request)
    if client == "python":
        level = python_level(url + "/v1/predict", payloads, content_type, clients, duration, retry_after)
    else:
        level = wrk_level(url + "/v1/predict", payloads, content_type, clients, duration)
    level.update(images_per_request=per_request, images_per_s=level["requests_per_s"] * per_request, client=client)
    return level


def measure(name: str, checkpoint: Path, images: list[bytes], args: argparse.Namespace) -> dict:
    top, precision = ceiling(checkpoint, images, args.max_batch, args.duration, args.device)
    print(f"{name}: in-process ceiling {top:.0f} images/s ({precision})", file=sys.stderr)
    levels = []
    for workers in args.workers:
        with server(checkpoint, args, workers) as (pid, url):
            run_level(url, images, 1, 4, min(2.0, args.duration), args.client)  # warm-up
            for per_request in args.images_per_request:
                for clients in args.clients:
                    level = run_level(url, images, per_request, clients, args.duration, args.client)
                    level.update(workers=workers, of_ceiling=level["images_per_s"] / top, **memory(pid))
                    levels.append(level)
                    print(f"  {workers} worker(s), {per_request} image(s)/request, {clients:>3} clients: "
                          f"{level['images_per_s']:.0f} images/s, {level['of_ceiling']:.0%} of the ceiling, "
                          f"{level['status_503']} 503s", file=sys.stderr)  # fmt: skip
    return {"model": name, "ceiling_images_per_s": top, "precision": precision, "levels": levels}


def overload(name: str, checkpoint: Path, images: list[bytes], args: argparse.Namespace, seconds: float,
             max_queue: int | None) -> dict:  # fmt: skip
    """512 single-image clients (benchmarks/http_load.py, asking again at once after a 503) for `seconds`
    against args.workers[-1] workers, after 32 clients as the reference: statuses, the 200s' p99 against
    its value at 32 clients, RSS before and after, and whether the server is still ready. With `max_queue`,
    then 512 clients that honour Retry-After (`retry_after_512`), and for both the wait a full queue implies
    for each 200 (`full_queue_ms`: Little's law, max_queue images waiting and a batch computing per worker)."""
    options = ("--max-queue", str(max_queue)) if max_queue else ()
    with server(checkpoint, args, args.workers[-1], *options) as (pid, url):
        reference = counting_batches(url, lambda: run_level(url, images, 1, 32, min(30.0, seconds), "python"))
        before = memory(pid)  # after the reference: a steady RSS
        level = counting_batches(url, lambda: run_level(url, images, 1, 512, seconds, "python"))
        after = memory(pid)
        polite_level = run_level(url, images, 1, 512, seconds, "python", retry_after=True) if max_queue else None
        ready = httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    rss = [b / a - 1 for a, b in zip(before["rss_mb_per_worker"], after["rss_mb_per_worker"])]
    if max_queue:  # Little's law: each worker holds max_queue images waiting and a batch computing
        held = (max_queue + min(args.max_batch, max_queue)) * args.workers[-1]
        for lv in (level, polite_level):
            lv["full_queue_ms"] = 1000 * held / lv["images_per_s"]
    return {"model": name, "check": "soak" if max_queue is None else "max_queue", "workers": args.workers[-1],
            "max_queue": max_queue, **level, "reference_32_clients": reference,
            "rss_mb_before": before["rss_mb_per_worker"], "rss_mb_after": after["rss_mb_per_worker"],
            "rss_change": rss, "ready_after": ready,
            "p99_200_vs_32_clients": level["p99_200_ms"] / reference["p99_200_ms"],
            "retry_after_512": polite_level}  # fmt: skip


def polite(name: str, checkpoint: Path, images: list[bytes], args: argparse.Namespace, top: float) -> list[dict]:
    """Clients that wait Retry-After after a 503 (http_load.py), against the default queue: 32 clients of 16
    images and 512 of one, args.workers[-1] workers."""
    levels = []
    with server(checkpoint, args, args.workers[-1]) as (pid, url):
        run_level(url, images, 1, 4, min(2.0, args.duration), "python")  # warm-up
        for per_request, clients in ((16, 32), (1, 512)):
            level = run_level(url, images, per_request, clients, args.duration, "python", retry_after=True)
            levels.append({"model": name, "check": "retry_after", "workers": args.workers[-1], **level,
                           "of_ceiling": level["images_per_s"] / top, **memory(pid)})  # fmt: skip
    return levels


def refusals(name: str, checkpoint: Path, images: list[bytes], args: argparse.Namespace) -> dict:
    """What a refusal costs the server: the answers per second, nearly all 503s, of 32 single-image clients
    (args.client) against one worker with --max-queue 1."""
    with server(checkpoint, args, 1, "--max-queue", "1") as (pid, url):
        run_level(url, images, 1, 4, min(2.0, args.duration), args.client)  # warm-up
        level = run_level(url, images, 1, 32, args.checks, args.client)
    answers = (level["requests"] + level["status_503"]) / level["seconds"]
    return {"model": name, "check": "refusals", "workers": 1, "max_queue": 1, **level, "answers_per_s": answers}


def stacks(name: str, checkpoint: Path, images: list[bytes], args: argparse.Namespace, top: float) -> list[dict]:
    """uvicorn's C stack (httptools, uvloop) against its pure-Python one (h11, asyncio): single images,
    8 and 32 clients, args.workers[-1] workers, args.client."""
    levels = []
    for http, loop in (("h11", "asyncio"), ("httptools", "uvloop")):
        with server(checkpoint, args, args.workers[-1], "--http", http, "--loop", loop) as (pid, url):
            run_level(url, images, 1, 4, min(2.0, args.duration), args.client)  # warm-up
            for clients in (8, 32):
                level = run_level(url, images, 1, clients, args.duration, args.client)
                levels.append({"model": name, "check": "stack", "http": http, "loop": loop,
                               "workers": args.workers[-1], **level, "of_ceiling": level["images_per_s"] / top})
    return levels


def table(results: list[dict]) -> str:
    lines = ["| model | workers | images/request | clients | requests/s | images/s | of ceiling | p50 ms | p99 ms "
             "| 503 | 504 | other errors | peak RSS MiB per worker |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in results:
        lines.append(f"| {r['model']} (in-process ceiling) | | | | | {r['ceiling_images_per_s']:.0f} | 100% "
                     "| | | | | | |")  # fmt: skip
        for lv in r["levels"]:
            lines.append(f"| {r['model']} | {lv['workers']} | {lv['images_per_request']} | {lv['clients']} | "
                         f"{lv['requests_per_s']:.1f} | {lv['images_per_s']:.0f} | {lv['of_ceiling']:.0%} | "
                         f"{lv['p50_ms']:.1f} | {lv['p99_ms']:.1f} | {lv['status_503']} | {lv['status_504']} | "
                         f"{lv['errors']} | {', '.join(map(str, lv['peak_rss_mb_per_worker']))} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128, 512])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images-per-request", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--models", nargs="+", default=["vit_fashion_patch4_28", "vit_small_patch16_224"])
    parser.add_argument("--fashion-checkpoint", help="a trained vit_fashion_patch4_28 (default: random weights)")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--client", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python",
                        help="the load generator (wrk: apt-get install wrk)")
    parser.add_argument("--checks", type=float, default=30.0, help="seconds a check runs (0: skip all but the soak)")
    parser.add_argument("--overload-queues", type=int, nargs="+", default=[64, 16],
                        help="the --max-queue values of the 512-client check")
    parser.add_argument("--soak", type=float, default=300.0, help="seconds of the overload soak (0: skip)")
    parser.add_argument("--out", default=str(RESULTS / "serve_load.json"))
    args = parser.parse_args()
    results, checks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            fashion = name.startswith("vit_fashion")
            checkpoint = write_checkpoint(name, Path(tmp), args.fashion_checkpoint if fashion else None)
            images = fashion_images() if fashion else photo_images()
            results.append(measure(name, checkpoint, images, args))
            if fashion and args.checks:
                top = results[-1]["ceiling_images_per_s"]
                checks += stacks(name, checkpoint, images, args, top) + polite(name, checkpoint, images, args, top)
                checks += [overload(name, checkpoint, images, args, args.checks, q) for q in args.overload_queues]
                checks.append(refusals(name, checkpoint, images, args))
            if fashion and args.soak:
                checks.append(overload(name, checkpoint, images, args, args.soak, None))
    report = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "cores": os.cpu_count(),
              "results": results, "checks": checks}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    for c in checks:
        print(check_line(c))


def check_line(c: dict) -> str:
    """One line of a check's figures."""
    what = {"stack": f"HTTP {c.get('http')} + {c.get('loop')}", "retry_after": "clients honouring Retry-After",
            "max_queue": f"--max-queue {c.get('max_queue')}", "soak": "soak, default queue",
            "refusals": "--max-queue 1 (the cost of a refusal)"}[c["check"]]  # fmt: skip
    line = (f"{c['model']}, {c['workers']} workers, {what}: {c['clients']} clients x {c['images_per_request']} "
            f"images, {c['seconds']:.0f} s: {c['images_per_s']:.0f} images/s, {c['requests']} x 200, "
            f"{c['status_503']} x 503, {c['status_504']} x 504, {c['errors']} other; p99 {c['p99_ms']:.0f} ms")
    if "answers_per_s" in c:
        line += f"; {c['answers_per_s']:.0f} answers/s"
    if "p99_200_vs_32_clients" in c:
        implied = f" (a full queue implies {c['full_queue_ms']:.0f})" if "full_queue_ms" in c else ""
        line += (f"; the 200s' p50 {c['p50_200_ms']:.0f} ms{implied}, p99 {c['p99_200_ms']:.0f} ms = "
                 f"{c['p99_200_vs_32_clients']:.2f} x its value at 32 clients (the client's own loop lag: p99 "
                 f"{c['client_lag_p99_ms']:.0f} ms); {c['batches_per_s']:.1f} batches/s of {c['mean_batch']:.1f} "
                 f"images (at 32 clients {c['reference_32_clients']['batches_per_s']:.1f} of "
                 f"{c['reference_32_clients']['mean_batch']:.1f}); RSS {c['rss_mb_before']} -> "
                 f"{c['rss_mb_after']} MiB; ready after: {c['ready_after']}")
    if c.get("retry_after_512"):
        p, reference = c["retry_after_512"], c["reference_32_clients"]["p99_200_ms"]
        line += (f"; 512 clients honouring Retry-After: {p['images_per_s']:.0f} images/s, "
                 f"{p['status_503']} x 503, {p['errors']} other, the 200s' p50 {p['p50_200_ms']:.0f} ms (a full "
                 f"queue implies {p['full_queue_ms']:.0f}), p99 {p['p99_200_ms']:.0f} ms = "
                 f"{p['p99_200_ms'] / reference:.2f} x (client loop lag p99 {p['client_lag_p99_ms']:.0f} ms)")
    return line


if __name__ == "__main__":
    main()
