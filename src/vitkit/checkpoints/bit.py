"""Official BiT .npz checkpoints (google-research/big_transfer): TensorFlow names and HWIO kernels.

    resnet/root_block/standardized_conv2d/kernel              stem.conv.weight
    resnet/block{i}/unit{jj}/{a,b,c}/standardized_conv2d/...  stages.{i-1}.blocks.{j-1}.conv{1,2,3}.weight
    resnet/block{i}/unit{jj}/{a,b,c}/group_norm/{gamma,beta}  ...norm{1,2,3}.{weight,bias}
    resnet/block{i}/unit{jj}/a/proj/standardized_conv2d/...   ...downsample.conv.weight
    resnet/group_norm/{gamma,beta}, resnet/head/conv2d/*      norm.*, head.fc.*
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np
import torch

from ..models import ResNetConfig
from .io import CheckpointError

_CONV, _NORM = {"a": "1", "b": "2", "c": "3"}, {"gamma": "weight", "beta": "bias"}


def _unit_key(m: re.Match) -> str:
    stage, unit, part, rest = int(m["block"]) - 1, int(m["unit"]) - 1, m["part"], m["rest"]
    prefix = f"stages.{stage}.blocks.{unit}."
    if rest == "proj/standardized_conv2d/kernel":
        return prefix + "downsample.conv.weight"
    if rest == "standardized_conv2d/kernel":
        return prefix + f"conv{_CONV[part]}.weight"
    return prefix + f"norm{_CONV[part]}.{_NORM[rest.rpartition('/')[2]]}"


_UNIT = re.compile(
    r"^block(?P<block>\d+)/unit(?P<unit>\d+)/(?P<part>[abc])/"
    r"(?P<rest>proj/standardized_conv2d/kernel|standardized_conv2d/kernel|group_norm/(gamma|beta))$"
)
# BiT name (after the 'resnet/' prefix) -> vitkit name, for the tensors outside the units.
KEY_MAP: dict[str, str] = {
    "root_block/standardized_conv2d/kernel": "stem.conv.weight",
    "group_norm/gamma": "norm.weight", "group_norm/beta": "norm.bias",
    "head/conv2d/kernel": "head.fc.weight", "head/conv2d/bias": "head.fc.bias",
}  # fmt: skip


def to_torch(a: np.ndarray) -> torch.Tensor:
    """HWIO kernels -> OIHW; GroupNorm's scale and offset, however shaped, -> (C,)."""
    return torch.from_numpy(np.ascontiguousarray(a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.reshape(-1)))


def convert(arrays: Mapping[str, np.ndarray], cfg: ResNetConfig) -> dict[str, torch.Tensor]:
    """BiT .npz arrays -> vitkit (= timm) ResNetV2 state dict. A key outside the layout is an error."""
    if cfg.family != "resnet":
        raise CheckpointError(f"a BiT .npz holds a ResNet; {cfg.name or 'the model'} is a {cfg.family} model")
    out = {}
    for key, value in arrays.items():
        name = key.partition("resnet/")[2]
        unit = _UNIT.match(name)
        target = _unit_key(unit) if unit else KEY_MAP.get(name)
        if target is None:
            raise CheckpointError(f"unexpected key {key!r} {tuple(value.shape)} in a BiT .npz")
        out[target] = to_torch(value)
    return out
