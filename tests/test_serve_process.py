"""A real `vitkit serve` process: graceful shutdown on SIGTERM, several workers on one port, the Open
Inference Protocol through the real `tritonclient[http]`, the 413 as urllib reads it, and the page driven
in Chromium (Playwright).

The browser test needs the system Chromium, which `make test` installs with apt (package `chromium`);
it fails, never skips, when Chromium is missing.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import httpx
import pytest

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(checkpoint: Path, log: Path, *options: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`vitkit serve` on a free port, once /readyz answers 200: (the process, its base URL)."""
    port = _free_port()
    command = [sys.executable, "-m", "vitkit", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
               "--device", "cpu", *options]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"vitkit serve exited with {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"vitkit serve did not start:\n{log.read_text()}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        yield process, url
    finally:
        if process.poll() is None:
            process.terminate()  # SIGTERM: the supervisor of --workers N stops its workers too
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_sigterm_finishes_the_request_in_flight_then_exits_0(fashion_checkpoint, fashion_pngs, tmp_path):
    """A request held 2 s by the batcher's wait is answered after SIGTERM arrives; then the exit code is 0."""
    log = tmp_path / "serve.log"
    with serving(fashion_checkpoint, log, "--max-wait-ms", "2000") as (process, url):
        answers: list[httpx.Response] = []
        request = threading.Thread(target=lambda: answers.append(
            httpx.post(f"{url}/v1/predict", content=fashion_pngs[0], timeout=30)))  # fmt: skip
        request.start()
        time.sleep(0.5)  # the request is waiting in the batcher
        process.send_signal(signal.SIGTERM)
        request.join(timeout=30)
        code = process.wait(timeout=30)
    assert answers and answers[0].status_code == 200 and answers[0].json()["topk"]
    assert code == 0, log.read_text()
    assert f"Uvicorn running on {url}" in log.read_text()  # bound to loopback by default


def test_sigterm_drains_every_worker_then_exits_0(fashion_checkpoint, fashion_pngs, tmp_path):
    log = tmp_path / "serve.log"
    with serving(fashion_checkpoint, log, "--workers", "2", "--max-batch", "4", "--max-wait-ms", "2000") as (process, url):
        answers: list[httpx.Response] = []
        request = threading.Thread(target=lambda: answers.append(
            httpx.post(f"{url}/v1/predict", content=fashion_pngs[0], timeout=30)))  # fmt: skip
        request.start()
        time.sleep(0.5)  # the request is waiting in one worker's batcher
        process.send_signal(signal.SIGTERM)
        request.join(timeout=30)
        code = process.wait(timeout=60)
    assert answers and answers[0].status_code == 200 and answers[0].json()["topk"]
    assert code == 0, log.read_text()
    assert log.read_text().count("Finished server process") == 2, log.read_text()


ORPHAN = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import os, time; from vitkit.serve.workers import "
                           "exit_with_supervisor; exit_with_supervisor(os.getppid()); print('armed', flush=True); "
                           "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
print(worker.pid, worker.stdout.readline().strip(), flush=True)
time.sleep(120)
"""


def test_a_worker_exits_when_its_supervisor_is_killed():
    """SIGKILL gives a supervisor no chance to stop its workers: the kernel's parent-death signal does."""
    supervisor = subprocess.Popen([sys.executable, "-c", ORPHAN], stdout=subprocess.PIPE, text=True)
    worker, armed = supervisor.stdout.readline().split()
    assert armed == "armed"
    supervisor.kill()
    supervisor.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{worker}").exists() and Path(f"/proc/{worker}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "the worker outlived its supervisor"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def two_workers(fashion_checkpoint, tmp_path_factory) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    log = tmp_path_factory.mktemp("workers") / "serve.log"
    with serving(fashion_checkpoint, log, "--workers", "2", "--max-batch", "4", "--max-upload-mb", "8") as (process, url):
        yield process, url, log


def _children(pid: int) -> set[int]:
    return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _count(metrics: str, path: str) -> float:
    found = re.search(rf'^vitkit_requests_total{{path="{re.escape(path)}",status="200"}} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def test_two_workers_answer_on_one_port_warm_up_each_and_sum_their_metrics(two_workers):
    """Both workers answer /livez on the one port; /metrics, whichever worker answers it, counts the calls
    both answered (prometheus_client's multiprocess mode); each logged its warm-up."""
    process, url, log = two_workers
    assert httpx.get(f"{url}/readyz").json() == {"status": "ready", "workers_ready": 2, "workers": 2}
    before = _count(httpx.get(f"{url}/metrics").text, "/livez")
    workers, calls = set(), 0
    while len(workers) < 2 and calls < 400:  # a new connection each time: either worker may accept it
        workers.add(httpx.get(f"{url}/livez").json()["worker"])
        calls += 1
    assert len(workers) == 2 and workers <= _children(process.pid)
    assert _count(httpx.get(f"{url}/metrics").text, "/livez") - before == calls
    assert len(re.findall(r"vitkit serve: ready \(worker \d+\): warmed up predict and explain at batch sizes "
                          r"\[1, 2, 4\] in [\d.]+ s", log.read_text())) == 2  # fmt: skip


def test_the_open_inference_protocol_through_tritonclient_gives_v1_predicts_probabilities(
    two_workers, fashion_checkpoint, fashion_pngs
):
    import numpy as np
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    import vitkit
    from vitkit.evaluate.predict import image_transform, read_image

    _, url, _ = two_workers
    name, pngs = "vit_fashion_patch4_28", fashion_pngs[:4]
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    meta = client.get_model_metadata(name)
    assert meta["inputs"][1] == {"name": "pixels", "datatype": "FP32", "shape": [-1, 1, 28, 28]}
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]

    def infer(tensor: np.ndarray, input_name: str, datatype: str, binary: bool) -> np.ndarray:
        given = triton.InferInput(input_name, list(tensor.shape), datatype)
        given.set_data_from_numpy(tensor, binary_data=binary)
        wanted = triton.InferRequestedOutput("probabilities", binary_data=binary)
        return client.infer(name, [given], outputs=[wanted]).as_numpy("probabilities")

    v1 = [httpx.post(f"{url}/v1/predict?topk=10", content=png).json()["topk"] for png in pngs]
    expected = np.array([[t["prob"] for t in sorted(top, key=lambda t: t["index"])] for top in v1], np.float32)
    one = infer(np.array(pngs[:1], dtype=np.object_), "images", "BYTES", binary=True)
    assert one.shape == (1, 10) and (one == expected[:1]).all()  # one image: the same batch, the same numbers
    batch = infer(np.array(pngs, dtype=np.object_), "images", "BYTES", binary=True)
    assert batch == pytest.approx(expected, abs=1e-6)
    transform = image_transform(vitkit.load(fashion_checkpoint).config)
    pixels = np.stack([transform(read_image(io.BytesIO(png), name="png")).numpy() for png in pngs])
    assert infer(pixels, "pixels", "FP32", binary=False) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(InferenceServerException, match="unknown model 'resnet'"):
        client.get_model_metadata("resnet")


def test_an_upload_over_the_limit_sent_by_urllib_reads_the_413_json(two_workers):
    """urllib writes the whole body before it reads: the server drains it (a lingering close), so the
    413 arrives instead of a connection reset."""
    _, url, _ = two_workers
    request = urllib.request.Request(f"{url}/v1/predict", data=b"\0" * (14 << 20),
                                     headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413 and "--max-upload-mb" in json.loads(refused.value.read())["error"]


def _chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail("Chromium is missing: `make test` installs it (apt-get install chromium)")
    return path


OVERLAY_PIXELS_VARY = """() => {
    const img = document.getElementById("overlay");
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    const colours = new Set();
    for (let i = 0; i < data.length; i += 4) colours.add(`${data[i]},${data[i + 1]},${data[i + 2]},${data[i + 3]}`);
    return img.naturalWidth > 0 && colours.size > 1;
}"""
UNLABELLED_CONTROLS = """() => [...document.querySelectorAll("input, button")]
    .filter((el) => el.labels?.length === 0 && !el.getAttribute("aria-label")).map((el) => el.outerHTML)"""


def test_the_page_in_chromium_shows_the_api_top1_and_the_overlay(fashion_checkpoint, fashion_pngs, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    image = tmp_path / "fashion.png"
    image.write_bytes(fashion_pngs[1])
    with serving(fashion_checkpoint, tmp_path / "serve.log") as (_, url), sync_playwright() as p:
        expected = httpx.post(f"{url}/v1/predict", content=image.read_bytes()).json()["topk"][0]["label"]
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.goto(url)
        expect(page.locator("#model-info")).to_contain_text("vit_fashion_patch4_28")
        page.set_input_files("#file-input", str(image))
        expect(page.locator("#explain")).to_be_visible()
        expect(page.locator("#topk li .name").first).to_have_text(expected)
        page.wait_for_function("document.getElementById('overlay').complete")
        assert page.evaluate(OVERLAY_PIXELS_VARY), "the rollout overlay is blank"
        page.locator("#sample-list button").first.focus()
        page.keyboard.press("Enter")  # a sample, chosen with the keyboard
        expect(page.locator("#preview-caption")).to_have_text("0000-ankle-boot")
        expect(page.locator("#status")).to_contain_text("ms")
        assert page.evaluate(UNLABELLED_CONTROLS) == []
        browser.close()
    assert errors == []
