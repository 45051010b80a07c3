"""int8 inference (vitkit.quantize): agreement with fp32 on a small model trained on Fashion-MNIST, the int8
ONNX round trip (vitkit.export), the CLI, and the errors where int8 cannot run.

Most tests run the quantised graph eagerly (compile=False: torchao's reference int8 ops, the same numbers
as the compiled oneDNN kernels); the CLI test compiles, as users run it. Tests that need VNNI/AMX ask
vitkit.hardware, so that they skip, naming the missing feature, on an AVX2-only CPU and under
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 (which .ci/run uses for a second pass)."""

import json
import os
import platform
import statistics
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

pytest.importorskip("torchao")

from vitkit import export, hardware  # noqa: E402
from vitkit import quantize as q  # noqa: E402
from vitkit.checkpoints.io import save  # noqa: E402
from vitkit.data import load_data  # noqa: E402
from vitkit.evaluate import eval_loader  # noqa: E402
from vitkit.models import VisionTransformer, get_config  # noqa: E402

DATA = "fashion_mnist"
needs_int8_cpu = pytest.mark.skipif(
    not hardware.cpu().int8, reason=f"needs {hardware.cpu().missing_int8}: this CPU is {hardware.cpu().summary()}"
)
x86 = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the AVX2 caps are x86's")


@pytest.fixture(scope="module")
def fashion():
    try:
        return load_data(DATA)
    except (ValueError, FileNotFoundError, OSError) as e:
        pytest.skip(f"Fashion-MNIST not available: {e}")


@pytest.fixture(scope="module")
def trained(fashion) -> VisionTransformer:
    """A two-layer vit_fashion_patch7_28 trained for two epochs on 2,048 Fashion-MNIST images."""
    torch.manual_seed(0)
    model = VisionTransformer(get_config("vit_fashion_patch7_28", depth=2))
    loader = eval_loader(Subset(fashion.train, range(2048)), model.config.data_config, fashion.channels, batch_size=128)
    batches = list(loader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(2):
        for images, labels in batches:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def test_images(fashion, trained):
    test = Subset(fashion.test, range(2000))
    return [images for images, _ in eval_loader(test, trained.config.data_config, fashion.channels, batch_size=500)]


@needs_int8_cpu
def test_int8_picks_the_fp32_class_on_fashion_mnist_test_images(trained, test_images):
    int8 = q.quantize(trained, q.calibration_batches(DATA, trained.config), compile=False)
    with torch.no_grad():
        reference = torch.cat([trained(x) for x in test_images])
    fidelity = q.logit_fidelity(reference, torch.cat([int8(x) for x in test_images]))
    assert fidelity["top1_agreement_vs_fp32"] >= 0.99
    assert fidelity["logit_cosine_vs_fp32"] >= 0.99


@needs_int8_cpu
def test_uncalibrated_scales_are_worse_than_calibrated_ones(trained, test_images):
    """Calibration matters: scales fixed on noise images give logits further from fp32 than scales fixed on
    the training images (checks that the calibration batches reach the observers)."""
    noise = [torch.randn(64, 1, 28, 28) * 4]
    calibrated = q.quantize(trained, q.calibration_batches(DATA, trained.config), compile=False)
    uncalibrated = q.quantize(trained, noise, compile=False)
    x = test_images[0]
    with torch.no_grad():
        reference = trained(x)
    errors = [(m(x) - reference).norm().item() for m in (calibrated, uncalibrated)]
    assert errors[0] < errors[1]


@needs_int8_cpu
def test_a_model_calibrated_one_image_at_a_time_runs_any_batch_size():
    model = VisionTransformer(get_config("vit_test_patch4_16")).eval()
    int8 = q.quantize(model, [torch.randn(1, 3, 16, 16) for _ in range(3)], compile=False)
    for n in (1, 3, 8):
        assert int8(torch.randn(n, 3, 16, 16)).shape == (n, model.config.num_classes)


def test_int8_onnx_export_round_trip(trained, fashion, tmp_path):
    calibration, check = export.int8_onnx_images(DATA, trained.config)
    report = export.export_onnx_int8(trained, tmp_path / "int8.onnx", calibration, check)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": check.numpy()})[0])
    with torch.no_grad():
        want = trained(check)
    assert q.logit_fidelity(want, got) == pytest.approx(
        {k: report[k] for k in ("logit_cosine_vs_fp32", "top1_agreement_vs_fp32")}
    )
    assert report["logit_cosine_vs_fp32"] >= export.MIN_COSINE and report["top1_agreement_vs_fp32"] >= 0.95
    assert report["size_mb"] < 0.5 * report["fp32_size_mb"]  # int8 weights
    assert any(n.op_type == "QuantizeLinear" for n in __import__("onnx").load(str(tmp_path / "int8.onnx")).graph.node)


def int8_weights(path) -> list:
    """The int8 weight matrices (initialisers) of a QDQ ONNX file, as numpy arrays."""
    import onnx
    from onnx import numpy_helper

    arrays = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    return [a for a in arrays if a.dtype.name == "int8" and a.ndim >= 2]


# Full-range weights saturate the 16-bit sums without VNNI: there the export's fidelity check refuses them.
@pytest.mark.parametrize("full_range, bits", [(False, 7), pytest.param(True, 8, marks=needs_int8_cpu)])
def test_int8_onnx_weights_are_7_bit_unless_full_range_is_asked_for(trained, tmp_path, full_range, bits):
    """7-bit weights (ONNX Runtime's reduce_range: [-64, 63]) cannot saturate the 16-bit sums of a CPU without
    VNNI; --int8-full-range uses all of [-127, 127]."""
    calibration, check = export.int8_onnx_images(DATA, trained.config)
    report = export.export_onnx_int8(trained, tmp_path / "int8.onnx", calibration, check, full_range=full_range)
    weights = int8_weights(tmp_path / "int8.onnx")
    largest = max(int(abs(w.astype("int16")).max()) for w in weights)
    assert report["weight_bits"] == bits and len(weights) >= 4 * trained.config.depth
    assert largest <= 64 if bits == 7 else largest > 64


def test_an_int8_export_that_strays_from_fp32_is_not_written(trained, tmp_path):
    calibration, check = export.int8_onnx_images(DATA, trained.config)
    with pytest.raises(RuntimeError, match="was not written"):
        export.export_onnx_int8(trained, tmp_path / "int8.onnx", calibration, check, min_cosine=1.0)
    assert not (tmp_path / "int8.onnx").exists()


@needs_int8_cpu
def test_cli_eval_int8_matches_fp32_accuracy(trained, tmp_path, capsys):
    """The compiled path, end to end: `vitkit eval --precision int8` (calibrated on the training split)."""
    from vitkit.cli import main

    path = tmp_path / "model.safetensors"
    save(trained, path)
    top1 = {}
    for precision in ("fp32", "int8"):
        argv = ["eval", "--checkpoint", str(path), "--data", DATA, "--limit", "256", "--batch-size", "256"]
        assert main([*argv, "--precision", precision, "--device", "cpu", "--json", "--out", str(tmp_path)]) == 0
        top1[precision] = json.loads(capsys.readouterr().out)["top1"]
    assert abs(top1["int8"] - top1["fp32"]) <= 2 / 256


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"sys.modules": {"torchao": None}}, "needs torchao"),
        ({"cpu": False}, "needs a CPU with AVX512-VNNI or AMX int8 instructions"),
        ({"device": "meta"}, "runs on CPU only"),
    ],
)
def test_int8_refuses_with_a_clear_message_where_it_cannot_run(patch, message, monkeypatch):
    model = VisionTransformer(get_config("vit_test_patch4_16"))
    if "sys.modules" in patch:
        monkeypatch.setitem(sys.modules, "torchao", None)
    if "cpu" in patch:
        avx2 = hardware.CpuFeatures("x86_64", "AVX2", bf16=False, int8=False, amx=False)
        monkeypatch.setattr(hardware, "cpu", lambda: avx2)
    if "device" in patch:
        model = model.to("meta")
    with pytest.raises(ValueError, match=message):
        q.quantize(model, [torch.randn(2, 3, 16, 16)])


@x86
def test_int8_refuses_in_one_line_on_a_cpu_without_vnni_or_amx(tmp_path):
    """Under the AVX2 caps (a real AVX2-only CPU answers the same): `vitkit eval --precision int8` ends with one
    line that names the missing instructions and exit 2, before the checkpoint is read."""
    env = {**os.environ, **hardware.AVX2_ENV}
    argv = ["eval", "--checkpoint", str(tmp_path / "absent.safetensors"), "--data", DATA, "--precision", "int8"]
    proc = subprocess.run([sys.executable, "-m", "vitkit", *argv], env=env, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "vitkit eval: error: int8 inference needs AVX512-VNNI or AMX int8 instructions, which this CPU lacks "
        "(x86_64, ATen AVX2, bf16 emulated, no VNNI/AMX int8); use --precision auto or fp32"
    ]


def test_int8_refuses_model_families_it_has_not_been_checked_on():
    from vitkit import create_model

    with pytest.raises(ValueError, match="supports vit models; resnetv2_test_16 is a resnet"):
        q.quantize(create_model("resnetv2_test_16"), [torch.randn(2, 3, 16, 16)])


def test_predict_int8_without_calibration_images_is_a_one_line_error(trained, tmp_path, capsys):
    from vitkit.cli import main

    path = tmp_path / "model.safetensors"
    save(trained, path)
    assert main(["predict", "--checkpoint", str(path), "--precision", "int8", "x.png"]) == 2
    assert "--calibrate DATASET" in capsys.readouterr().err


@needs_int8_cpu
def test_bench_int8_reports_agreement_with_fp32_beside_timm_bf16_eager():
    from vitkit.bench import benchmark

    result = benchmark("vit_test_patch4_16", batch_size=4, precision="int8", compare="timm", isolate=False,
                       warmup=1, repeats=2)  # fmt: skip
    assert result["logit_cosine_vs_fp32"] >= 0.99 and result["top1_agreement_vs_fp32"] == 1.0
    assert result["compile"] and result["timm_images_per_s"] > 0
    assert result["ratio"] == statistics.median(result["round_ratios"])
