"""The paper's descendants (DeiT, DeiT III, DINOv2 with and without registers, MAE, DINO): each option
against timm's VisionTransformer, each family's checkpoints at logit parity with timm and, where it has
the model, transformers; random weights plus noise on every tensor so that parity can fail."""

from __future__ import annotations

import re
from typing import Any

import pytest
import timm
import torch
import transformers
from safetensors.torch import save_file
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

import vitkit
from vitkit.analysis import analyze, attention_rollout, mean_attention_distance, pos_embed_similarity
from vitkit.analysis.attention import excluded_tokens
from vitkit.analysis.rollout import rollout
from vitkit.checkpoints.formats import CheckpointError
from vitkit.evaluate.fewshot import extract_features
from vitkit.models.posembed import sincos_pos_embed
from vitkit.train.loop import _loss

# A narrow model that timm and vitkit both build from the overrides (timm's MLP is 4 x embed_dim).
SMALL = dict(depth=2, num_classes=5, embed_dim=64, num_heads=2)
VITKIT_SMALL = dict(SMALL, mlp_dim=256)
# (registry name, overrides that vitkit and timm both take): every family at a small size.
FAMILIES: list[tuple[str, dict[str, Any]]] = [
    ("deit_tiny_patch16_224", dict(img_size=32)),
    ("deit_tiny_distilled_patch16_224", dict(img_size=32)),
    ("deit3_small_patch16_224", dict(img_size=32)),
    ("vit_small_patch14_dinov2", dict(img_size=56)),
    ("vit_small_patch14_reg4_dinov2", dict(img_size=56)),
    ("vit_base_patch16_224.mae", dict(img_size=32, depth=1)),
    ("vit_small_patch16_224.dino", dict(img_size=32)),
]
# vitkit's option -> timm's for the same architecture.
OPTIONS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (dict(pool="gap", fc_norm=True), dict(global_pool="avg")),  # MAE fine-tuning
    (dict(pool="gap", fc_norm=True, class_token=False, reg_tokens=2), dict(global_pool="avg", class_token=False,
                                                                         reg_tokens=2)),
    (dict(reg_tokens=3), dict(reg_tokens=3)),  # registers with their own position embeddings
    (dict(reg_tokens=3, no_embed_class=True, init_values=0.1), dict(reg_tokens=3, no_embed_class=True,
                                                                    init_values=0.1)),
]  # fmt: skip


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Noise on every parameter (zero heads, LayerScale, fixed sin-cos tables included); eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def images(size: int | tuple[int, int], n: int = 2) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(1))


def timm_twin(name: str, **kwargs: Any) -> nn.Module:
    return randomise(timm.create_model(name.split(".")[0], **{**SMALL, **kwargs}))


def vitkit_from(path: Any, name: str, **kwargs: Any) -> vitkit.VisionTransformer:
    model = vitkit.create_model(name, **{**VITKIT_SMALL, **kwargs}).eval()
    vitkit.load_checkpoint(model, path)
    return model


# ---- the options, each against timm ------------------------------------------------------------------
def test_options_are_off_by_default_and_the_paper_model_is_unchanged():
    cfg = vitkit.get_config("vit_base_patch16_224")
    assert (cfg.fc_norm, cfg.reg_tokens, cfg.no_embed_class, cfg.init_values, cfg.distilled, cfg.pos_embed) == (
        False, 0, False, None, False, "learn",
    )  # fmt: skip
    keys = set(vitkit.create_model("vit_test_patch4_16").state_dict())
    assert not any(k.startswith(("fc_norm", "reg_token", "dist_token", "head_dist")) or ".ls" in k for k in keys)


@pytest.mark.parametrize("ours, theirs", OPTIONS, ids=["fc_norm", "fc_norm_no_class_token", "registers", "ls_no_embed"])
def test_option_matches_timm(tmp_path, ours, theirs):
    peer = timm_twin("vit_small_patch16_224", img_size=32, **theirs)
    save_file(peer.state_dict(), tmp_path / "w.safetensors")
    model = vitkit_from(tmp_path / "w.safetensors", "vit_small_patch16_224", img_size=32, **ours)
    with torch.no_grad():
        torch.testing.assert_close(model(images(32)), peer(images(32)), atol=1e-4, rtol=0)


# ---- every family: timm state dicts ------------------------------------------------------------------
@pytest.mark.parametrize("name, kwargs", FAMILIES, ids=[n for n, _ in FAMILIES])
def test_timm_checkpoint_of_each_family_gives_timms_logits(tmp_path, name, kwargs):
    peer = timm_twin(name, **kwargs)
    torch.save(peer.state_dict(), tmp_path / "w.pth")
    model = vitkit_from(tmp_path / "w.pth", name, **kwargs)
    x = images(kwargs["img_size"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), peer(x), atol=1e-4, rtol=0)
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(features, peer.forward_head(peer.forward_features(x), pre_logits=True),
                                   atol=1e-4, rtol=0)  # fmt: skip


def test_distilled_model_returns_both_heads_in_training_and_their_mean_in_eval(tmp_path):
    """DeiT (timm's VisionTransformerDistilled with set_distilled_training)."""
    peer = timm_twin("deit_tiny_distilled_patch16_224", img_size=32)
    save_file(peer.state_dict(), tmp_path / "w.safetensors")
    model = vitkit_from(tmp_path / "w.safetensors", "deit_tiny_distilled_patch16_224", img_size=32)
    peer.set_distilled_training(True)
    x = images(32)
    with torch.no_grad():
        cls_logits, dist_logits = model.train()(x)
        peer_cls, peer_dist = peer.train()(x)
        torch.testing.assert_close(cls_logits, peer_cls, atol=1e-4, rtol=0)
        torch.testing.assert_close(dist_logits, peer_dist, atol=1e-4, rtol=0)
        torch.testing.assert_close(model.eval()(x), (cls_logits + dist_logits) / 2, atol=1e-6, rtol=0)


def test_training_loss_of_a_distilled_model_trains_both_heads_on_the_label():
    a, b, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    expected = (nn.functional.cross_entropy(a, y) + nn.functional.cross_entropy(b, y)) / 2
    torch.testing.assert_close(_loss((a, b), y, 0.0), expected)


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "deit_tiny_distilled_patch16_224",
                                  "deit3_small_patch16_224", "vit_small_patch14_reg4_dinov2"])  # fmt: skip
def test_position_embeddings_at_another_resolution_match_timms_resampling(tmp_path, name):
    """timm resamples the patch part of pos_embed and keeps the prefix tokens' rows, where they have any
    (none with no_embed_class): vitkit loads a 56-px checkpoint into a 84-px model as timm's filter does."""
    patch = vitkit.get_config(name).patch_size
    small, large = 4 * patch, 6 * patch
    peer = timm_twin(name, img_size=small)
    save_file(peer.state_dict(), tmp_path / "w.safetensors")
    peer_large = timm.create_model(name, **SMALL, img_size=large).eval()
    peer_large.load_state_dict(checkpoint_filter_fn(peer.state_dict(), peer_large))
    model = vitkit_from(tmp_path / "w.safetensors", name, img_size=large)
    with torch.no_grad():
        torch.testing.assert_close(model(images(large)), peer_large(images(large)), atol=1e-4, rtol=0)


# ---- the original releases that timm converts ----------------------------------------------------------
def test_original_dinov2_with_registers_checkpoint_converts_as_timm(tmp_path):
    """facebookresearch/dinov2 keeps register_tokens, a mask_token and E_pos over the class token too."""
    peer = timm.create_model("vit_small_patch14_reg4_dinov2", **SMALL, img_size=56).eval()
    g = torch.Generator().manual_seed(2)
    original = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in peer.state_dict().items()}
    D = original["cls_token"].shape[-1]
    original["register_tokens"] = original.pop("reg_token")
    original["pos_embed"] = torch.randn(1, 1 + 16, D, generator=g) * 0.1
    original["mask_token"] = torch.zeros(1, D)
    torch.save(original, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    peer.load_state_dict(checkpoint_filter_fn(dict(original), peer))
    model = vitkit_from(tmp_path / "dinov2_vits14_reg4_pretrain.pth", "vit_small_patch14_reg4_dinov2", img_size=56)
    with torch.no_grad():
        torch.testing.assert_close(model(images(56)), peer(images(56)), atol=1e-4, rtol=0)


def test_original_deit3_layerscale_names_are_renamed(tmp_path):
    peer = timm_twin("deit3_small_patch16_224", img_size=32)
    original = {k.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2"): v
                for k, v in peer.state_dict().items()}  # fmt: skip
    assert "blocks.0.gamma_1" in original
    torch.save(original, tmp_path / "deit_3_small_224_1k.pth")
    model = vitkit_from(tmp_path / "deit_3_small_224_1k.pth", "deit3_small_patch16_224", img_size=32)
    with torch.no_grad():
        torch.testing.assert_close(model(images(32)), peer(images(32)), atol=1e-4, rtol=0)


# ---- transformers ----------------------------------------------------------------------------------------
HF_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14)


def _hf_dir(tmp_path, peer: nn.Module) -> Any:
    randomise(peer).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def test_transformers_deit_with_teacher_directory_gives_its_logits(tmp_path):
    peer = transformers.DeiTForImageClassificationWithTeacher(
        transformers.DeiTConfig(**HF_SMALL, intermediate_size=64, num_labels=5))
    model = vitkit.load(_hf_dir(tmp_path, peer)).eval()
    assert model.config.distilled and model.config.num_classes == 5
    with torch.no_grad():
        torch.testing.assert_close(model(images(56)), peer(images(56)).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("registers", [0, 4])
def test_transformers_dinov2_directory_gives_its_tokens_and_pooled_output(tmp_path, registers):
    """Dinov2Model / Dinov2WithRegistersModel: last_hidden_state and pooler_output (the normed class token)."""
    if registers:
        peer = transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(**HF_SMALL, num_register_tokens=registers))
    else:
        peer = transformers.Dinov2Model(transformers.Dinov2Config(**HF_SMALL, layerscale_value=0.5))
    model = vitkit.load(_hf_dir(tmp_path, peer)).eval()
    assert model.config.reg_tokens == registers and model.config.num_classes == 0
    with torch.no_grad():
        out = peer(images(56))
        tokens = model.forward_features(images(56))
        torch.testing.assert_close(tokens, out.last_hidden_state, atol=1e-4, rtol=0)
        torch.testing.assert_close(model(images(56)), out.pooler_output, atol=1e-4, rtol=0)


def test_transformers_vit_mae_directory_gives_its_unmasked_encoder_output(tmp_path):
    """ViTMAEModel with no masking; noise = 0, 1, 2, ... keeps the patches in order."""
    peer = transformers.ViTMAEModel(transformers.ViTMAEConfig(**HF_SMALL, intermediate_size=64, mask_ratio=0.0))
    model = vitkit.load(_hf_dir(tmp_path, peer)).eval()
    with torch.no_grad():
        out = peer(images(56), noise=torch.arange(16.0).expand(2, 16))
        torch.testing.assert_close(model.forward_features(images(56)), out.last_hidden_state, atol=1e-4, rtol=0)


# ---- sin-cos position embeddings -------------------------------------------------------------------------
def test_sincos_table_is_maes_as_transformers_builds_it():
    """transformers' ViTMAEModel initialises its frozen E_pos to MAE's table (class row zero)."""
    cfg = transformers.ViTMAEConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    image_size=40, patch_size=8)  # fmt: skip
    embeddings = transformers.ViTMAEModel(cfg).embeddings
    embeddings.patch_embeddings.projection._is_hf_initialized = False  # transformers v5 defers the init
    embeddings.initialize_weights()
    mae = transformers.ViTMAEModel(cfg)
    mae.embeddings = embeddings
    torch.testing.assert_close(sincos_pos_embed((5, 5), 32), mae.embeddings.position_embeddings[:, 1:].detach(),
                               atol=1e-6, rtol=0)  # fmt: skip


def test_sincos_model_adds_the_fixed_table_and_saves_no_position_weights(tmp_path):
    model = vitkit.create_model("vit_test_patch4_16", pos_embed="sincos", dynamic_img_size=True).eval()
    assert "pos_embed" not in model.state_dict() and not any("pos_embed" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(model.pos_embed, sincos_pos_embed((4, 4), 32))
    with torch.no_grad():
        z = model.embed(torch.zeros(1, 3, 24, 16))  # another grid: the table of that grid
    patch = model.patch_embed.proj.bias
    torch.testing.assert_close(z[0, 1:], patch + sincos_pos_embed((6, 4), 32)[0])
    vitkit.save(model, tmp_path / "m.safetensors")
    with torch.no_grad():
        x = images(16)
        torch.testing.assert_close(vitkit.load(tmp_path / "m.safetensors").eval()(x), model(x), atol=0, rtol=0)


# ---- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, key, feature", [
    (dict(qk_norm=True), r"'blocks\.0\.attn\.[qk]_norm\.(weight|bias)'", "QK normalisation"),
    (dict(pre_norm=True), r"'norm_pre\.(weight|bias)'", "pre_norm"),
    (dict(global_pool="map"), r"'attn_pool\.\w+", "attention pooling"),
])  # fmt: skip
def test_checkpoint_with_an_unsupported_feature_is_a_one_line_error_naming_key_and_feature(
    tmp_path, kwargs, key, feature
):
    save_file(timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, **kwargs).state_dict(),
              tmp_path / "w.safetensors")  # fmt: skip
    model = vitkit.create_model("vit_tiny_patch16_224", img_size=32, depth=1)
    with pytest.raises(CheckpointError, match=feature) as info:
        vitkit.load_checkpoint(model, tmp_path / "w.safetensors")
    assert re.search(key, str(info.value)) and "w.safetensors" in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_needing_an_option_names_the_key_and_the_option(tmp_path):
    save_file(timm_twin("vit_small_patch16_224", img_size=32, global_pool="avg").state_dict(), tmp_path / "w.st")
    model = vitkit.create_model("vit_small_patch16_224", img_size=32, **VITKIT_SMALL)
    with pytest.raises(CheckpointError, match=r"'fc_norm\.(weight|bias)'.*fc_norm=True"):
        vitkit.load_checkpoint(model, tmp_path / "w.st")


@pytest.mark.parametrize("peer, feature", [
    (lambda: transformers.Dinov2Model(transformers.Dinov2Config(**HF_SMALL, use_swiglu_ffn=True)), "use_swiglu_ffn"),
    (lambda: transformers.DeiTForImageClassification(transformers.DeiTConfig(**HF_SMALL, intermediate_size=64)),
     "DeiTForImageClassification"),
])  # fmt: skip
def test_transformers_model_with_an_unsupported_feature_is_a_one_line_error(tmp_path, peer, feature):
    with pytest.raises(ValueError, match=feature) as info:
        vitkit.load(_hf_dir(tmp_path, peer()))
    assert "\n" not in str(info.value)


# ---- analyses and few-shot ------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, note", [
    (dict(reg_tokens=4, no_embed_class=True), "class token and 4 registers excluded"),
    (dict(distilled=True), "class token and distillation token excluded"),
])  # fmt: skip
def test_analyses_use_the_patch_grid_only_and_say_which_tokens_they_leave_out(tmp_path, overrides, note):
    torch.manual_seed(0)
    model = randomise(vitkit.create_model("vit_test_patch4_16", **overrides))
    x = images(16, n=3)
    assert excluded_tokens(model.config) == note
    maps = attention_rollout(model, x)
    assert maps.shape == (3, 4, 4) and torch.all(maps.sum(dim=(1, 2)) <= 1 + 1e-5)
    assert mean_attention_distance(model, x).shape == (2, 2)
    assert pos_embed_similarity(model).similarity.shape == (16, 16)
    report = analyze(model, x, tmp_path, rollout_images=2)
    assert report["excluded_tokens"] == note
    features, _ = extract_features(model, [(x, torch.zeros(3, dtype=torch.long))])
    assert features.shape == (3, 32)


def test_rollout_of_a_distilled_model_averages_the_class_and_distillation_rows():
    model = randomise(vitkit.create_model("vit_test_patch4_16", distilled=True))
    x = images(16, n=1)
    with torch.no_grad():
        product = rollout(model.attention_maps(x))[0]  # (T, T)
    expected = product[:2, 2:].mean(dim=0).reshape(4, 4)
    torch.testing.assert_close(attention_rollout(model, x)[0], expected.float())
