"""Blocks that several model families share: stochastic depth, the weight-standardised convolution
and the initialisers of the official code. ViT, the BiT ResNets and the hybrid import them from here,
so the model modules import downwards only (vit -> hybrid -> resnet -> layers).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Padding = Literal["same", "symmetric"]


@torch.no_grad()
def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """flax's default kernel init: truncated normal (±2σ) with variance 1/fan_in."""
    # 0.8796... is the std of a unit normal truncated to [-2, 2]; jax divides it out
    std = math.sqrt(1.0 / math.prod(weight.shape[1:])) / 0.87962566103423978
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


@torch.no_grad()
def init_convnet_(module: nn.Module) -> None:
    """Convolutions He-normal (fan out), GroupNorm scales 1 and offsets 0, as timm's ResNetV2."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's whole residual branch with probability p, scale by 1/(1-p)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def pad_same(x: torch.Tensor, kernel_size: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow 'SAME' padding: output size ceil(in / stride), the extra pixel on the bottom/right."""
    pads = []
    for size in reversed(x.shape[-2:]):  # F.pad wants (left, right, top, bottom)
        total = max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardisation, W ← (W - mean) / sqrt(var + eps) per output filter.

    `padding` 'same' (TensorFlow's, the ViT hybrids): (B, C_in, H, W) -> (B, C_out, ceil(H/s), ceil(W/s));
    'symmetric' (BiT): (k - 1) / 2 pixels on each side, as nn.Conv2d.
    """

    def __init__(
        self, in_chans: int, out_chans: int, kernel_size: int, stride: int = 1, padding: Padding = "same",
        eps: float = 1e-8,
    ) -> None:  # fmt: skip
        pad = 0 if padding == "same" else (kernel_size - 1) // 2
        super().__init__(in_chans, out_chans, kernel_size, stride=stride, padding=pad, bias=False)
        self.same, self.eps = padding == "same", eps  # 1e-8: timm's value for BiT and the hybrids

    def standardized_weight(self) -> torch.Tensor:
        """The filters as the convolution applies them: (C_out, C_in, k, k), each of mean 0 and variance 1."""
        # batch_norm over each filter's C_in·k·k values is exactly that standardisation, computed as
        # timm computes it (one fused kernel), so that the two agree to the last bits
        w = self.weight
        return F.batch_norm(w.reshape(1, w.shape[0], -1), None, None, training=True, eps=self.eps).reshape_as(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, self.standardized_weight(), None, self.stride, self.padding)
