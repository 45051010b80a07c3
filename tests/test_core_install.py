"""A core install (`pip install vitkit`, no extras) runs every command that needs no extra, and one that needs
an extra says which, in one line with exit 2.

The test environment has every extra installed, so each check runs `python -m vitkit` in a fresh process
whose import system refuses the optional stacks, as if they were not installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitkit import hardware
from vitkit.data.datasets import DEBIAN_FASHION_MNIST

OPTIONAL = ("fastapi", "uvicorn", "starlette", "prometheus_client", "torchao", "onnxruntime", "openvino", "datasets")
COMMANDS = ("train", "eval", "predict", "fewshot", "analyze", "study", "shard", "bench", "convert", "export", "serve")
# Put in front of `python -m vitkit`: every optional module is absent (`None` in sys.modules: importing it
# raises ModuleNotFoundError, importlib.util.find_spec answers None), as on a machine without it.
BLOCK = f"""
import runpy, sys
sys.modules.update(dict.fromkeys({OPTIONAL!r}))
sys.argv = ["vitkit", *sys.argv[1:]]
runpy.run_module("vitkit", run_name="__main__", alter_sys=True)
"""
needs_fashion = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="apt-get install dataset-fashion-mnist"
)


def core(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`vitkit ARGV` without the optional stacks; one thread, the AVX2 caps as the caller's environment has them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", BLOCK, *argv], capture_output=True, text=True, env=env, cwd=cwd)


def test_the_blocker_really_hides_the_optional_stacks():
    proc = subprocess.run([sys.executable, "-c", BLOCK.replace('runpy.run_module("vitkit", run_name="__main__", '
                                                               'alter_sys=True)', "import fastapi")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1 and "ModuleNotFoundError: import of fastapi halted" in proc.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_shows_its_help_without_the_extras(command):
    proc = core(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: vitkit {command}")


@needs_fashion
def test_a_core_install_trains_and_evaluates(tmp_path):
    run = tmp_path / "run"
    train = core("train", "--data", "fashion_mnist", "--model", "vit_test_patch4_16", "--steps", "2",
                 "--batch-size", "16", "--limit-train", "32", "--limit-eval", "32", "--workers", "0",
                 "--no-progress", "--out", str(run), "--data-root", str(tmp_path / "data"))  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert train.stderr.count("precision: ") == 1
    ev = core("eval", "--checkpoint", str(run / "model.safetensors"), "--data", "fashion_mnist", "--limit", "32",
              "--json", "--device", "cpu", "--data-root", str(tmp_path / "data"))  # fmt: skip
    assert ev.returncode == 0, ev.stderr
    assert '"top1"' in ev.stdout


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("precision: ")]
    assert len(lines) == 1, proc.stderr  # no traceback
    return lines[0]


def test_serve_without_the_serve_extra_names_it(tmp_path):
    line = one_line_error(core("serve", "--checkpoint", str(tmp_path / "model.safetensors"), "--device", "cpu"))
    assert line.endswith("pip install 'vitkit[serve]'")


def test_int8_without_torchao_names_the_extra_or_the_missing_instructions(fashion_checkpoint):
    argv = ["predict", "--checkpoint", str(fashion_checkpoint), "--precision", "int8", "--calibrate", "fashion_mnist"]
    line = one_line_error(core(*argv, "x.png"))
    # the machine's limit comes first where int8 could not run even with torchao installed
    want = "pip install 'vitkit[int8]'" if hardware.cpu().int8 else hardware.cpu().missing_int8
    assert want in line


def test_onnx_export_without_onnxruntime_names_the_extra(fashion_checkpoint, tmp_path):
    line = one_line_error(core("export", "--checkpoint", str(fashion_checkpoint), "--out", str(tmp_path / "m.onnx")))
    assert line.endswith("pip install 'vitkit[onnx]'") and not (tmp_path / "m.onnx").exists()
