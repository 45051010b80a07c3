"""Read a checkpoint of any supported format; the format is detected from the content, not the name.

Untrusted files are never unpickled: torch files go through torch.load(weights_only=True), .npz
through np.load(allow_pickle=False).
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..models import ModelConfig
from .io import FORMAT_TAG, CheckpointError, META_CONFIG, META_FORMAT, read_vitkit_file

Format = Literal["vitkit", "timm", "google", "bit", "huggingface", "torchvision"]

SUPPORTED = (
    "supported: vitkit .safetensors; timm state dicts (.pth/.bin/.safetensors) of ViTs, their descendants and "
    "resnetv2_*_bit; official Google ViT .npz and BiT .npz; Hugging Face ViT, DeiT, DINOv2 and ViT-MAE directories "
    "(config.json + weights); torchvision vit_* state dicts"
)

# A format is recognised by one of its characteristic keys (checked in this order).
SIGNATURES: list[tuple[Format, str]] = [
    ("bit", r"(^|/)resnet/root_block/standardized_conv2d/kernel$"),  # google-research/big_transfer
    ("google", r"(^|/)(Transformer/encoderblock_0/|embedding/kernel$|conv_root/kernel$)"),
    ("torchvision", r"^encoder\.layers\.encoder_layer_\d+\.|^conv_proj\.weight$"),
    ("huggingface", r"(^|\.)embeddings\.patch_embeddings\.projection\.weight$"),
    ("timm", r"^(module\.)?(blocks\.\d+\.attn\.qkv\.weight$|patch_embed\.(proj|backbone)\.|stages\.\d+\.blocks\.)"),
]
# Wrappers that training scripts put around a state dict.
_WRAPPERS = ("state_dict", "model", "model_state_dict", "module")
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass
class RawCheckpoint:
    """A checkpoint as read from disk, still in its own key names."""

    path: str
    format: Format
    state: dict[str, Any]  # torch.Tensor, or np.ndarray for .npz
    config: ModelConfig | None = None  # when the file carries one
    metadata: dict[str, Any] = field(default_factory=dict)


def detect_format(keys: list[str], path: str) -> Format:
    for fmt, pattern in SIGNATURES:
        if any(re.search(pattern, k) for k in keys):
            return fmt
    sample = ", ".join(keys[:4])
    raise CheckpointError(f"{path}: no weights of a supported model recognised (keys: {sample}...); {SUPPORTED}")


def read_checkpoint(path: str | Path) -> RawCheckpoint:
    """Read `path` (a file or a Hugging Face directory) and detect its format."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        return _read_directory(path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file; {SUPPORTED}")
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):
        return _read_zip(path)
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return _read_safetensors(path)
    if head[:1] == b"\x80":  # a pickle: the legacy torch.save format
        return _from_state(path, _torch_load(path))
    raise CheckpointError(f"{path}: not a checkpoint file; {SUPPORTED}")


def _read_zip(path: Path) -> RawCheckpoint:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path}: truncated or corrupted zip archive (.npz or torch file)") from None
    if names and all(n.endswith(".npy") for n in names):
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except ValueError as e:  # object arrays need pickle: refused
            raise CheckpointError(f"{path}: refused to load .npz with pickled object arrays ({e})") from None
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise CheckpointError(f"{path}: truncated or corrupted .npz ({e})") from None
        fmt = detect_format(list(arrays), str(path))
        if fmt not in ("google", "bit"):
            raise CheckpointError(f"{path}: .npz without the official ViT or BiT keys; {SUPPORTED}")
        return RawCheckpoint(str(path), fmt, arrays)
    if any(n.endswith("data.pkl") for n in names):
        return _from_state(path, _torch_load(path))
    raise CheckpointError(f"{path}: a zip archive that is neither .npz nor a torch file; {SUPPORTED}")


def _torch_load(path: Path) -> Any:
    try:
        with open(path, "rb") as f:  # a file object: torch.load dispatches on some file names
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused to unpickle objects other than tensors (torch.load weights_only=True): {first}"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: truncated or corrupted torch file ({str(e).splitlines()[0]})") from None


def _read_safetensors(path: Path) -> RawCheckpoint:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        if metadata.get(META_FORMAT) == FORMAT_TAG and META_CONFIG in metadata:
            state, config = read_vitkit_file(path, metadata)
            return RawCheckpoint(str(path), "vitkit", state, config, metadata)
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: invalid or truncated safetensors file ({e})") from None
    return _from_state(path, state, metadata)


def _from_state(path: Path, obj: Any, metadata: dict[str, Any] | None = None) -> RawCheckpoint:
    """A loaded torch object -> its tensors, unwrapped from training-script containers."""
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}; {SUPPORTED}")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return RawCheckpoint(str(path), detect_format(list(state), str(path)), state, metadata=metadata or {})


def _read_directory(path: Path) -> RawCheckpoint:
    """A Hugging Face transformers ViT directory, or a timm Hub snapshot (config.json + weights)."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{path}: a directory without config.json; {SUPPORTED}")
    try:
        hf_config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_path}: not valid JSON ({e})") from None
    weights = next((path / n for n in _HF_WEIGHTS if (path / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path}: no weights file (expected one of {', '.join(_HF_WEIGHTS)})")
    from .huggingface import MODEL_TYPES, config_from_hf

    if hf_config.get("model_type") in MODEL_TYPES:

        config = config_from_hf(hf_config)  # validated before any weights are read
        raw = read_checkpoint(weights)
        if raw.format != "huggingface":
            expected = f"Hugging Face {hf_config['model_type']} weights"
            raise CheckpointError(f"{weights}: expected {expected}, found {raw.format} keys")
        return RawCheckpoint(str(path), "huggingface", raw.state, config, {"hf_config": hf_config})
    raw = read_checkpoint(weights)  # e.g. a timm Hub snapshot: config.json holds its pretrained_cfg
    raw.metadata = {**raw.metadata, "hub_config": hf_config}
    return raw
