"""vitkit's own checkpoint file: one .safetensors whose metadata carries the model config.

Writes are atomic: a crash mid-save leaves the previous file intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..files import atomic_write
from ..models import ModelConfig, config_from_dict
from ..version import __version__

FORMAT_TAG = "vitkit"
META_FORMAT, META_CONFIG, META_VERSION, META_DIGEST = "format", "vitkit_config", "vitkit_version", "vitkit_sha256"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or used; the message names the file."""


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in key order."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save(
    model: nn.Module,
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
    state: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Write the model's weights and config to `path` (.safetensors), atomically.

    `metadata`: extra string entries (class names, training step, ...) stored in the header.
    `state`: the weights to write instead of model.state_dict() (those gathered from a sharded model).
    """
    state = {k: v.detach().cpu().contiguous() for k, v in (model.state_dict() if state is None else state).items()}
    meta = dict(metadata or {})
    meta.update({
        META_FORMAT: FORMAT_TAG,
        META_CONFIG: json.dumps(model.config.to_dict()),
        META_VERSION: __version__,
        META_DIGEST: state_digest(state),
    })  # fmt: skip
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))


def read_vitkit_file(
    path: str | os.PathLike, metadata: Mapping[str, str]
) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """The tensors and config of a vitkit file whose header `metadata` was already read; the digest is checked."""
    state = load_file(str(path))
    expected = metadata.get(META_DIGEST)
    if expected and state_digest(state) != expected:
        raise CheckpointError(f"{path}: checksum mismatch, the file is corrupted")
    try:
        config = config_from_dict(json.loads(metadata[META_CONFIG]))
    except (KeyError, json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{path}: the embedded vitkit config is unreadable ({e})") from None
    return state, config
