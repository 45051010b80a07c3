"""WebDataset shards of any dataset vitkit reads, with an index: `vitkit shard SRC OUT`.

The layout (tars and index.json) is `vitkit.data.shard_format`'s. Every shard is written to a temporary file and renamed; OUT/.progress.json records
the finished ones, so an interrupted `shard` keeps the shards whose checksum still matches and writes
the rest. index.json is written last.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import webdataset as wds
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ..files import atomic_write, sha256_file
from .datasets import DataSource, load_data
from .shard_format import EXTENSIONS, INDEX, write_index

PROGRESS = ".progress.json"


@dataclass
class ShardOptions:
    """How samples are encoded and grouped; a resumed `shard` must use the same."""

    format: str = "png"
    quality: int = 95
    per_shard: int | None = None
    shard_mb: float | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.format not in EXTENSIONS:
            raise ValueError(f"--format must be one of {', '.join(EXTENSIONS)}, got {self.format!r}")
        if self.per_shard is None and self.shard_mb is None:
            self.shard_mb = 256.0
        for name in ("per_shard", "shard_mb", "limit"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--quality must be in 1..100, got {self.quality}")


@dataclass
class ShardRecord:
    name: str
    samples: int
    bytes: int
    sha256: str
    first: int  # index of its first sample in the split


@dataclass
class Progress:
    """What has been written so far: the source, the options and each split's finished shards."""

    source: str
    options: ShardOptions
    splits: dict[str, list[ShardRecord]] = field(default_factory=dict)

    def save(self, out: Path) -> None:
        text = json.dumps({"source": self.source, "options": asdict(self.options),
                           "splits": {s: [asdict(r) for r in rs] for s, rs in self.splits.items()}})  # fmt: skip
        atomic_write(out / PROGRESS, lambda tmp: Path(tmp).write_text(text))


def encode(image: Any, options: ShardOptions) -> bytes:
    """A PIL image or uint8 (C, H, W) tensor as PNG (lossless), JPEG or WebP bytes."""
    if isinstance(image, torch.Tensor):
        image = TF.to_pil_image(image)
    if options.format == "jpeg" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    quality = {} if options.format == "png" else {"quality": options.quality}
    image.save(buffer, format=options.format.upper(), **quality)
    return buffer.getvalue()


def _samples(dataset: Dataset, split: str, first: int, n: int, options: ShardOptions) -> Iterator[dict[str, Any]]:
    ext = EXTENSIONS[options.format]
    for i in range(first, n):
        image, label = dataset[i]
        yield {"__key__": f"{split}-{i:08d}", ext: encode(image, options), "cls": str(int(label)).encode()}


def _write_shard(out: Path, name: str, samples: list[dict[str, Any]]) -> None:
    def write(tmp: str) -> None:
        with wds.TarWriter(tmp, encoder=False, mtime=0) as sink:  # reproducible bytes, hence checksums
            for sample in samples:
                sink.write(sample)

    atomic_write(out / name, write)


def _shard_split(out: Path, dataset: Dataset, split: str, progress: Progress) -> None:
    """Write the shards of one split after those already recorded in `progress`."""
    options, done = progress.options, progress.splits.setdefault(split, [])
    n = min(len(dataset), options.limit or len(dataset))  # type: ignore[arg-type]
    first = done[-1].first + done[-1].samples if done else 0
    budget = None if options.shard_mb is None else options.shard_mb * 2**20
    pending: list[dict[str, Any]] = []
    size = 0

    def flush() -> None:
        nonlocal pending, size
        name = f"{split}-{len(done):06d}.tar"
        _write_shard(out, name, pending)
        start = done[-1].first + done[-1].samples if done else 0
        done.append(ShardRecord(name, len(pending), (out / name).stat().st_size, sha256_file(out / name), start))
        progress.save(out)
        print(f"{out / name}: {len(pending)} samples", file=sys.stderr)
        pending, size = [], 0

    for sample in _samples(dataset, split, first, n, options):
        pending.append(sample)
        size += sum(len(v) for k, v in sample.items() if k != "__key__") + 1024  # tar headers: 512 B a file
        if len(pending) == options.per_shard or (budget is not None and size >= budget):
            flush()
    if pending:
        flush()


def _resume(out: Path, source: str, options: ShardOptions) -> Progress:
    """The finished shards of an earlier, interrupted `shard` into OUT: those whose checksum matches, up
    to the first that does not (the rest are written again)."""
    path = out / PROGRESS
    if not path.is_file():
        return Progress(source, options)
    saved = json.loads(path.read_text())
    if saved["source"] != source or ShardOptions(**saved["options"]) != options:
        raise ValueError(f"{out} holds shards of {saved['source']} made with other options "
                         f"({saved['options']}); remove it or choose another OUT")  # fmt: skip
    progress = Progress(source, options)
    for split, records in saved["splits"].items():
        kept = progress.splits.setdefault(split, [])
        for record in map(lambda r: ShardRecord(**r), records):
            shard = out / record.name
            if not shard.is_file() or sha256_file(shard) != record.sha256:
                print(f"{shard}: missing or changed, writing it again", file=sys.stderr)
                break
            kept.append(record)
    return progress


def _index(data: DataSource, progress: Progress) -> dict[str, Any]:
    """index.json's fields (shard_format writes `format`)."""
    return {
        "source": data.name, "classes": data.classes, "channels": data.channels,
        "hflip": data.hflip, "image_format": progress.options.format,
        "splits": {
            split: {"samples": sum(r.samples for r in records),
                    "shards": [{"name": r.name, "samples": r.samples, "bytes": r.bytes, "sha256": r.sha256}
                               for r in records]}
            for split, records in progress.splits.items()
        },
    }  # fmt: skip


def shard(
    source: str, out: str | Path, splits: tuple[str, ...] = ("train", "test"), options: ShardOptions | None = None,
    data_root: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write WebDataset shards of `source` (a dataset spec: fashion_mnist, imagefolder:PATH, ...) into
    `out` and return the index written to out/index.json."""
    options = options or ShardOptions()
    data = load_data(source, data_root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    progress = _resume(out, data.name, options)
    for split in splits:
        _shard_split(out, data.split(split), split, progress)
    index = write_index(out, _index(data, progress))
    (out / PROGRESS).unlink()
    return index


def run(args: argparse.Namespace) -> int:
    """The `vitkit` subcommand (its parser: vitkit.commands)."""
    options = ShardOptions(args.format, args.quality, args.per_shard, args.shard_mb, args.limit)
    splits = ("train", "test") if args.split == "all" else (args.split,)
    index = shard(args.src, args.out, splits, options, args.data_root)
    for split, entry in index["splits"].items():
        print(f"{split}: {entry['samples']} samples in {len(entry['shards'])} shards")
    print(f"index: {Path(args.out) / INDEX}; train with --data wds:{args.out}")
    return 0
