"""Examples that cannot rot (issue 39): every command and Python snippet a user would paste from README.md and
docs/*.md runs here, against a tiny checkpoint, as written.

The documents are read at test time. A shell block (```bash, ```sh, or an unlabelled block whose lines start
with a known program) gives one example per command (`\\` continuations joined, `# comments` dropped); a
```python block runs statement by statement in one namespace. Each example runs in one working directory per
document, in the document's order, holding the files the examples name: `model.safetensors` and
`runs/quickstart/model.safetensors` (a vit_fashion_patch7_28 with random weights and Fashion-MNIST's class
names), `boot.png`, `boot.jpg`, `shirt.png` and `photo.png` (Fashion-MNIST test images). Then:

- `vitkit ...` runs in process (`vitkit.cli.main`) and must exit 0, with QUICKLY's options appended.
- `vitkit serve ...` is parsed by the real parser; one server of the tiny checkpoint (uvicorn, in a thread)
  answers every `curl` and Python client, its port put in place of 8000.
- `curl ...` runs as written (curl's own defaults) and must print JSON that is not an `{"error"}`.
- What cannot run here is listed once in CANNOT_RUN with the reason; those examples are skipped (pytest -rs
  lists them) and counted in the summary this module prints at its end.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

import vitkit
from vitkit.checkpoints.metadata import run_metadata
from vitkit.cli import build_parser, main
from vitkit.data.datasets import DEBIAN_FASHION_MNIST

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]

# What cannot run here, and why: (a regex searched in the command or Python statement, the reason). First match
# wins; extend it when a document gains such an example.
CANNOT_RUN = [
    (r"^make (run|test)\b", "the make targets themselves: they install into .venv and run this suite"),
    (r"\bpip install\b", "installs packages"),
    (r"pretrained=", "downloads published weights from the Hugging Face Hub"),
    (r"\.npz\b|\.pth\b|path/to/", "a published checkpoint file that the user downloads"),
    (r"\btorchrun\b|\bsrun\b|scontrol|SLURM", "several processes or nodes (DDP and FSDP: tests/test_train.py)"),
    (r"--device cuda", "needs a CUDA GPU"),
    (r"benchmarks/|^vitkit bench\b", "a benchmark of minutes to hours (docs/benchmarks.md)"),
    (r"int8|quantize\(", "int8 calibrates and compiles oneDNN kernels for minutes (tests/test_int8.py)"),
    (r"/data/imagenet|/shards/imagenet|/shared/|wds:https://", "the user's ImageNet, on their disk or server"),
    (r"hf:NAME", "a placeholder for a Hugging Face dataset"),
    (r"study data-scale|data_scale\(", "trains tens of runs for hours (a tiny study: tests/test_study.py)"),
    (r"sys\.argv\[1\]", "a script that takes its file names as arguments (tests/test_export.py runs it beside predict)"),
    (r"study report --ledger", "reports the ledger of the hours-long study above (tests/test_study_ledger.py)"),
    (r"^vitkit shard fashion_mnist\b", "encodes 70,000 PNGs, a minute or more (tests/test_shards.py)"),
]
# How the examples' placeholders become this test's: (regex, replacement), applied in order.
SUBSTITUTE = [
    (r"127\.0\.0\.1:8000", "127.0.0.1:{port}"),
    (r"\bCKPT\b", "model.safetensors"),
    (r"\[(--[^\]]+)\]", r"\1"),  # an optional flag shown in brackets: given
    # a ViT-B of 4 blocks, not 12: the same shapes, a third of the time (a 384-px ViT-B's forward passes took
    # minutes on 2 busy cores)
    (r'create_model\("((?:vit_|ViT-|R50\+ViT)[^"]*)"', r'create_model("\1", depth=4'),
]
# Options appended to a subcommand, so that it runs in seconds (argparse keeps the last value given).
QUICKLY = {
    "train": ["--steps", "1", "--batch-size", "8", "--limit-train", "16", "--limit-eval", "16", "--workers", "0",
              "--precision", "fp32", "--no-progress"],
    "eval": ["--limit", "256"],
    "analyze": ["--images", "16", "--rollout-images", "2"],
}  # fmt: skip
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
PROGRAMS = ("vitkit", "curl", "make", "pip", "torchrun", "python", ".venv/", "PYTHONPATH=", "srun", "head=")

pytestmark = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="apt-get install dataset-fashion-mnist"
)


@dataclass
class Example:
    document: str
    line: int
    kind: str  # "shell" or "python"
    text: str  # one command, or a whole Python block

    @property
    def id(self) -> str:
        return f"{self.document}:{self.line}"


def _blocks(text: str) -> list[tuple[str, int, str]]:
    """The fenced blocks of a Markdown text: (language, line of the first content line, content)."""
    return [(m.group(1).strip().lower(), text[: m.start()].count("\n") + 2, m.group(2))
            for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", text, re.S | re.M)]  # fmt: skip


def _commands(block: str, first_line: int) -> list[tuple[int, str]]:
    """A shell block's commands: (line, command), continuations joined, comments dropped."""
    commands, pending, start = [], "", 0
    for i, raw in enumerate(block.splitlines()):
        line = re.sub(r"\s+#\s.*$", "", raw).rstrip()
        if not pending and (not line or line.lstrip().startswith("#")):
            continue
        start = start if pending else first_line + i
        pending += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            commands.append((start, pending.strip()))
            pending = ""
    return commands


def examples() -> list[Example]:
    found = []
    for document in DOCUMENTS:
        for language, line, block in _blocks((ROOT / document).read_text()):
            if language == "python":
                found.append(Example(document, line, "python", block))
            elif language in SHELL_LANGUAGES or language == "":
                commands = _commands(block, line)
                if language == "" and not all(c.startswith(PROGRAMS) for _, c in commands):
                    continue  # a diagram or a table, not commands
                found += [Example(document, n, "shell", c) for n, c in commands]
    return found


def cannot_run(text: str) -> str | None:
    return next((reason for pattern, reason in CANNOT_RUN if re.search(pattern, text, re.M)), None)


def substituted(text: str, port: int) -> str:
    for pattern, replacement in SUBSTITUTE:
        text = re.sub(pattern, replacement, text)
    return text.replace("{port}", str(port))


# ---- the files and the server the examples use ------------------------------------------------------------


def tiny_checkpoint(path: Path) -> None:
    from vitkit.data import load_data

    data = load_data("fashion_mnist")
    model = vitkit.create_model("vit_fashion_patch7_28", num_classes=len(data.classes))
    vitkit.save(model, path, metadata=run_metadata(data.classes, data.name))


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One working directory per document, holding the files its examples name."""
    from vitkit.data import load_data

    template = tmp_path_factory.mktemp("template")
    tiny_checkpoint(template / "model.safetensors")
    (template / "runs" / "quickstart").mkdir(parents=True)
    shutil.copy(template / "model.safetensors", template / "runs" / "quickstart" / "model.safetensors")
    test = load_data("fashion_mnist").split("test")  # torchvision's FashionMNIST: uint8 (N, 28, 28)
    first = {int(label): image for image, label in reversed(list(zip(test.data[:100], test.targets[:100])))}
    for name, label in (("boot.png", 9), ("boot.jpg", 9), ("shirt.png", 6), ("photo.png", 0)):
        Image.fromarray(first[label].numpy()).save(template / name)
    dirs = {}
    for document in DOCUMENTS:
        dirs[document] = tmp_path_factory.mktemp(document.replace("/", "_").removesuffix(".md"))
        shutil.copytree(template, dirs[document], dirs_exist_ok=True)
    return dirs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(workdirs: dict[str, Path]):
    """`vitkit serve --checkpoint runs/quickstart/model.safetensors` on a free port, in a thread: its port."""
    import uvicorn

    from vitkit.serve import app_from_checkpoint

    port = free_port()
    app = app_from_checkpoint(workdirs["README.md"] / "runs" / "quickstart" / "model.safetensors", "cpu")
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not uv.started and time.time() < deadline:
        time.sleep(0.05)
    assert uv.started, "the examples' server did not start"
    yield port
    uv.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest):
    """Counts what ran and what could not, printed when the module ends."""
    counts: dict[str, list[str]] = {"ran": [], "cannot run": []}
    yield counts
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():  # shown without -s, as pytest's own summary is
        reporter.write_line("")
        ran, cannot = len(counts["ran"]), len(counts["cannot run"])
        reporter.write_line(f"documented examples: {ran} ran, {cannot} cannot run here:")
        for line in counts["cannot run"]:
            reporter.write_line(f"  {line}")


# ---- running one example -----------------------------------------------------------------------------------


def run_vitkit(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    if argv[0] == "serve":
        build_parser().parse_args(argv)  # the server is the module's; its options must parse
        return
    argv = [*argv, *QUICKLY.get(argv[0], [])]
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert code == 0, f"vitkit {shlex.join(argv)} exited {code}:\n{err[-3000:]}"


def run_curl(argv: list[str], cwd: Path) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert "error" not in answer, answer


def run_python(example: Example, port: int | None, tally: dict[str, list[str]]) -> None:
    """Each top-level statement in turn, in one namespace; one that cannot run is skipped, and so is every
    later one that reads a name only a skipped one defined."""
    namespace: dict = {"torch": torch, "vitkit": vitkit}
    unset: set[str] = set()
    for statement in ast.parse(example.text).body:
        source = ast.get_source_segment(example.text, statement) or ""
        line = example.line + statement.lineno - 1
        read = {n.id for n in ast.walk(statement) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        written = {n.id for n in ast.walk(statement) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        reason = cannot_run(source) or (f"reads {', '.join(sorted(read & unset))}, from a line that cannot run"
                                        if read & unset else None)  # fmt: skip
        if reason:
            tally["cannot run"].append(f"{example.document}:{line}: {source.splitlines()[0][:70]} ({reason})")
            unset |= written
            continue
        unset -= written
        code = substituted(source, port or 8000)
        exec(compile(code, f"{example.document}:{line}", "exec"), namespace)  # noqa: S102
        tally["ran"].append(f"{example.document}:{line}")


@pytest.mark.parametrize("example", examples(), ids=lambda e: e.id)
def test_documented_example_runs(example: Example, workdirs, tally, request, capsys, monkeypatch):
    monkeypatch.chdir(workdirs[example.document])
    needs_server = "127.0.0.1:8000" in example.text or "curl " in example.text
    port = request.getfixturevalue("server") if needs_server and not cannot_run(example.text) else None
    if example.kind == "python":
        run_python(example, port, tally)
        return
    reason = cannot_run(example.text)
    if reason:
        tally["cannot run"].append(f"{example.id}: {example.text[:70]} ({reason})")
        pytest.skip(f"{example.text[:60]}: {reason}")
    argv = shlex.split(substituted(example.text, port or 8000))
    if argv[0] == "vitkit":
        run_vitkit(argv[1:], capsys)
    elif argv[0] == "curl":
        run_curl(argv, workdirs[example.document])
    else:
        pytest.fail(f"{example.id}: no rule runs {argv[0]!r}: add one here, or a reason to CANNOT_RUN")
    tally["ran"].append(example.id)
