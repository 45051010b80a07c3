"""ONNX export: onnxruntime reproduces PyTorch on real photographs (scikit-image's) within 1e-4, for any
batch size; a failing check leaves no file; the `vitkit export` command writes a checked file; the file
describes itself, and docs/export.md's client, which reads only the file, gives `vitkit predict`'s answer."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import vitkit
from vitkit.commands import add_export_parser
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
    add_export_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["export", "--checkpoint", str(tmp_path / "m.safetensors"), "--format", "onnx", "--out",
         str(tmp_path / "m.onnx"), "--json"]
    )  # fmt: skip
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["max_abs_diff"] < 1e-4 and "onnxruntime vs PyTorch" in err
    assert (tmp_path / "m.onnx").stat().st_size > 0


# ---- a self-describing file: metadata_props and docs/export.md's client ------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"


@pytest.fixture
def model10() -> vitkit.VisionTransformer:
    """A 10-class model whose classes get distinct probabilities."""
    model = vitkit.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=10).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)
    return model


def _client_snippet() -> str:
    """The Python block of docs/export.md that reads the file's metadata (the client, as documented)."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    (snippet,) = [b for b in blocks if "custom_metadata_map" in b]
    return snippet


def test_the_export_names_its_outputs_and_describes_its_classes_and_preprocessing(tmp_path, model10):
    export.export_onnx(model10, tmp_path / "m.onnx", classes=["cat", "dog", "fish", "bird", "frog"] * 2)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    assert meta["classes"][:3] == ["cat", "dog", "fish"] and meta["input_size"] == [3, 32, 32]
    assert (meta["resize"], meta["resize_mode"], meta["crop"]) == ([35, 35], "shorter_side", [32, 32])  # 32 / 0.9
    assert (meta["channels"], meta["mean"], meta["std"], meta["interpolation"]) == (3, [0.5] * 3, [0.5] * 3, "bicubic")
    logits, probs = session.run(None, {export.INPUT_NAME: torch.randn(2, 3, 32, 32).numpy()})
    np.testing.assert_allclose(probs, torch.from_numpy(logits).softmax(-1).numpy(), atol=1e-6)


def _astronaut(path: Path) -> None:
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()[40:340, :, :]).save(path)  # 512 x 300: not square


@pytest.mark.parametrize("kind", ["rgb-photo", "fashion-png"])
def test_the_documented_client_gives_vitkit_predicts_probabilities(
    tmp_path, model10, monkeypatch, capsys, kind, request
):
    """Runs docs/export.md's client as written, on the exported file alone; reference: predict_files."""
    from vitkit.checkpoints.metadata import checkpoint_classes
    from vitkit.evaluate.predict import predict_files

    image, model = tmp_path / "image.png", model10
    if kind == "rgb-photo":
        classes = [f"class {i}" for i in range(10)]
        _astronaut(image)
    else:
        checkpoint = request.getfixturevalue("fashion_checkpoint")
        model, classes = vitkit.load(checkpoint).eval(), checkpoint_classes(checkpoint)
        image.write_bytes(request.getfixturevalue("fashion_pngs")[0])
    export.export_onnx(model, tmp_path / "m.onnx", classes=classes)
    monkeypatch.setattr("sys.argv", ["client.py", str(tmp_path / "m.onnx"), str(image)])
    namespace: dict = {}
    exec(_client_snippet(), namespace)
    (prediction,) = predict_files(model, [str(image)], classes, topk=len(classes))
    expected = {entry["label"]: entry["prob"] for entry in prediction.topk}
    np.testing.assert_allclose(namespace["probabilities"], [expected[c] for c in classes], atol=2e-6, rtol=0)
    assert capsys.readouterr().out.split("\n")[0].split()[-1] == f"{prediction.topk[0]['prob']:.4f}"


def test_the_int8_export_keeps_the_outputs_and_metadata(tmp_path, model10):
    check = torch.randn(8, 3, 32, 32)
    export.export_onnx_int8(model10, tmp_path / "q.onnx", [check], check, min_cosine=0.5, classes=list("abcdefghij"))
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    assert json.loads(session.get_modelmeta().custom_metadata_map["classes"]) == list("abcdefghij")


def test_a_model_with_stochastic_depth_exports_in_eval_mode_and_stays_there(tmp_path):
    """The exporter restores the training flag it found on the wrapper of the outputs, recursively: the wrapper
    must carry the model's own, or the check compares the file with a model whose drop path is on again."""
    model = vitkit.create_model("vit_test_patch4_16", drop_path=0.1).eval()
    report = export.export_onnx(model, tmp_path / "m.onnx", check_images=torch.randn(3, 3, 16, 16))
    assert report["max_abs_diff"] < 1e-4 and not model.training
