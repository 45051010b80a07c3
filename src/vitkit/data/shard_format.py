"""The shard directory's format, as `vitkit shard` writes it and `wds:` reads it: one definition for both.

OUT/{split}-{n:06d}.tar hold samples `{split}-{index:08d}` with the image (`.png`, `.jpg` or `.webp`) and
the label (`.cls`); OUT/index.json (`INDEX`) records `format` (`FORMAT`), the classes, the channels and,
per split, its shards with their sample counts, sizes and SHA-256. A directory or any URL that webdataset
(or fsspec) opens holds the same layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import webdataset as wds
from webdataset.gopen import gopen_schemes

from ..files import atomic_write

INDEX, FORMAT = "index.json", "vitkit-shards/1"
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}  # `vitkit shard --format` -> the key in the tar
IMAGE_KEYS = ("png", "jpg", "jpeg", "webp", "image")  # the keys a sample's image is read from, in this order


def open_url(url: str) -> Any:
    """A binary stream of a local path or any URL webdataset opens (https, pipe:, gs, ...), else fsspec's."""
    scheme = urlparse(url).scheme
    if len(scheme) <= 1 or scheme in gopen_schemes:  # "" or a Windows drive letter: a local path
        return wds.gopen(url)
    import fsspec  # s3://, az://, ... where the filesystem's package is installed

    return fsspec.open(url, "rb").open()


def join(base: str, name: str) -> str:
    """`name` inside the shard directory or URL `base`."""
    return str(Path(base) / name) if len(urlparse(base).scheme) <= 1 else f"{base.rstrip('/')}/{name}"


def read_index(base: str) -> dict[str, Any]:
    """index.json of a shard directory or URL; a one-line error when there is none, or it is not this format."""
    url = join(base, INDEX)
    try:
        with open_url(url) as f:
            index = json.loads(f.read())
    except (OSError, ValueError) as e:
        if isinstance(e, json.JSONDecodeError):
            raise ValueError(f"wds:{base}: {url} is not valid JSON ({e})") from None
        raise ValueError(f"wds:{base}: no {INDEX} there; make shards with one: vitkit shard SRC {base}") from None
    if not isinstance(index, dict) or "splits" not in index or "classes" not in index:
        raise ValueError(f"wds:{base}: {url} lacks 'classes' or 'splits' (write it with vitkit shard)")
    if index.get("format") != FORMAT:
        raise ValueError(f"wds:{base}: {url} has format {index.get('format')!r}, expected {FORMAT!r} "
                         "(write it with this version's vitkit shard)")  # fmt: skip
    return index


def write_index(out: Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Write `fields` after `format` as out/index.json, atomically; return the index written."""
    index = {"format": FORMAT, **fields}
    text = json.dumps(index, indent=1)
    atomic_write(out / INDEX, lambda tmp: Path(tmp).write_text(text))
    return index
