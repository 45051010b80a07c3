"""What a training run stores in its checkpoints' header beside the weights: the class names and the
dataset's name, and the readers of a .safetensors file's string metadata.

vitkit's own header keys (the format tag, the config, the digest) are `checkpoints.io`'s `META_*`; these
are the ones `vitkit train` adds, read back by predict, serve and resume.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import safe_open

CLASSES_KEY = "classes"  # a JSON list of class names, index = class id
DATASET_KEY = "dataset"  # the training data's name (vitkit.data.load_data's spec)


def checkpoint_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string entries of a .safetensors file's header; empty for other files and directories."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".safetensors":
        return {}
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def checkpoint_classes(path: str | os.PathLike) -> list[str] | None:
    """The class names a training run stored in its checkpoint, if any."""
    names = checkpoint_metadata(path).get(CLASSES_KEY)
    return json.loads(names) if names else None


def class_names(num_classes: int, classes: list[str] | None = None) -> list[str]:
    """The names of a model's classes: those given (checked against its head), else class_0, class_1, ..."""
    names = classes or [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a model with {num_classes} classes")
    return names


def checkpoint_dataset(path: str | os.PathLike) -> str | None:
    """The name of the data a training run was trained on, if its checkpoint records it."""
    return checkpoint_metadata(path).get(DATASET_KEY)


def run_metadata(classes: list[str], dataset: str) -> dict[str, str]:
    """The header entries a training run writes into each checkpoint: its class names and dataset."""
    return {CLASSES_KEY: json.dumps(classes), DATASET_KEY: dataset}
