"""torchvision VisionTransformer -> vitkit: the key map and logits parity with random weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import vision_transformer as tv

import vitkit
from vitkit.checkpoints.torchvision import convert
from vitkit.models import ViTConfig, VisionTransformer


def randomise(model: nn.Module, scale: float = 0.1) -> nn.Module:
    """Noise on every parameter, the zero-initialised head included, so that parity can fail."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def vitkit_from(peer: tv.VisionTransformer, state: dict[str, torch.Tensor] | None = None) -> VisionTransformer:
    """The vitkit model with `peer`'s hyper-parameters, loaded strictly from its (or the given) state dict."""
    layer = peer.encoder.layers[0]
    cfg = ViTConfig(
        img_size=peer.image_size, patch_size=peer.patch_size, embed_dim=peer.hidden_dim, depth=len(peer.encoder.layers),
        num_heads=layer.num_heads, mlp_dim=peer.mlp_dim, num_classes=peer.num_classes,
        representation_size=peer.representation_size,
    )  # fmt: skip
    model = VisionTransformer(cfg).eval()
    model.load_state_dict(convert(state if state is not None else peer.state_dict(), cfg))
    return model


def tiny(**overrides: int) -> tv.VisionTransformer:
    kwargs = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5)
    return randomise(tv.VisionTransformer(**{**kwargs, **overrides}))


def images(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("representation_size", [None, 16])
def test_tiny_logits_match_torchvision(representation_size):
    peer = tiny(representation_size=representation_size)
    model = vitkit_from(peer)
    x = images(32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), peer(x), atol=1e-4, rtol=0)


def test_legacy_mlp_names_convert_like_current_ones():
    peer = tiny()
    state = peer.state_dict()
    legacy = {k.replace(".mlp.0.", ".mlp.linear_1.").replace(".mlp.3.", ".mlp.linear_2."): v for k, v in state.items()}
    assert "encoder.layers.encoder_layer_0.mlp.linear_1.weight" in legacy
    x = images(32)
    with torch.no_grad():
        torch.testing.assert_close(vitkit_from(peer, legacy)(x), peer(x), atol=1e-4, rtol=0)


def test_vit_b_16_logits_match_torchvision():
    peer = randomise(tv.vit_b_16(weights=None), scale=0.02)  # the scale of trained weights at width 768
    model = vitkit_from(peer)
    assert model.config.norm_eps == peer.encoder.ln.eps == 1e-6
    x = images(224)[:1]
    with torch.no_grad():
        torch.testing.assert_close(model(x), peer(x), atol=1e-4, rtol=0)


def test_a_saved_state_dict_loads_with_vitkit_load(tmp_path):
    # vit_test_patch4_16: 16x16 images, 4x4 patches, depth 2, width 32, 2 heads, MLP 64
    peer = tiny(image_size=16, patch_size=4)
    torch.save(peer.state_dict(), tmp_path / "vit.pth")
    model = vitkit.load(tmp_path / "vit.pth", "vit_test_patch4_16").eval()
    assert model.config.num_classes == 5
    x = images(16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), peer(x), atol=1e-4, rtol=0)
