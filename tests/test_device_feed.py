"""The device-resident feed (vitkit.train.device_feed) on CPU tensors, through `--feed device --device cpu`:
the loader's order, the batched path's crop arithmetic, resume, and the one-line refusals."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import vitkit.train.loop as loop
from vitkit.data.batched import SeededCrops
from vitkit.data.datasets import DEBIAN_FASHION_MNIST
from vitkit.data.streaming import StreamedSplit
from vitkit.train import fit, make_config
from vitkit.train.device_feed import DeviceFeed, choose_feed, draw_boxes
from vitkit.train.distributed import start, stop
from vitkit.train.loop import _setup
from vitkit.train.config import resolve

pytestmark = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="apt-get install dataset-fashion-mnist"
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("data"))


def tiny(data_root: str, out: Path, recipe: dict | None = None, **run):
    fields = dict(data="fashion_mnist", model="vit_test_patch4_16", limit_train=64, limit_eval=32, data_root=data_root,
                  progress=False, workers=0, out=str(out), device="cpu")  # fmt: skip
    return make_config({"steps": 6, "batch_size": 16, **(recipe or {})}, **{**fields, **run})


def feeds(cfg_loader, cfg_device):
    """The loader's and the device's feeds of the same run."""
    procs = start("cpu")
    try:
        runs = [_setup(resolve(cfg, procs), procs) for cfg in (cfg_loader, cfg_device)]
    finally:
        stop(procs)
    return runs[0].feed, runs[1].feed


def test_without_random_augmentation_the_device_feed_gives_the_loaders_batches_bit_for_bit(data_root, tmp_path):
    recipe = {"crop_scale": (1.0, 1.0), "hflip": False}  # nothing drawn: the order alone decides the batches
    loader, device = feeds(tiny(data_root, tmp_path / "a", recipe, feed="loader"),
                           tiny(data_root, tmp_path / "b", recipe, feed="device"))  # fmt: skip
    assert isinstance(device, DeviceFeed) and loader.augmentation == "batched"
    assert device.steps_per_epoch == loader.steps_per_epoch == 4
    for epoch, step in [(0, 0), (1, 0), (2, 3)]:  # (2, 3): resumed mid-epoch
        ours, theirs = list(device.epoch(epoch, step)), list(loader.epoch(epoch, step))
        assert len(ours) == len(theirs) == 4 - step
        for (x, y), (x2, y2) in zip(ours, theirs):
            assert torch.equal(y, y2) and torch.equal(x, x2)
    assert not torch.equal(list(device.epoch(0, 0))[0][1], list(device.epoch(1, 0))[0][1])  # reshuffled


def test_the_device_crops_equal_the_loaders_for_the_same_boxes(data_root, tmp_path):
    """Same boxes in, same batch out: CropResizeFlip.apply does the arithmetic on both paths."""
    loader, device = feeds(tiny(data_root, tmp_path / "a", feed="loader"),
                           tiny(data_root, tmp_path / "b", feed="device"))  # fmt: skip
    crops: SeededCrops = loader.loader.dataset
    crops.set_epoch(3)
    index = torch.arange(16)
    items = [crops[i] for i in range(16)]
    assert any(bool(c[4]) for _, c, _ in items) and any(int(c[2]) < 28 for _, c, _ in items)  # flips and crops
    x, y = loader.loader.collate_fn(items)
    x2, y2 = device.batch(index, torch.stack([c for _, c, _ in items]))
    assert torch.equal(y, y2) and torch.equal(x, x2)


def test_box_draws_follow_random_resized_crop_and_depend_on_seed_and_epoch_only():
    draw = lambda seed: draw_boxes(20_000, 28, 28, (0.85, 1.0), True, torch.Generator().manual_seed(seed))  # noqa: E731
    boxes = draw(0)
    top, left, h, w, flip = boxes.T
    assert torch.equal(boxes, draw(0)) and not torch.equal(boxes, draw(1))
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28).all() and (left + w <= 28).all()
    area = (h * w).double() / 784
    assert area.min() >= 0.8 and area.max() <= 1.0 and 0.9 < area.mean() < 0.95  # (0.85, 1) up to rounding
    assert 0.48 < flip.double().mean() < 0.52
    assert not draw_boxes(100, 28, 28, (0.85, 1.0), False, torch.Generator())[:, 4].any()


def test_a_device_fed_run_resumed_mid_epoch_ends_with_the_uninterrupted_runs_weights(data_root, tmp_path, preempt):
    recipe = {"steps": 11, "mixup": 0.8, "cutmix": 1.0, "drop_path": 0.1, "ema_decay": 0.9, "label_smoothing": 0.1}
    fit(tiny(data_root, tmp_path / "whole", recipe, checkpoint_every=3, feed="device"))
    undo = preempt(loop, "train_step", 8)  # mid-epoch (4 steps each), two steps after the checkpoint of step 6
    with pytest.raises(KeyboardInterrupt):
        fit(tiny(data_root, tmp_path / "resumed", recipe, checkpoint_every=3, feed="device"))
    undo()
    fit(make_config(out=str(tmp_path / "resumed"), resume=True, progress=False))
    for name in ("model.safetensors", "best.safetensors"):
        a, b = load_file(tmp_path / "whole" / name), load_file(tmp_path / "resumed" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    derived = [yaml.safe_load((tmp_path / d / "config.yaml").read_text())["derived"] for d in ("whole", "resumed")]
    assert derived[0]["augmentation"] == derived[1]["augmentation"] == "device"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitkit", "train", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("extra,message", [
    (["--feed", "device", "--randaugment", "2", "9"], "--feed device: the recipe's RandAugment, random erasing or "
                                                      "crop_padding run per image; use --feed loader"),
    (["--cuda-graphs", "on"], "--cuda-graphs on: the device is cpu, not CUDA (or --cuda-graphs off)"),
])  # fmt: skip
def test_a_feed_or_graph_that_cannot_be_had_is_a_one_line_error_before_training(data_root, tmp_path, extra, message):
    done = cli("--data", "fashion_mnist", "--model", "vit_test_patch4_16", "--limit-train", "64", "--steps", "2",
               "--batch-size", "16", "--data-root", data_root, "--device", "cpu", "--out", str(tmp_path / "r"), *extra)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [f"vitkit train: error: {message}"]
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_a_streamed_split_is_refused_by_the_device_feed_and_left_to_the_loader(data_root, tmp_path):
    cfg = dataclasses.replace(tiny(data_root, tmp_path / "r"), data="wds:/nowhere")
    stream = StreamedSplit.__new__(StreamedSplit)  # only its kind matters here
    with pytest.raises(ValueError, match=r"^--feed device: wds:/nowhere is streamed from shards, not held in memory; "
                                         r"use --feed loader$"):  # fmt: skip
        choose_feed("device", stream, cfg, torch.device("cpu"))
    assert choose_feed("auto", stream, cfg, torch.device("cuda"))[0] is False


def test_sigterm_stops_a_device_fed_run_after_its_step_with_a_checkpoint(data_root, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "vitkit", "train", "--data", "fashion_mnist", "--model", "vit_test_patch4_16",
         "--limit-train", "256", "--limit-eval", "64", "--steps", "100000", "--batch-size", "16", "--data-root",
         data_root, "--device", "cpu", "--feed", "device", "--out", str(out), "--no-progress", "--log-every", "1"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3) and process.poll() is None:
        time.sleep(0.05)
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert time.time() - sent < 10
    assert "stopped by SIGTERM at step" in err.strip().splitlines()[-1]
