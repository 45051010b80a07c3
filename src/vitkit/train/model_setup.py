"""The model a run trains: built from the recipe and the dataset, initialised from --init-from, placed on
its device (and sharded for FSDP)."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import torch
from torch import nn

from .. import create_model
from ..checkpoints.load import load_checkpoint
from ..data import DataSource, per_channel
from ..models import get_config
from . import distributed
from .config import TrainConfig


def build_model(cfg: TrainConfig, data: DataSource) -> nn.Module:
    recipe = cfg.recipe
    base = get_config(cfg.model)
    in_chans = cfg.in_chans or base.in_chans
    overrides: dict[str, Any] = dict(
        num_classes=len(data.classes), in_chans=in_chans, dropout=recipe.dropout, drop_path=recipe.drop_path,
        mean=tuple(per_channel(base.mean, in_chans)), std=tuple(per_channel(base.std, in_chans)),
    )  # fmt: skip
    if base.family == "resnet":
        if recipe.patch_drop or cfg.patch_size:
            warnings.warn(f"{cfg.model} has no patches: patch_drop and patch_size are ignored", stacklevel=2)
    else:
        overrides["patch_drop"] = recipe.patch_drop
        if cfg.patch_size:
            overrides["patch_size"] = cfg.patch_size
    if recipe.img_size:
        overrides["img_size"] = recipe.img_size
    torch.manual_seed(cfg.seed)
    return create_model(cfg.model, **overrides)


def placed_model(cfg: TrainConfig, procs: distributed.Processes, data: DataSource) -> nn.Module:
    """The model built (and initialised from --init-from) on its device; sharded for FSDP."""
    model = build_model(cfg, data)  # a bad model config fails here, before anything is written
    if cfg.init_from and not cfg.resume:
        report = load_checkpoint(model, cfg.init_from, pos_method=cfg.pos_method)
        if cfg.recipe.reset_head and not report.head_reset:
            model.reset_head()
            report.notes.append("head re-initialised to zeros (the paper's fine-tuning head)")
        if procs.is_main:
            print(str(report), file=sys.stderr)
    model.to(procs.device)
    if cfg.fsdp:
        distributed.shard(model)  # before the optimiser is built: it holds this process's shards
    return model
