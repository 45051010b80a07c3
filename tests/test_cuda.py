"""On a CUDA GPU: timm parity, the fused attention kernels (flash in bf16, memory-efficient in fp32) forward
and backward, the benchmark's CUDA rows (and CUDA-graph rows), a training run that follows the CPU's step
for step, the device-resident feed, the captured training step against the eager one, and SIGTERM.

Skipped without a GPU (CI has none); run where one is lent: `python -m pytest tests/test_cuda.py`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

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
@pytest.mark.parametrize("feed", ["loader", "device"])
def test_a_training_run_on_the_gpu_follows_the_cpu_run_step_for_step(tmp_path, feed):
    """Same seed, same batches (either feed), fp32: the per-step losses of a CUDA run equal the CPU run's."""

    def losses(device: str) -> list[float]:
        cfg = make_config(
            {"steps": 6, "batch_size": 16}, data="fashion_mnist", model="vit_test_patch4_16", limit_train=64,
            limit_eval=32, data_root=str(tmp_path / "data"), progress=False, workers=0, log_every=1,
            out=str(tmp_path / device), device=device, feed=feed,
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


# ---- issue 28: the device-resident feed, the captured step, SIGTERM, graph rows -------------------------

needs_fashion = pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="no Fashion-MNIST")  # fmt: skip


def _tiny(tmp_path, out: str, recipe: dict | None = None, **run):
    fields = dict(data="fashion_mnist", model="vit_test_patch4_16", limit_train=128, limit_eval=64,
                  data_root=str(tmp_path / "data"), progress=False, workers=0, log_every=1, out=str(tmp_path / out),
                  device="cuda", feed="device")  # fmt: skip
    recipe = {"steps": 12, "batch_size": 32, "optimizer": "adamw", "label_smoothing": 0.1, **(recipe or {})}
    return make_config(recipe, **{**fields, **run})


def _losses(path) -> list[float]:
    return [json.loads(line)["loss"] for line in (path / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]  # fmt: skip


@needs_fashion
def test_the_captured_step_trains_like_the_eager_one(tmp_path):
    """Same seed, same device-fed batches, fp32: the CUDA graph's per-step losses and final weights follow
    the eager step's (the warm-up before capture is undone)."""
    from safetensors.torch import load_file

    fit(_tiny(tmp_path, "graph", cuda_graphs="on"))
    fit(_tiny(tmp_path, "eager", cuda_graphs="off"))
    config = (tmp_path / "graph" / "config.yaml").read_text()
    assert "cuda_graphs: true" in config and "augmentation: device" in config
    graph, eager = _losses(tmp_path / "graph"), _losses(tmp_path / "eager")
    assert len(graph) == 12 and graph[0] != graph[-1]
    assert graph == pytest.approx(eager, abs=2e-4)
    a, b = load_file(tmp_path / "graph" / "model.safetensors"), load_file(tmp_path / "eager" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    records = [json.loads(line) for line in (tmp_path / "graph" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if "loss" in r]
    assert all({"train_loss", "train_top1", "grad_norm"} <= r.keys() for r in trained)
    assert trained[-1]["train_loss"] == pytest.approx(trained[-1]["loss"])  # one step a record: the same step


@needs_fashion
def test_a_captured_run_resumes_from_its_checkpoint_eagerly_and_captured(tmp_path, preempt):
    """A checkpoint written under graphs (tensor lr, capturable AdamW) resumes with them and without."""
    import vitkit.train.loop as loop

    fit(_tiny(tmp_path, "whole", checkpoint_every=6, cuda_graphs="on"))
    undo = preempt(loop, "_graph_step", 8)
    with pytest.raises(KeyboardInterrupt):
        fit(_tiny(tmp_path, "resumed", checkpoint_every=6, cuda_graphs="on"))
    undo()
    fit(make_config(out=str(tmp_path / "resumed"), resume=True, progress=False))
    assert _losses(tmp_path / "resumed") == pytest.approx(_losses(tmp_path / "whole"), abs=2e-4)


@needs_fashion
def test_the_device_feed_on_cuda_gives_the_cpu_feeds_batches(tmp_path):
    """Same order and crops (drawn on the CPU either way); the arithmetic on the GPU to fp32 rounding."""
    from vitkit.train.config import resolve
    from vitkit.train.distributed import start, stop
    from vitkit.train.loop import _setup

    feeds = []
    for device in ("cpu", "cuda"):
        procs = start(device)
        try:
            feeds.append(_setup(resolve(_tiny(tmp_path, device, device=device), procs), procs).feed)
        finally:
            stop(procs)
    cpu, cuda = (list(f.epoch(1, 1)) for f in feeds)
    assert feeds[1].augmentation == "device" and feeds[1].x.is_cuda and len(cpu) == len(cuda) == 3
    for (x, y), (x2, y2) in zip(cpu, cuda):
        assert torch.equal(y, y2.cpu())
        torch.testing.assert_close(x, x2.cpu(), atol=1e-5, rtol=0)


@needs_fashion
@pytest.mark.parametrize("feed,graphs,workers", [("device", "on", "0"), ("loader", "off", "4")])
def test_sigterm_ends_a_cuda_run_promptly_with_a_checkpoint(tmp_path, feed, graphs, workers):
    """docs/study.md: SIGTERM stops the run after its step. The loader case is the study's (workers, eager)."""
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "vitkit", "train", "--data", "fashion_mnist", "--model", "vit_fashion_patch4_28",
         "--recipe", "fashion-gpu", "--steps", "100000", "--device", "cuda", "--precision", "bf16", "--out", str(out),
         "--data-root", str(tmp_path / "data"), "--no-progress", "--log-every", "20", "--eval-every", "200",
         "--feed", feed, "--cuda-graphs", graphs, "--workers", workers, "--batch-size", "256"],
        stderr=subprocess.PIPE, text=True, env={**os.environ},
    )  # fmt: skip
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3) and process.poll() is None:
        time.sleep(0.1)
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert time.time() - sent < 15, time.time() - sent
    assert "stopped by SIGTERM at step" in err.strip().splitlines()[-1]
    assert err.splitlines()[0].startswith(f"feed: {'device' if feed == 'device' else 'batched'}")
    assert f"CUDA graphs: {graphs}" in err.splitlines()[0]


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_bench_graph_rows_measure_both_libraries(mode):
    result = bench.benchmark(
        "vit_test_patch4_16", batch_size=8, precision="bf16", mode=mode, compare="timm", device="cuda",
        isolate=False, warmup=2, repeats=5, cuda_graphs=True,
    )  # fmt: skip
    assert result["cuda_graphs"] and result["images_per_s"] > 0 and result["timm_images_per_s"] > 0
