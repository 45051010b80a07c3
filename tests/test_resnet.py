"""BiT ResNet-V2 (vitkit.models.resnet) against timm's resnetv2: architecture, logits, checkpoints, commands.

Parity tests randomise every tensor (GroupNorm scales and the zero-initialised head included) and
compare logits in fp32; the large variants are compared by parameter count on the meta device.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch.utils.data import Subset
from test_checkpoints import _lay_out_hub_cache
from test_model import randomize_

import vitkit
from vitkit import bench
from vitkit.analysis import (
    analyze, attention_rollout, embedding_filters, last_layer_attention, mean_attention_distance, pos_embed_similarity,
)  # fmt: skip
from vitkit.checkpoints.formats import CheckpointError
from vitkit.cli import main
from vitkit.data import load_data
from vitkit.data.datasets import DEBIAN_FASHION_MNIST
from vitkit.evaluate import eval_loader
from vitkit.evaluate.fewshot import extract_features
from vitkit.export import export_onnx
from vitkit.flops import step_flops
from vitkit.models.registry import default_hub_id
from vitkit.peers import timm_architecture

BIT = ["resnetv2_50x1_bit", "resnetv2_50x3_bit", "resnetv2_101x1_bit", "resnetv2_101x3_bit",
       "resnetv2_152x2_bit", "resnetv2_152x4_bit"]  # fmt: skip


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- architecture ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BIT)
def test_parameters_and_their_names_equal_timms(name: str) -> None:
    with torch.device("meta"):
        model, reference = vitkit.create_model(name, num_classes=1000), timm.create_model(name)
    assert num_params(model) == num_params(reference)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }


@pytest.mark.parametrize("alias, name", [("BiT-M-R50x1", "resnetv2_50x1_bit"), ("BiT-M-R152x4", "resnetv2_152x4_bit"),
                                         ("ResNet101x3", "resnetv2_101x3_bit")])  # fmt: skip
def test_bit_paper_names_resolve_to_timms(alias: str, name: str) -> None:
    assert vitkit.get_config(alias) == vitkit.get_config(name)
    assert alias in vitkit.list_models(include_aliases=True) and name in vitkit.list_models()


def test_fashion_resnet_matches_the_fashion_vit_in_parameters() -> None:
    resnet, vit = vitkit.create_model("resnetv2_fashion_28"), vitkit.create_model("vit_fashion_patch4_28")
    assert abs(num_params(resnet) / num_params(vit) - 1) < 0.01
    assert resnet.config.data_config == vit.config.data_config  # the same 28x28 greyscale inputs


def test_every_family_gives_one_preprocessing_record() -> None:
    cfg = vitkit.get_config("resnetv2_50x1_bit")
    bit = vitkit.DataConfig((224, 224), 3, (0.5,) * 3, (0.5,) * 3, 0.875, "bilinear")  # timm's pretrained_cfg
    assert (cfg.family, cfg.data_config) == ("resnet", bit)
    assert vitkit.get_config("vit_base_r50_s16_224").family == "hybrid"
    assert vitkit.get_config("ViT-B/16").family == "vit"


def test_data_pipeline_imports_nothing_from_models() -> None:
    for path in (Path(vitkit.__file__).parent / "data").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "models" not in (node.module or ""), f"{path.name} imports {node.module}"


def test_unknown_resnet_name_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match=r"^unknown model 'resnetv2_50x1_bt'; did you mean resnetv2_50x1_bit"):
        vitkit.create_model("resnetv2_50x1_bt")


def test_impossible_config_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match=r"^invalid ResNet config 'resnetv2_test_16': norm_groups=32 does not divide"):
        vitkit.create_model("resnetv2_test_16", norm_groups=32)
    with pytest.raises(ValueError, match=r"unknown ResNet config keys \['embed_dim'\]"):
        vitkit.create_model("resnetv2_test_16", embed_dim=8)


# ---- parity with timm --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def timm_r50() -> torch.nn.Module:
    """timm's resnetv2_50x1_bit with 10 classes, every tensor random."""
    torch.manual_seed(0)
    return randomize_(timm.create_model("resnetv2_50x1_bit", num_classes=10)).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """32x32: the final feature map is 1x1, the cheapest size that runs every stage."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_features_logits_and_pre_logits_match_timm(timm_r50, images) -> None:
    model = vitkit.create_model("resnetv2_50x1_bit", num_classes=10).eval()
    model.load_state_dict(timm_r50.state_dict())
    with torch.no_grad():
        features, expected = model.forward_features(images), timm_r50.forward_features(images)
        torch.testing.assert_close(features, expected, atol=1e-4, rtol=0)  # (2, 2048, 1, 1)
        torch.testing.assert_close(model.forward_head(features), timm_r50.forward_head(expected), atol=1e-4, rtol=0)
        pooled = model.forward_head(features, pre_logits=True)
        torch.testing.assert_close(pooled, timm_r50.forward_head(expected, pre_logits=True), atol=1e-4, rtol=0)
    assert pooled.shape == (2, 2048)


# Small twins, built by timm as it builds resnetv2_*_bit: two units per stage (unit01 with the projection,
# unit02 without), 7 classes. No file is 100 MB.
ARCH = dict(layers=(2, 2), channels=(32, 64), stem_chs=16, norm_groups=8)
TINY = dict(ARCH, num_classes=7)


@pytest.fixture
def timm_tiny() -> torch.nn.Module:
    return randomize_(timm_architecture(vitkit.get_config("resnetv2_test_16", **TINY))).eval()


def test_timm_state_dict_file_loads_with_the_class_count_of_its_head(tmp_path, timm_tiny) -> None:
    torch.save(timm_tiny.state_dict(), tmp_path / "bit.pth")
    model = vitkit.load(tmp_path / "bit.pth", "resnetv2_test_16", **ARCH).eval()
    x = torch.randn(2, 3, 16, 16)
    assert model.config.num_classes == 7
    with torch.no_grad():
        torch.testing.assert_close(model(x), timm_tiny(x), atol=1e-4, rtol=0)


def bit_npz(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """timm's ResNetV2 -> the google-research/big_transfer .npz layout: timm's `_load_weights`, inverted."""
    hwio = lambda w: w.detach().permute(2, 3, 1, 0).numpy()  # noqa: E731  (OIHW -> HWIO)
    vec = lambda w: w.detach().numpy()  # noqa: E731
    out = {
        "resnet/root_block/standardized_conv2d/kernel": hwio(model.stem.conv.weight),
        "resnet/group_norm/gamma": vec(model.norm.weight), "resnet/group_norm/beta": vec(model.norm.bias),
        "resnet/head/conv2d/kernel": hwio(model.head.fc.weight), "resnet/head/conv2d/bias": vec(model.head.fc.bias),
    }  # fmt: skip
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage.blocks):
            prefix = f"resnet/block{i + 1}/unit{j + 1:02d}/"
            for part, n in zip("abc", "123"):
                out[f"{prefix}{part}/standardized_conv2d/kernel"] = hwio(getattr(block, f"conv{n}").weight)
                out[f"{prefix}{part}/group_norm/gamma"] = vec(getattr(block, f"norm{n}").weight)
                out[f"{prefix}{part}/group_norm/beta"] = vec(getattr(block, f"norm{n}").bias)
            if block.downsample is not None:
                out[f"{prefix}a/proj/standardized_conv2d/kernel"] = hwio(block.downsample.conv.weight)
    return out


def test_official_bit_npz_loads_at_parity_and_timm_reads_it_back(tmp_path, timm_tiny) -> None:
    np.savez(tmp_path / "bit.npz", **bit_npz(timm_tiny))
    read_back = timm_architecture(vitkit.get_config("resnetv2_test_16", **TINY))
    read_back.load_pretrained(str(tmp_path / "bit.npz"))
    for key, value in timm_tiny.state_dict().items():
        assert torch.equal(read_back.state_dict()[key], value), key
    model = vitkit.load(tmp_path / "bit.npz", "resnetv2_test_16", **ARCH)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), timm_tiny(x), atol=1e-4, rtol=0)
    assert model.config.num_classes == 7  # from the head's kernel


def test_npz_into_a_vit_is_a_one_line_error(tmp_path, timm_tiny) -> None:
    np.savez(tmp_path / "bit.npz", **bit_npz(timm_tiny))
    with pytest.raises(CheckpointError, match=r"bit\.npz: a BiT \.npz holds a ResNet; vit_test_patch4_16 is a vit model"):
        vitkit.load(tmp_path / "bit.npz", "vit_test_patch4_16")


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path) -> None:
    torch.save(vitkit.create_model("resnetv2_test_16", stem_chs=24).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match=r"wide\.pth: stem\.conv\.weight has shape \(24, 3, 7, 7\) in the "
                                              r"checkpoint, the model expects \(16, 3, 7, 7\)"):  # fmt: skip
        vitkit.load_checkpoint(vitkit.create_model("resnetv2_test_16"), tmp_path / "wide.pth")


def test_save_then_load_rebuilds_the_resnet(tmp_path) -> None:
    model = randomize_(vitkit.create_model("resnetv2_test_16")).eval()
    vitkit.save(model, tmp_path / "r.safetensors")
    again = vitkit.load(tmp_path / "r.safetensors").eval()
    x = torch.randn(2, 3, 16, 16)
    assert isinstance(again, vitkit.ResNetV2) and again.config == model.config
    assert torch.equal(again(x), model(x))


def test_pretrained_true_resolves_to_timms_bit_m_hub_repository(tmp_path, monkeypatch, timm_tiny) -> None:
    import huggingface_hub.constants

    assert default_hub_id("BiT-M-R50x1") == "timm/resnetv2_50x1_bit.goog_in21k"
    save_file(timm_tiny.state_dict(), tmp_path / "w.safetensors")  # R50x1's repository, a small model's weights
    timm_config = {"architecture": "resnetv2_50x1_bit", "num_classes": 7,
                   "pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.875,
                                      "input_size": [3, 224, 224], "interpolation": "bilinear"}}  # fmt: skip
    _lay_out_hub_cache(
        tmp_path / "hub", "timm/resnetv2_50x1_bit.goog_in21k",
        {"config.json": json.dumps(timm_config).encode(),
         "model.safetensors": (tmp_path / "w.safetensors").read_bytes()},
    )  # fmt: skip
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = vitkit.create_model("BiT-M-R50x1", pretrained=True, local_files_only=True, **TINY).eval()
    assert model.config.extra["pretrained"] == "BiT-M-R50x1"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), timm_tiny(x), atol=1e-4, rtol=0)


# ---- the commands ------------------------------------------------------------------------------
needs_fashion_mnist = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="apt-get install dataset-fashion-mnist"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnetv2_test_16 trained for 6 steps on 64 Fashion-MNIST images with the recipe that drops patches."""
    out, root = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("data")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):  # the command prints each warning as one line
        code = main(["train", "--data", "fashion_mnist", "--model", "resnetv2_test_16", "--steps", "6",
                     "--batch-size", "16", "--patch-drop", "0.5", "--limit-train", "64", "--limit-eval", "32",
                     "--data-root", str(root), "--no-progress", "--workers", "0", "--out", str(out)])  # fmt: skip
    assert code == 0 and "vitkit: warning: resnetv2_test_16 has no patches" in err.getvalue()
    return out


@needs_fashion_mnist
def test_train_eval_predict_and_fewshot_take_a_resnet(trained, capsys, tmp_path) -> None:
    checkpoint = str(trained / "model.safetensors")
    assert isinstance(vitkit.load(checkpoint), vitkit.ResNetV2)
    root = ["--data-root", str(tmp_path)]
    assert main(["eval", "--checkpoint", checkpoint, "--data", "fashion_mnist", "--limit", "20", "--json", *root]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 20
    load_data("fashion_mnist", str(tmp_path)).test[0][0].save(tmp_path / "x.png")
    assert main(["predict", "--checkpoint", checkpoint, str(tmp_path / "x.png"), "--topk", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"][0]["topk"]) == 2
    model = vitkit.load(checkpoint)
    loader = eval_loader(Subset(load_data("fashion_mnist", str(tmp_path)).test, range(20)), model.config.data_config, 1)
    features, labels = extract_features(model, loader)  # what `vitkit fewshot` reads: the pooled pre-logits
    assert features.shape == (20, model.config.num_features) and labels.shape == (20,)


def test_bench_counts_every_convolution_and_the_backward_without_the_images_gradient() -> None:
    """Forward FLOPs = 2·MACs of every conv, from hooks on the real model; a training step is 3x that,
    less the stem's input gradient, which the images never need."""
    model, convs = vitkit.create_model("resnetv2_test_16"), []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(
                lambda m, x, y: convs.append(2 * y.numel() * m.in_channels * math.prod(m.kernel_size))
            )
    model(torch.zeros(1, 3, 16, 16))
    assert step_flops(model.config, "infer") == sum(convs)
    assert step_flops(model.config, "train") == 3 * sum(convs) - convs[0]


def test_bench_against_timm_agrees_in_fp32() -> None:
    result = bench.benchmark("resnetv2_test_16", compare="timm", isolate=False, batch_size=2, warmup=1, repeats=2,
                             threads=1)  # fmt: skip
    assert result["max_abs_diff"] <= 1e-4 and result["timm_images_per_s"] > 0


def test_export_to_onnx_agrees_with_onnxruntime(tmp_path) -> None:
    model = randomize_(vitkit.create_model("resnetv2_test_16"))
    report = export_onnx(model, tmp_path / "r.onnx")
    assert report["max_abs_diff"] <= 1e-4 and (tmp_path / "r.onnx").is_file()


@pytest.mark.parametrize("fmt", ["npz", "pth"])
def test_convert_from_bit_npz_or_timm_writes_a_self_describing_file(tmp_path, fmt) -> None:
    reference = randomize_(timm_architecture(vitkit.get_config("resnetv2_test_16"))).eval()
    if fmt == "npz":
        np.savez(tmp_path / "src.npz", **bit_npz(reference))
    else:
        torch.save(reference.state_dict(), tmp_path / "src.pth")
    assert main(["convert", str(tmp_path / f"src.{fmt}"), str(tmp_path / "r.safetensors"), "--model",
                 "resnetv2_test_16"]) == 0  # fmt: skip
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(vitkit.load(tmp_path / "r.safetensors")(x), reference(x), atol=1e-4, rtol=0)


def test_analyze_draws_the_stem_filters_of_a_resnet_and_nothing_that_needs_attention(tmp_path) -> None:
    model = randomize_(vitkit.create_model("resnetv2_test_16"))
    report = analyze(model, torch.randn(4, 3, 16, 16), tmp_path)
    assert report["filters"]["source"] == "stem.conv" and set(report["figures"]) == {"filters"}
    assert (tmp_path / "filters.png").is_file() and "attention_distance" not in report
    w = embedding_filters(model, n=3).components  # principal components of the standardised 7x7 filters
    assert w.shape == (3, 3, 7, 7)


@pytest.mark.parametrize("analysis", [mean_attention_distance, attention_rollout, last_layer_attention])
def test_attention_analyses_of_a_resnet_are_a_one_line_error(analysis) -> None:
    with pytest.raises(ValueError, match=r"needs attention maps; resnetv2_test_16 is a resnet model without any$"):
        analysis(vitkit.create_model("resnetv2_test_16"), torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"^position-embedding similarity needs position embeddings"):
        pos_embed_similarity(vitkit.create_model("resnetv2_test_16"))


def test_fashion_hybrid_feeds_the_fashion_vits_transformer_7x7_tokens_from_a_bit_stem() -> None:
    hybrid, vit = vitkit.create_model("vit_fashion_hybrid_28"), vitkit.create_model("vit_fashion_patch4_28")
    assert hybrid.config.family == "hybrid" and hybrid.config.grid_size == vit.config.grid_size == (7, 7)
    def transformer(model: torch.nn.Module) -> dict[str, torch.Size]:
        return {k: v.shape for k, v in model.state_dict().items() if not k.startswith("patch_embed.")}

    assert transformer(hybrid) == transformer(vit)
    assert hybrid(torch.randn(2, 1, 28, 28)).shape == (2, 10)
