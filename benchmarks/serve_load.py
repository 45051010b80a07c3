"""Load on `vitkit serve`: closed-loop clients on loopback against a real server process, per model and
concurrency level; throughput, p50/p99 latency, errors and the server's peak RSS, against the ceiling of
in-process batched inference (the same decoding and preprocessing, batches of --max-batch, no HTTP).

    .venv/bin/python benchmarks/serve_load.py [--duration 30] [--clients 1 8 32 128]
        [--fashion-checkpoint runs/quickstart/model.safetensors] [--device cpu]

Models: the Fashion-MNIST ViT (vit_fashion_patch4_28; the given checkpoint, else random weights: speed
does not depend on them) on Fashion-MNIST test images, and vit_small_patch16_224 (random weights) on
photographs. The clients are wrk (Debian's `wrk`, a C load generator; `--client wrk`, the default where it
is installed), or asyncio + httpx in this process (`--client httpx`). On a small machine the clients share
the server's cores: httpx's clients cost milliseconds of CPU a request and, at 128 connections on 2 cores,
saturated a core themselves while the server idled (57 requests/s, against 292 with wrk), so its figures
are a floor. Writes benchmarks/results/serve_load.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx
import torch
from PIL import Image, ImageOps
from torchvision.datasets import FashionMNIST

import vitkit
from vitkit.data import load_data
from vitkit.data.images import open_image
from vitkit.evaluate.predict import CLASSES_KEY, image_transform, probabilities

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
def ceiling(checkpoint: Path, images: list[bytes], max_batch: int, duration: float, device: str) -> float:
    """Images per second of in-process batched inference: decode, preprocess, forward, max_batch at a time."""
    model = vitkit.load(checkpoint).to(device).eval()
    transform = image_transform(model.config)

    def batch(start: int) -> None:
        chunk = [images[(start + i) % len(images)] for i in range(max_batch)]
        probs = probabilities(model, torch.stack([transform(open_image(io.BytesIO(b), name="x")) for b in chunk]))
        probs.cpu()

    batch(0)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration or done == 0:
        batch(done)
        done += max_batch
    return done / (time.perf_counter() - start)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(checkpoint: Path, max_batch: int, max_wait_ms: float, device: str) -> Iterator[tuple[int, str]]:
    """A `vitkit serve` process on loopback: (its pid, its URL)."""
    port = _free_port()
    command = [sys.executable, "-m", "vitkit", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
               "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--device", device,
               "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError(f"vitkit serve exited with {process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        yield process.pid, url
    finally:
        process.terminate()
        process.wait(timeout=60)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


async def load_level(url: str, images: list[bytes], clients: int, duration: float) -> dict:
    """`clients` closed-loop clients, each posting a random image as soon as its last answer came."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as c:
        end = time.perf_counter() + duration

        async def client(seed: int) -> None:
            nonlocal errors
            rng = random.Random(seed)
            while time.perf_counter() < end:
                start = time.perf_counter()
                try:
                    r = await c.post("/v1/predict", content=rng.choice(images))
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - start)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {"clients": clients, "requests": len(latencies), "errors": errors, "seconds": elapsed,
            "throughput": len(latencies) / elapsed, "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3}  # fmt: skip


# wrk posts the images in turn, one body per request (Lua reads them from the files it is given).
WRK_SCRIPT = """
local bodies, n = {}, 0
for path in string.gmatch(os.getenv("WRK_BODIES"), "[^:]+") do
  local f = io.open(path, "rb"); bodies[#bodies + 1] = f:read("*all"); f:close()
end
request = function()
  n = n % #bodies + 1
  return wrk.format("POST", "/v1/predict", {["Content-Type"] = "application/octet-stream"}, bodies[n])
end
"""


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk_level(url: str, images: list[bytes], clients: int, duration: float) -> dict:
    """`clients` connections of wrk, each posting the next image as soon as its last answer came."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{i}.img" for i in range(len(images))]
        for path, data in zip(paths, images):
            path.write_bytes(data)
        (Path(tmp) / "post.lua").write_text(WRK_SCRIPT)
        command = ["wrk", "-t1", f"-c{clients}", f"-d{duration:g}s", "--timeout", "60s", "--latency",
                   "-s", str(Path(tmp) / "post.lua"), url]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=True,
                             env={"WRK_BODIES": ":".join(map(str, paths))}).stdout  # fmt: skip
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    seconds = float(done.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    broken = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(failed.group(1)) if failed else 0) + (sum(map(int, broken.groups())) if broken else 0)
    requests = int(done.group(1)) - errors
    return {"clients": clients, "requests": requests, "errors": errors, "seconds": seconds,
            "throughput": requests / seconds, "p50_ms": _ms(re.search(r"50%\s+(\S+)", out).group(1)),
            "p99_ms": _ms(re.search(r"99%\s+(\S+)", out).group(1))}  # fmt: skip


def measure(name: str, checkpoint: Path, images: list[bytes], args: argparse.Namespace) -> dict:
    top = ceiling(checkpoint, images, args.max_batch, args.duration, args.device)
    print(f"{name}: in-process ceiling {top:.0f} images/s", file=sys.stderr)
    levels = []
    with server(checkpoint, args.max_batch, args.max_wait_ms, args.device) as (pid, url):
        asyncio.run(load_level(url, images, 4, min(2.0, args.duration)))  # warm-up
        for clients in args.clients:
            level = (wrk_level(url + "/v1/predict", images, clients, args.duration) if args.client == "wrk" else
                     asyncio.run(load_level(url, images, clients, args.duration)))  # fmt: skip
            level.update(peak_rss_mb=peak_rss_mb(pid), of_ceiling=level["throughput"] / top)
            levels.append(level)
            print(f"  {clients:>4} clients: {level['throughput']:.0f}/s, {level['of_ceiling']:.0%} of the ceiling",
                  file=sys.stderr)  # fmt: skip
    return {"model": name, "ceiling_images_per_s": top, "levels": levels}


def table(results: list[dict]) -> str:
    lines = ["| model | clients | requests/s | of ceiling | p50 ms | p99 ms | errors | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        lines.append(f"| {r['model']} (in-process ceiling) | | {r['ceiling_images_per_s']:.0f} | 100% | | | | |")
        for lv in r["levels"]:
            lines.append(f"| {r['model']} | {lv['clients']} | {lv['throughput']:.0f} | {lv['of_ceiling']:.0%} | "
                         f"{lv['p50_ms']:.1f} | {lv['p99_ms']:.1f} | {lv['errors']} | {lv['peak_rss_mb']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per concurrency level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--models", nargs="+", default=["vit_fashion_patch4_28", "vit_small_patch16_224"])
    parser.add_argument("--fashion-checkpoint", help="a trained vit_fashion_patch4_28 (default: random weights)")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--client", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx",
                        help="the load generator (wrk: apt-get install wrk)")
    parser.add_argument("--out", default=str(RESULTS / "serve_load.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            fashion = name.startswith("vit_fashion")
            checkpoint = write_checkpoint(name, Path(tmp), args.fashion_checkpoint if fashion else None)
            results.append(measure(name, checkpoint, fashion_images() if fashion else photo_images(), args))
    report = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "torch_threads": torch.get_num_threads(),
              "results": results}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
