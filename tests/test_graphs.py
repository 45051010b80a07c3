"""The captured training step's logic on CPU (vitkit.train.graphs): torch.cuda.graph is stood in for by a
recorder whose replay runs the step's body again, and AdamW's capturable path is let run on CPU tensors.
What this checks is vitkit's part: the warm-up undone, the learning rate as a device tensor that the schedule
fills, the metrics summed and read, checkpoints that resume with and without graphs, the fallback when
capture fails. The capture itself is tested on a GPU (tests/test_cuda.py)."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.optim.adam as adam
from safetensors.torch import load_file

import vitkit.train.checks as checks
import vitkit.train.graphs as graphs
import vitkit.train.loop as loop
from vitkit.data.datasets import DEBIAN_FASHION_MNIST
from vitkit.train import fit, make_config

pytestmark = [
    pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="no Fashion-MNIST"),
    pytest.mark.skipif(not hasattr(adam, "_get_capturable_supported_devices"), reason="torch's AdamW changed"),
]


class Recorded:
    """A stand-in for torch.cuda.CUDAGraph: replay() runs the captured body again (fresh gradients, as the
    graph's backward writes them)."""

    def __init__(self) -> None:
        self.body = None

    def replay(self) -> None:
        self.body()


@pytest.fixture
def cpu_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    capturable = adam._get_capturable_supported_devices
    monkeypatch.setattr(adam, "_get_capturable_supported_devices", lambda *a, **k: [*capturable(*a, **k), "cpu"])

    class Stream:
        def wait_stream(self, other: object) -> None:
            pass

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Recorded)
    monkeypatch.setattr(torch.cuda, "graph", lambda g, **k: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    capture = graphs.GraphStep._warm_up_and_capture

    def recorded(self: graphs.GraphStep, saved: object) -> Recorded:
        graph = capture(self, saved)

        def body() -> None:
            self.optimizer.zero_grad(set_to_none=False)
            self._body()

        graph.body = body
        return graph

    monkeypatch.setattr(graphs.GraphStep, "_warm_up_and_capture", recorded)
    monkeypatch.setattr(checks, "graphs_allowed", lambda cfg, procs, accum: (cfg.cuda_graphs != "off", "test"))


def tiny(tmp_path: Path, out: str, **run) -> object:
    fields = dict(data="fashion_mnist", model="vit_test_patch4_16", limit_train=64, limit_eval=32, progress=False,
                  workers=0, log_every=1, out=str(tmp_path / out), data_root=str(tmp_path / "data"), device="cpu",
                  feed="device", checkpoint_every=6, precision="fp32")  # fmt: skip  (fp32: compared to 1e-5)
    recipe = {"steps": 12, "batch_size": 16, "optimizer": "adamw", "label_smoothing": 0.1, "mixup": 0.8}
    return make_config(recipe, **{**fields, **run})


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def losses(path: Path) -> list[float]:
    return [r["loss"] for r in records(path) if "loss" in r]


def test_the_captured_step_follows_the_eager_step_and_reads_its_metrics_every_record(tmp_path, cpu_graphs):
    fit(tiny(tmp_path, "graph"))
    fit(tiny(tmp_path, "eager", cuda_graphs="off"))
    graph, eager = losses(tmp_path / "graph"), losses(tmp_path / "eager")
    assert len(graph) == 12 and graph[0] != graph[-1]
    assert graph == pytest.approx(eager, abs=1e-5)  # the warm-up before capture left no trace
    trained = [r for r in records(tmp_path / "graph") if "loss" in r]
    assert all(r["train_loss"] == pytest.approx(r["loss"]) and 0 <= r["train_top1"] <= 1 for r in trained)
    assert "train_loss" not in records(tmp_path / "eager")[0]


def test_a_captured_runs_checkpoint_resumes_with_graphs_and_without(tmp_path, cpu_graphs, preempt):
    fit(tiny(tmp_path, "whole"))
    undo = preempt(loop, "_graph_step", 8)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny(tmp_path, "run"))
    undo()
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-00000006.state.pt", weights_only=True)
    assert all(isinstance(g["lr"], float) and not g["capturable"] for g in state["optimizer"]["param_groups"])
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    fit(make_config(out=str(tmp_path / "run"), resume=True, progress=False))
    whole = load_file(tmp_path / "whole" / "model.safetensors")
    captured = load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.equal(whole[k], captured[k]) for k in whole)
    shutil.rmtree(tmp_path / "run")
    shutil.move(tmp_path / "copy", tmp_path / "run")
    fit(make_config(out=str(tmp_path / "run"), resume=True, progress=False, cuda_graphs="off"))
    eager = load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.allclose(whole[k], eager[k], atol=1e-4) for k in whole)


def test_a_capture_that_fails_puts_the_warm_up_back_and_goes_on_eagerly(tmp_path, cpu_graphs, monkeypatch):
    def fails(self: graphs.GraphStep, saved: object) -> None:
        for _ in range(graphs.WARMUP_STEPS):  # what a capture does before it fails
            self.optimizer.zero_grad(set_to_none=True)
            self._body()
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs.GraphStep, "_warm_up_and_capture", fails)
    with pytest.warns(UserWarning, match="capturing the step as a CUDA graph failed"):
        fit(tiny(tmp_path, "fallback"))
    fit(tiny(tmp_path, "eager", cuda_graphs="off"))
    assert losses(tmp_path / "fallback") == losses(tmp_path / "eager")
    with pytest.raises(RuntimeError, match="not permitted"):
        fit(tiny(tmp_path, "on", cuda_graphs="on"))
