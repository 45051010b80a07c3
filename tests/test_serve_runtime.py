"""`vitkit serve --runtime onnxruntime`: the predictions' forward pass in ONNX Runtime, equal to PyTorch's."""

from __future__ import annotations

import pytest
import torch
from starlette.testclient import TestClient
from test_serve import noisy_test_model
from test_serve_queue import CLASSES, _png

from vitkit.cli import main
from vitkit.serve.app import create_app

ort = pytest.importorskip("onnxruntime")


def _predict_all(app, images: list[bytes]) -> tuple[list[list[float]], dict]:
    """Every class probability of each image, from one batch request, and /v1/model."""
    with TestClient(app) as c:
        r = c.post("/v1/predict?topk=10", files=[("file", (f"{i}.png", im)) for i, im in enumerate(images)])
        info = c.get("/v1/model").json()
    assert r.status_code == 200
    return [sorted((t["index"], t["prob"]) for t in result["topk"]) for result in r.json()["results"]], info


def test_onnxruntime_serves_the_probabilities_of_the_torch_runtime(monkeypatch):
    model, images = noisy_test_model(), [_png(i) for i in range(5)]
    runs = []
    run = ort.InferenceSession.run
    monkeypatch.setattr(ort.InferenceSession, "run", lambda self, *a, **k: runs.append(1) or run(self, *a, **k))
    torch_probs, torch_info = _predict_all(create_app(model, CLASSES), images)
    assert not runs
    onnx_probs, onnx_info = _predict_all(create_app(model, CLASSES, runtime="onnxruntime"), images)
    assert runs  # ONNX Runtime computed them (and the warm-up's batches)
    assert (torch_info["runtime"], onnx_info["runtime"]) == ("torch", "onnxruntime")
    for want, got in zip(torch_probs, onnx_probs):
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-5)


def test_onnxruntime_serves_fp32_only():
    with pytest.raises(ValueError, match="onnxruntime serves fp32"):
        create_app(noisy_test_model(), CLASSES, precision="bf16", runtime="onnxruntime")


@pytest.mark.parametrize("option", [["--precision", "bf16"], ["--device", "cuda"]])
def test_a_runtime_that_cannot_serve_the_options_is_a_one_line_error(fashion_checkpoint, option, capsys):
    assert main(["serve", "--checkpoint", str(fashion_checkpoint), "--runtime", "onnxruntime", *option]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--runtime onnxruntime serves fp32 on the CPU" in err
