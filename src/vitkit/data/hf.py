"""Hugging Face `datasets` in streaming mode as a streamed split (vitkit.data.streaming): `hf:NAME[:CONFIG]`.

NAME is a dataset on the Hub or a local directory `datasets.load_dataset` reads (parquet, arrow, an image
folder). The first Image column is the image, the first ClassLabel column the label; images are decoded
by vitkit (vitkit.data.images), as those of shards and image folders are.
"""

from __future__ import annotations

from typing import Any, Iterator

from .streaming import Record


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ValueError("hf: datasets needs the datasets package: pip install 'vitkit[hf]'") from None
    return datasets


def _columns(features: Any, spec: str) -> tuple[str, str]:
    datasets = _datasets()
    image = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    label = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if image is None or label is None:
        raise ValueError(f"{spec}: expected an Image and a ClassLabel column, found {dict(features)}")
    return image, label


class HFSource:
    """One split of a streaming dataset, as a single shard of known length (skipping is reading)."""

    def __init__(self, name: str, config: str | None, split: str, spec: str) -> None:
        self.name, self.config, self.split, self.spec = name, config, split, spec
        stream = self._stream()
        splits = stream.info.splits
        n = splits[split].num_examples if splits and split in splits else None
        self.counts = [n if n is not None else sum(1 for _ in stream)]
        self.classes = stream.features[self.label].names

    def _stream(self) -> Any:
        datasets = _datasets()
        stream = datasets.load_dataset(self.name, self.config, split=self.split, streaming=True)
        self.image, self.label = _columns(stream.features, self.spec)
        return stream.cast_column(self.image, datasets.Image(decode=False))

    def records(self, shard: int, start: int, stop: int) -> Iterator[Record]:
        rows = self._stream().skip(start).take(stop - start)
        i = start
        for batch in rows.iter(batch_size=64):  # iterating `rows` itself would split them among loader workers
            for image, label in zip(batch[self.image], batch[self.label]):
                yield i, f"{self.spec}[{self.split}]#{i}", {"image": image, "label": label}
                i += 1


def split_names(name: str, config: str | None) -> list[str]:
    return list(_datasets().get_dataset_split_names(name, config))
