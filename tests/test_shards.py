"""WebDataset shards and streamed datasets (issue 16): `vitkit shard`, `--data wds:` and `hf:`, the order
of a streamed epoch over processes and workers, resuming mid-epoch, multi-node training, bad shards."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import vitkit
import vitkit.data.shards as shards
from vitkit.checkpoints.io import save
from vitkit.cli import main
from vitkit.data import load_data
from vitkit.data.datasets import DEBIAN_FASHION_MNIST
from vitkit.data.streaming import StreamedSplit
from vitkit.files import sha256_file
from vitkit.train import fit, make_config

pytestmark = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="apt-get install dataset-fashion-mnist"
)

N = 96  # training samples sharded: 10 shards of 10 and one of 6 (uneven on purpose)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def fashion_shards(data_root: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    shards.shard("fashion_mnist", out, options=shards.ShardOptions("png", per_shard=10, limit=N), data_root=data_root)
    return out


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


class Keys(StreamedSplit):
    """The stream's sample keys instead of its images."""

    def decode(self, index, where, record):
        return None if record is None else where


def keys_of(split: StreamedSplit, workers: int, **plan) -> list[str]:
    stream = Keys.__new__(Keys)
    stream.__dict__.update(split.configured(None, streams=max(1, workers), **plan).__dict__)
    return list(DataLoader(stream, batch_size=None, num_workers=workers))


# ---- vitkit shard ------------------------------------------------------------------------------


def test_shard_writes_an_index_with_classes_counts_and_checksums(fashion_shards, data_root):
    index = json.loads((fashion_shards / "index.json").read_text())
    fashion = load_data("fashion_mnist", data_root)
    assert index["classes"] == fashion.classes and index["channels"] == 1
    train = index["splits"]["train"]
    assert train["samples"] == N and [s["samples"] for s in train["shards"]] == [10] * 9 + [6]
    for entry in train["shards"]:
        assert sha256_file(fashion_shards / entry["name"]) == entry["sha256"]
    sample = next(iter(wds.WebDataset(str(fashion_shards / "train-000000.tar"), shardshuffle=False)))
    assert sample["__key__"] == "train-00000000" and int(sample["cls"]) == fashion.train[0][1]


def test_an_interrupted_shard_resumes_keeping_the_finished_shards(fashion_shards, data_root, tmp_path, monkeypatch):
    real, written = shards._write_shard, []

    def dies_at_the_fourth(out, name, samples):
        if len(written) == 3:
            raise KeyboardInterrupt
        real(out, name, samples)
        written.append(name)

    monkeypatch.setattr(shards, "_write_shard", dies_at_the_fourth)
    options = shards.ShardOptions("png", per_shard=10, limit=N)
    with pytest.raises(KeyboardInterrupt):
        shards.shard("fashion_mnist", tmp_path, ("train",), options, data_root)
    assert not (tmp_path / "index.json").exists() and not list(tmp_path.glob(".*.tmp"))
    kept = {name: (tmp_path / name).stat().st_mtime_ns for name in written}
    monkeypatch.setattr(shards, "_write_shard", real)
    index = shards.shard("fashion_mnist", tmp_path, ("train",), options, data_root)
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in written} == kept
    reference = json.loads((fashion_shards / "index.json").read_text())["splits"]["train"]
    assert index["splits"]["train"] == reference


# ---- reading: order, distribution, resume ------------------------------------------------------


def test_two_processes_of_two_workers_see_every_sample_once_an_epoch(fashion_shards):
    train = load_data(f"wds:{fashion_shards}").train
    seen = [k for rank in (0, 1) for k in keys_of(train, 2, world_size=2, rank=rank, batch=4, train=True, seed=5)]
    assert sorted(seen) == sorted(f"train-{i // 10:06d}.tar:train-{i:08d}" for i in range(N))
    again = [k for rank in (0, 1) for k in keys_of(train, 2, world_size=2, rank=rank, batch=4, train=True, seed=5)]
    other_epoch = keys_of(train, 2, world_size=2, rank=0, batch=4, train=True, seed=5, epoch=1)
    assert again == seen and other_epoch != seen[: len(other_epoch)]


def test_uneven_shards_leave_out_less_than_a_batch_per_stream_and_repeat_nothing(fashion_shards):
    train = load_data(f"wds:{fashion_shards}").train.first(N - 3)  # 93 samples, 4 streams of 2-sample batches
    seen = [k for rank in (0, 1) for k in keys_of(train, 2, world_size=2, rank=rank, batch=2, train=True)]
    assert len(seen) == len(set(seen)) == 88


def test_a_loader_started_mid_epoch_yields_exactly_the_rest_of_the_epoch(fashion_shards):
    train = load_data(f"wds:{fashion_shards}").train
    plan = dict(world_size=1, rank=0, batch=1, train=True, seed=2, buffer=8)
    whole = keys_of(train, 2, **plan)
    for start in (1, 5, 30):
        assert keys_of(train, 2, start=start, **plan) == whole[start:]


# ---- evaluation, training ----------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "vitkit", *args], env=environment, capture_output=True, text=True,
                          timeout=180)  # fmt: skip


def test_eval_on_png_shards_gives_the_in_memory_top1(fashion_shards, data_root, tmp_path, capsys):
    model = vitkit.create_model("vit_test_patch4_16", num_classes=10, in_chans=1)
    classes = load_data(f"wds:{fashion_shards}").classes
    save(model, tmp_path / "model.safetensors", metadata={"classes": json.dumps(classes)})
    common = ["eval", "--checkpoint", str(tmp_path / "model.safetensors"), "--limit", "64", "--json", "--workers", "2",
              "--data-root", data_root, "--out", str(tmp_path)]  # fmt: skip
    reports = []
    for data in ("fashion_mnist", f"wds:{fashion_shards}"):
        assert main([*common, "--data", data]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    a, b = reports
    assert (a["n"], a["top1"], a["per_class"]) == (b["n"], b["top1"], b["per_class"]) and a["n"] == 64
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)


def tiny(data: str, out: Path, **run) -> vitkit.train.TrainConfig:
    fields = dict(data=data, model="vit_test_patch4_16", limit_eval=16, progress=False, workers=0, out=str(out))
    return make_config({"steps": 4, "batch_size": 8, **run.pop("recipe", {})}, **{**fields, **run})


def test_shards_are_read_over_http_and_through_fsspec(fashion_shards):
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    memory.put(str(fashion_shards), "/shards", recursive=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(fashion_shards))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for base in (f"http://127.0.0.1:{server.server_address[1]}", "memory://shards"):
            assert sum(1 for _ in load_data(f"wds:{base}").test) == N, base
    finally:
        server.shutdown()


def test_a_truncated_shard_is_named_counted_and_the_run_continues(fashion_shards, tmp_path):
    broken = copy_of(fashion_shards, tmp_path / "shards")
    shard = broken / "train-000003.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.warns(UserWarning, match=r"shard train-000003.tar: truncated or corrupt after key train-0000003\d"):
        result = fit(tiny(f"wds:{broken}", tmp_path / "run", recipe={"steps": 12}))
    assert result.steps == 12 and 0 < result.skipped_images < 10
    assert f"skipped {result.skipped_images} undecodable images (named in the warnings above)" in result.summary()


def test_a_shard_listed_but_missing_is_an_error_naming_it(fashion_shards, tmp_path):
    broken = copy_of(fashion_shards, tmp_path / "shards")
    (broken / "test-000002.tar").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard .*test-000002.tar is listed in index.json but missing"):
        load_data(f"wds:{broken}")


def test_a_checksum_mismatch_is_a_warning_naming_the_shard(fashion_shards, tmp_path):
    broken = copy_of(fashion_shards, tmp_path / "shards")
    index = json.loads((broken / "index.json").read_text())
    index["splits"]["test"]["shards"][1]["sha256"] = "0" * 64
    (broken / "index.json").write_text(json.dumps(index))
    with pytest.warns(UserWarning, match="shard test-000001.tar: SHA-256 differs from index.json's"):
        assert sum(1 for _ in load_data(f"wds:{broken}").test) == N


def test_a_sample_without_a_label_is_an_error_naming_its_key(fashion_shards, tmp_path):
    broken = copy_of(fashion_shards, tmp_path / "shards")
    source = next(iter(wds.WebDataset(str(broken / "test-000000.tar"), shardshuffle=False)))
    with wds.TarWriter(str(broken / "test-000000.tar")) as sink:
        sink.write({"__key__": "test-00000000", "png": source["png"]})
    with pytest.raises(ValueError, match="test-000000.tar:test-00000000: the sample has no label"):
        next(iter(load_data(f"wds:{broken}").test))


def test_a_wds_path_without_an_index_says_how_to_make_one(tmp_path, capsys):
    assert main(["train", "--data", f"wds:{tmp_path}", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"vitkit train: error: wds:{tmp_path}: no index.json there; make shards with one: vitkit shard SRC {tmp_path}"
    ]


def test_an_index_of_another_format_is_a_one_line_error_naming_the_file_and_the_expected_format(
    fashion_shards, tmp_path, capsys
):
    broken = copy_of(fashion_shards, tmp_path / "shards")
    index = json.loads((broken / "index.json").read_text())
    (broken / "index.json").write_text(json.dumps({**index, "format": "vitkit-shards/2"}))
    assert main(["train", "--data", f"wds:{broken}", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"vitkit train: error: wds:{broken}: {broken / 'index.json'} has format 'vitkit-shards/2', "
        "expected 'vitkit-shards/1' (write it with this version's vitkit shard)"
    ]


def test_a_study_reads_its_nested_subsets_from_shards(fashion_shards, data_root, tmp_path, capsys):
    """The study draws subsets by index: a streamed split is held in memory (encoded) and read like the
    in-memory dataset, so the shards' study trains on the same images as the in-memory data's."""
    argv = ["study", "data-scale", "--sizes", "20", "--models", "vit_test_patch4_16", "--images-seen", "16",
            "--seeds", "1", "--holdout", "0", "--batch-size", "8", "--no-progress", "--json"]  # fmt: skip
    assert main([*argv, "--data", f"wds:{fashion_shards}", "--out", str(tmp_path / "wds")]) == 0
    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert run["size"] == 20 and 0 <= run["top1"] <= 1
    held = load_data(f"wds:{fashion_shards}").train.held()
    memory = load_data("fashion_mnist", data_root).train
    assert torch.equal(held.targets, torch.as_tensor(memory.targets[: len(held)]))
    assert torch.equal(torch.as_tensor(np.asarray(held[7][0])), memory.data[7])


# two loader workers, resumed after an odd number of micro-batches: each worker takes the other's part
RESUME_ARGS = ["--model", "vit_test_patch4_16", "--steps", "12", "--batch-size", "8", "--limit-eval", "16",
               "--no-progress", "--workers", "2", "--checkpoint-every", "3", "--log-every", "1",
               "--randaugment", "2", "9", "--mixup", "0.8", "--drop-path", "0.1"]  # fmt: skip


def test_sigkill_mid_epoch_then_resume_ends_bit_identical(fashion_shards, tmp_path):
    from test_reliability import RUNNER, resumed_at, run, same_weights

    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    argv = ["train", "--data", f"wds:{fashion_shards}", *RESUME_ARGS]
    code, err = run(runner, [*argv, "--out", str(tmp_path / "reference")])
    assert code == 0, err[-2000:]
    code, err = run(runner, [*argv, "--out", str(tmp_path / "run")], FAULT="kill-step", FAULT_AT="5")
    assert code == -signal.SIGKILL, err[-2000:]
    code, err = run(runner, ["train", "--resume", "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 0 and resumed_at(err) == 3, err[-2000:]
    assert same_weights(tmp_path / "run" / "model.safetensors", tmp_path / "reference" / "model.safetensors")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_nodes_train_like_one_process_with_the_same_global_batch(fashion_shards, tmp_path):
    recipe = {"steps": 6, "batch_size": 16, "randaugment": (2, 9), "optimizer": "sgd", "lr": 0.1}
    # one process whose two loader workers read the two streams the two nodes read, a micro-batch each
    fit(tiny(f"wds:{fashion_shards}", tmp_path / "one", recipe=recipe, workers=2, micro_batch=8))
    args = ["train", "--data", f"wds:{fashion_shards}", "--model", "vit_test_patch4_16", "--steps", "6",
            "--batch-size", "16", "--limit-eval", "16", "--no-progress", "--randaugment", "2", "9",
            "--optimizer", "sgd", "--lr", "0.1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = free_port()
    nodes = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                          "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "vitkit-test",
                          "-m", "vitkit", *args, "--workers", "0", "--out", str(tmp_path / "two")],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        for _ in range(2)
    ]
    for node in nodes:
        _, err = node.communicate(timeout=240)
        assert node.returncode == 0, err[-2000:]
    a, b = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("one", "two"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)


# ---- Hugging Face datasets ---------------------------------------------------------------------


def test_hf_streams_a_local_dataset_directory_like_its_shards(fashion_shards, data_root, tmp_path):
    datasets = pytest.importorskip("datasets")
    fashion = load_data("fashion_mnist", data_root)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=fashion.classes)})
    for split, part in (("train", fashion.train), ("test", fashion.test)):
        rows = [part[i] for i in range(24)]
        table = datasets.Dataset.from_dict({"image": [r[0] for r in rows], "label": [r[1] for r in rows]}, features)
        table.to_parquet(str(tmp_path / f"{split}.parquet"))
    hf, wds_data = load_data(f"hf:{tmp_path}"), load_data(f"wds:{fashion_shards}")
    assert hf.classes == fashion.classes and len(hf.test) == 24
    pixels = lambda im: torch.from_numpy(np.array(im.convert("RGB")))  # noqa: E731
    streams = [DataLoader(d.test.first(24).configured(pixels, streams=2), batch_size=None, num_workers=2)
               for d in (hf, wds_data)]  # fmt: skip
    pairs = list(zip(*streams))
    assert len(pairs) == 24 and all(y == z and torch.equal(a, b) for (a, y), (b, z) in pairs)
