"""Published weights: a local path, a Hugging Face Hub id, or the default weights of a registered name.

Downloads go through huggingface_hub (its cache, HF_HUB_OFFLINE and tokens apply). timm's Hub
repositories hold `model.safetensors` and a `config.json` whose `pretrained_cfg` gives the
preprocessing; Hugging Face transformers repositories hold a `config.json` of model_type 'vit'.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ..models.registry import default_hub_id, resolve_name
from .load import LoadReport, load_checkpoint

_FILES = ("config.json", "preprocessor_config.json", "model.safetensors", "pytorch_model.bin")


def download(repo_id: str, local_files_only: bool = False) -> Path:
    """Fetch a Hub repository's config and weights into the huggingface_hub cache; -> its snapshot dir."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, allow_patterns=list(_FILES), local_files_only=local_files_only))


def resolve_source(source: str, local_files_only: bool = False) -> Path:
    """A path as it is; a registered model name -> its default weights; anything else a Hub id."""
    if os.path.exists(source):
        return Path(source)
    try:
        resolve_name(source)
    except ValueError:
        return download(source, local_files_only=local_files_only)  # a Hub id
    return download(default_hub_id(source), local_files_only=local_files_only)


def preprocessing_from(directory: Path) -> dict[str, Any]:
    """The mean/std, crop and interpolation the weights expect, read from a timm or HF config."""
    out: dict[str, Any] = {}
    config_path, preproc_path = directory / "config.json", directory / "preprocessor_config.json"
    if config_path.is_file():
        cfg = json.loads(config_path.read_text()).get("pretrained_cfg", {})  # timm
        out.update({k: cfg[k] for k in ("mean", "std", "crop_pct", "interpolation") if k in cfg})
        if "input_size" in cfg:
            out["input_size"] = tuple(cfg["input_size"][-2:])
    if preproc_path.is_file():
        cfg = json.loads(preproc_path.read_text())  # Hugging Face image processor
        if "image_mean" in cfg:
            out.update(mean=cfg["image_mean"], std=cfg["image_std"])
        size = cfg.get("size")
        if isinstance(size, Mapping) and "height" in size:
            out["input_size"] = (size["height"], size["width"])
    return out


def load_pretrained(
    model: nn.Module, source: str, local_files_only: bool = False, pos_method: str | None = None
) -> LoadReport:
    """Load weights from `source` into `model` and record the preprocessing they expect in its config."""
    path = resolve_source(source, local_files_only)
    report = load_checkpoint(model, path, pos_method=pos_method)
    if path.is_dir():
        pre = preprocessing_from(path)
        cfg = model.config
        cfg.mean, cfg.std = tuple(pre.get("mean", cfg.mean)), tuple(pre.get("std", cfg.std))
        cfg.crop_pct = float(pre.get("crop_pct", cfg.crop_pct))
        cfg.interpolation = pre.get("interpolation", cfg.interpolation)
        if "input_size" in pre:
            cfg.extra["pretrained_input_size"] = list(pre["input_size"])
        cfg.extra["pretrained"] = source
    return report
