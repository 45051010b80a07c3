"""What the machine runs natively (vitkit.hardware), what `--precision auto` makes of it (vitkit.precision),
and Muon's Newton-Schulz precision (vitkit.train.optim), on every kind of CPU.

.ci/run runs this file a second time under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2, so an
AVX512 machine checks the AVX2 paths too."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import torch
import yaml

import vitkit
from vitkit import hardware
from vitkit.data.datasets import DEBIAN_FASHION_MNIST
from vitkit.precision import resolve_precision
from vitkit.train.optim import Muon, build_optimizer, muon_dtype, newton_schulz

x86 = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the AVX2 caps are x86's")
AVX2 = hardware.CpuFeatures("x86_64", "AVX2", bf16=False, int8=False, amx=False)
SAPPHIRE_RAPIDS = hardware.CpuFeatures("x86_64", "AVX512", bf16=True, int8=True, amx=True)
# torch.optim.Muon's defaults (Keller Jordan's quintic)
NS = {"coefficients": (3.4445, -4.7750, 2.0315), "steps": 5, "eps": 1e-7}


def in_child(code: str, env: dict[str, str | None]) -> dict:
    """Run `code` (which prints one JSON object last) in a fresh Python with `env` added (None: removed)."""
    env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


# ---- vitkit.hardware -------------------------------------------------------------------------------
@x86
def test_the_avx2_caps_make_any_x86_cpu_report_no_native_bf16_and_no_int8():
    code = "import json; from vitkit import hardware; print(json.dumps(hardware.cpu().to_dict()))"
    assert in_child(code, hardware.AVX2_ENV) == {"machine": "x86_64", "capability": "AVX2", "bf16": False,
                                                 "int8": False, "amx": False}  # fmt: skip


@x86
def test_the_onednn_cap_alone_takes_away_what_it_names():
    code = "import json; from vitkit import hardware; print(json.dumps(hardware.cpu().to_dict()))"
    native = in_child(code, dict.fromkeys(hardware.AVX2_ENV))
    vnni_only = in_child(code, {"ATEN_CPU_CAPABILITY": None, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"})
    assert vnni_only["bf16"] is False and vnni_only["int8"] == native["int8"]
    bf16 = in_child(code, {"ATEN_CPU_CAPABILITY": None, "ONEDNN_MAX_CPU_ISA": "avx512_core_bf16"})  # any case
    assert bf16["bf16"] == native["bf16"]


@x86
def test_emulated_bf16_is_what_the_caps_promise_much_slower_than_fp32():
    """Not a bookkeeping trick: under the caps, PyTorch's bf16 matrix product really takes the slow path."""
    code = """import json, time, torch
torch.set_num_threads(1)
def ms(dtype):
    a, b = torch.randn(384, 384, dtype=dtype), torch.randn(384, 384, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    return (time.perf_counter() - start) / 5
print(json.dumps({"fp32": ms(torch.float32), "bf16": ms(torch.bfloat16)}))"""
    times = in_child(code, hardware.AVX2_ENV)
    assert times["bf16"] > 3 * times["fp32"]  # about 40-80x on an AVX512-BF16 EPYC


def test_the_summary_names_what_each_kind_lacks():
    assert AVX2.summary() == "x86_64, ATen AVX2, bf16 emulated, no VNNI/AMX int8"
    assert "AVX512-VNNI or AMX" in AVX2.missing_int8 and "AVX512-BF16" in AVX2.missing_bf16
    assert SAPPHIRE_RAPIDS.summary() == "x86_64, ATen AVX512, bf16 native, int8 AMX"
    assert SAPPHIRE_RAPIDS.missing_int8 == SAPPHIRE_RAPIDS.missing_bf16 == ""


# ---- --precision auto ------------------------------------------------------------------------------
@pytest.mark.parametrize("cpu, want", [(AVX2, "fp32"), (SAPPHIRE_RAPIDS, "bf16")])
def test_auto_is_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, cpu, want):
    monkeypatch.setattr(hardware, "cpu", lambda: cpu)
    choice = resolve_precision("auto", "cpu")
    assert choice.precision == want and choice.warning == ""
    assert ("native" if want == "bf16" else "emulated") in choice.reason and cpu.summary() in choice.reason


def test_auto_on_this_machine_follows_hardware():
    choice = resolve_precision("auto", "cpu")
    assert choice.precision == ("bf16" if hardware.cpu().bf16 else "fp32")
    assert choice.to_dict()["requested"] == "auto" and choice.line().startswith(f"precision: {choice.precision} (auto: ")


def test_explicit_bf16_on_a_cpu_that_emulates_it_runs_with_a_one_line_warning(monkeypatch):
    monkeypatch.setattr(hardware, "cpu", lambda: AVX2)
    choice = resolve_precision("bf16", "cpu")
    assert choice.precision == "bf16" and "emulated" in choice.warning and "slower than fp32" in choice.warning
    assert choice.line().splitlines()[1].startswith("vitkit: warning: bf16 is emulated")
    monkeypatch.setattr(hardware, "cpu", lambda: SAPPHIRE_RAPIDS)
    assert resolve_precision("bf16", "cpu").warning == ""


@pytest.mark.parametrize(
    "requested, device, native, message",
    [
        ("bf17", "cpu", True, "unknown precision 'bf17'; expected one of auto, fp32, bf16, fp16, int8"),
        ("int8", "cuda", True, "int8 inference runs on CPU only, not cuda"),
        ("bf16", "cuda", False, "this GPU has no native bf16"),
    ],
)
def test_precisions_the_device_cannot_run_are_one_line_errors(monkeypatch, requested, device, native, message):
    monkeypatch.setattr(hardware, "native_bf16", lambda d: native)
    with pytest.raises(ValueError, match=message):
        resolve_precision(requested, device)


def test_int8_on_a_cpu_without_vnni_or_amx_names_the_missing_instructions(monkeypatch):
    monkeypatch.setattr(hardware, "cpu", lambda: AVX2)
    with pytest.raises(ValueError, match="int8 inference needs AVX512-VNNI or AMX int8 instructions, which this CPU"):
        resolve_precision("int8", "cpu")


@pytest.mark.parametrize("argv", [["train", "--data", "fashion_mnist"], ["eval", "--checkpoint", "x", "--data", "y"],
                                  ["bench", "--model", "vit_test_patch4_16"]])  # fmt: skip
def test_an_unknown_precision_on_the_command_line_is_one_line_and_exit_2(argv):
    proc = subprocess.run([sys.executable, "-m", "vitkit", *argv, "--precision", "bf17"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "invalid choice: 'bf17'" in proc.stderr


@pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="no Fashion-MNIST")
def test_a_run_records_what_auto_chose_and_why(tmp_path, capsys):
    from vitkit.train import fit, make_config

    cfg = make_config({"steps": 1, "batch_size": 8}, data="fashion_mnist", model="vit_test_patch4_16", limit_train=16,
                      limit_eval=8, progress=False, workers=0, out=str(tmp_path / "run"),
                      data_root=str(tmp_path / "data"))  # fmt: skip
    fit(cfg)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    want = resolve_precision("auto", "cpu")
    assert config["train"]["precision"] == "auto"  # what was asked: a resume on another machine asks the same
    assert config["derived"]["precision"] == want.to_dict()
    assert config["derived"]["muon_newton_schulz"] == ("bf16" if hardware.cpu().bf16 else "fp32")
    assert capsys.readouterr().err.count(f"precision: {want.precision} (auto: ") == 1


# ---- Muon ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(48, 32), (32, 48)])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_in_bf16_steps_exactly_as_torch_optim_muon(shape, nesterov):
    """Three steps from the same weights and gradients, with match_rms_adamw scaling: bit for bit."""
    w = torch.randn(*shape)
    ours, theirs = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    options = dict(lr=0.02, weight_decay=0.05, momentum=0.95, nesterov=nesterov, adjust_lr_fn="match_rms_adamw")
    opt_ours, opt_theirs = Muon([ours], ns_dtype=torch.bfloat16, **options), torch.optim.Muon([theirs], **options)
    for _ in range(3):
        g = torch.randn(*shape)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt_ours.step(), opt_theirs.step()
    assert torch.equal(ours, theirs)
    assert torch.equal(opt_ours.state[ours]["momentum_buffer"], opt_theirs.state[theirs]["momentum_buffer"])


@pytest.mark.parametrize("shape", [(128, 512), (512, 128), (128, 128)])
def test_fp32_newton_schulz_approaches_the_svd_polar_factor(shape):
    """Against the exact polar factor U V^T of G = U S V^T, to test_train's tolerance for torch's Muon: the
    quintic's singular values land near [0.7, 1.2] (not 1: its coefficients trade exactness for speed; a
    square Gaussian's smallest ones stay lower), so the direction matches and the scale roughly. fp32 and
    bf16 iterations agree to bf16's rounding."""
    g = torch.randn(*shape)
    u, _, vt = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vt
    x = newton_schulz(g, NS["coefficients"], NS["steps"], NS["eps"], torch.float32)
    assert x.dtype == torch.float32 and x.shape == g.shape
    assert torch.nn.functional.cosine_similarity(x.flatten(), polar.flatten(), dim=0) > 0.9
    assert 0.7 < x.norm() / polar.norm() < 1.3
    assert torch.linalg.svdvals(x).max() < 1.25
    low = newton_schulz(g, NS["coefficients"], NS["steps"], NS["eps"], torch.bfloat16).float()
    assert torch.nn.functional.cosine_similarity(x.flatten(), low.flatten(), dim=0) > 0.99


def test_newton_schulz_leaves_its_input_alone():
    g = torch.randn(16, 8)
    before = g.clone()
    newton_schulz(g, NS["coefficients"], NS["steps"], NS["eps"], torch.float32)
    assert torch.equal(g, before)


@pytest.mark.parametrize("cpu, want", [(AVX2, torch.float32), (SAPPHIRE_RAPIDS, torch.bfloat16)])
def test_muon_orthogonalises_in_bf16_only_where_bf16_is_native(monkeypatch, cpu, want):
    monkeypatch.setattr(hardware, "cpu", lambda: cpu)
    model = vitkit.create_model("vit_test_patch4_16")
    optimizer = build_optimizer(model, vitkit.train.get_recipe("fashion-cpu"))
    assert optimizer.optimizers[0].ns_dtype == want
    assert muon_dtype(optimizer) == {torch.float32: "fp32", torch.bfloat16: "bf16"}[want]


def test_muon_state_loads_into_torch_optim_muon_and_back():
    p = torch.nn.Parameter(torch.randn(8, 4))
    ours = Muon([p], ns_dtype=torch.float32, lr=0.01)
    p.grad = torch.randn(8, 4)
    ours.step()
    theirs = torch.optim.Muon([p], lr=0.01)
    theirs.load_state_dict(ours.state_dict())
    again = Muon([p], lr=0.01)
    again.load_state_dict(theirs.state_dict())
    assert torch.equal(again.state[p]["momentum_buffer"], ours.state[p]["momentum_buffer"])


def test_compile_missing_names_the_missing_cpp_compiler():
    import shutil

    import torch._inductor.config as inductor

    with inductor.patch({"cpp.cxx": ("no-such-compiler++",)}):
        assert "C++ compiler" in hardware.compile_missing("cpu")
    if shutil.which("g++"):  # found again once the search list is back
        assert hardware.compile_missing("cpu") is None
