"""The hybrid of section 3.1: a BiT-style ResNet whose feature map is the token sequence.

The backbone is built from the units of `vitkit.models.resnet`: post-activation bottlenecks with
TensorFlow 'same' padding, as in google-research/vision_transformer. Parameter names follow timm's.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import init_convnet_, lecun_normal_
from .resnet import make_stages, make_stem

STAGE_CHANNELS = (256, 512, 1024, 2048)
STEM_CHANNELS = 64


class ResNetBackbone(nn.Module):
    """Stem (7×7/2 conv, GroupNorm, ReLU, 3×3/2 max-pool) and `layers` bottleneck stages.

    (3, 4, 9): R50 with stage 4's units moved into stage 3, stride 16, 1024 channels;
    (2, 2, 2, 2): R26 and (3, 4, 6, 3): R50, stride 32, 2048 channels; (): the stem only, stride 4.
    x: (B, C, H, W) -> (B, num_features, H/stride, W/stride).
    """

    def __init__(self, layers: tuple[int, ...], in_chans: int = 3) -> None:
        super().__init__()
        self.stem = make_stem(in_chans, STEM_CHANNELS, preact=False, padding="same")
        self.stages = make_stages(STEM_CHANNELS, STAGE_CHANNELS, layers, preact=False, padding="same")
        self.num_features = STAGE_CHANNELS[len(layers) - 1] if layers else STEM_CHANNELS

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
        init_convnet_(self)
        lecun_normal_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(x))
