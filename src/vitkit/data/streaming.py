"""Streamed splits: WebDataset shards (or a Hugging Face streaming dataset) read in an order that is a
pure function of (seed, epoch), split over processes and loader workers without overlap.

The order of an epoch (training):
- the split's N samples are its shards concatenated in an order permuted by (seed, epoch);
- that sequence is cut into S = world_size x streams contiguous ranges of m = floor(N / (S b)) b samples
  (b: the micro-batch; streams: a process's loader workers, 1 without workers); range k = rank x streams + w
  is read by worker w of process `rank`, so each sample is decoded by one worker only (a shard that
  straddles two ranges is opened by both, each decoding its own part). The last N - S m < S b samples of
  the epoch's order are left out of that epoch, as drop_last leaves out a partial batch;
- within its range a worker shuffles samples in a buffer seeded by (seed, epoch, k), before decoding;
- an image's augmentation is seeded by (seed, epoch, its index in the split), wherever it is decoded.

A DataLoader takes its workers' batches in turn, so the micro-batch sequence of a process is fixed by
(seed, epoch, S); one process with P workers and accumulation over P micro-batches sees, step by step,
the images that P processes without workers see. To resume after p micro-batches of an epoch, worker w
plays the part of worker (w + p) mod P and skips the (p + w) // P batches that part already gave: the
loader then yields exactly the rest of the epoch (skipped samples are read, not decoded).

A sample that cannot be read or decoded is named in a warning and counted (`skipped_samples`); in
training it is replaced by the worker's previous good sample, so that every process still takes the
same number of steps; evaluation leaves it out.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import itertools
import multiprocessing
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol
from urllib.parse import urlparse

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from webdataset.filters import shuffle
from webdataset.tariterators import group_by_keys, tar_file_expander

from .images import ImageDecodeError, open_image, to_rgb
from .loader import mix_seed, seeded
from .shard_format import IMAGE_KEYS, INDEX, join, open_url

HELD_BYTES = 4 << 30  # the most a streamed split may weigh to be held in memory (for indexed access)

# (position in its shard, "shard:key" for messages, the sample's fields or None when it could not be read)
Record = tuple[int, str, "dict[str, Any] | None"]


class RecordSource(Protocol):
    """A split's samples, grouped in shards of known sizes."""

    counts: list[int]

    def records(self, shard: int, start: int, stop: int) -> Iterator[Record]: ...


class HashingReader:
    """A stream that computes the SHA-256 of what is read through it."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.digest = stream, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.digest.update(data)
        return data

    def drain(self) -> str:
        """Read to the end; the hex digest of the whole stream."""
        while self.read(1 << 20):
            pass
        return self.digest.hexdigest()

    def close(self) -> None:
        self.stream.close()


class ShardSource:
    """A split's tar shards as index.json lists them: names, sample counts, SHA-256."""

    def __init__(self, base: str, entry: dict[str, Any]) -> None:
        self.names = [s["name"] for s in entry["shards"]]
        self.urls = [join(base, name) for name in self.names]
        self.counts = [int(s["samples"]) for s in entry["shards"]]
        self.sha256 = [s.get("sha256") for s in entry["shards"]]
        for url in self.urls:
            if len(urlparse(url).scheme) <= 1 and not Path(url).is_file():
                raise FileNotFoundError(f"wds:{base}: shard {url} is listed in {INDEX} but missing")

    def records(self, shard: int, start: int, stop: int) -> Iterator[Record]:
        """Samples start..stop-1 of a shard; those it lacks (truncated, unreadable) as None, with a warning."""
        name, problems = self.names[shard], []
        try:
            stream = HashingReader(open_url(self.urls[shard]))
        except OSError as e:
            warnings.warn(f"shard {name}: cannot be opened ({e}); {stop - start} samples skipped", stacklevel=2)
            yield from ((i, name, None) for i in range(start, stop))
            return

        def note(exn: Exception) -> bool:
            problems.append(exn)
            return True

        files = tar_file_expander([{"url": name, "stream": stream}], handler=note)
        n, last_key = 0, None
        try:
            for sample in group_by_keys(files, handler=note):
                if n >= stop or (problems and not _whole(sample)):  # a sample cut short by the damage
                    break
                if n >= start:
                    yield n, f"{name}:{sample['__key__']}", sample
                n, last_key = n + 1, sample["__key__"]
            if n < stop:
                why = f" ({str(problems[0]).split(' @ ')[0]})" if problems else ""
                after = f"after key {last_key}" if last_key else "at its start"
                warnings.warn(f"shard {name}: truncated or corrupt {after}{why}: {n} of {self.counts[shard]} "
                              f"samples read; {stop - max(n, start)} skipped", stacklevel=2)  # fmt: skip
                yield from ((i, name, None) for i in range(max(n, start), stop))
            elif stop == self.counts[shard] and self.sha256[shard] and stream.drain() != self.sha256[shard]:
                warnings.warn(f"shard {name}: SHA-256 differs from index.json's: the file changed since "
                              f"`vitkit shard` wrote it", stacklevel=2)  # fmt: skip
        finally:
            stream.close()


def _whole(sample: dict[str, Any]) -> bool:
    return "cls" in sample and any(k in sample for k in IMAGE_KEYS)


def decode_sample(record: dict[str, Any], where: str, channels: int, num_classes: int) -> tuple[Any, int]:
    """(PIL image, label) of a sample, decoded as image folders are (vitkit.data.images); ImageDecodeError
    when the image is not decodable, ValueError naming the key when the label is missing or out of range."""
    label = record.get("cls", record.get("label"))
    if label is None:
        raise ValueError(f"{where}: the sample has no label (.cls)")
    label = int(label.decode() if isinstance(label, bytes) else label)
    if not 0 <= label < num_classes:
        raise ValueError(f"{where}: label {label} is not one of the {num_classes} classes")
    data = next((record[k] for k in IMAGE_KEYS if k in record), None)
    if data is None:
        raise ImageDecodeError(where, f"no image ({', '.join('.' + k for k in IMAGE_KEYS[:-1])})")
    if isinstance(data, dict):  # Hugging Face's undecoded Image feature
        data = data["bytes"]
    image = to_rgb(data) if hasattr(data, "mode") else open_image(io.BytesIO(data), name=where)
    return (image.convert("L") if channels == 1 else image), label


@dataclass(frozen=True)
class Plan:
    """Which samples a process's loader yields, and in which order (see the module's docstring)."""

    seed: int = 0
    epoch: int = 0
    world_size: int = 1
    rank: int = 0
    streams: int = 1  # this process's loader workers (1 without workers)
    batch: int = 1  # the micro-batch; with `train`, every range is a multiple of it
    train: bool = False  # shards permuted, samples shuffled, the remainder left out
    start: int = 0  # micro-batches of this epoch already taken (to resume)
    buffer: int = 1000  # shuffle buffer, in samples


def stream_ranges(n: int, plan: Plan) -> list[tuple[int, int]]:
    """[first, last) of every stream of every process, in the epoch's sequence of n samples."""
    S = plan.world_size * plan.streams
    if plan.train:
        m = n // (S * plan.batch) * plan.batch
        return [(k * m, (k + 1) * m) for k in range(S)]
    return [(k * n // S, (k + 1) * n // S) for k in range(S)]


class StreamedSplit(IterableDataset):
    """A split read as a stream of (transform(image), label); `plan` says which part and in which order."""

    def __init__(self, source: RecordSource, name: str, classes: list[str], channels: int) -> None:
        self.source, self.name, self.classes, self.channels = source, name, classes, channels
        self.counts = list(source.counts)
        self.plan = Plan()
        self.transform: Callable[[Any], Any] | None = None
        self._skipped = multiprocessing.Value("l", 0)  # shared with the loader's workers

    @property
    def skipped_samples(self) -> int:
        """Samples skipped so far by this process and its workers."""
        return int(self._skipped.value)

    def configured(self, transform: Callable[[Any], Any] | None = None, **plan: Any) -> "StreamedSplit":
        """A copy with this transform and these Plan fields."""
        other = copy.copy(self)
        other.transform, other.plan = transform, dataclasses.replace(self.plan, **plan)
        return other

    def first(self, n: int) -> "StreamedSplit":
        """A copy holding only the first n samples (in the shards' order)."""
        other, kept = copy.copy(self), []
        for count in self.counts:
            kept.append(max(0, min(count, n - sum(kept))))
        other.counts = [c for c in kept if c]
        return other

    def held(self) -> "HeldSplit":
        """The whole split read once, in the shards' order, and kept encoded in memory for what needs
        indices (nested class-balanced subsets)."""
        return HeldSplit(self)

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Read `epoch` from its `start`-th micro-batch on (in this process's sequence)."""
        self.plan = dataclasses.replace(self.plan, epoch=epoch, start=start)

    def __len__(self) -> int:
        ranges = stream_ranges(sum(self.counts), self.plan)
        mine = ranges[self.plan.rank * self.plan.streams : (self.plan.rank + 1) * self.plan.streams]
        return sum(b - a for a, b in mine) - self.plan.start * self.plan.batch

    def _shard_order(self) -> list[int]:
        if not self.plan.train:
            return list(range(len(self.counts)))
        generator = torch.Generator().manual_seed(mix_seed(self.plan.seed, self.plan.epoch))
        return torch.randperm(len(self.counts), generator=generator).tolist()

    def records(self, first: int, last: int) -> Iterator[Record]:
        """(index in the split, where, fields or None) of samples first..last-1 of the epoch's sequence, undecoded."""
        offsets = list(itertools.accumulate(self.counts, initial=0))
        position = 0
        for shard in self._shard_order():
            lo, hi = max(first - position, 0), min(last - position, self.counts[shard])
            if lo < hi:
                for i, where, record in self.source.records(shard, lo, hi):
                    yield offsets[shard] + i, where, record
            position += self.counts[shard]
            if position >= last:
                return

    def decode(self, index: int, where: str, record: dict[str, Any] | None) -> tuple[Any, int] | None:
        """A record of `records` as (transform(image), label), the transform seeded by (seed, epoch, index); None
        for a sample that cannot be read or decoded (counted; warned about here or when it was read)."""
        try:
            if record is None:
                raise ImageDecodeError(where, "could not be read")
            image, label = decode_sample(record, where, self.channels, len(self.classes))
        except ImageDecodeError as e:
            if record is not None:
                warnings.warn(f"skipping {e}", stacklevel=2)
            with self._skipped.get_lock():
                self._skipped.value += 1
            return None
        if self.transform is None:
            return image, label
        with seeded(mix_seed(self.plan.seed, self.plan.epoch, index)):
            return self.transform(image), label

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        info, plan = get_worker_info(), self.plan
        worker = info.id if info is not None else 0
        if (info.num_workers if info is not None else 1) != plan.streams:
            raise RuntimeError(f"the plan has {plan.streams} streams per process, the loader another number of workers")
        part = (worker + plan.start) % plan.streams
        first, last = stream_ranges(sum(self.counts), plan)[plan.rank * plan.streams + part]
        records: Iterator[Any] = self.records(first, last)
        if plan.train:
            rng = random.Random(mix_seed(plan.seed, plan.epoch, plan.rank * plan.streams + part))
            records = shuffle(bufsize=plan.buffer, initial=plan.buffer, rng=rng)(records)
        taken = (plan.start + worker) // plan.streams * plan.batch
        last_good, owed = None, 0
        for record in itertools.islice(records, taken, None):
            item = self.decode(*record)
            if item is None:
                if not plan.train:  # evaluation counts what it has
                    continue
                if last_good is None:
                    owed += 1
                    continue
                item = last_good
            last_good = item
            for _ in range(owed + 1):
                yield item
            owed = 0


def first(dataset: Any, n: int | None) -> Any:
    """The first n samples of a dataset (all when n is None)."""
    if not n:
        return dataset
    if isinstance(dataset, StreamedSplit):
        return dataset.first(n)
    from torch.utils.data import Subset

    return Subset(dataset, range(min(n, len(dataset))))


def indexable(split: Dataset | None) -> Dataset | None:
    """The split in a form read by index (nested subsets, the few-shot pool): a streamed split held in
    memory (StreamedSplit.held), any other split (a held one too) as it is."""
    return split.held() if isinstance(split, StreamedSplit) else split


class HeldSplit(Dataset):
    """A streamed split held in memory as its encoded samples, read by index: (PIL image, label), decoded as
    the stream decodes them. Samples that do not decode are left out, with a warning, as a stream skips them;
    `targets` (N,) are the labels."""

    def __init__(self, split: StreamedSplit) -> None:
        self.name, self.classes, self.channels = split.name, split.classes, split.channels
        self.records: list[tuple[str, dict[str, Any]]] = []
        targets, size = [], 0
        for _, where, record in split.records(0, sum(split.counts)):
            item = split.decode(0, where, record)  # decodes once: bad samples are warned about and left out
            if item is None:
                continue
            self.records.append((where, record))
            targets.append(item[1])
            size += sum(len(v) for v in record.values() if isinstance(v, bytes))
            if size > HELD_BYTES:
                raise ValueError(f"{split.name}: over {HELD_BYTES >> 30} GiB of samples to hold in memory for indexed "
                                 f"access; draw the subset from the dataset's source (imagefolder:, ...) instead")
        self.targets = torch.tensor(targets, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        where, record = self.records[i]
        return decode_sample(record, where, self.channels, len(self.classes))
