"""A real `vitkit serve` process: graceful shutdown on SIGTERM, and the page driven in Chromium (Playwright).

The browser test needs the system Chromium, which `make test` installs with apt (package `chromium`);
it fails, never skips, when Chromium is missing.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
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
    """`vitkit serve` on a free port, once /healthz answers: (the process, its base URL)."""
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
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        yield process, url
    finally:
        if process.poll() is None:
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
