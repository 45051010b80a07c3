"""timm as the reference peer: the timm model of a vitkit architecture ("twin"), holding the same weights,
and the check that the two agree. The benchmark compares against it; tests and benchmarks use the twin.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .flops import Mode
from .models import ModelConfig, ResNetConfig, ViTConfig
from .precision import DTYPES, Precision, autocast

FP32_ATOL = 1e-4  # largest |vitkit - timm| accepted in fp32
# In bf16/fp16 the two libraries round differently (vitkit's explicit attention on CPU, timm's fused
# kernel): each lands about 1% from the fp32 result on ViT-S/16, and about 1% from the other. What is
# checked is that vitkit is no further from fp32 than timm is, give or take this factor.
LOW_PRECISION_FACTOR = 1.5


def _timm_resnet(cfg: ResNetConfig) -> nn.Module:
    """timm's ResNetV2 of `cfg`'s architecture, built as timm builds its resnetv2_*_bit models."""
    from timm.layers import GroupNormAct, StdConv2d
    from timm.models.resnetv2 import ResNetV2

    return ResNetV2(
        layers=list(cfg.layers), channels=cfg.channels[: len(cfg.layers)], num_classes=cfg.num_classes,
        in_chans=cfg.in_chans, width_factor=cfg.width_factor, stem_chs=cfg.stem_chs, stem_type="fixed",
        conv_layer=partial(StdConv2d, eps=1e-8), norm_layer=partial(GroupNormAct, num_groups=cfg.norm_groups),
        drop_rate=cfg.dropout, drop_path_rate=cfg.drop_path,
    )  # fmt: skip


def timm_architecture(cfg: ModelConfig) -> nn.Module:
    """timm's model of `cfg`'s architecture: a VisionTransformer or a ResNetV2."""
    try:
        import timm  # noqa: F401
    except ImportError:
        raise ValueError("--compare timm needs timm: pip install timm") from None
    return _timm_resnet(cfg) if isinstance(cfg, ResNetConfig) else _timm_vit(cfg)


def _timm_vit(cfg: ViTConfig) -> nn.Module:
    """timm's VisionTransformer of `cfg`'s architecture, its weights left uninitialised."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    if cfg.is_hybrid or cfg.representation_size:
        what = "a hybrid" if cfg.is_hybrid else "a ViT with a pre-logits layer"
        raise ValueError(
            f"--compare timm covers ResNets and plain ViTs without a pre-logits layer; {cfg.name} is {what}"
        )
    return TimmViT(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=cfg.num_classes,
        global_pool="token" if cfg.pool == "token" else "avg", fc_norm=False,  # vitkit's gap pools after the norm
        embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_dim / cfg.embed_dim,
        qkv_bias=cfg.qkv_bias, class_token=cfg.class_token, dynamic_img_size=cfg.dynamic_img_size,
        patch_drop_rate=cfg.patch_drop,
        norm_layer=partial(nn.LayerNorm, eps=cfg.norm_eps), weight_init="skip",
    )  # fmt: skip


def timm_twin(model: nn.Module) -> nn.Module:
    """timm's model of the same architecture, holding `model`'s weights (same device/dtype)."""
    p = next(model.parameters())
    with torch.device("meta"):
        twin = timm_architecture(model.config)
    twin.load_state_dict(model.state_dict(), assign=True)
    return twin.to(device=p.device, dtype=p.dtype).train(model.training)


def check_agreement(
    model: nn.Module, precision: Precision, mode: Mode, device: torch.device, batch_size: int = 4
) -> float:
    """Run `model` and its timm twin as the benchmark runs them (low-precision weights for inference,
    fp32 weights under autocast for training) on the same images; compare tokens after the final norm
    and logits. `model` is moved (and cast) in place. Returns max |vitkit - timm|. Raises if that exceeds
    1e-4 in fp32; in bf16/fp16, if vitkit's relative distance to the fp32 result is more than
    LOW_PRECISION_FACTOR times timm's."""
    model = model.to(device).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch_size, model.config.in_chans, *model.config.img_size, generator=g).to(device)

    def outputs(net: nn.Module, prec: Precision) -> list[torch.Tensor]:
        with torch.inference_mode(), autocast(device, prec if mode == "train" else "fp32"):
            dtype = DTYPES[prec] if mode == "infer" and prec != "fp32" else torch.float32
            tokens = net.forward_features(x.to(dtype))  # after the final norm: (B, T, D) tokens or a (B, C, h, w) map
            return [tokens.float(), net.forward_head(tokens).float()]

    reference = outputs(model, "fp32") if precision != "fp32" else None
    if mode == "infer" and precision != "fp32":
        model = model.to(DTYPES[precision])
    twin = timm_twin(model).eval()
    ours, theirs = outputs(model, precision), outputs(twin, precision)
    worst = max((a - b).abs().max().item() for a, b in zip(ours, theirs))
    if precision == "fp32":
        if not worst <= FP32_ATOL:
            name = model.config.name
            raise RuntimeError(f"vitkit and timm disagree on {name} (fp32, {mode}): max |diff| {worst:.3g}")
        return worst
    assert reference is not None
    ours_rel, theirs_rel = (
        max(((o - r).norm() / r.norm().clamp_min(1e-12)).item() for o, r in zip(outs, reference))
        for outs in (ours, theirs)
    )
    if not ours_rel <= LOW_PRECISION_FACTOR * theirs_rel + 1e-3:
        raise RuntimeError(
            f"vitkit is further from fp32 than timm on {model.config.name} ({precision}, {mode}): relative "
            f"{ours_rel:.3g} vs {theirs_rel:.3g}"
        )
    return worst
