"""`vitkit serve`, round 2, in process: batch requests, backpressure (503, 504, dropped clients), readiness
and warm-up, the OpenAPI schema, and the Open Inference Protocol's bad requests."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import torch
from fastapi.routing import APIRoute
from PIL import Image
from starlette.testclient import TestClient
from test_serve import noisy_test_model

from vitkit.cli import main
from vitkit.evaluate.predict import image_transform
from vitkit.serve.app import create_app
from vitkit.serve.batcher import SWITCH_INTERVAL_S, Batcher, QueueFull
from vitkit.serve.readiness import Readiness

CLASSES = [f"class {i}" for i in range(10)]


def _png(seed: int, size: int = 24) -> bytes:
    g = torch.Generator().manual_seed(seed)
    buffer = io.BytesIO()
    Image.fromarray(torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return noisy_test_model()


class Held(torch.nn.Module):
    """The model without `attention_maps` (one batcher: predict), whose forward passes on real images wait
    until `release` is set; it records the batch sizes it saw, zero images (the warm-up) and real ones apart."""

    def __init__(self, inner: torch.nn.Module, hold_warm_up: bool = False) -> None:
        super().__init__()
        self.inner, self.config = inner, inner.config
        self.release, self.started = threading.Event(), threading.Event()
        self.hold_warm_up = hold_warm_up
        self.warm_up_sizes: list[int] = []
        self.real_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        real = bool(x.any())
        (self.real_sizes if real else self.warm_up_sizes).append(len(x))
        if real or self.hold_warm_up:
            self.started.set()
            assert self.release.wait(30)
        return self.inner(x)


async def _lifespan_client(app, work) -> Any:
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as c:
            return await work(c)


async def _until(condition, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def _metric(text: str, name: str) -> float:
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))


# --- batch requests ---------------------------------------------------------------------------------------


def test_a_multipart_batch_is_answered_in_order_as_single_requests_are(model):
    images = [_png(i) for i in range(5)]
    with TestClient(create_app(model, CLASSES)) as c:
        singles = [c.post("/v1/predict?topk=10", content=im).json()["topk"] for im in images]
        batch = c.post("/v1/predict?topk=10", files=[("file", (f"{i}.png", im)) for i, im in enumerate(images)])
    results = batch.json()["results"]
    assert batch.status_code == 200 and len(results) == 5
    for single, result in zip(singles, results):
        assert [t["index"] for t in result["topk"]] == [t["index"] for t in single]
        assert [t["prob"] for t in result["topk"]] == pytest.approx([t["prob"] for t in single], abs=1e-6)


def test_a_json_batch_gives_each_bad_image_its_own_error_and_answers_the_rest(model):
    good = [_png(i) for i in range(3)]
    entries = [base64.b64encode(good[0]).decode(), "not base64 at all!", "data:image/png;base64,"
               + base64.b64encode(good[1]).decode(), base64.b64encode(b"no image").decode(),
               base64.b64encode(good[2]).decode()]  # fmt: skip
    with TestClient(create_app(model, CLASSES)) as c:
        multipart = c.post("/v1/predict", files=[("file", ("x.png", im)) for im in good]).json()["results"]
        r = c.post("/v1/explain?topk=2", json={"images": entries})
    results = r.json()["results"]
    assert r.status_code == 200 and len(results) == 5
    assert results[1] == {"error": "images[1] is not valid base64"}
    assert set(results[3]) == {"error"} and "\n" not in results[3]["error"]
    for got, expected in zip([results[0], results[2], results[4]], multipart):
        assert [t["index"] for t in got["topk"]] == [t["index"] for t in expected["topk"][:2]]
        assert got["overlay_png"].startswith("data:image/png;base64,") and len(got["rollout"]) == 4


# --- backpressure -----------------------------------------------------------------------------------------


def test_a_full_queue_is_a_503_with_retry_after_at_once_and_the_queued_are_answered(model):
    """max_batch 1, max_queue 2: one image computes (held), two wait, the fourth request is refused."""
    held = Held(model)
    app = create_app(held, CLASSES, max_batch=1, max_wait_ms=0, max_queue=2)

    async def work(c: httpx.AsyncClient) -> tuple[list[httpx.Response], httpx.Response, str]:
        first = asyncio.ensure_future(c.post("/v1/predict", content=_png(0)))
        await _until(held.started.is_set)
        queued = [asyncio.ensure_future(c.post("/v1/predict", content=_png(i))) for i in (1, 2)]
        await _until(lambda: 'vitkit_queue_depth{kind="predict"} 2.0' in _served_metrics(app))
        refused = await c.post("/v1/predict", content=_png(3))
        held.release.set()
        answered = [await first] + [await q for q in queued]
        return answered, refused, (await c.get("/metrics")).text

    answered, refused, metrics = asyncio.run(_lifespan_client(app, work))
    assert [r.status_code for r in answered] == [200, 200, 200]
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert set(refused.json()) == {"error"} and "--max-queue 2" in refused.json()["error"]
    assert _metric(metrics, "vitkit_rejected_requests_total") == 1.0
    assert held.real_sizes == [1, 1, 1]  # the refused image was never computed


def test_a_full_queue_is_shed_before_routing_the_api_key_and_the_body_on_v1_and_the_oip(model):
    """Under overload a refusal costs no routing, key check, reading or parsing: with the queue full,
    /v1/predict (a multipart batch) and the OIP's infer (with and without a version) get their 503 while
    their bodies are still unread streams, even without the API key; the metrics count them under their
    routes. A request for another model is not shed: it goes on to its 404."""
    held = Held(model)
    app = create_app(held, CLASSES, max_batch=1, max_wait_ms=0, max_queue=1, api_key="k")
    key = {"x-api-key": "k"}
    read: list[str] = []

    async def body(name: str):
        read.append(name)  # only reached if the server asks for the body
        yield b"never parsed"

    async def work(c: httpx.AsyncClient) -> tuple[list[httpx.Response], httpx.Response, str]:
        first = asyncio.ensure_future(c.post("/v1/predict", content=_png(0), headers=key))
        await _until(held.started.is_set)
        queued = asyncio.ensure_future(c.post("/v1/predict", content=_png(1), headers=key))
        await _until(lambda: 'vitkit_queue_depth{kind="predict"} 1.0' in _served_metrics(app))
        multipart = {"content-type": "multipart/form-data; boundary=x"}
        refused = [await c.post("/v1/predict", content=body("v1"), headers=multipart),
                   await c.post("/v2/models/vit_test_patch4_16/infer", content=body("oip")),
                   await c.post("/v2/models/vit_test_patch4_16/versions/1/infer", content=body("oip version"))]  # fmt: skip
        other = await c.post("/v2/models/another/infer", content=b"{}", headers=key)
        held.release.set()
        return refused + [await first, await queued], other, _served_metrics(app)

    responses, other, metrics = asyncio.run(_lifespan_client(app, work))
    assert [r.status_code for r in responses] == [503, 503, 503, 200, 200]
    assert read == []
    assert all(r.headers["retry-after"] == "1" and "--max-queue 1" in r.json()["error"] for r in responses[:3])
    assert other.status_code == 404 and "'another'" in other.json()["error"]
    assert _metric(metrics, "vitkit_rejected_requests_total") == 3.0
    assert _metric(metrics, 'vitkit_requests_total{path="/v2/models/{model_name}/infer",status="503"}') == 1.0
    assert _metric(metrics, 'vitkit_requests_total{path="/v1/predict",status="503"}') == 1.0


def test_requests_that_arrive_together_pass_the_shed_only_while_there_is_room(model):
    """Shed takes the room it admits a request to: of six requests whose bodies arrive slowly, with room
    for two in the queue, two are admitted and read, and four are refused before a byte of their bodies is
    read. A check that took no room let all six through while there was room, to read their bodies and be
    refused by the route (over a quarter of the refusals under a storm of 512 clients, docs/serving.md)."""
    held = Held(model)
    app = create_app(held, CLASSES, max_batch=1, max_wait_ms=0, max_queue=2)
    read: list[int] = []

    async def body(i: int):
        await asyncio.sleep(0.05)  # the body is still on its way when the next request arrives
        read.append(i)
        yield _png(i)

    async def work(c: httpx.AsyncClient) -> tuple[list[httpx.Response], str]:
        first = asyncio.ensure_future(c.post("/v1/predict", content=_png(0)))
        await _until(held.started.is_set)
        burst = [asyncio.ensure_future(c.post("/v1/predict", content=body(i))) for i in range(1, 7)]
        await _until(lambda: sum(f.done() for f in burst) == 4)
        held.release.set()
        return [await first] + [await f for f in burst], _served_metrics(app)

    responses, metrics = asyncio.run(_lifespan_client(app, work))
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 503, 503, 503, 503]
    assert len(read) == 2 and held.real_sizes == [1, 1, 1]
    assert _metric(metrics, "vitkit_rejected_requests_total") == 4.0
    assert 'vitkit_queue_depth{kind="predict"} 0.0' in metrics


def test_the_gil_switch_interval_is_short_while_the_app_serves_and_restored_after(model):
    """The model thread waits for the GIL at each torch op while the event loop holds it: while the app
    runs, Python's 5-ms switch interval is SWITCH_INTERVAL_S (benchmarks/gil_convoy.py)."""
    before = sys.getswitchinterval()

    async def work(c: httpx.AsyncClient) -> float:
        assert (await c.post("/v1/predict", content=_png(0))).status_code == 200
        return sys.getswitchinterval()

    during = asyncio.run(_lifespan_client(create_app(model, CLASSES, max_batch=2), work))
    assert during == pytest.approx(SWITCH_INTERVAL_S) != pytest.approx(before)
    assert sys.getswitchinterval() == before


def test_an_image_queued_past_the_timeout_is_a_504_and_is_never_computed(model):
    held = Held(model)
    app = create_app(held, CLASSES, max_batch=1, max_wait_ms=0, timeout_ms=300)

    async def work(c: httpx.AsyncClient) -> tuple[int, int, str]:
        first = asyncio.ensure_future(c.post("/v1/predict", content=_png(0)))
        await _until(held.started.is_set)
        late = await c.post("/v1/predict", content=_png(1))  # waits behind the held batch
        held.release.set()
        return (await first).status_code, late, (await c.get("/metrics")).text

    first, late, metrics = asyncio.run(_lifespan_client(app, work))
    assert first == 200 and late.status_code == 504 and "--timeout-ms" in late.json()["error"]
    assert _metric(metrics, "vitkit_timed_out_requests_total") == 1.0
    assert held.real_sizes == [1]


def test_a_client_that_disconnects_while_queued_is_dropped_without_computing(model):
    """Driven at the ASGI level: the second client's connection closes while its image waits."""
    held = Held(model)
    app = create_app(held, CLASSES, max_batch=1, max_wait_ms=0)

    async def request(body: bytes, gone: asyncio.Event) -> list[dict]:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"",
                 "root_path": "", "headers": [(b"content-type", b"image/png")], "client": ("127.0.0.1", 1),
                 "server": ("serve", 80)}  # fmt: skip
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])
        sent: list[dict] = []

        async def receive() -> dict:
            with_body = next(messages, None)
            if with_body is not None:
                return with_body
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent

    async def work() -> tuple[list[dict], list[dict], str]:
        async with app.router.lifespan_context(app):
            stays, leaves = asyncio.Event(), asyncio.Event()
            first = asyncio.ensure_future(request(_png(0), stays))
            await _until(held.started.is_set)
            second = asyncio.ensure_future(request(_png(1), leaves))
            await _until(lambda: 'vitkit_queue_depth{kind="predict"} 1.0' in _served_metrics(app))
            leaves.set()
            gone = await second
            await _until(lambda: 'vitkit_queue_depth{kind="predict"} 0.0' in _served_metrics(app))
            held.release.set()
            return await first, gone, _served_metrics(app)

    first, gone, metrics = asyncio.run(work())
    assert first[0]["status"] == 200 and gone[0]["status"] == 499
    assert held.real_sizes == [1]  # the second image was dropped, not computed
    assert 'vitkit_requests_total{path="/v1/predict",status="499"} 1.0' in metrics


def _served_metrics(app) -> str:
    """/metrics without a request: the text the route would answer."""
    route = next(r for r in app.routes if isinstance(r, APIRoute) and r.path == "/metrics")
    return route.endpoint().body.decode()


@pytest.mark.parametrize("images, batches", [(5, [8]), (27, [24, 4]), (32, [32])])
def test_each_batch_is_cut_or_padded_to_a_warmed_up_size_and_callers_get_their_own_rows(images, batches):
    """Sizes 1, 2, 4, 8, 16, 24, 32: 5 images are padded to 8; of 27, 24 run and the other 3 (padded to 4)
    go into the next batch."""
    seen: list[int] = []

    def fn(x: torch.Tensor) -> torch.Tensor:  # (B, 1, 1, 1) -> (B,)
        seen.append(len(x))
        return x.flatten() * 10

    async def work() -> list[torch.Tensor]:
        batcher = Batcher(fn, max_batch=32, max_wait_ms=100)
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher.start(executor)
            rows = await batcher.submit_many([torch.full((1, 1, 1), float(i)) for i in range(images)])
            await batcher.stop()
        return rows

    assert [float(r) for r in asyncio.run(work())] == [10.0 * i for i in range(images)]
    assert seen == batches and Batcher(fn, max_batch=32).sizes == [1, 2, 4, 8, 16, 24, 32]


# --- readiness --------------------------------------------------------------------------------------------


def test_readyz_is_503_until_every_padded_batch_size_has_run_and_livez_answers_meanwhile(model):
    held = Held(model, hold_warm_up=True)
    app = create_app(held, CLASSES, max_batch=8)

    async def work(c: httpx.AsyncClient) -> tuple[int, int, int, dict, int]:
        await _until(held.started.is_set)
        before, live, oip = (await c.get("/readyz")).status_code, (await c.get("/livez")).status_code, \
            (await c.get("/v2/health/ready")).status_code  # fmt: skip
        held.release.set()
        for _ in range(2000):
            after = await c.get("/readyz")
            if after.status_code == 200:
                break
            await asyncio.sleep(0.01)
        return before, live, oip, after.json(), after.status_code

    before, live, oip, after, status = asyncio.run(_lifespan_client(app, work))
    assert (before, live, oip, status) == (503, 200, 503, 200)
    assert after == {"status": "ready", "workers_ready": 1, "workers": 1}
    assert held.warm_up_sizes == [1, 2, 4, 8] and held.real_sizes == []  # Held has no attention: no explain


def test_readiness_across_workers_counts_the_live_workers_that_have_warmed_up(tmp_path):
    mine = Readiness(tmp_path, workers=2)
    mine.mark_ready(0.1)
    assert mine.status()["status"] == "starting" and mine.ready_workers() == 1
    (tmp_path / "999999999").touch()  # a worker that died after it warmed up
    assert mine.ready_workers() == 1
    (tmp_path / str(os.getppid())).touch()  # another live worker
    assert mine.status() == {"status": "ready", "workers_ready": 2, "workers": 2}
    mine.mark_stopping()
    assert mine.status()["status"] == "starting" and not (tmp_path / str(os.getpid())).exists()


# --- the OpenAPI schema -----------------------------------------------------------------------------------


def test_every_route_is_in_the_openapi_schema_and_the_docs_pages_are_off(model):
    app = create_app(model, CLASSES)
    with TestClient(app) as c:
        schema = c.get("/openapi.json").json()
        docs = [c.get(path).status_code for path in ("/docs", "/redoc")]
    routes = {(r.path, m.lower()) for r in app.routes if isinstance(r, APIRoute) for m in r.methods}
    in_schema = {(path, method) for path, item in schema["paths"].items() for method in item}
    assert routes == in_schema and len(routes) > 15
    assert {"/v1/predict", "/v2/models/{model_name}/infer", "/readyz", "/livez", "/metrics"} <= set(schema["paths"])
    assert docs == [404, 404]


# --- the Open Inference Protocol: bad requests ------------------------------------------------------------

OIP_BAD = {
    "an unknown model": ("/v2/models/resnet/infer", {"inputs": []}, 404),
    "a missing input": ("/v2/models/vit_test_patch4_16/infer", {"inputs": []}, 400),
    "an unknown input": ("/v2/models/vit_test_patch4_16/infer",
                         {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.0]}]}, 400),
    "a wrong datatype": ("/v2/models/vit_test_patch4_16/infer",
                         {"inputs": [{"name": "pixels", "datatype": "INT64", "shape": [1, 3, 16, 16],
                                      "data": [0] * 768}]}, 400),
    "a wrong shape": ("/v2/models/vit_test_patch4_16/infer",
                      {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 32, 32],
                                   "data": [0.0] * 3072}]}, 400),
    "data that do not fill the shape": ("/v2/models/vit_test_patch4_16/infer",
                                        {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 3, 16, 16],
                                                     "data": [0.0] * 768}]}, 400),
    "images that are not base64": ("/v2/models/vit_test_patch4_16/infer",
                                   {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                                "data": ["%%%"]}]}, 400),
    "an unknown output": ("/v2/models/vit_test_patch4_16/infer",
                          {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 16, 16],
                                       "data": [0.0] * 768}], "outputs": [{"name": "logits"}]}, 400),
    "metadata of an unknown model": ("/v2/models/resnet", None, 404),
}  # fmt: skip


@pytest.mark.parametrize("path, body, status", OIP_BAD.values(), ids=OIP_BAD.keys())
def test_a_bad_oip_request_gets_the_protocols_error_body(model, path, body, status):
    with TestClient(create_app(model, CLASSES)) as c:
        r = c.post(path, json=body) if body is not None else c.get(path)
        assert c.get("/v2/models/vit_test_patch4_16").status_code == 200  # still serving
    assert r.status_code == status and set(r.json()) == {"error"} and "\n" not in r.json()["error"]


def test_oip_json_pixels_give_the_probabilities_of_the_model(model):
    image = _png(7)
    x = image_transform(model.config)(Image.open(io.BytesIO(image)).convert("RGB"))
    body = {"id": "42", "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 16, 16],
                                    "data": x.flatten().tolist()}]}  # fmt: skip
    with TestClient(create_app(model, CLASSES)) as c:
        r = c.post("/v2/models/vit_test_patch4_16/infer", json=body).json()
        b64 = c.post("/v2/models/vit_test_patch4_16/infer", json={"inputs": [
            {"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(image).decode()]}]}).json()
    with torch.no_grad():
        expected = model(x[None]).softmax(-1)[0]
    assert r["id"] == "42" and r["outputs"][0]["shape"] == [1, 10] and r["outputs"][0]["datatype"] == "FP32"
    assert r["outputs"][0]["data"] == pytest.approx(expected.tolist(), abs=1e-6)
    assert b64["outputs"][0]["data"] == pytest.approx(expected.tolist(), abs=1e-6)


# --- bad options ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", [["--workers", "0"], ["--max-queue", "0"], ["--timeout-ms", "0"],
                                    ["--max-images-per-request", "0"], ["--threads-per-worker", "0"]])  # fmt: skip
def test_a_bad_serve_option_is_a_one_line_error_with_exit_2(fashion_checkpoint, option, capsys):
    assert main(["serve", "--checkpoint", str(fashion_checkpoint), *option]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and option[0] in err


def test_admitted_requests_hold_their_room_until_queued_or_released():
    """Admission reserves: requests admitted while their images decode cannot together pass --max-queue
    (and be refused only after the decoding); a released or queued reservation frees its room."""
    batcher = Batcher(lambda x: x, max_batch=4, max_queue=8)
    first = batcher.reserve(6)
    with pytest.raises(QueueFull, match="6 admitted"):
        batcher.reserve(4)
    second = batcher.reserve(2)
    first.release()
    first.release()  # idempotent
    assert batcher.reserved == 2
    batcher.reserve(6).release()
    second.release()
    assert batcher.reserved == 0
    batcher.reserve(100).release()  # an empty queue with nothing reserved takes any number
    shed = batcher.reserve(1)  # the Shed middleware's room for a request's first image, extended by its route
    shed.extend(40)  # alone, it takes any number
    assert batcher.reserved == 40 and shed.n == 40
    shed.extend(3)  # it may shrink
    other = batcher.reserve(1)
    other.extend(5)
    with pytest.raises(QueueFull, match="8 admitted"):
        other.extend(6)
    assert batcher.reserved == 8 and other.n == 5
    shed.release(), other.release()
    assert batcher.reserved == 0


def test_the_http_stack_is_the_c_one_where_installed_and_a_missing_one_is_named(monkeypatch):
    import importlib.util

    from vitkit.serve import cli

    assert cli.http_stack("h11", "asyncio") == {"http": "h11", "loop": "asyncio"}
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "uvloop" else real(name))
    assert cli.http_stack("auto", "auto") == {"http": "httptools", "loop": "asyncio"}  # serve extra: httptools
    with pytest.raises(ValueError, match="--loop uvloop: uvloop is not installed"):
        cli.http_stack("auto", "uvloop")
