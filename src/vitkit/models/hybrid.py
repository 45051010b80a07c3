"""The hybrid of section 3.1: a BiT-style ResNet whose feature map is the token sequence.

Weight-standardised convolutions and GroupNorm(32) (Kolesnikov et al., BiT), TensorFlow 'same'
padding as in google-research/vision_transformer. Parameter names follow timm's ResNetV2.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .init import lecun_normal_

STAGE_CHANNELS = (256, 512, 1024, 2048)
STEM_CHANNELS = 64


def pad_same(x: torch.Tensor, kernel_size: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow 'SAME' padding: output size ceil(in / stride), the extra pixel on the bottom/right."""
    pads = []
    for size in reversed(x.shape[-2:]):  # F.pad wants (left, right, top, bottom)
        total = max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardisation, W ← (W - mean) / sqrt(var + eps) per output filter,
    and 'same' padding. (B, C_in, H, W) -> (B, C_out, ceil(H/s), ceil(W/s))."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int = 1, eps: float = 1e-8):
        super().__init__(in_chans, out_chans, kernel_size, stride=stride, padding=0, bias=False)
        self.eps = eps  # timm's value for the ViT hybrids

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        w = (w - mean) / torch.sqrt(var + self.eps)
        return F.conv2d(pad_same(x, self.kernel_size[0], self.stride[0]), w, None, self.stride)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm(32), optionally followed by ReLU."""

    def __init__(self, channels: int, act: bool = True, num_groups: int = 32, eps: float = 1e-5):
        super().__init__(num_groups, channels, eps=eps)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return F.relu(x) if self.act else x


class MaxPool2dSame(nn.Module):
    """3×3/2 max-pool with 'same' padding (padded with -inf, as TensorFlow)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, 2)


class Downsample(nn.Module):
    """Projection shortcut: 1×1 strided conv + GroupNorm."""

    def __init__(self, in_chans: int, out_chans: int, stride: int) -> None:
        super().__init__()
        self.conv = StdConv2d(in_chans, out_chans, 1, stride)
        self.norm = GroupNormAct(out_chans, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck unit: 1×1 → 3×3 (strided) → 1×1, then ReLU(x + shortcut)."""

    def __init__(self, in_chans: int, out_chans: int, stride: int = 1) -> None:
        super().__init__()
        mid = out_chans // 4
        self.downsample = Downsample(in_chans, out_chans, stride) if stride != 1 or in_chans != out_chans else None
        self.conv1 = StdConv2d(in_chans, mid, 1)
        self.norm1 = GroupNormAct(mid)
        self.conv2 = StdConv2d(mid, mid, 3, stride)
        self.norm2 = GroupNormAct(mid)
        self.conv3 = StdConv2d(mid, out_chans, 1)
        self.norm3 = GroupNormAct(out_chans, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return F.relu(x + shortcut)


class ResNetStage(nn.Module):
    def __init__(self, in_chans: int, out_chans: int, depth: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[Bottleneck(in_chans if i == 0 else out_chans, out_chans, stride if i == 0 else 1) for i in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ResNetBackbone(nn.Module):
    """Stem (7×7/2 conv, GroupNorm, ReLU, 3×3/2 max-pool) and `layers` bottleneck stages.

    (3, 4, 9): R50 with stage 4's units moved into stage 3, stride 16, 1024 channels;
    (2, 2, 2, 2): R26 and (3, 4, 6, 3): R50, stride 32, 2048 channels; (): the stem only, stride 4.
    x: (B, C, H, W) -> (B, num_features, H/stride, W/stride).
    """

    def __init__(self, layers: tuple[int, ...], in_chans: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            OrderedDict(
                conv=StdConv2d(in_chans, STEM_CHANNELS, 7, stride=2),
                norm=GroupNormAct(STEM_CHANNELS),
                pool=MaxPool2dSame(),
            )
        )
        self.stages = nn.Sequential()
        chans = STEM_CHANNELS
        for i, depth in enumerate(layers):
            self.stages.add_module(str(i), ResNetStage(chans, STAGE_CHANNELS[i], depth, stride=1 if i == 0 else 2))
            chans = STAGE_CHANNELS[i]
        self.num_features = chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class HybridEmbed(nn.Module):
    """The hybrid's eq. 1 input: ResNet feature map → P×P patch projection to D (P = 1 in the paper).

    x: (B, C, H, W) -> (B, D, H/(stride·P), W/(stride·P)).
    """

    def __init__(self, layers: tuple[int, ...], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(layers, in_chans)
        self.proj = nn.Conv2d(self.backbone.num_features, embed_dim, kernel_size=patch_size, stride=patch_size)

    @torch.no_grad()
    def init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        lecun_normal_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(x))
