"""The registry: timm's names with timm's architectures, the paper's aliases, overrides and config checks."""

from __future__ import annotations

import json
from typing import Any

import pytest
import timm
import torch

import vitkit
from vitkit import ViTConfig
from vitkit.models.registry import DESCENDANTS

# The ViTs and their descendants; the ResNets have their own tests (test_resnet.py).
SHARED_WITH_TIMM = [
    name for name in vitkit.list_models()
    if name in set(timm.list_models()) and vitkit.get_config(name).family != "resnet"
]


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_covers_the_timm_names_of_the_design() -> None:
    assert len(SHARED_WITH_TIMM) == 27 + len(DESCENDANTS)
    assert set(DESCENDANTS) <= set(SHARED_WITH_TIMM)
    assert {"vit_huge_patch14_224", "vit_base_r50_s16_384", "vit_tiny_r_s16_p8_224"} <= set(SHARED_WITH_TIMM)


@pytest.mark.parametrize("name", SHARED_WITH_TIMM)
def test_parameter_count_equals_timm(name: str) -> None:
    with torch.device("meta"):
        assert num_params(vitkit.create_model(name)) == num_params(timm.create_model(name))


@pytest.mark.parametrize(
    "alias, name",
    [
        ("ViT-Ti/16", "vit_tiny_patch16_224"),
        ("ViT-S/32", "vit_small_patch32_224"),
        ("ViT-B/16", "vit_base_patch16_224"),
        ("ViT-B/8", "vit_base_patch8_224"),
        ("ViT-L/16", "vit_large_patch16_224"),
        ("ViT-H/14", "vit_huge_patch14_224"),
        ("R50+ViT-B/16", "vit_base_r50_s16_224"),
        ("R26+ViT-S/32", "vit_small_r26_s32_224"),
        ("R50+ViT-L/32", "vit_large_r50_s32_224"),
        ("R+ViT-Ti/16", "vit_tiny_r_s16_p8_224"),
    ],
)
def test_paper_alias_resolves_to_timm_name(alias: str, name: str) -> None:
    assert vitkit.get_config(alias) == vitkit.get_config(name)
    assert vitkit.get_config(alias).name == name


def test_list_models_includes_aliases_only_when_asked() -> None:
    names, everything = vitkit.list_models(), vitkit.list_models(include_aliases=True)
    assert "vit_base_patch16_224" in names and "ViT-B/16" not in names
    assert {"ViT-B/16", "R50+ViT-B/16", "ViT-H/14", "R+ViT-Ti/16"} <= set(everything)
    assert set(names) <= set(everything)


def test_timm_pretrained_tag_is_ignored() -> None:
    assert vitkit.get_config("vit_base_patch16_224.augreg2_in21k_ft_in1k") == vitkit.get_config("vit_base_patch16_224")


@pytest.mark.parametrize("name", ["vit_base_patch16_224.mae", "vit_huge_patch14_224.mae", "vit_small_patch16_224.dino"])
def test_self_supervised_tags_give_timms_pretrained_config(name: str) -> None:
    """timm's pretrained_cfg of MAE and DINO weights: no classifier, ImageNet statistics."""
    cfg, timm_cfg = vitkit.get_config(name), timm.models.get_pretrained_cfg(name)
    assert (cfg.num_classes, cfg.mean, cfg.std) == (timm_cfg.num_classes, timm_cfg.mean, timm_cfg.std)
    assert vitkit.models.registry.default_hub_id(name) == f"timm/{name}"


@pytest.mark.parametrize("name", sorted(DESCENDANTS))
def test_descendants_take_timms_pretrained_config_and_hub_repository(name: str) -> None:
    cfg = vitkit.get_config(name)
    hub_id = vitkit.models.registry.default_hub_id(name)
    timm_cfg = timm.models.get_pretrained_cfg(hub_id.removeprefix("timm/"))
    assert timm_cfg.hf_hub_id == hub_id  # timm downloads the same repository
    assert (cfg.num_classes, (cfg.in_chans, *cfg.img_size)) == (timm_cfg.num_classes, timm_cfg.input_size)
    assert (cfg.mean, cfg.std, cfg.crop_pct) == (timm_cfg.mean, timm_cfg.std, timm_cfg.crop_pct)


def test_unknown_name_suggests_a_close_match() -> None:
    with pytest.raises(ValueError, match="did you mean vit_base_patch16_224"):
        vitkit.create_model("vit_bse_patch16_224")


def test_table_1_widths() -> None:
    expected = {  # layers, D, MLP, heads
        "ViT-Ti/16": (12, 192, 768, 3), "ViT-S/16": (12, 384, 1536, 6), "ViT-B/16": (12, 768, 3072, 12),
        "ViT-L/16": (24, 1024, 4096, 16), "ViT-H/14": (32, 1280, 5120, 16),
    }  # fmt: skip
    for alias, row in expected.items():
        cfg = vitkit.get_config(alias)
        assert (cfg.depth, cfg.embed_dim, cfg.mlp_dim, cfg.num_heads) == row


def test_overrides_apply() -> None:
    model = vitkit.create_model("vit_tiny_patch16_224", num_classes=3, img_size=64, depth=2)
    assert model.config.num_classes == 3 and model.config.img_size == (64, 64)
    assert model.head.out_features == 3 and len(model.blocks) == 2
    assert model.pos_embed.shape == (1, 1 + 16, 192)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_heads=5), "does not divide"),
        (dict(img_size=40), "not divisible"),
        (dict(depth=10**6), "depth"),
        (dict(embed_dim=-192), "embed_dim"),
        (dict(num_classes=-1), "num_classes"),
        (dict(dropout=-0.1), "dropout"),
        (dict(img_size=-16), "img_size"),
    ],
)
def test_bad_config_raises_one_line_before_allocation(
    overrides: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_build(*args: Any) -> None:
        raise AssertionError("the model was built before the config was checked")

    monkeypatch.setattr(vitkit, "VisionTransformer", must_not_build)
    with pytest.raises(ValueError, match=message) as err:
        vitkit.create_model("vit_tiny_patch16_224", **overrides)
    assert "\n" not in str(err.value)


def test_unknown_config_key_raises() -> None:
    with pytest.raises(ValueError, match="hidden_size"):
        ViTConfig.from_dict({"hidden_size": 768})


@pytest.mark.parametrize("name", ["vit_base_patch16_384", "vit_base_r50_s16_224", "vit_tiny_r_s16_p8_224"])
def test_config_round_trips_through_dict_and_json(name: str) -> None:
    cfg = vitkit.get_config(name, representation_size=64, pool="gap", img_size=(384, 192))
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    assert ViTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_default_published_weights_follow_timms_hub_repositories() -> None:
    from vitkit.models.registry import default_hub_id

    assert default_hub_id("ViT-B/16") == "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert default_hub_id("vit_base_patch16_224.augreg_in21k") == "timm/vit_base_patch16_224.augreg_in21k"
    assert default_hub_id("R50+ViT-B/16") == "timm/vit_base_r50_s16_224.orig_in21k"
    with pytest.raises(ValueError, match="no published weights are known for 'vit_nano_patch4_28'"):
        default_hub_id("vit_nano_patch4_28")
