"""BiT ResNets (Kolesnikov et al., "Big Transfer", 2020): the paper's CNN baseline and the hybrid's backbone.

One set of units serves both, as timm's resnetv2.py: weight-standardised convolutions, GroupNorm(32),
pre-activation bottlenecks for the BiT classifiers (ResNet-V2, He et al. 2016) and post-activation
bottlenecks for the ViT hybrids (section 3.1 of the ViT paper). Parameter names follow timm's ResNetV2,
so timm state dicts load as they are.

The two families pad differently, each as its reference does: BiT's PyTorch code pads symmetrically
(and its stem max-pool with zeros), google-research/vision_transformer's hybrids pad TensorFlow 'SAME'.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DropPath, Padding, StdConv2d, init_convnet_, pad_same
from .resnet_config import ResNetConfig, make_divisible


class GroupNormAct(nn.GroupNorm):
    """GroupNorm (32 groups in BiT), optionally followed by ReLU."""

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


def make_stem(in_chans: int, out_chans: int, preact: bool, padding: Padding, groups: int = 32) -> nn.Sequential:
    """7×7/2 conv, then a 3×3/2 max-pool: x (B, C, H, W) -> (B, out_chans, H/4, W/4).

    Post-activation (the hybrids): conv, GroupNorm + ReLU, 'same' max-pool. Pre-activation (BiT): the
    first unit normalises, so the conv is followed directly by BiT's pool, padded by one zero on each side.
    """
    conv = StdConv2d(in_chans, out_chans, 7, stride=2, padding=padding)
    if preact:
        return nn.Sequential(OrderedDict(conv=conv, pad=nn.ConstantPad2d(1, 0.0), pool=nn.MaxPool2d(3, 2)))
    return nn.Sequential(OrderedDict(conv=conv, norm=GroupNormAct(out_chans, num_groups=groups), pool=MaxPool2dSame()))


class Downsample(nn.Module):
    """Projection shortcut: 1×1 strided conv, plus GroupNorm after it in a post-activation unit."""

    def __init__(self, in_chans: int, out_chans: int, stride: int, padding: Padding, norm_groups: int | None) -> None:
        super().__init__()
        self.conv = StdConv2d(in_chans, out_chans, 1, stride, padding)
        self.norm = GroupNormAct(out_chans, act=False, num_groups=norm_groups) if norm_groups else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """Post-activation unit (ResNet v1.5, the hybrids): 1×1 → 3×3 (strided) → 1×1, then ReLU(x + shortcut)."""

    def __init__(
        self, in_chans: int, out_chans: int, stride: int = 1, padding: Padding = "same", groups: int = 32,
        drop_path: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        mid = make_divisible(out_chans / 4)
        needs_projection = stride != 1 or in_chans != out_chans
        self.downsample = Downsample(in_chans, out_chans, stride, padding, groups) if needs_projection else None
        self.conv1 = StdConv2d(in_chans, mid, 1, padding=padding)
        self.norm1 = GroupNormAct(mid, num_groups=groups)
        self.conv2 = StdConv2d(mid, mid, 3, stride, padding=padding)
        self.norm2 = GroupNormAct(mid, num_groups=groups)
        self.conv3 = StdConv2d(mid, out_chans, 1, padding=padding)
        self.norm3 = GroupNormAct(out_chans, act=False, num_groups=groups)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return F.relu(self.drop_path(x) + shortcut)


class PreActBottleneck(nn.Module):
    """Pre-activation unit (ResNet-V2, BiT): x + conv3(σ(conv2(σ(conv1(σ(x)))))), σ = GroupNorm + ReLU.

    The 3×3 conv is strided; the projection shortcut reads the normalised input, as BiT's.
    """

    def __init__(
        self, in_chans: int, out_chans: int, stride: int = 1, padding: Padding = "symmetric", groups: int = 32,
        drop_path: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        mid = make_divisible(out_chans / 4)
        needs_projection = stride != 1 or in_chans != out_chans
        self.downsample = Downsample(in_chans, out_chans, stride, padding, None) if needs_projection else None
        self.norm1 = GroupNormAct(in_chans, num_groups=groups)
        self.conv1 = StdConv2d(in_chans, mid, 1, padding=padding)
        self.norm2 = GroupNormAct(mid, num_groups=groups)
        self.conv2 = StdConv2d(mid, mid, 3, stride, padding=padding)
        self.norm3 = GroupNormAct(mid, num_groups=groups)
        self.conv3 = StdConv2d(mid, out_chans, 1, padding=padding)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_preact = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        x = self.conv1(x_preact)
        x = self.conv2(self.norm2(x))
        x = self.conv3(self.norm3(x))
        return self.drop_path(x) + shortcut


class ResNetStage(nn.Module):
    """`depth` units of one width; the first changes the width and applies the stage's stride."""

    def __init__(
        self, in_chans: int, out_chans: int, depth: int, stride: int, preact: bool, padding: Padding,
        groups: int = 32, drop_paths: list[float] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        unit = PreActBottleneck if preact else Bottleneck
        rates = drop_paths or [0.0] * depth
        self.blocks = nn.Sequential(*[
            unit(in_chans if i == 0 else out_chans, out_chans, stride if i == 0 else 1, padding, groups, rates[i])
            for i in range(depth)
        ])  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def make_stages(
    in_chans: int, channels: tuple[int, ...], layers: tuple[int, ...], preact: bool, padding: Padding,
    groups: int = 32, drop_path: float = 0.0,
) -> nn.Sequential:  # fmt: skip
    """The stages after the stem: stride 1 for the first, 2 for each later one. Stochastic depth grows
    linearly from 0 to `drop_path` over all units, as timm's."""
    rates = torch.linspace(0, drop_path, sum(layers), device="cpu").split(list(layers))
    stages = nn.Sequential()
    for i, (depth, out_chans) in enumerate(zip(layers, channels)):
        stage = ResNetStage(in_chans, out_chans, depth, 1 if i == 0 else 2, preact, padding, groups, rates[i].tolist())
        stages.add_module(str(i), stage)
        in_chans = out_chans
    return stages


class ResNetV2(nn.Module):
    """BiT's ResNet-V2 classifier. x: (B, C, H, W) -> logits (B, classes).

    stem → pre-activation stages → GroupNorm + ReLU → global average pool → 1×1 conv head (BiT's).
    """

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.config = cfg
        pad: Padding = "symmetric"
        self.stem = make_stem(cfg.in_chans, cfg.stem_width, preact=True, padding=pad)
        self.stages = make_stages(
            cfg.stem_width, cfg.widths, cfg.layers, True, pad, cfg.norm_groups, cfg.drop_path
        )
        self.norm = GroupNormAct(cfg.num_features, num_groups=cfg.norm_groups)
        self.head_drop = nn.Dropout(cfg.dropout)
        self.head = ConvHead(cfg.num_features, cfg.num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        """He initialisation (`init_convnet_`), the head 0 (BiT's fine-tuning head)."""
        init_convnet_(self)
        self.reset_head()

    @torch.no_grad()
    def reset_head(self, num_classes: int | None = None) -> None:
        """A new zero-initialised head, optionally for another class count."""
        cfg = self.config
        if num_classes is not None and num_classes != cfg.num_classes:
            cfg.num_classes = num_classes
            self.head = ConvHead(cfg.num_features, num_classes).to(self.norm.weight.device)
        self.head.zero_()

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"expected images of shape (B, {self.config.in_chans}, H, W), got {tuple(x.shape)}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the normalised final feature map (B, F, H/32, W/32)."""
        self._check_input(x)
        return self.norm(self.stages(self.stem(x)))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, F, h, w) -> logits (B, classes), or the pooled representation (B, F) with pre_logits."""
        x = self.head_drop(features.mean(dim=(2, 3), keepdim=True))  # (B, F, 1, 1)
        return x.flatten(1) if pre_logits else self.head(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ConvHead(nn.Module):
    """BiT's classifier, a 1×1 conv on the pooled features (timm's head.fc): (B, F, 1, 1) -> (B, K, 1, 1)."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(num_features, num_classes, 1) if num_classes else nn.Identity()

    @torch.no_grad()
    def zero_(self) -> None:
        if isinstance(self.fc, nn.Conv2d):
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)
