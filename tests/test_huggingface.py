"""Hugging Face transformers ViT <-> vitkit: the key map (transformers v4 and v5 names), config.json,
and logits parity against transformers' own ViT with random weights."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
import transformers
from torch import nn

import vitkit
from vitkit.checkpoints.huggingface import config_from_hf, config_to_hf, convert, export
from vitkit.models import VisionTransformer

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
    num_labels=5,
)  # fmt: skip

# transformers v5 -> v4 names: the inverse of transformers' own renaming of v4 files
# (transformers/conversion_mapping.py, entry "ViTModel"), written out apart from vitkit's table.
V5_TO_V4 = [
    (r"^(vit\.)?layers\.", r"\1encoder.layer."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]


def to_v4(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in V5_TO_V4:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Noise on every parameter, the zero-initialised classifier included, so that parity can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def hf_config(**overrides: Any) -> transformers.ViTConfig:
    return transformers.ViTConfig(**{**TINY, **overrides})


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def vitkit_from(peer: nn.Module, state: dict[str, torch.Tensor] | None = None, **overrides: Any) -> VisionTransformer:
    """The vitkit model of `peer`'s config.json, loaded strictly from its (or the given) state dict."""
    cfg = config_from_hf(peer.config.to_dict())
    cfg = cfg.replace(**overrides) if overrides else cfg
    model = VisionTransformer(cfg).eval()
    model.load_state_dict(convert(state if state is not None else peer.state_dict(), cfg))
    return model


# ---- key names -----------------------------------------------------------------------------------
def test_transformers_v5_writes_the_names_vitkit_reads():
    keys = set(transformers.ViTForImageClassification(hf_config()).state_dict())
    assert {
        "vit.layers.0.attention.q_proj.weight", "vit.layers.0.attention.o_proj.weight",
        "vit.layers.0.mlp.fc1.weight", "vit.layers.0.layernorm_before.weight",
        "vit.embeddings.patch_embeddings.projection.weight", "classifier.weight",
    } <= keys  # fmt: skip


def test_v4_names_convert_to_the_same_tensors_as_v5_names():
    v5 = randomise(transformers.ViTForImageClassification(hf_config())).state_dict()
    v4 = to_v4(v5)
    assert "vit.encoder.layer.1.attention.attention.query.weight" in v4 and not any("q_proj" in k for k in v4)
    cfg = config_from_hf(hf_config().to_dict())
    from_v4, from_v5 = convert(v4, cfg), convert(v5, cfg)
    assert from_v4.keys() == from_v5.keys() == VisionTransformer(cfg).state_dict().keys()
    for key in from_v5:
        assert torch.equal(from_v4[key], from_v5[key]), key


# ---- parity --------------------------------------------------------------------------------------
@pytest.mark.parametrize("naming", ["v5", "v4"])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_classifier_logits_match_transformers(images, naming, qkv_bias):
    peer = randomise(transformers.ViTForImageClassification(hf_config(qkv_bias=qkv_bias)))
    state = peer.state_dict() if naming == "v5" else to_v4(peer.state_dict())
    model = vitkit_from(peer, state)
    with torch.no_grad():
        torch.testing.assert_close(model(images), peer(pixel_values=images).logits, atol=1e-4, rtol=0)


def test_vit_model_without_prefix_maps_the_pooler_to_the_representation_layer(images):
    peer = randomise(transformers.ViTModel(hf_config(), add_pooling_layer=True))
    assert not any(k.startswith("vit.") for k in peer.state_dict())
    model = vitkit_from(peer, representation_size=TINY["hidden_size"], num_classes=0)
    with torch.no_grad():
        out = peer(pixel_values=images)
        torch.testing.assert_close(model.forward_features(images), out.last_hidden_state, atol=1e-4, rtol=0)
        torch.testing.assert_close(model(images), out.pooler_output, atol=1e-4, rtol=0)


def test_masked_image_modelling_parts_are_ignored():
    peer = transformers.ViTForMaskedImageModeling(hf_config(encoder_stride=8))
    assert "vit.embeddings.mask_token" in peer.state_dict()
    vitkit_from(peer, num_classes=0)


def test_layer_norm_eps_1e12_is_carried_over(images):
    peer = randomise(transformers.ViTForImageClassification(hf_config()))
    # embeddings of variance ~1e-8: eps 1e-6 would dominate the first LayerNorm's variance
    with torch.no_grad():
        for p in peer.vit.embeddings.parameters():
            p.mul_(1e-4)
    model = vitkit_from(peer)
    assert model.config.norm_eps == 1e-12 == config_from_hf({"model_type": "vit"}).norm_eps
    assert {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)} == {1e-12}
    wrong_eps = vitkit_from(peer, norm_eps=1e-6)
    with torch.no_grad():
        expected = peer(pixel_values=images).logits
        torch.testing.assert_close(model(images), expected, atol=1e-4, rtol=0)
        assert (wrong_eps(images) - expected).abs().max() > 1e-2


# ---- config.json ---------------------------------------------------------------------------------
def test_config_fields_follow_config_json():
    cfg = config_from_hf(hf_config(qkv_bias=False, image_size=[32, 48], hidden_dropout_prob=0.1).to_dict())
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_dim) == (32, 2, 2, 64)
    assert (cfg.img_size, cfg.patch_size, cfg.num_classes, cfg.qkv_bias, cfg.dropout) == ((32, 48), 8, 5, False, 0.1)
    base = config_from_hf({**hf_config().to_dict(), "architectures": ["ViTModel"]})
    assert base.num_classes == 0  # ViTModel has no classifier


@pytest.mark.parametrize(
    "key, value",
    [
        ("num_hidden_layers", 10**6), ("hidden_size", 10**6), ("hidden_size", "32"), ("image_size", 10**7),
        ("model_type", "bert"), ("hidden_act", "gelu_new"), ("layer_norm_eps", 0.0), ("qkv_bias", 1),
        ("patch_size", [8, 4]), ("num_labels", 10**9),
    ],
)  # fmt: skip
def test_config_from_hf_refuses_bad_values_naming_the_key(key, value):
    d = {**hf_config().to_dict(), key: value}
    if key == "num_labels":  # otherwise id2label decides the class count
        del d["id2label"], d["label2id"]
    with pytest.raises(ValueError, match=key) as info:
        config_from_hf(d)
    assert "\n" not in str(info.value)


# ---- export (vitkit -> transformers) ------------------------------------------------------------
@pytest.mark.parametrize("head", ["classifier", "pooler"])
def test_export_loads_strictly_into_transformers_with_the_same_outputs(images, head):
    cfg = config_from_hf(hf_config().to_dict())
    if head == "pooler":
        cfg = cfg.replace(num_classes=0, representation_size=16)
    model = randomise(VisionTransformer(cfg))
    hf_cfg = transformers.ViTConfig.from_dict(config_to_hf(cfg))
    peer = (transformers.ViTForImageClassification(hf_cfg) if cfg.num_classes else transformers.ViTModel(hf_cfg)).eval()
    peer.load_state_dict(export(model.state_dict(), cfg))
    with torch.no_grad():
        out = peer(pixel_values=images)
        expected = out.logits if cfg.num_classes else out.pooler_output
        torch.testing.assert_close(model(images), expected, atol=1e-4, rtol=0)


def test_export_then_convert_is_the_identity():
    cfg = config_from_hf(hf_config().to_dict())
    assert config_from_hf(config_to_hf(cfg)) == cfg
    state = randomise(VisionTransformer(cfg)).state_dict()
    back = convert(export(state, cfg), cfg)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_export_refuses_what_transformers_cannot_express():
    cfg = config_from_hf(hf_config().to_dict()).replace(pool="gap")
    with pytest.raises(ValueError, match="pool='gap'"):
        config_to_hf(cfg)


def test_a_saved_transformers_directory_loads_with_vitkit_load(tmp_path, images):
    peer = randomise(transformers.ViTForImageClassification(hf_config()))
    peer.save_pretrained(tmp_path)
    model = vitkit.load(tmp_path).eval()
    assert model.config.norm_eps == 1e-12 and model.config.num_classes == 5
    with torch.no_grad():
        torch.testing.assert_close(model(images), peer(pixel_values=images).logits, atol=1e-4, rtol=0)
