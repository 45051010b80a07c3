"""The paper's analyses (section 4.5, appendix D), each checked against a naive reference written with
explicit loops over layers, heads, queries and keys, and on attention patterns whose answer is known."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import vitkit
from vitkit.analysis import (
    analyze, attention_distance, attention_rollout, embedding_filters, last_layer_attention, mean_attention_distance,
    pos_embed_similarity,
)  # fmt: skip
from vitkit.analysis.cli import add_analyze_parser
from vitkit.models.vit import VisionTransformer


@torch.no_grad()
def randomised(model: nn.Module) -> nn.Module:
    """Every parameter drawn at a scale that makes attention far from uniform; eval mode."""
    for name, p in model.named_parameters():
        p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.5)
    return model.eval()


def tiny(**overrides) -> VisionTransformer:
    """vit_test_patch4_16 (2 layers, 2 heads, a 4×4 grid of 4-pixel patches), randomised."""
    return randomised(vitkit.create_model("vit_test_patch4_16", **overrides))


def tiny_hybrid() -> VisionTransformer:
    """A ResNet-stem hybrid: 64×64 input, stride 4 · patch 8 = 32 pixels per token, a 2×2 grid."""
    return randomised(vitkit.create_model("vit_tiny_r_s16_p8_224", img_size=64, depth=2, embed_dim=32, num_heads=2,
                                          mlp_dim=64, num_classes=3))  # fmt: skip


def pixel_distance(q: int, k: int, gw: int, stride: int) -> float:
    """Distance in pixels between the centres of patches q and k of a row-major grid gw patches wide."""
    return stride * math.hypot(q // gw - k // gw, q % gw - k % gw)


def naive_mean_distance(maps: list[torch.Tensor], grid: tuple[int, int], stride: int) -> torch.Tensor:
    """Mean attention distance with explicit loops; patch-to-patch weights renormalised per query."""
    N, gw = grid[0] * grid[1], grid[1]
    B, H, T, _ = maps[0].shape
    p = T - N
    out = torch.zeros(len(maps), H, dtype=torch.float64)
    for layer, attn in enumerate(maps):
        for h in range(H):
            total = 0.0
            for b in range(B):
                for q in range(N):
                    row = attn[b, h, p + q, p:].double()
                    total += sum(row[k].item() / row.sum().item() * pixel_distance(q, k, gw, stride) for k in range(N))
            out[layer, h] = total / (B * N)
    return out


def test_mean_attention_distance_matches_naive_loops():
    model, x = tiny(), torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = naive_mean_distance(model.attention_maps(x), (4, 4), 4)
    got = mean_attention_distance(model, x, batch_size=2)
    assert got.shape == (2, 2)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_hybrid_attention_distance_is_measured_in_input_pixels():
    model, x = tiny_hybrid(), torch.randn(2, 3, 64, 64)
    assert model.config.stride == 32
    with torch.no_grad():
        expected = naive_mean_distance(model.attention_maps(x), (2, 2), 32)
    torch.testing.assert_close(mean_attention_distance(model, x).double(), expected, rtol=1e-5, atol=1e-5)


def test_identity_attention_has_distance_zero(monkeypatch):
    model, x = tiny(), torch.randn(2, 3, 16, 16)
    identity = torch.eye(17).expand(2, 2, 17, 17)
    monkeypatch.setattr(model, "attention_maps", lambda images: [identity, identity])
    assert torch.equal(mean_attention_distance(model, x), torch.zeros(2, 2))


def test_uniform_attention_gives_the_mean_pairwise_pixel_distance():
    grid, stride = (3, 5), 7
    N = 15
    uniform = torch.full((1, 4, N + 1, N + 1), 1 / (N + 1))
    pairwise = sum(pixel_distance(q, k, 5, stride) for q in range(N) for k in range(N)) / N**2
    got = attention_distance(uniform, grid, stride, num_prefix_tokens=1)
    torch.testing.assert_close(got, torch.full((1, 4), pairwise, dtype=torch.float64))


def naive_rollout(maps: list[torch.Tensor], prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """Abnar & Zuidema's rollout with explicit loops: per image, mean over heads, + I, rows renormalised,
    R ← Â R layer by layer; the class token's row (or the mean of the patch rows) over the patches."""
    B, H, T, _ = maps[0].shape
    out = []
    for b in range(B):
        R = torch.eye(T, dtype=torch.float64)
        for attn in maps:
            A = sum(attn[b, h].double() for h in range(H)) / H + torch.eye(T, dtype=torch.float64)
            for i in range(T):
                A[i] = A[i] / A[i].sum()
            R = A @ R
        row = R[0, prefix:] if prefix else sum(R[i] for i in range(T)) / T
        out.append(row.reshape(grid))
    return torch.stack(out)


@pytest.mark.parametrize("pool", ["token", "gap"])
def test_rollout_matches_naive_loops(pool):
    model = tiny(pool=pool, class_token=pool == "token")
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = naive_rollout(model.attention_maps(x), model.config.num_prefix_tokens, (4, 4))
    torch.testing.assert_close(attention_rollout(model, x, batch_size=2).double(), expected, rtol=1e-5, atol=1e-6)


def test_rollout_of_identity_attention_puts_no_weight_on_patches(monkeypatch):
    model, x = tiny(), torch.randn(1, 3, 16, 16)
    identity = torch.eye(17).expand(1, 2, 17, 17)
    monkeypatch.setattr(model, "attention_maps", lambda images: [identity, identity])
    assert torch.equal(attention_rollout(model, x), torch.zeros(1, 4, 4))


def test_last_layer_attention_is_each_heads_class_token_row():
    model, x = tiny(), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        last = model.attention_maps(x)[-1]
    got = last_layer_attention(model, x)
    for b in range(2):
        for h in range(2):
            for k in range(16):
                assert got[b, h, k // 4, k % 4] == pytest.approx(last[b, h, 0, 1 + k].item(), abs=1e-6)


def test_analysis_restores_the_models_training_mode():
    model = tiny().train()
    mean_attention_distance(model, torch.randn(1, 3, 16, 16))
    assert model.training


def naive_cosine(pos: torch.Tensor) -> torch.Tensor:
    N = len(pos)
    out = torch.zeros(N, N, dtype=torch.float64)
    for i in range(N):
        for j in range(N):
            a, b = pos[i].double(), pos[j].double()
            out[i, j] = (a @ b) / (a.norm() * b.norm())
    return out


def test_pos_embed_similarity_matches_naive_cosines_and_grid_means():
    model = tiny(img_size=20)  # a 5×5 grid
    result = pos_embed_similarity(model)
    sim = naive_cosine(model.pos_embed.detach()[0, 1:])
    torch.testing.assert_close(result.similarity.double(), sim, rtol=1e-5, atol=1e-6)
    groups: dict[str, list[float]] = {"neighbour": [], "far": [], "same_line": [], "other": []}
    for i in range(25):
        for j in range(25):
            dr, dc = i // 5 - j // 5, i % 5 - j % 5
            if i == j:
                continue
            if abs(dr) + abs(dc) == 1:
                groups["neighbour"].append(sim[i, j].item())
            if math.hypot(dr, dc) > 2.5:
                groups["far"].append(sim[i, j].item())
            groups["same_line" if dr == 0 or dc == 0 else "other"].append(sim[i, j].item())
    for name, values in groups.items():
        assert getattr(result, name) == pytest.approx(sum(values) / len(values), abs=1e-6), name


def smooth_pos_embed(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """(N, dim) embeddings that vary smoothly with (row, col): sines and cosines of low frequencies."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    freqs = torch.linspace(0.1, 0.6, dim // 4)
    angles = [rows.flatten()[:, None] * freqs, cols.flatten()[:, None] * freqs]
    return torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)


def test_smooth_position_embeddings_show_more_2d_structure_than_random_ones():
    model = tiny(img_size=32)  # an 8×8 grid
    with torch.no_grad():
        model.pos_embed[0, 1:] = smooth_pos_embed((8, 8), 32)
    smooth = pos_embed_similarity(model)
    with torch.no_grad():
        model.pos_embed.normal_()
    random = pos_embed_similarity(model)
    assert smooth.neighbour - smooth.far > 0.3
    assert abs(random.neighbour - random.far) < 0.1
    assert smooth.neighbour > random.neighbour and smooth.same_line > smooth.other


def test_embedding_filters_are_the_principal_components_of_the_patch_projection():
    model = tiny()
    result = embedding_filters(model, n=5)
    w = model.patch_embed.proj.weight.detach().double().reshape(32, -1).numpy()
    centred = w - w.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    order = np.argsort(eigenvalues)[::-1]
    assert result.components.shape == (5, 3, 4, 4) and result.source == "patch_embed.proj"
    for i in range(5):
        component = result.components[i].flatten().double().numpy()
        assert abs(component @ eigenvectors[:, order[i]]) == pytest.approx(1.0, abs=1e-4)
        assert result.explained[i].item() == pytest.approx(eigenvalues[order[i]] / eigenvalues.sum(), rel=1e-4)


def test_a_hybrids_filters_are_its_backbone_stem_convolution():
    result = embedding_filters(tiny_hybrid())
    assert result.source == "patch_embed.backbone.stem.conv" and result.components.shape == (28, 3, 7, 7)


def png_size(path: str) -> tuple[int, int]:
    with Image.open(path) as im:
        assert np.asarray(im.convert("L")).std() > 0, f"{path} is blank"
        return im.size


def test_analyze_writes_figures_of_the_documented_pixel_size_and_the_json(tmp_path):
    model = tiny()
    report = analyze(model, torch.randn(4, 3, 16, 16), tmp_path, rollout_images=3)
    expected = {  # (width, height) in pixels at 100 dpi, from the sizes in plots.py's docstrings
        "filters": (700, 400),  # 28 components, 7 per row
        "pos_embed_similarity": (700, 600),
        "attention_distance": (600, 400),
        "attention_rollout": (600, 400),  # 3 images
        "head_attention": (450, 450),  # 2 heads + the image, 3 images
    }
    assert {name: png_size(path) for name, path in report["figures"].items()} == expected
    saved = json.loads((tmp_path / "analysis.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert len(saved["attention_distance"]["per_layer_mean"]) == 2 and saved["n_images"] == 4


def test_analyze_command_writes_analysis_json(tmp_path, capsys):
    model = vitkit.create_model("vit_test_patch4_16", in_chans=1, mean=(0.5,), std=(0.5,))
    vitkit.save(model, tmp_path / "model.safetensors")
    parser = argparse.ArgumentParser()
    add_analyze_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["analyze", "--checkpoint", str(tmp_path / "model.safetensors"), "--data", "digits",
                              "--out", str(tmp_path / "out"), "--images", "6", "--rollout-images", "2", "--json",
                              "--device", "cpu"])  # fmt: skip
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_images"] == 6 and (tmp_path / "out" / "analysis.json").is_file()
    assert all((tmp_path / "out" / f"{name}.png").is_file() for name in report["figures"])


@pytest.mark.parametrize("draw", ["rollout", "head_attention"])
def test_attention_figures_caption_each_image_and_carry_the_heat_scales_colour_bar(draw):
    from vitkit.analysis.plots import HEAT_LABEL, head_attention_figure, rollout_figure

    images, captions = torch.rand(2, 3, 16, 16), ["Sandal\n(model: Bag)", "Shirt\n(model: Shirt)"]
    if draw == "rollout":
        fig = rollout_figure(images, torch.rand(2, 4, 4), captions)
    else:
        fig = head_attention_figure(images, torch.rand(2, 3, 4, 4), captions)
    titles = [ax.get_title() for ax in fig.axes]
    assert all(caption in titles for caption in captions)
    assert [ax.get_ylabel() for ax in fig.axes].count(HEAT_LABEL) == 1  # one colour bar, labelled


def test_analyze_command_names_the_class_and_the_prediction_of_each_image_shown(tmp_path, capsys):
    from vitkit.data import load_data

    model = vitkit.create_model("vit_test_patch4_16", in_chans=1, mean=(0.5,), std=(0.5,))
    vitkit.save(model, tmp_path / "model.safetensors")
    parser = argparse.ArgumentParser()
    add_analyze_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["analyze", "--checkpoint", str(tmp_path / "model.safetensors"), "--data", "digits",
                              "--out", str(tmp_path / "out"), "--images", "6", "--rollout-images", "3", "--json",
                              "--device", "cpu"])  # fmt: skip
    assert args.func(args) == 0
    shown = json.loads(capsys.readouterr().out)["rollout_images"]
    test = load_data("digits").split("test")
    classes = load_data("digits").classes
    assert [row["class"] for row in shown] == [classes[int(test[i][1])] for i in range(3)]
    assert all(row["predicted"] in classes for row in shown)
