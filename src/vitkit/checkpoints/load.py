"""Load any supported checkpoint into a vitkit model, converting keys and adapting shapes.

After a format's converter has produced vitkit names, the same rules apply to every format:
position embeddings are resampled when the grid differs (the prefix tokens' own embeddings, if any,
kept), the patch embedding is adapted to another number of input channels and, by FlexiViT's
pseudo-inverse, to another patch size, a head for another number of classes is re-initialised to zeros, and any
other shape mismatch is an error that names the key and both shapes.
"""

from __future__ import annotations

import importlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..models import ModelConfig, ViTConfig, build_model, get_config, resample_pos_embed
from ..models.flexi import resample_patch_embed
from ..models.posembed import ResampleMethod
from .formats import CheckpointError, Format, RawCheckpoint, read_checkpoint
from .io import save

# Each foreign format has a module of this package, named after it, with
# convert(state, cfg) -> vitkit state dict; vitkit's own files need none.
# The convention each source's own code uses when the grid changes (PAPER.md, section 3.2).
DEFAULT_RESAMPLE: dict[Format, ResampleMethod] = {
    "vitkit": "bicubic", "timm": "bicubic", "huggingface": "bicubic", "torchvision": "bicubic", "google": "official",
    "bit": "bicubic",  # ResNets have no position embeddings
}  # fmt: skip
# First convolutions whose input channels can be adapted (a pure ViT's patch embedding, a hybrid's stem,
# a ResNet's stem).
_INPUT_CONVS = ("patch_embed.proj.weight", "patch_embed.backbone.stem.conv.weight", "stem.conv.weight")
_PATCH_KERNEL = "patch_embed.proj.weight"
# Keys of the descendants' options: (key prefix, the ViTConfig option a model needs to take it).
_OPTION_KEYS: list[tuple[str, str]] = [
    ("fc_norm.", "fc_norm=True"), ("reg_token", "reg_tokens=K"), ("dist_token", "distilled=True"),
    ("head_dist.", "distilled=True"), ("pos_embed", "pos_embed='learn' (the model's sin-cos table is fixed)"),
]  # fmt: skip


@dataclass
class LoadReport:
    """What load_checkpoint did."""

    source: str
    format: Format
    loaded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    head_reset: bool = False

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.source} ({self.format} format)"]
        return "\n".join(lines + [f"  - {n}" for n in self.notes])


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """(O, C, k, k) -> (O, in_chans, k, k): sum the filters for 1 channel, else repeat and rescale
    so that an image whose channels are equal gives the same response (timm's convention)."""
    C = weight.shape[1]
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_chans / C)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (C / in_chans)


def _unexpected(key: str, value: torch.Tensor, path: str) -> CheckpointError:
    """The error for a checkpoint key that the model has no parameter for, naming the option it needs."""
    option = next((opt for prefix, opt in _OPTION_KEYS if key.startswith(prefix)), None)
    if option is None and re.fullmatch(r"blocks\.\d+\.ls[12]\.gamma", key):
        option = "init_values (LayerScale)"
    hint = f": the checkpoint needs a model built with {option}" if option else " for this model"
    return CheckpointError(f"{path}: unexpected key {key!r} {tuple(value.shape)}{hint}")


def _adaptable_input_conv(key: str, have: torch.Size, want: torch.Size) -> bool:
    """An input convolution with the model's output channels: its input channels can be adapted, and the
    patch embedding's kernel size too."""
    return key in _INPUT_CONVS and have[0] == want[0] and (key == _PATCH_KERNEL or have[2:] == want[2:])


def _adapt_patch_embed(key: str, value: torch.Tensor, want: torch.Size, report: LoadReport) -> torch.Tensor:
    """An input convolution for other input channels and, the patch embedding, another patch size."""
    out = value.float()
    if value.shape[1] != want[1]:
        out = adapt_input_conv(out, want[1])
        report.notes.append(f"adapted {key} from {value.shape[1]} to {want[1]} input channels")
    if value.shape[2:] != want[2:]:
        out = resample_patch_embed(out, tuple(want[2:]))
        report.notes.append(f"resampled {key} from {tuple(value.shape[2:])} to {tuple(want[2:])} patches (FlexiViT)")
    return out.to(value.dtype)


def _source_grid(raw: RawCheckpoint, num_patches: int) -> tuple[int, int] | None:
    if raw.config is not None and math.prod(raw.config.grid_size) == num_patches:
        return raw.config.grid_size
    return None  # resample_pos_embed assumes a square grid


def apply_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    raw: RawCheckpoint,
    pos_method: ResampleMethod | None = None,
) -> LoadReport:
    """Load converted tensors into `model` with the shape rules of this module."""
    cfg, target = model.config, model.state_dict()
    report = LoadReport(raw.path, raw.format)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        value = torch.as_tensor(value)
        if key not in target:
            if key.startswith("pre_logits."):
                report.notes.append(f"dropped {key}: the model has no representation layer")
            elif key.startswith(("head.", "head_dist.")) and cfg.num_classes == 0:
                report.notes.append(f"dropped {key}: the model has no head (num_classes=0)")
            else:
                raise _unexpected(key, value, raw.path)
            continue
        want = target[key].shape
        if value.shape == want:
            out[key] = value
        elif key == "pos_embed" and value.shape[-1] == want[-1]:
            method = pos_method or DEFAULT_RESAMPLE[raw.format]
            old_grid = _source_grid(raw, value.shape[1] - cfg.pos_prefix_tokens)
            out[key] = resample_pos_embed(value, cfg.grid_size, cfg.pos_prefix_tokens, old_grid, method)
            report.notes.append(
                f"resampled pos_embed {tuple(value.shape)} -> {tuple(want)} to the {cfg.grid_size} grid ({method})"
            )
        elif _adaptable_input_conv(key, value.shape, want):
            out[key] = _adapt_patch_embed(key, value, want, report)
        elif key.startswith(("head.", "head_dist.")):
            continue  # another number of classes: the head is re-initialised below
        else:
            raise CheckpointError(
                f"{raw.path}: {key} has shape {tuple(value.shape)} in the checkpoint, the model expects {tuple(want)}"
            )
    missing = [k for k in target if k not in out]
    if any(not k.startswith(("head.", "head_dist.")) for k in missing):
        absent = [k for k in missing if not k.startswith(("head.", "head_dist."))]
        raise CheckpointError(f"{raw.path}: missing keys {absent[:5]}{'...' if len(absent) > 5 else ''}")
    model.load_state_dict(out, strict=False)
    if missing:
        model.reset_head()
        report.head_reset = True
        report.notes.append(f"head re-initialised to zeros for {cfg.num_classes} classes (not in the checkpoint)")
    report.loaded = sorted(out)
    return report


def _convert(raw: RawCheckpoint, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    if raw.format == "vitkit":
        return dict(raw.state)
    try:
        state = importlib.import_module(f".{raw.format}", __package__).convert(raw.state, cfg)
    except ValueError as e:  # the converters name the key; the file is named here
        raise CheckpointError(f"{raw.path}: {e}") from None
    return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in state.items()}


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike, pos_method: ResampleMethod | None = None
) -> LoadReport:
    """Load a checkpoint of any supported format into `model`; returns what was done.

    `pos_method` overrides the resampling convention of the checkpoint's source when its grid differs.
    """
    raw = read_checkpoint(path)
    return apply_state(model, _convert(raw, model.config), raw, pos_method)


def checkpoint_config(state: Mapping[str, torch.Tensor], base: ModelConfig) -> ModelConfig:
    """`base` with the depth, class count, representation layer and resolution that the weights imply
    (for a ResNet, the class count)."""
    if not isinstance(base, ViTConfig):
        return base.replace(num_classes=state["head.fc.weight"].shape[0] if "head.fc.weight" in state else 0)
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    overrides: dict[str, Any] = {
        "depth": max(blocks) + 1 if blocks else base.depth,
        "num_classes": state["head.weight"].shape[0] if "head.weight" in state else 0,
        "representation_size": state["pre_logits.fc.weight"].shape[0] if "pre_logits.fc.weight" in state else None,
    }
    if "pos_embed" not in state:
        return base.replace(**overrides)
    num_patches = state["pos_embed"].shape[1] - base.pos_prefix_tokens
    side = math.isqrt(num_patches)
    if num_patches != math.prod(base.grid_size) and side * side == num_patches:
        overrides["img_size"] = side * base.stride
    return base.replace(**overrides)


def _build(
    path: str | os.PathLike, name: str | None, overrides: Mapping[str, Any], pos_method: ResampleMethod | None = None
) -> tuple[nn.Module, LoadReport]:
    raw = read_checkpoint(path)
    if raw.config is None and name is None:
        raise CheckpointError(
            f"{path}: a {raw.format} checkpoint carries no model config; give the model name "
            f"(vitkit.load(path, 'vit_base_patch16_224'), or --model on the command line)"
        )
    base = get_config(name) if name else raw.config
    state = _convert(raw, base)
    cfg = raw.config if raw.config is not None and not name else checkpoint_config(state, base)
    model = build_model(cfg.replace(**overrides) if overrides else cfg)
    return model, apply_state(model, state, raw, pos_method)


def load(path: str | os.PathLike, name: str | None = None, **overrides: Any) -> nn.Module:
    """Rebuild a model from a checkpoint. Files that carry a config (vitkit, Hugging Face) need nothing
    else; for the others give the registered `name`: the class count, representation layer and
    resolution follow the weights. `overrides` change the config (e.g. num_classes, img_size), and the
    loader adapts the weights to it."""
    return _build(path, name, overrides)[0]


def convert_file(
    src: str | os.PathLike, dst: str | os.PathLike, model_name: str | None = None, pos_method: ResampleMethod | None = None
) -> LoadReport:
    """Any supported checkpoint -> a vitkit .safetensors file with its config embedded."""
    model, report = _build(src, model_name, {}, pos_method)
    save(model, Path(dst))
    report.notes.append(f"wrote {dst}")
    return report
