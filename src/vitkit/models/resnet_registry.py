"""Named BiT ResNet-V2 classifiers: timm's names, BiT's paper names, and small models for CPU work."""

from __future__ import annotations

from typing import Any

# Units per stage of BiT's depths (He et al. 2016, Table 1).
DEPTHS: dict[int, tuple[int, ...]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# (depth, width factor) of every BiT model that timm registers; the weights are BiT-M's, ImageNet-21k.
_BIT = [(50, 1), (50, 3), (101, 1), (101, 3), (152, 2), (152, 4)]
IN21K_CLASSES = 21843

# Their preprocessing is the CPU ViTs' (bicubic, no centre crop), so that the two families see the same images.
_CPU = {
    # A tiny model for tests, like vit_test_patch4_16: 16 px, 3 channels, 10 classes.
    "resnetv2_test_16": dict(layers=(1, 1), channels=(32, 64), stem_chs=16, norm_groups=8, img_size=16,
                             num_classes=10, crop_pct=1.0, interpolation="bicubic"),
    # The Fashion-MNIST baseline, matched in parameters to vit_fashion_patch4_28: 800,874 vs 805,130
    # In FLOPs it is 4.6x cheaper, 17 M vs 79 M an image (torch.utils.flop_counter): its feature maps
    # shrink, the ViT's 49 tokens do not.
    # The stem's stride 4 gives the ViT's 7x7 grid of 4x4-pixel positions.
    "resnetv2_fashion_28": dict(layers=(2, 3, 2), channels=(128, 256, 448), stem_chs=32, norm_groups=16,
                                img_size=28, in_chans=1, num_classes=10, mean=(0.5,), std=(0.5,), crop_pct=1.0,
                                interpolation="bicubic"),
}  # fmt: skip

RESNET_MODELS: dict[str, dict[str, Any]] = {
    **{
        f"resnetv2_{depth}x{wf}_bit": dict(layers=DEPTHS[depth], width_factor=wf, num_classes=IN21K_CLASSES)
        for depth, wf in _BIT
    },
    **_CPU,
}
# Default published weights: BiT-M, timm's Hub repositories timm/<name>.goog_in21k.
RESNET_PRETRAINED_TAGS: dict[str, str] = {f"resnetv2_{depth}x{wf}_bit": "goog_in21k" for depth, wf in _BIT}
# BiT's names (Kolesnikov et al. 2020) and the ViT paper's ("ResNet152x4", Table 2).
RESNET_ALIASES: dict[str, str] = {
    **{f"BiT-M-R{depth}x{wf}": f"resnetv2_{depth}x{wf}_bit" for depth, wf in _BIT},
    **{f"ResNet{depth}x{wf}": f"resnetv2_{depth}x{wf}_bit" for depth, wf in _BIT},
}
