"""Does the input pipeline keep up? Decode + augment images/s per loader worker, for an image folder of
224-px JPEG photos against WebDataset shards of the same photos, and JPEG decoding alone with PIL
(vitkit.data.images) against torchvision's libjpeg-turbo `decode_jpeg` (and nvJPEG with device="cuda"
where a GPU is present).

The photos are random crops (a third of the side or more, resized to 224 px) and flips of
scikit-image's sample photographs, one class per photograph. Images per second per worker, set beside
a model's training images per second, says how many cores keep that accelerator fed.

    PYTHONPATH=src .venv/bin/python benchmarks/input_pipeline.py --images 4000   # workers 1, 2, 4, ... up to the cores
    PYTHONPATH=src .venv/bin/python benchmarks/input_pipeline.py --images 200 --workers 1 --batches 3   # smoke

Writes benchmarks/results/input_pipeline.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import skimage.data
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader

from vitkit.data import load_data, train_transform
from vitkit.data.images import open_image
from vitkit.data.loader import SeededTransform
from vitkit.data.shards import ShardOptions, shard
from vitkit.models import get_config

RESULTS = Path(__file__).parent / "results"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "cat")
# ViT-B/16, bf16, batch 256 on one H200 (the figure; measure yours with `vitkit bench`)
TRAIN_IMAGES_PER_S = 2500.0


def make_photos(root: Path, n: int, seed: int = 0) -> None:
    """n JPEGs (quality 90) of 224x224 random crops and flips of the sample photographs, one folder each."""
    rng = random.Random(seed)
    sources = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]
    for i in range(n):
        k = i % len(sources)
        photo = sources[k]
        side = rng.randint(min(photo.size) // 3, min(photo.size))
        left, top = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
        crop = photo.crop((left, top, left + side, top + side)).resize((224, 224), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        (root / PHOTOS[k]).mkdir(parents=True, exist_ok=True)
        crop.save(root / PHOTOS[k] / f"{i:06d}.jpg", quality=90)


def images_per_s(loader: DataLoader, batches: int) -> float:
    """Steady-state rate: the first batch (worker start-up) is not timed."""
    it = iter(loader)
    next(it)
    n, start = 0, time.perf_counter()
    for _, (images, _) in zip(range(batches), it):
        n += len(images)
    return n / (time.perf_counter() - start)


def loaders(spec: str, workers: int, batch: int) -> DataLoader:
    """Training loaders as `vitkit train` builds them: per-image inception crop, flip and normalisation."""
    data = load_data(spec)
    transform = train_transform(get_config("vit_base_patch16_224"), data.channels)
    train = data.split("train")
    if hasattr(train, "configured"):  # streamed: one stream per worker
        dataset = train.configured(transform, streams=max(1, workers), batch=batch, train=True)
        return DataLoader(dataset, batch_size=batch, num_workers=workers)
    sampler = torch.utils.data.RandomSampler(train, generator=torch.Generator().manual_seed(0))
    return DataLoader(SeededTransform(train, transform), batch_size=batch, sampler=sampler, num_workers=workers)


def decode_rates(files: list[Path], device: str | None) -> dict[str, float]:
    """JPEG decoding alone, one thread, images/s: PIL (as vitkit reads files) against torchvision."""
    blobs = [f.read_bytes() for f in files]
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    rates = {}
    start = time.perf_counter()
    for f in files:
        open_image(f)
    rates["PIL (vitkit.data.images)"] = len(files) / (time.perf_counter() - start)
    start = time.perf_counter()
    for t in tensors:
        torchvision.io.decode_jpeg(t)
    rates["torchvision decode_jpeg (libjpeg-turbo)"] = len(files) / (time.perf_counter() - start)
    if device == "cuda":
        torchvision.io.decode_jpeg(tensors[:8], device="cuda")  # warm-up: nvJPEG handles
        torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, len(tensors), 64):
            torchvision.io.decode_jpeg(tensors[i : i + 64], device="cuda")
        torch.cuda.synchronize()
        rates["torchvision decode_jpeg (nvJPEG, batches of 64)"] = len(files) / (time.perf_counter() - start)
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4000)
    cores = os.cpu_count() or 2
    p.add_argument("--workers", type=int, nargs="+", default=[w for w in (1, 2, 4, 8, 16, 32) if w <= cores])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=60, help="timed batches per measurement")
    p.add_argument("--dir", help="where to build the photos and shards (default: a temporary directory)")
    p.add_argument("--train-images-per-s", type=float, default=TRAIN_IMAGES_PER_S)
    args = p.parse_args()
    torch.set_num_threads(1)  # one core per worker, as in training with many workers
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir or tmp)
        folder, shards = root / "photos", root / "shards"
        if not folder.is_dir():
            make_photos(folder, args.images)
        if not (shards / "index.json").is_file():
            shard(f"imagefolder:{folder}", shards, ("train",), ShardOptions("jpeg", quality=90, shard_mb=64))
        rows = []
        for workers in args.workers:
            for name, spec in (("image folder", f"imagefolder:{folder}"), ("wds shards", f"wds:{shards}")):
                rate = images_per_s(loaders(spec, workers, args.batch), args.batches)
                per_worker = rate / workers
                rows.append({"source": name, "workers": workers, "images_per_s": rate, "per_worker": per_worker,
                             "cores_to_feed": args.train_images_per_s / per_worker})  # fmt: skip
        files = sorted(folder.rglob("*.jpg"))[:500]
        decoders = decode_rates(files, "cuda" if torch.cuda.is_available() else None)
    report = {"images": args.images, "batch": args.batch, "train_images_per_s": args.train_images_per_s,
              "loading": rows, "decode_only": decoders, "torch": torch.__version__}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "input_pipeline.json").write_text(json.dumps(report, indent=1))
    print(f"| source | workers | images/s | per worker | cores for {args.train_images_per_s:,.0f} img/s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['source']} | {r['workers']} | {r['images_per_s']:,.0f} | {r['per_worker']:,.0f} | "
              f"{r['cores_to_feed']:.1f} |")  # fmt: skip
    print("\n| JPEG decode, one thread | images/s | vs PIL |\n|---|---:|---:|")
    pil = decoders["PIL (vitkit.data.images)"]
    for name, rate in decoders.items():
        print(f"| {name} | {rate:,.0f} | {rate / pil:.2f}x |")


if __name__ == "__main__":
    main()
