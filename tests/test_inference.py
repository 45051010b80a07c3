"""Loading a checkpoint to run it (vitkit.inference): the one rule for the default device, the one rule for
int8's calibration images, and one clear error for a precision that cannot run.

Most tests pretend to be a VNNI CPU (`hardware.cpu`) and stand in for the quantiser, so that the rules are
checked on any machine; the one that quantises for real skips, naming what is missing, where int8 cannot
run (as tests/test_int8.py does)."""

from __future__ import annotations

from typing import get_args

import pytest
import torch

from vitkit import create_model, hardware, quantize
from vitkit.checkpoints.io import save
from vitkit.inference import (
    InferencePrecision,
    calibration_dataset,
    inference_device,
    load_for_inference,
    quantize_for_inference,
)
from vitkit.precision import Requested

VNNI_CPU = hardware.CpuFeatures("x86_64", "AVX512", bf16=True, int8=True, amx=False)
needs_int8_cpu = pytest.mark.skipif(
    not hardware.cpu().int8, reason=f"needs {hardware.cpu().missing_int8}: this CPU is {hardware.cpu().summary()}"
)


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.safetensors"
    save(create_model("vit_test_patch4_16"), path)
    return path


@pytest.fixture
def with_cuda(monkeypatch):
    """A machine where torch sees a GPU without native bf16 (nothing is moved to it in these tests)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hardware, "cuda_bf16", lambda device=None: False)


@pytest.fixture
def stand_in_quantiser(monkeypatch):
    """A VNNI CPU, and a quantiser that records the calibration dataset instead of quantising."""
    seen = []

    def batches(spec, config, root=None, **kwargs):
        seen.append(spec)
        return [torch.zeros(2, config.in_chans, *config.img_size)]

    monkeypatch.setattr(hardware, "cpu", lambda: VNNI_CPU)
    monkeypatch.setattr(quantize, "calibration_batches", batches)
    monkeypatch.setattr(quantize, "quantize", lambda model, images, compile=True: torch.nn.Identity())
    return seen


def test_inference_precision_is_what_training_takes_plus_int8():
    assert set(get_args(InferencePrecision)) == set(get_args(Requested)) | {"int8"}


def test_the_default_device_is_cuda_when_present(with_cuda):
    assert inference_device("fp32")[0] == "cuda"
    assert inference_device("auto")[1].precision == "fp32"  # auto on a GPU without native bf16


def test_int8_defaults_to_the_cpu_even_with_a_gpu(with_cuda, monkeypatch):
    monkeypatch.setattr(hardware, "cpu", lambda: VNNI_CPU)
    device, choice = inference_device("int8")
    assert device == "cpu" and choice.precision == "int8"


def test_a_device_asked_for_wins_over_the_default(with_cuda):
    assert inference_device("fp32", "cpu")[0] == "cpu"


def test_the_default_device_is_the_cpu_without_a_gpu(checkpoint, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = load_for_inference(checkpoint, precision="fp32")
    assert loaded.device == torch.device("cpu") and not loaded.model.training
    assert loaded.precision == "fp32" and loaded.classifier is loaded.model and loaded.int8 is None


@pytest.mark.parametrize(
    "precision, calibrate, default, expected",
    [
        ("int8", "cifar10", "fashion_mnist", "cifar10"),  # --calibrate first
        ("int8", None, "fashion_mnist", "fashion_mnist"),  # else the command's default (eval: --data)
        ("fp32", "cifar10", "fashion_mnist", None),  # only int8 calibrates
        ("auto", None, None, None),
    ],
)
def test_int8_calibrates_on_calibrate_else_on_the_commands_default(precision, calibrate, default, expected):
    assert calibration_dataset(precision, calibrate, default) == expected


def test_int8_without_calibration_images_is_one_line_before_the_checkpoint_is_read(tmp_path):
    with pytest.raises(ValueError, match=r"--calibrate DATASET") as e:
        load_for_inference(tmp_path / "absent.safetensors", "cpu", "int8")
    assert "\n" not in str(e.value)


def test_an_unknown_precision_is_one_clear_error_before_the_checkpoint_is_read(tmp_path):
    with pytest.raises(ValueError) as e:
        load_for_inference(tmp_path / "absent.safetensors", "cpu", "int4")  # type: ignore[arg-type]
    assert str(e.value) == "unknown precision 'int4'; expected one of auto, fp32, bf16, fp16, int8"


def test_int8_on_a_cpu_without_vnni_or_amx_is_refused_before_the_checkpoint_is_read(tmp_path, monkeypatch):
    avx2 = hardware.CpuFeatures("x86_64", "AVX2", bf16=False, int8=False, amx=False)
    monkeypatch.setattr(hardware, "cpu", lambda: avx2)
    with pytest.raises(ValueError, match="int8 inference needs AVX512-VNNI or AMX int8 instructions"):
        load_for_inference(tmp_path / "absent.safetensors", precision="int8", calibrate="fashion_mnist")


def test_load_for_inference_quantises_on_the_calibration_rules_dataset(checkpoint, stand_in_quantiser):
    loaded = load_for_inference(checkpoint, precision="int8", calibrate_default="fashion_mnist")
    assert stand_in_quantiser == ["fashion_mnist"]
    assert loaded.device == torch.device("cpu") and loaded.choice.precision == "int8"
    assert loaded.precision == "fp32"  # the int8 model takes fp32 images: no autocast around it
    assert loaded.classifier is loaded.int8 is not None


def test_without_a_dataset_only_bench_calibrates_on_photographs(stand_in_quantiser):
    pytest.importorskip("skimage")
    quantize_for_inference(create_model("vit_test_patch4_16"), None)
    assert stand_in_quantiser == []  # no dataset read: scikit-image's photographs


@needs_int8_cpu
def test_an_int8_checkpoint_follows_fp32(fashion_checkpoint):
    """For real (eager reference int8 ops): calibrated on the Fashion-MNIST training images the checkpoint
    names, checked on test images against the same checkpoint in fp32."""
    pytest.importorskip("torchao")
    loaded = load_for_inference(fashion_checkpoint, precision="int8", calibrate_default="fashion_mnist",
                                compile=False)  # fmt: skip
    (x,) = quantize.calibration_batches("fashion_mnist", loaded.model.config, "test", num_images=64, batch_size=64)
    with torch.inference_mode():
        fidelity = quantize.logit_fidelity(loaded.model(x), loaded.classifier(x))
    assert fidelity["top1_agreement_vs_fp32"] >= 0.9 and fidelity["logit_cosine_vs_fp32"] >= 0.95
