"""Faults during training (issue 6): SIGKILL at random points and resume, SIGINT/SIGTERM, a disk that
fills up mid-checkpoint, corrupted checkpoints, non-finite losses."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vitkit.checkpoints.io as ckpt_io
import vitkit.train.loop as loop
from vitkit.data.datasets import DEBIAN_FASHION_MNIST
from vitkit.train import CheckpointWriteError, NonFiniteLoss, fit, make_config
from vitkit.train.resume import checkpoints, state_path, verify, weights_path

pytestmark = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="apt-get install dataset-fashion-mnist"
)

EVERY = 4  # checkpoint interval of the runs below
STEPS = 24  # 3 epochs of 8 steps

# `vitkit train`, with faults injected from the environment: FAULT=kill-step (SIGKILL itself before its
# FAULT_AT-th step), kill-state / kill-weights (SIGKILL itself half-way through writing its FAULT_AT-th
# checkpoint state / weights file); STEP_DELAY seconds of sleep per step give an outside signal time to land.
RUNNER = textwrap.dedent("""
    import os, signal, sys, time
    import torch
    import vitkit.checkpoints.io as ckpt_io
    import vitkit.train.loop as loop
    from vitkit.cli import main

    fault, at, delay = os.environ.get("FAULT", ""), int(os.environ.get("FAULT_AT", "0")), float(os.environ.get("STEP_DELAY", "0"))
    count = {"step": 0, "state": 0, "weights": 0}

    def die_half_written(path):
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    real_step, real_save_file, real_torch_save = loop.train_step, ckpt_io.save_file, torch.save

    def train_step(*args, **kwargs):
        count["step"] += 1
        if fault == "kill-step" and count["step"] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(delay)
        return real_step(*args, **kwargs)

    def save_file(tensors, path, metadata=None):
        real_save_file(tensors, path, metadata=metadata)
        if "step-" in os.path.basename(path):
            count["weights"] += 1
            if fault == "kill-weights" and count["weights"] == at:
                die_half_written(path)

    def torch_save(obj, path, *args, **kwargs):
        real_torch_save(obj, path, *args, **kwargs)
        if isinstance(path, str) and ".state.pt" in path:
            count["state"] += 1
            if fault == "kill-state" and count["state"] == at:
                die_half_written(path)

    loop.train_step, ckpt_io.save_file, torch.save = train_step, save_file, torch_save
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runner") / "run_vitkit.py"
    path.write_text(RUNNER)
    return path


def train_args(data_root: str, out: Path) -> list[str]:
    """A 2-layer ViT, 64 Fashion-MNIST images, every source of randomness on."""
    return ["train", "--data", "fashion_mnist", "--model", "vit_test_patch4_16", "--steps", str(STEPS),
            "--batch-size", "8", "--limit-train", "64", "--limit-eval", "16", "--data-root", data_root,
            "--no-progress", "--workers", "0", "--checkpoint-every", str(EVERY), "--log-every", "1",
            "--randaugment", "2", "9", "--mixup", "0.8", "--drop-path", "0.1", "--out", str(out)]  # fmt: skip


def launch(runner: Path, argv: list[str], **env: str) -> subprocess.Popen:
    """The runner in a process group of its own (with its DataLoader workers), as a shell starts a job."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen([sys.executable, str(runner), *argv], env=environment, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def run(runner: Path, argv: list[str], **env: str) -> tuple[int, str]:
    process = launch(runner, argv, **env)
    _, err = process.communicate(timeout=180)
    return process.returncode, err


def resumed_at(stderr: str) -> int:
    """The step a `--resume` run started from, as it reports it (0 when it found no checkpoint)."""
    line = next((ln for ln in stderr.splitlines() if ln.startswith("resuming ")), None)
    return int(line.split(" at step ")[1].split()[0]) if line else 0


def logged_steps(out: Path) -> int:
    """The last training step recorded in metrics.jsonl (log_every=1: every completed step)."""
    path = out / "metrics.jsonl"
    steps = [json.loads(ln)["step"] for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
    return max(steps, default=0)


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def reference(runner: Path, data_root: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run's final weights."""
    out = tmp_path_factory.mktemp("reference") / "run"
    code, err = run(runner, train_args(data_root, out))
    assert code == 0, err[-2000:]
    return out / "model.safetensors"


def test_sigkill_at_random_points_then_resume_ends_bit_identical(runner, data_root, reference, tmp_path):
    rng = random.Random(6)
    out = tmp_path / "run"
    # (fault, at): before a random step; half-way through a checkpoint's state file, then its weights file;
    # from outside at a random moment; before a random step again
    faults = [("kill-step", rng.randint(2, 9)), ("kill-state", 1), ("kill-weights", 1), ("external", 0),
              ("kill-step", rng.randint(2, 5))]  # fmt: skip
    argv, done = train_args(data_root, out), 0
    for i, (fault, at) in enumerate(faults):
        if fault == "external":
            process = launch(runner, argv, STEP_DELAY="0.05")
            while logged_steps(out) <= done and process.poll() is None:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.4))
            process.send_signal(signal.SIGKILL)
            _, err = process.communicate(timeout=60)
            code = process.returncode
        else:
            code, err = run(runner, argv, FAULT=fault, FAULT_AT=str(at))
        start = resumed_at(err)
        assert done - EVERY <= start <= done, f"{fault}: {done} steps were done, the run resumed at {start}"
        assert code == -signal.SIGKILL, f"{fault}: the run was to be killed, it ended with {code}: {err[-2000:]}"
        done = logged_steps(out)
        print(f"{fault} {at}: resumed at {start}, killed after step {done}")
        assert start < done < STEPS
        argv = ["train", "--resume", "--out", str(out), "--no-progress"]
    code, err = run(runner, argv)
    assert code == 0, err[-2000:]
    assert done - EVERY <= resumed_at(err) <= done
    assert same_weights(out / "model.safetensors", reference)
    assert not list((out / "checkpoints").glob(".*.tmp")) and len(checkpoints(out)) == 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_stop_with_a_final_checkpoint(runner, data_root, reference, tmp_path, signum):
    out = tmp_path / "run"
    argv = [*train_args(data_root, out), "--workers", "1"]  # the worker gets the signal too, as from a terminal
    process = launch(runner, argv, STEP_DELAY="0.05")
    while logged_steps(out) < 5 and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err[-2000:]
    last = err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"vitkit train: stopped by {name} at step ") and "--resume" in last, last
    step = int(last.split(" at step ")[1].split()[0])
    assert step == logged_steps(out) and verify(weights_path(out, step)).step == step  # nothing done is lost
    code, err = run(runner, ["train", "--resume", "--out", str(out), "--no-progress"])
    assert code == 0 and resumed_at(err) == step, err[-2000:]
    assert same_weights(out / "model.safetensors", reference)


# ---- in-process runs: storage faults, corruption, non-finite losses ------------------------------------


def tiny(data_root: str, out: Path, **run) -> object:
    fields = dict(data="fashion_mnist", model="vit_test_patch4_16", limit_train=64, limit_eval=16, data_root=data_root,
                  progress=False, workers=0, out=str(out), checkpoint_every=2)  # fmt: skip
    return make_config({"steps": 12, "batch_size": 16, "drop_path": 0.1}, **{**fields, **run})


@pytest.fixture(scope="module")
def tiny_reference(data_root: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit(tiny(data_root, tmp_path_factory.mktemp("tiny") / "run")).checkpoint


def no_space(real):
    """A writer that writes half of its output, then fails as a full disk does."""

    def write(*args, **kwargs):
        path = args[1]
        real(*args, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    return write


@pytest.mark.parametrize("which", ["weights", "state"])
def test_a_checkpoint_write_failing_part_way_stops_the_run_and_keeps_the_previous_one(
    data_root, tiny_reference, tmp_path, monkeypatch, which
):
    out = tmp_path / "run"
    real = ckpt_io.save_file if which == "weights" else torch.save
    writes = []

    def fails_at_step_6(*args, **kwargs):
        name = os.path.basename(str(args[1]))
        writes.append(name)
        if "step-00000006" in name:
            return no_space(real)(*args, **kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(*((ckpt_io, "save_file") if which == "weights" else (torch, "save")), fails_at_step_6)
    with pytest.raises(CheckpointWriteError) as e:
        fit(tiny(data_root, out))
    message = str(e.value)
    assert message == (f"cannot write checkpoint {weights_path(out, 6)}: No space left on device; "
                       f"the newest intact checkpoint is {weights_path(out, 4)}")  # fmt: skip
    assert [p.name for p in (out / "checkpoints").iterdir()] and not list((out / "checkpoints").glob(".*"))
    assert not weights_path(out, 6).exists() and not state_path(weights_path(out, 6)).exists()
    assert verify(weights_path(out, 4)).step == 4
    monkeypatch.undo()
    result = fit(make_config(out=str(out), resume=True, progress=False))
    assert same_weights(result.checkpoint, tiny_reference)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "weights bit flip": (lambda w, s: flip_byte(w, -5), "checksum mismatch, the file is corrupted"),
    "weights truncated": (lambda w, s: w.write_bytes(w.read_bytes()[: w.stat().st_size // 2]), "step-00000006.safetensors"),
    "state truncated": (lambda w, s: s.write_bytes(s.read_bytes()[:-100]), "bytes, expected"),
    "state bit flip": (lambda w, s: flip_byte(s, 200), "checksum mismatch, the file is corrupted"),
    "state missing": (lambda w, s: s.unlink(), "missing"),
}


def interrupted_at_step_7(data_root: str, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = loop.train_step, []

    def preempted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", preempted)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny(data_root, out, keep_checkpoints=3))
    monkeypatch.undo()
    assert [p.name for p in checkpoints(out)] == [f"step-0000000{i}.safetensors" for i in (6, 4, 2)]


@pytest.mark.parametrize("damage", list(CORRUPTIONS))
def test_resume_passes_over_a_corrupted_checkpoint_to_the_newest_intact_one(
    data_root, tiny_reference, tmp_path, monkeypatch, damage
):
    out = tmp_path / "run"
    interrupted_at_step_7(data_root, out, monkeypatch)
    corrupt, reason = CORRUPTIONS[damage]
    corrupt(weights_path(out, 6), state_path(weights_path(out, 6)))
    with pytest.warns(UserWarning, match="passing over checkpoint") as record:
        result = fit(make_config(out=str(out), resume=True, progress=False))
    warning = next(str(w.message) for w in record if "passing over" in str(w.message))
    assert str(weights_path(out, 6)) in warning and reason in warning, warning
    assert same_weights(result.checkpoint, tiny_reference)


def test_resume_with_no_intact_checkpoint_is_a_one_line_error(data_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted_at_step_7(data_root, out, monkeypatch)
    for path in checkpoints(out):
        flip_byte(path, -5)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"cannot resume: none of the 3 checkpoints in .* is intact"):
        fit(make_config(out=str(out), resume=True, progress=False))


def nan_at_steps(monkeypatch: pytest.MonkeyPatch, steps: set[int]) -> None:
    real, calls = loop._loss, []

    def loss(*args, **kwargs):
        calls.append(1)
        value = real(*args, **kwargs)
        return value * float("nan") if len(calls) in steps else value

    monkeypatch.setattr(loop, "_loss", loss)


def test_skip_nonfinite_skips_up_to_n_steps_and_says_so(data_root, tmp_path, monkeypatch):
    nan_at_steps(monkeypatch, {3, 5})
    with pytest.warns(UserWarning) as record:
        result = fit(tiny(data_root, tmp_path / "run", skip_nonfinite=2))
    assert [str(w.message) for w in record if "skipped" in str(w.message)] == [
        f"loss is nan at step {s}: step skipped, weights unchanged ({i} of at most 2)" for i, s in ((1, 3), (2, 5))
    ]
    assert result.steps == 12 and result.skipped_steps == 2 and "skipped 2 steps" in result.summary()
    assert all(torch.isfinite(v).all() for v in load_file(str(result.checkpoint)).values())


def test_a_non_finite_loss_beyond_the_allowance_stops_naming_the_step(data_root, tmp_path, monkeypatch):
    nan_at_steps(monkeypatch, {3, 5})
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="at step 3"), pytest.raises(NonFiniteLoss) as e:
        fit(tiny(data_root, out, skip_nonfinite=1))
    assert str(e.value) == f"loss is nan at step 5; stopping (the last good checkpoint is {weights_path(out, 4)})"
    assert verify(weights_path(out, 4)).step == 4


# ---- files others can read; a signal during an evaluation ----------------------------------------------


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_files_are_created_with_the_process_umask_like_open(data_root, tmp_path, umask_022):
    from vitkit.export import export_onnx
    from vitkit.files import atomic_write

    result = fit(tiny(data_root, tmp_path / "run"))
    export_onnx(vitkit_load(result.checkpoint), tmp_path / "model.onnx")
    run_dir = result.out_dir
    written = [result.checkpoint, run_dir / "best.safetensors", run_dir / "config.yaml", run_dir / "metrics.jsonl",
               *(run_dir / "checkpoints").iterdir(), tmp_path / "model.onnx"]  # fmt: skip
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: "0o644" for p in written}
    os.umask(0o027)
    atomic_write(tmp_path / "private.txt", lambda tmp: Path(tmp).write_text("x"))
    assert oct((tmp_path / "private.txt").stat().st_mode & 0o777) == "0o640"


def vitkit_load(path: Path):
    import vitkit

    return vitkit.load(path)


def eval_records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "eval_top1" in r]


@pytest.mark.parametrize("batches_before", [0, 1])
def test_a_sigint_during_an_evaluation_is_evaluated_again_on_resume(data_root, tmp_path, monkeypatch, batches_before):
    import vitkit.train.run as train_run
    from vitkit.train import Interrupted

    runs = dict(eval_every=2, limit_eval=300)  # two evaluation batches of 256
    reference = fit(tiny(data_root, tmp_path / "reference", **runs))
    real, calls = train_run.evaluate, []

    def sigint_during_the_third(model, loader, *args, **kwargs):  # the evaluation at step 6
        calls.append(1)
        if len(calls) != 3:
            return real(model, loader, *args, **kwargs)

        def batches():
            for i, batch in enumerate(loader):
                if i == batches_before:
                    os.kill(os.getpid(), signal.SIGINT)
                yield batch

        return real(model, batches(), *args, **kwargs)

    monkeypatch.setattr(train_run, "evaluate", sigint_during_the_third)
    out = tmp_path / "run"
    with pytest.raises(Interrupted, match="at step 6 of 12"):
        fit(tiny(data_root, out, **runs))
    monkeypatch.undo()
    assert [r["step"] for r in eval_records(out)] == [2, 4]
    fit(make_config(out=str(out), resume=True, progress=False))
    drop_time = lambda records: [{k: v for k, v in r.items() if "_s" not in k} for r in records]  # noqa: E731
    assert drop_time(eval_records(out)) == drop_time(eval_records(reference.out_dir))
    assert [r["step"] for r in eval_records(out)] == [2, 4, 6, 8, 10, 12]
