"""ONNX export: onnxruntime reproduces PyTorch on real photographs (scikit-image's) within 1e-4, for any
batch size; a failing check leaves no file; the `vitkit export` command writes a checked file."""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

import vitkit
from vitkit import export


@pytest.fixture
def model() -> vitkit.VisionTransformer:
    model = vitkit.create_model("vit_tiny_patch16_224", img_size=32, depth=2).eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)  # zero at init: a random head gives logits that differ
    return model


def test_sample_images_are_three_normalised_photographs_at_the_model_size():
    x = export.sample_images(vitkit.get_config("vit_tiny_patch16_224", img_size=48, mean=(0.5,) * 3, std=(0.5,) * 3))
    assert x.shape == (3, 3, 48, 48) and x.dtype == torch.float32
    assert -1.0 <= x.min() < -0.5 and 0.5 < x.max() <= 1.0  # [0, 1] pixels mapped to [-1, 1]


def test_onnx_export_matches_pytorch_on_real_images(tmp_path, model):
    report = export.export_onnx(model, tmp_path / "m.onnx")
    assert report["num_images"] == 3 and report["max_abs_diff"] < 1e-4 and report["top1_agreement"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # written atomically, no leftovers


def test_exported_batch_axis_is_dynamic(tmp_path, model):
    export.export_onnx(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        got = session.run(None, {export.INPUT_NAME: x.numpy()})[0]
        np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4, rtol=0)


def test_a_failed_parity_check_leaves_no_file(tmp_path, model):
    with pytest.raises(RuntimeError, match="differs from PyTorch"):
        export.export_onnx(model, tmp_path / "m.onnx", atol=0.0, check_images=torch.randn(2, 3, 32, 32) * 50)
    assert list(tmp_path.iterdir()) == []


def test_low_precision_models_are_refused(tmp_path, model):
    with pytest.raises(ValueError, match="fp32"):
        export.export_onnx(model.to(torch.bfloat16), tmp_path / "m.onnx")


def test_cli_exports_a_vitkit_checkpoint(tmp_path, model, capsys):
    vitkit.save(model, tmp_path / "m.safetensors")
    parser = argparse.ArgumentParser()
    export.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["export", "--checkpoint", str(tmp_path / "m.safetensors"), "--format", "onnx", "--out",
         str(tmp_path / "m.onnx"), "--json"]
    )  # fmt: skip
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["max_abs_diff"] < 1e-4 and "onnxruntime vs PyTorch" in err
    assert (tmp_path / "m.onnx").stat().st_size > 0
