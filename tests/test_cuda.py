"""On a CUDA GPU: timm parity, the fused attention kernels (flash in bf16, memory-efficient in fp32) forward
and backward, the benchmark's CUDA rows, and a training run that follows the CPU's step for step.

Skipped without a GPU (CI has none); run where one is lent: `python -m pytest tests/test_cuda.py`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import vitkit
from vitkit import bench
from vitkit.data.datasets import DEBIAN_FASHION_MNIST
from vitkit.peers import timm_twin
from vitkit.precision import autocast
from vitkit.train import fit, make_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _exact_fp32() -> None:
    """fp32 means fp32 here: no TF32 in matmuls or convolutions, whatever the session set."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def test_vit_s16_logits_match_timms_on_the_gpu_in_fp32():
    model = bench.bench_model("vit_small_patch16_224").eval()
    twin = timm_twin(model).eval()
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(CUDA)
    with torch.inference_mode():
        ours, theirs = model.to(CUDA)(x), twin.to(CUDA)(x)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert ours.std() > 0.1  # random head: agreeing logits mean something


@pytest.mark.parametrize(
    "precision,backend", [("bf16", SDPBackend.FLASH_ATTENTION), ("fp32", SDPBackend.EFFICIENT_ATTENTION)]
)
def test_attention_runs_on_the_fused_kernels_forward_and_backward(precision, backend):
    """With only `backend` allowed, SDPA raises if the model's q, k, v don't suit it (layout, head size)."""
    model = vitkit.create_model("vit_small_patch16_224", num_classes=10).to(CUDA)
    x = torch.randn(2, 3, 224, 224, device=CUDA)
    with sdpa_kernel(backend):
        with autocast(CUDA, precision):  # training: autocast
            model(x).float().logsumexp(-1).sum().backward()
        with torch.inference_mode():  # inference: weights in the dtype
            logits = model.eval().to(torch.bfloat16 if precision == "bf16" else torch.float32)(x.to(model.pos_embed))
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and torch.isfinite(logits).all()


@pytest.mark.parametrize("precision,mode", [("fp32", "infer"), ("bf16", "infer"), ("bf16", "train")])
def test_bench_measures_both_libraries_on_the_gpu(precision, mode):
    result = bench.benchmark(
        "vit_test_patch4_16", batch_size=4, precision=precision, mode=mode, compare="timm", device="cuda",
        isolate=False, warmup=1, repeats=3,
    )  # fmt: skip
    assert result["device"] == "cuda" and result["max_abs_diff"] <= (1e-4 if precision == "fp32" else 0.1)
    for prefix in ("", "timm_"):
        assert result[f"{prefix}images_per_s"] > 0 and result[f"{prefix}peak_memory_mb"] > 0  # allocated bytes


@pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="no Fashion-MNIST")
def test_a_training_run_on_the_gpu_follows_the_cpu_run_step_for_step(tmp_path):
    """Same seed, same batches, fp32: the per-step losses of a CUDA run equal the CPU run's."""

    def losses(device: str) -> list[float]:
        cfg = make_config(
            {"steps": 6, "batch_size": 16}, data="fashion_mnist", model="vit_test_patch4_16", limit_train=64,
            limit_eval=32, data_root=str(tmp_path / "data"), progress=False, workers=0, log_every=1,
            out=str(tmp_path / device), device=device,
        )  # fmt: skip
        fit(cfg)
        records = [json.loads(line) for line in (tmp_path / device / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in records if "loss" in r]

    cpu, cuda = losses("cpu"), losses("cuda")
    assert len(cuda) == 6 and cpu[0] != cpu[-1]
    assert cuda == pytest.approx(cpu, abs=1e-4)


def test_a_rows_peak_memory_does_not_depend_on_what_ran_before_it_in_the_process():
    """In a fresh process, the first training row used to carry cuBLAS's workspaces for the main and
    the autograd threads alone; measured twice in one process, a row now reports the same peak."""
    code = (
        "import json; from vitkit import bench; "
        "rows = [bench.benchmark('vit_test_patch4_16', batch_size=4, mode='train', device='cuda', isolate=False, "
        "warmup=1, repeats=2)['peak_memory_mb'] for _ in range(2)]; print(json.dumps(rows))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.PIPE, text=True).stdout
    first, second = json.loads(out.splitlines()[-1])
    assert first == pytest.approx(second, abs=1.0)
