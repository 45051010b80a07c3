"""FlexiViT patch-size resampling (Beyer et al. 2023): the kernel against timm's `resample_patch_embed`,
a checkpoint loaded at another patch size against timm's own loader, `vitkit train --init-from
--patch-size`, and a Fashion-MNIST model that keeps most of its accuracy at patch sizes 2 and 7."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_patch_embed as timm_resample_patch_embed
from timm.models.vision_transformer import checkpoint_filter_fn

import vitkit
from vitkit.data import load_data
from vitkit.data.datasets import DEBIAN_FASHION_MNIST
from vitkit.models.flexi import resample_patch_embed
from vitkit.train import fit, make_config

needs_fashion_mnist = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="apt-get install dataset-fashion-mnist"
)


@pytest.mark.parametrize("old, new", [(16, 8), (16, 24), (4, 2), (4, 7), (14, 16), (8, (4, 12))])
def test_patch_kernel_resampling_equals_timms(old, new):
    weight = torch.randn(6, 3, old, old, generator=torch.Generator().manual_seed(0))
    size = (new, new) if isinstance(new, int) else new
    torch.testing.assert_close(resample_patch_embed(weight, new), timm_resample_patch_embed(weight, list(size)),
                               atol=1e-5, rtol=1e-5)  # fmt: skip


def test_upsampled_kernel_gives_the_same_token_for_the_upsampled_patch():
    """FlexiViT's defining property, exact when the patch grows: <x, w> = <resize(x), ŵ>."""
    w, x = torch.randn(5, 1, 4, 4, dtype=torch.float64), torch.randn(3, 1, 4, 4, dtype=torch.float64)
    bigger = torch.nn.functional.interpolate(x, size=(8, 8), mode="bicubic", antialias=True, align_corners=False)
    w8 = resample_patch_embed(w, 8)
    tokens, resized_tokens = torch.einsum("bchw,dchw->bd", x, w), torch.einsum("bchw,dchw->bd", bigger, w8)
    torch.testing.assert_close(resized_tokens, tokens, atol=1e-5, rtol=1e-5)  # R in float32, as timm's


def test_checkpoint_at_another_patch_size_matches_timms_loader(tmp_path):
    """Patch 16 -> 8 at 64 px: the kernel is resampled and E_pos follows the new 8x8 grid, as timm's
    checkpoint_filter_fn does when the patch size differs."""
    g = torch.Generator().manual_seed(0)
    peer = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=2, num_classes=5)
    with torch.no_grad():
        for p in peer.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    save_file(peer.state_dict(), tmp_path / "p16.safetensors")
    peer8 = timm.create_model("vit_tiny_patch16_224", img_size=64, patch_size=8, depth=2, num_classes=5).eval()
    peer8.load_state_dict(checkpoint_filter_fn(peer.state_dict(), peer8))
    model = vitkit.create_model("vit_tiny_patch16_224", img_size=64, patch_size=8, depth=2, num_classes=5).eval()
    report = vitkit.load_checkpoint(model, tmp_path / "p16.safetensors")
    assert "FlexiViT" in str(report) and model.pos_embed.shape == (1, 1 + 64, 192)
    x = torch.randn(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model(x), peer8(x), atol=1e-4, rtol=0)


@needs_fashion_mnist
def test_train_init_from_with_another_patch_size_resamples_the_kernel(tmp_path):
    source = vitkit.create_model("vit_test_patch4_16")
    vitkit.save(source, tmp_path / "source.safetensors")
    cfg = make_config({"steps": 1, "batch_size": 8, "lr": 1e-12},
                      data="fashion_mnist", model="vit_test_patch4_16", limit_train=16, limit_eval=8,
                      data_root=str(tmp_path / "data"), progress=False, workers=0, out=str(tmp_path / "run"),
                      init_from=str(tmp_path / "source.safetensors"), patch_size=2)  # fmt: skip
    tuned = vitkit.load(fit(cfg).checkpoint)
    assert tuned.config.patch_size == 2 and tuned.pos_embed.shape == (1, 1 + 64, 32)
    expected = resample_patch_embed(source.patch_embed.proj.weight.detach(), 2)
    torch.testing.assert_close(tuned.patch_embed.proj.weight, expected, atol=1e-6, rtol=0)


# ---- a trained model at other patch sizes, without training ---------------------------------------------
# Measured (150 steps of 32, 1000 test images, 2 threads): top-1 54.9% at patch 4. With the image resized
# with the patch (FlexiViT's setting: the same 7x7 grid), 44.2% at patch 2 (14 px) and 54.9% at patch 7
# (49 px); at 28 px (grids 14x14 and 4x4), 34.4% and 36.8%. 1000 steps of 64 on 60k images: 83.1% at
# patch 4, 53.3% and 43.8% at 28 px (benchmarks/flexi_patch_sizes.py).
STEPS = 150  # of 32 images
MIN_PATCH4 = 0.35  # top-1 that the patch-4 model must reach for the comparison to mean something
KEEP_SAME_GRID = {2: 0.7, 7: 0.9}  # least share of its top-1 kept when the image scales with the patch
CHANCE = 0.1


def _fashion_mnist(root: str, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n images of a split as the model takes them, (n, 1, 28, 28) in [-1, 1], and labels."""
    data = load_data("fashion_mnist", root).split(split)
    return data.data[:n].float().div(127.5).sub(1).unsqueeze(1), data.targets[:n]


def _train_patch4(root: str, steps: int, batch: int, n_train: int = 10_000) -> vitkit.VisionTransformer:
    """vit_fashion_patch4_28 trained briefly with AdamW on the first n_train training images."""
    images, labels = _fashion_mnist(root, "train", n_train)
    model = vitkit.create_model("vit_fashion_patch4_28").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, len(labels), (batch,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(images[i]), labels[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def _accuracy(model: vitkit.VisionTransformer, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (model.eval()(images).argmax(dim=1) == labels).float().mean().item()


@needs_fashion_mnist
def test_fashion_mnist_model_trained_at_patch_4_keeps_most_of_its_accuracy_at_patch_2_and_7(tmp_path):
    """FlexiViT without any training: the patch-4 model loaded at patch 2 and 7. With the image resized by
    the patch's factor (FlexiViT's setting, the 7x7 grid kept) it keeps most of its accuracy; at the
    trained 28 px (14x14 and 4x4 grids, tokens of another scale) it stays well above chance."""
    root = str(tmp_path / "data")
    vitkit.save(_train_patch4(root, steps=STEPS, batch=32), tmp_path / "p4.safetensors")
    images, labels = _fashion_mnist(root, "test", 1000)
    base = _accuracy(vitkit.load(tmp_path / "p4.safetensors"), images, labels)
    assert base > MIN_PATCH4
    for p, keep in KEEP_SAME_GRID.items():
        scaled = torch.nn.functional.interpolate(images, size=(7 * p, 7 * p), mode="bicubic", antialias=True)
        same_grid = _accuracy(vitkit.load(tmp_path / "p4.safetensors", patch_size=p, img_size=7 * p), scaled, labels)
        same_image = _accuracy(vitkit.load(tmp_path / "p4.safetensors", patch_size=p), images, labels)
        print(f"patch {p}: top-1 {same_grid:.3f} at {7 * p} px, {same_image:.3f} at 28 px; patch 4: {base:.3f}")
        assert same_grid > keep * base
        assert same_image > 2.5 * CHANCE
