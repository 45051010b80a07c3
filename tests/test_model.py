"""The model as a specification: eq. 1-4 of the paper, checked against timm and against naive references.

Parity tests randomise every parameter (the zero-initialised head and class token included), so a
wrong wiring changes the logits; models are tiny (small img_size, few layers) to run on a CPU.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import vitkit
from vitkit.models.vit import Block, VisionTransformer

TINY = dict(img_size=32, depth=3, num_classes=5)  # a 2×2 grid of 16×16 patches


@torch.no_grad()
def randomize_(model: nn.Module) -> nn.Module:
    """Give every parameter random values of a sensible scale: kernels ~ 1/sqrt(fan_in), norm scales
    around 1, everything else (biases, tokens, position embeddings, head) around 0 but non-zero."""
    for name, p in model.named_parameters():
        if p.dim() >= 2 and name.endswith("weight"):
            p.normal_(0.0, p[0].numel() ** -0.5)
        elif "norm" in name and name.endswith("weight"):
            p.normal_(1.0, 0.1)
        else:
            p.normal_(0.0, 0.1)
    return model


def timm_to_vitkit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's keys are vitkit's, except the stem-only hybrid, whose stem timm keeps at the backbone's top."""
    stem = "patch_embed.backbone."
    return {
        (k.replace(stem, stem + "stem.") if k.startswith((stem + "conv.", stem + "norm.")) else k): v
        for k, v in state.items()
    }


def timm_pair(name: str, **kwargs: Any) -> tuple[VisionTransformer, nn.Module]:
    """The same architecture from vitkit and timm, both in eval mode, sharing one set of random weights."""
    reference = randomize_(timm.create_model(name, **kwargs)).eval()
    model = vitkit.create_model(name, **kwargs).eval()
    model.load_state_dict(timm_to_vitkit(reference.state_dict()))
    return model, reference


def tiny_model(**overrides: Any) -> VisionTransformer:
    """A randomised vit_tiny_patch16 at 32×32 in eval mode."""
    return randomize_(vitkit.create_model("vit_tiny_patch16_224", **{**TINY, **overrides})).eval()


def run_blocks(model: VisionTransformer, x: torch.Tensor) -> list[torch.Tensor]:
    """[z_0, z_1, ..., z_L], running the blocks one by one (eq. 2-3)."""
    zs = [model.embed(x)]
    for block in model.blocks:
        zs.append(block(zs[-1]))
    return zs


def naive_attention(block: Block, z: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d)) of one layer from its qkv weights, one head at a time: (B, heads, T, T)."""
    h = block.norm1(z)
    D, heads = h.shape[-1], block.attn.num_heads
    d = D // heads
    w_q, w_k, _ = block.attn.qkv.weight.split(D)
    b_q, b_k, _ = block.attn.qkv.bias.split(D)
    maps = []
    for i in range(heads):
        rows = slice(i * d, (i + 1) * d)
        q = h @ w_q[rows].T + b_q[rows]
        k = h @ w_k[rows].T + b_k[rows]
        maps.append(torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1))
    return torch.stack(maps, dim=1)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=atol)


# ---- parity with timm ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_small_patch32_224"]
)
@torch.no_grad()
def test_plain_vit_logits_match_timm(name: str) -> None:
    model, reference = timm_pair(name, img_size=64, depth=2, num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    assert_close(model(x), reference(x), atol=1e-4)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("vit_base_r50_s16_224", dict(img_size=64, depth=1)),  # R50 (3, 4, 9), stride 16
        ("vit_small_r26_s32_224", dict(img_size=64, depth=1)),  # R26 (2, 2, 2, 2), stride 32
        ("vit_tiny_r_s16_p8_224", dict(img_size=64, depth=2)),  # stem only, 8×8 patches
    ],
)
@torch.no_grad()
def test_hybrid_logits_match_timm(name: str, kwargs: dict[str, Any]) -> None:
    model, reference = timm_pair(name, num_classes=5, **kwargs)
    x = torch.randn(2, 3, 64, 64)
    assert_close(model(x), reference(x), atol=1e-4)


@torch.no_grad()
def test_forward_features_are_all_tokens_after_final_norm_as_timm() -> None:
    model, reference = timm_pair("vit_tiny_patch16_224", **TINY)
    x = torch.randn(2, 3, 32, 32)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 1 + 4, 192)
    assert_close(tokens, reference.forward_features(x), atol=1e-5)


@pytest.mark.parametrize("class_token", [True, False])
@torch.no_grad()
def test_gap_is_mean_of_patch_tokens_after_final_norm(class_token: bool) -> None:
    """The official code's 'gap': LayerNorm over all tokens, then the mean of the patch tokens.
    (timm's global_pool='avg' instead pools first and applies a separate fc_norm.)"""
    model = tiny_model(pool="gap", class_token=class_token)
    trunk = timm.create_model(
        "vit_tiny_patch16_224", class_token=class_token, global_pool="avg", fc_norm=False, **TINY
    ).eval()
    trunk.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    tokens = trunk.forward_features(x)  # blocks, then the final LayerNorm on every token
    prefix = int(class_token)
    expected = tokens[:, prefix:].mean(dim=1) @ model.head.weight.T + model.head.bias
    assert_close(model(x), expected, atol=1e-5)


# ---- intermediates and attention ---------------------------------------------------------------------
@torch.no_grad()
def test_forward_intermediates_all_layers_are_the_block_outputs() -> None:
    model, x = tiny_model(), torch.randn(2, 3, 32, 32)
    expected = run_blocks(model, x)[1:]
    out = model.forward_intermediates(x)
    assert len(out) == 3
    for a, b in zip(out, expected):
        assert_close(a, b, atol=0.0)


@torch.no_grad()
def test_forward_intermediates_int_takes_the_last_n_layers() -> None:
    model, x = tiny_model(), torch.randn(2, 3, 32, 32)
    expected = run_blocks(model, x)[-2:]
    out = model.forward_intermediates(x, 2)
    assert len(out) == 2
    for a, b in zip(out, expected):
        assert_close(a, b, atol=0.0)


@torch.no_grad()
def test_forward_intermediates_negative_indices_count_from_the_end() -> None:
    model, x = tiny_model(), torch.randn(2, 3, 32, 32)
    zs = run_blocks(model, x)
    out = model.forward_intermediates(x, [-1, 0])
    assert len(out) == 2  # in layer order, as timm
    assert_close(out[0], zs[1], atol=0.0)
    assert_close(out[1], zs[3], atol=0.0)


@torch.no_grad()
def test_forward_intermediates_norm_applies_the_final_layernorm() -> None:
    model, x = tiny_model(), torch.randn(2, 3, 32, 32)
    zs = run_blocks(model, x)
    out = model.forward_intermediates(x, [1, 2], norm=True)
    assert_close(out[0], model.norm(zs[2]), atol=0.0)
    assert_close(out[1], model.forward_features(x), atol=1e-6)


def test_forward_intermediates_rejects_layers_out_of_range() -> None:
    model, x = tiny_model(), torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="3 layers"):
        model.forward_intermediates(x, [3])
    with pytest.raises(ValueError, match="3 layers"):
        model.forward_intermediates(x, 4)


@torch.no_grad()
def test_attention_maps_are_row_stochastic_and_equal_naive_softmax() -> None:
    model, x = tiny_model(), torch.randn(2, 3, 32, 32)
    maps = model.attention_maps(x)
    zs = run_blocks(model, x)
    assert len(maps) == 3
    for layer, (block, weights) in enumerate(zip(model.blocks, maps)):
        assert weights.shape == (2, 3, 5, 5)  # (B, heads, T, T)
        assert_close(weights.sum(dim=-1), torch.ones(2, 3, 5), atol=1e-6)
        assert_close(weights, naive_attention(block, zs[layer]), atol=1e-6)


@torch.no_grad()
def test_attention_maps_reproduce_the_forward_pass() -> None:
    """Mixing the values with the returned maps, head by head, gives the logits of forward()."""
    model, x = tiny_model(), torch.randn(2, 3, 32, 32)
    maps = model.attention_maps(x)
    z = model.embed(x)
    for block, weights in zip(model.blocks, maps):
        h = block.norm1(z)
        D = h.shape[-1]
        v = h @ block.attn.qkv.weight[2 * D :].T + block.attn.qkv.bias[2 * D :]
        d = D // block.attn.num_heads
        heads = [weights[:, i] @ v[..., i * d : (i + 1) * d] for i in range(block.attn.num_heads)]
        z = z + block.attn.proj(torch.cat(heads, dim=-1))
        z = z + block.mlp(block.norm2(z))
    assert_close(model.forward_head(model.norm(z)), model(x), atol=1e-5)


@torch.no_grad()
def test_forward_uses_fused_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = tiny_model(), torch.randn(1, 3, 32, 32)
    calls = []
    fused = F.scaled_dot_product_attention

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    model(x)
    assert len(calls) == 3
    calls.clear()
    with torch.enable_grad(), torch.autocast("cpu", torch.bfloat16):  # bf16 training on the CPU: explicit
        model(x)
    assert calls == []
    model.to(torch.bfloat16)(x.bfloat16())  # no gradients: fused again
    assert len(calls) == 3


def test_bf16_explicit_attention_agrees_with_the_fused_kernel() -> None:
    attn, x = tiny_model().blocks[0].attn.to(torch.bfloat16), torch.randn(4, 17, 192, dtype=torch.bfloat16)
    q, k, v = attn._split_heads(x)
    fused = attn._merge_heads(F.scaled_dot_product_attention(q, k, v))
    assert_close(attn.forward_with_weights(x)[0].float(), fused.float(), atol=3e-2)
    attn.train()  # and the backward pass runs
    attn(x.requires_grad_()).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad.float()).all()


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.bfloat16, 2e-2)])
def test_recomputed_attention_has_the_gradients_of_the_explicit_formula(dtype: torch.dtype, tol: float) -> None:
    from vitkit.models.attention import recomputed_attention

    q, k, v, dout = (torch.randn(3, 2, 11, 8, dtype=dtype) for _ in range(4))
    scale = 8**-0.5
    naive = [t.clone().requires_grad_() for t in (q, k, v)]
    ((naive[0] @ naive[1].transpose(-2, -1) * scale).softmax(-1) @ naive[2]).backward(dout)
    ours = [t.clone().requires_grad_() for t in (q, k, v)]
    out = recomputed_attention(*ours, scale)
    out.backward(dout)
    for a, b in zip(ours, naive):
        assert_close(a.grad.double(), b.grad.double(), atol=tol * max(1.0, b.grad.abs().max().item()))
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(lambda *t: recomputed_attention(*t, scale), [t.clone().requires_grad_()
                                        for t in (q[:1, :1, :4], k[:1, :1, :4], v[:1, :1, :4])])  # fmt: skip


def test_bf16_training_of_long_sequences_keeps_no_token_by_token_weights_for_the_backward() -> None:
    """The memory of the fused kernel: no (B, heads, T, T) tensor is saved (vitkit.models.attention)."""
    from vitkit.models.attention import SAVED_WEIGHTS_UP_TO

    T = SAVED_WEIGHTS_UP_TO + 1
    block, x = tiny_model().blocks[0], torch.randn(2, T, 192, requires_grad=True)
    saved: list[tuple[int, ...]] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), torch.autocast("cpu", torch.bfloat16):
        block(x).float().sum().backward()
    heads = block.attn.num_heads
    assert saved and (2, heads, T, T) not in saved and x.grad is not None


def test_bf16_training_of_short_sequences_agrees_with_the_recomputed_attention() -> None:
    """Up to SAVED_WEIGHTS_UP_TO tokens the weights are kept for the backward pass, not recomputed (issue 38):
    the output and the gradients of the input and of the q/k/v projection are those of the recomputing path."""
    from vitkit.models.attention import recomputed_attention

    attn, x, dout = tiny_model().blocks[0].attn.train(), torch.randn(4, 17, 192), torch.randn(4, 17, 192)

    def output_and_grads(forward: Any) -> list[torch.Tensor]:
        inputs = x.clone().requires_grad_()
        with torch.autocast("cpu", torch.bfloat16):
            out = forward(inputs)
        grads = torch.autograd.grad(out, [inputs, attn.qkv.weight], dout.to(out.dtype))
        return [out.float(), *grads]

    ours = output_and_grads(attn)
    recomputed = output_and_grads(lambda t: attn._merge_heads(recomputed_attention(*attn._split_heads(t), attn.scale)))
    for a, b in zip(ours, recomputed):
        assert_close(a.float(), b.float(), atol=2e-2 * max(1.0, b.abs().max().item()))


# ---- dropout and stochastic depth --------------------------------------------------------------------
@torch.no_grad()
def test_eval_mode_is_deterministic_with_dropout_and_drop_path() -> None:
    model, x = tiny_model(dropout=0.3, attn_dropout=0.3, drop_path=0.5), torch.randn(4, 3, 32, 32)
    assert torch.equal(model(x), model(x))
    plain = tiny_model()
    plain.load_state_dict(model.state_dict())
    assert torch.equal(model(x), plain(x))


@torch.no_grad()
def test_train_mode_drop_path_changes_outputs() -> None:
    model, x = tiny_model(drop_path=0.5), torch.randn(8, 3, 32, 32)
    expected = model(x)
    model.train()
    assert not torch.allclose(model(x), expected)


def test_drop_path_rates_grow_linearly_from_zero_as_timm() -> None:
    model = vitkit.create_model("vit_tiny_patch16_224", img_size=32, depth=5, drop_path=0.2)
    reference = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=5, drop_path_rate=0.2)
    rates = [block.drop_path.p for block in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert rates == pytest.approx([getattr(block.drop_path1, "drop_prob", 0.0) for block in reference.blocks])


# ---- patch dropout -----------------------------------------------------------------------------
@torch.no_grad()
def test_patch_dropout_keeps_the_class_token_and_a_random_subset_of_each_images_patches() -> None:
    from vitkit.models.vit import PatchDropout

    drop, x = PatchDropout(0.5, num_prefix_tokens=1).train(), torch.randn(16, 1 + 9, 8)
    y = drop(x)
    assert y.shape == (16, 1 + 4, 8)  # int(9 * 0.5) patches kept
    assert torch.equal(y[:, 0], x[:, 0])
    kept = []
    for image, out in zip(x, y):
        index = [int((image[1:] == row).all(dim=1).nonzero()) for row in out[1:]]  # each kept row is a patch
        assert len(set(index)) == 4
        kept.append(frozenset(index))
    assert len(set(kept)) > 1  # a subset drawn per image
    assert torch.equal(drop.eval()(x), x)


def test_patch_dropout_trains_as_timms_patch_drop_rate() -> None:
    from vitkit.peers import timm_twin

    model = tiny_model(img_size=64, patch_drop=0.5).train()  # 16 patches, 8 kept
    twin, x = timm_twin(model), torch.randn(3, 3, 64, 64)
    torch.manual_seed(7)
    ours = model(x)
    torch.manual_seed(7)
    torch.testing.assert_close(ours, twin(x), rtol=0, atol=1e-4)
    torch.manual_seed(8)
    assert not torch.allclose(model(x), ours)  # other tokens kept
    with torch.no_grad():  # evaluation sees every patch
        torch.testing.assert_close(model.eval()(x), twin.eval()(x), rtol=0, atol=1e-4)


# ---- initialisation (google-research/vision_transformer) ------------------------------------------
@pytest.fixture(scope="module")
def fresh() -> VisionTransformer:
    torch.manual_seed(0)
    return vitkit.create_model("vit_tiny_patch16_224", depth=2, num_classes=10)


def test_init_head_and_class_token_are_zero(fresh: VisionTransformer) -> None:
    assert not fresh.head.weight.any() and not fresh.head.bias.any()
    assert not fresh.cls_token.any()


def test_init_pos_embed_is_normal_0_02(fresh: VisionTransformer) -> None:
    assert fresh.pos_embed.mean().abs() < 1e-3
    assert fresh.pos_embed.std().item() == pytest.approx(0.02, rel=0.03)


def test_init_mlp_biases_are_tiny_normal(fresh: VisionTransformer) -> None:
    for block in fresh.blocks:
        for bias in (block.mlp.fc1.bias, block.mlp.fc2.bias):
            assert bias.abs().max() < 1e-4 and bias.any()


def test_init_attention_biases_are_zero(fresh: VisionTransformer) -> None:
    for block in fresh.blocks:
        assert not block.attn.qkv.bias.any() and not block.attn.proj.bias.any()


def test_init_layernorms_are_identity(fresh: VisionTransformer) -> None:
    norms = [m for m in fresh.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1
    for norm in norms:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert not norm.bias.any()


def test_init_dense_kernels_are_xavier_uniform_per_projection(fresh: VisionTransformer) -> None:
    """q, k and v are separate D×D kernels in the official code, so each gets the D×D xavier bound."""
    D, mlp = 192, 768
    block = fresh.blocks[0]
    for weight, fan_in, fan_out in [
        (block.attn.qkv.weight, D, D),
        (block.attn.proj.weight, D, D),
        (block.mlp.fc1.weight, D, mlp),
        (block.mlp.fc2.weight, mlp, D),
    ]:
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert weight.abs().max() <= bound
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.03)


# ---- input sizes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(48, 32), (64, 80), (32, 32)])
@torch.no_grad()
def test_dynamic_img_size_matches_timm_on_other_sizes(size: tuple[int, int]) -> None:
    model, reference = timm_pair("vit_tiny_patch16_224", dynamic_img_size=True, **TINY)
    x = torch.randn(2, 3, *size)
    assert_close(model(x), reference(x), atol=1e-4)


def test_dynamic_img_size_rejects_size_not_divisible_by_patch() -> None:
    model = tiny_model(dynamic_img_size=True)
    with pytest.raises(ValueError) as err:
        model(torch.randn(1, 3, 40, 32))
    message = str(err.value)
    assert "40x32" in message and "patch size 16" in message and "32x32" in message


def test_fixed_img_size_rejects_other_sizes_in_one_line() -> None:
    model = tiny_model()
    with pytest.raises(ValueError) as err:
        model(torch.randn(1, 3, 48, 32))
    message = str(err.value)
    assert "48x32" in message and "32x32" in message and "\n" not in message


def test_wrong_channel_count_raises() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))
