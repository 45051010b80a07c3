"""The HTTP API of `vitkit serve` (vitkit.serve), in process through the ASGI test client (httpx)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import re
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable

import httpx
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient
from torchvision.datasets import FashionMNIST

from vitkit import create_model, hardware, save
from vitkit.analysis.rollout import attention_rollout
from vitkit.cli import main
from vitkit.evaluate.predict import image_transform
from vitkit.inference import inference_device
from vitkit.serve import Batcher, app_from_checkpoint, create_app

CLASSES = [f"class {i}" for i in range(10)]
MB = 1 << 20


def noisy_test_model() -> torch.nn.Module:
    model = create_model("vit_test_patch4_16").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


class NoAttention(torch.nn.Module):
    """A classifier without `attention_maps` (as a ResNet is), for the family-generic paths."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _noise_png(size: int = 24, seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return _png(Image.fromarray(torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()))


def _png_bomb(side: int = 30000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (900 M for 30000), about 100 KB compressed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + side // 8)  # filter byte, then the row's bits
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row * 1000) for _ in range(side // 1000)) + deflate.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _decode_data_uri(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return noisy_test_model()


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, CLASSES, max_upload_bytes=MB, max_images_per_request=4)) as c:
        yield c


async def _with_async_client(app, work: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    """Run `work` against `app` through httpx's ASGI transport, with the app's startup and shutdown."""
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as c:
            return await work(c)


# --- /v1/predict and /v1/explain ---------------------------------------------------------------------


def test_predict_gives_the_same_probabilities_as_vitkit_predict(fashion_checkpoint, fashion_pngs, tmp_path, capsys):
    """Reference: `vitkit predict --json` on the same files (a Fashion-MNIST PNG and an EXIF-rotated RGB JPEG)."""
    files = [tmp_path / "fashion.png", tmp_path / "photo.jpg"]
    files[0].write_bytes(fashion_pngs[0])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.open(io.BytesIO(_noise_png(40))).crop((0, 0, 40, 30)).save(files[1], format="JPEG", exif=exif)
    with TestClient(app_from_checkpoint(fashion_checkpoint, "cpu", precision="fp32")) as c:
        for path in files:
            assert main(["predict", "--checkpoint", str(fashion_checkpoint), str(path), "--json", "--topk", "10",
                         "--device", "cpu", "--precision", "fp32"]) == 0  # the app's fp32  # fmt: skip
            expected = json.loads(capsys.readouterr().out)["results"][0]["topk"]
            served = c.post("/v1/predict?topk=10", files={"file": (path.name, path.read_bytes())}).json()["topk"]
            assert served == expected  # one schema: {"label", "index", "prob"} for each class


def test_raw_body_and_multipart_uploads_give_the_same_answer(client):
    image = _noise_png()
    raw = client.post("/v1/predict", content=image, headers={"Content-Type": "image/png"}).json()
    multipart = client.post("/v1/predict", files={"file": ("x.png", image, "image/png")}).json()
    assert raw["topk"] == multipart["topk"] and raw["model"] == "vit_test_patch4_16"


@pytest.mark.parametrize("claimed", ["application/x-www-form-urlencoded", "text/plain"])
def test_an_image_body_is_read_as_the_image_whatever_content_type_it_claims(client, claimed):
    """`curl --data-binary @x.png` claims application/x-www-form-urlencoded unless told otherwise."""
    image = _noise_png()
    want = client.post("/v1/predict", content=image, headers={"Content-Type": "image/png"}).json()
    got = client.post("/v1/predict", content=image, headers={"Content-Type": claimed})
    assert got.status_code == 200 and got.json()["topk"] == want["topk"]


def test_predict_topk_is_sorted_names_its_classes_and_is_capped_at_the_class_count(client, model):
    image = _noise_png()
    top = client.post("/v1/predict?topk=50", content=image).json()["topk"]
    with torch.no_grad():
        x = image_transform(model.config)(Image.open(io.BytesIO(image)).convert("RGB"))
        probs = model(x[None]).softmax(-1)[0]
    assert [t["index"] for t in top] == probs.argsort(descending=True).tolist()
    assert [t["label"] for t in top] == [CLASSES[t["index"]] for t in top]
    assert [t["prob"] for t in top] == pytest.approx(probs.sort(descending=True).values.tolist(), abs=1e-6)


def test_explain_returns_the_rollout_as_numbers_and_a_png_overlay(client, model):
    """Reference: vitkit.analysis.rollout.attention_rollout on the same preprocessed image."""
    image = _noise_png()
    body = client.post("/v1/explain?topk=3", content=image).json()
    x = image_transform(model.config)(Image.open(io.BytesIO(image)).convert("RGB"))
    expected = attention_rollout(model, x[None])[0]
    assert torch.tensor(body["rollout"]) == pytest.approx(expected, abs=1e-6)
    assert len(body["topk"]) == 3
    overlay, seen = _decode_data_uri(body["overlay_png"]), _decode_data_uri(body["input_png"])
    assert overlay.size == seen.size == (16, 16) and overlay.mode == "RGBA"
    assert any(lo < hi for lo, hi in overlay.getextrema())  # not blank: the heat varies over the image


def test_explain_is_a_clear_400_for_a_model_without_attention(model):
    with TestClient(create_app(NoAttention(model), CLASSES)) as c:
        assert c.post("/v1/predict", content=_noise_png()).status_code == 200
        r = c.post("/v1/explain", content=_noise_png())
        assert c.get("/v1/model").json()["explain"] is False
    assert r.status_code == 400 and "has no attention" in r.json()["error"] and "/v1/predict" in r.json()["error"]



def test_a_bit_resnet_checkpoint_is_served_with_predict_and_a_400_on_explain(tmp_path):
    """Every family vitkit loads is served: a BiT ResNet answers /v1/predict exactly as `vitkit predict`
    computes it, and /v1/explain says it has no attention."""
    resnet = create_model("resnetv2_test_16").eval()
    with torch.no_grad():  # its head starts at zero: noise makes the classes differ
        for p in resnet.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save(resnet, tmp_path / "resnet.safetensors")
    image = _noise_png()
    with TestClient(app_from_checkpoint(tmp_path / "resnet.safetensors", "cpu", precision="fp32")) as c:
        body = c.post("/v1/predict?topk=1", content=image).json()
        explained = c.post("/v1/explain", content=image)
    x = image_transform(resnet.config)(Image.open(io.BytesIO(image)).convert("RGB"))
    with torch.no_grad():
        expected = resnet(x[None]).softmax(dim=-1)[0]
    assert body["topk"][0]["index"] == int(expected.argmax())
    assert body["topk"][0]["prob"] == pytest.approx(float(expected.max()), abs=1e-6)
    assert explained.status_code == 400 and "has no attention" in explained.json()["error"]

# --- /v1/model, /healthz, /metrics -------------------------------------------------------------------


def test_model_describes_classes_input_size_preprocessing_and_the_file_checksum(fashion_checkpoint):
    """The Python API's precision defaults to auto, as `vitkit serve`'s does."""
    with TestClient(app_from_checkpoint(fashion_checkpoint, "cpu")) as c:
        info = c.get("/v1/model").json()
    assert info["precision"] == inference_device("auto", "cpu")[1].precision
    assert info["sha256"] == hashlib.sha256(fashion_checkpoint.read_bytes()).hexdigest()
    assert info["classes"] == FashionMNIST.classes and info["input_size"] == [1, 28, 28]
    assert info["preprocessing"]["mean"] == [0.5] and info["preprocessing"]["crop"] == [28, 28]
    assert info["name"] == "vit_fashion_patch4_28" and info["explain"] is True


def test_metrics_count_requests_by_status_and_histogram_latency_and_batch_size(model):
    with TestClient(create_app(model, CLASSES)) as c:
        c.post("/v1/predict", content=_noise_png())
        c.post("/v1/predict", content=b"not an image")
        assert c.get("/healthz").json()["status"] == "ok"
        text = c.get("/metrics").text
    assert 'vitkit_requests_total{path="/v1/predict",status="200"} 1.0' in text
    assert 'vitkit_requests_total{path="/v1/predict",status="400"} 1.0' in text
    assert re.search(r'vitkit_request_latency_seconds_count\{path="/v1/predict"\} 2\.0', text)
    assert "vitkit_batch_size_count 1.0" in text and 'vitkit_batch_size_bucket{le="1.0"} 1.0' in text


# --- dynamic batching ----------------------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_answer(model):
    """64 different images at once; reference: the model on each image alone."""
    images = [_noise_png(seed=i) for i in range(64)]
    app = create_app(model, CLASSES, max_batch=16, max_wait_ms=50)

    async def work(c: httpx.AsyncClient) -> tuple[list[dict], str]:
        answers = await asyncio.gather(*(c.post("/v1/predict?topk=10", content=im) for im in images))
        return [a.json() for a in answers], (await c.get("/metrics")).text

    answers, metrics = asyncio.run(_with_async_client(app, work))
    transform = image_transform(model.config)
    with torch.no_grad():
        for image, answer in zip(images, answers):
            probs = model(transform(Image.open(io.BytesIO(image)).convert("RGB"))[None]).softmax(-1)[0]
            assert [t["prob"] for t in sorted(answer["topk"], key=lambda t: t["index"])] == pytest.approx(
                probs.tolist(), abs=1e-5
            )
    batches = float(re.search(r"vitkit_batch_size_count (\S+)", metrics).group(1))
    assert batches < len(images) / 2  # most requests shared a forward pass
    assert float(re.search(r"vitkit_batch_size_sum (\S+)", metrics).group(1)) == len(images)


def test_healthz_answers_while_a_batch_computes(model):
    class Slow(NoAttention):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.any():  # the warm-up's zero images pass at once
                time.sleep(2.0)
            return self.inner(x)

    app = create_app(Slow(model), CLASSES, max_wait_ms=0)

    async def work(c: httpx.AsyncClient) -> tuple[bool, int, int]:
        prediction = asyncio.create_task(c.post("/v1/predict", content=_noise_png()))
        await asyncio.sleep(0.3)  # the forward pass has started
        health = await c.get("/healthz")
        computing = not prediction.done()
        return computing, health.status_code, (await prediction).status_code

    assert asyncio.run(_with_async_client(app, work)) == (True, 200, 200)


def test_a_failed_forward_pass_fails_its_own_callers_and_the_batcher_carries_on():
    calls = 0

    def fn(x: torch.Tensor) -> torch.Tensor:  # (B, 1, 2, 2) -> (B,)
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("out of memory")
        return x.sum(dim=(1, 2, 3))

    async def work() -> tuple[list, list]:
        batcher = Batcher(fn, max_batch=4, max_wait_ms=50)
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher.start(executor)
            images = [torch.full((1, 2, 2), float(i)) for i in range(3)]
            failed = await asyncio.gather(*(batcher.submit(x) for x in images), return_exceptions=True)
            served = await asyncio.gather(*(batcher.submit(x) for x in images))
            await batcher.stop()
        return failed, served

    failed, served = asyncio.run(work())
    assert all(isinstance(e, RuntimeError) for e in failed) and [float(v) for v in served] == [0.0, 4.0, 8.0]


def test_a_failed_forward_pass_is_a_500_json_error_and_the_server_carries_on(model):
    class FailsOnce(NoAttention):
        failed = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.failed and x.any():  # the warm-up's zero images pass
                self.failed = True
                raise RuntimeError("CUDA out of memory")
            return self.inner(x)

    with TestClient(create_app(FailsOnce(model), CLASSES), raise_server_exceptions=False) as c:
        failed = c.post("/v1/predict", content=_noise_png())
        assert c.post("/v1/predict", content=_noise_png()).status_code == 200
    assert failed.status_code == 500 and failed.json() == {"error": "internal error (RuntimeError)"}


# --- robustness and security ---------------------------------------------------------------------------


def _truncated_png() -> bytes:
    whole = _noise_png(64)
    return whole[: len(whole) // 2]


BAD_REQUESTS = {
    "over the limit (Content-Length)": (dict(content=b"\x00" * (2 * MB)), 413),
    "over the limit (chunked)": (dict(content=iter([b"\x00" * (MB // 2)] * 4)), 413),
    "not an image": (dict(content=b"just some text, no image here"), 400),
    "a truncated image": (dict(content=_truncated_png()), 400),
    "an empty body": (dict(content=b""), 400),
    "a decompression bomb": (dict(content=_png_bomb()), 400),
    "a wrong content type, not an image": (dict(content=b"hello", headers={"Content-Type": "text/plain"}), 415),
    "more files than --max-images-per-request": (dict(files=[("file", ("x.png", _noise_png()))] * 5), 400),
    "more JSON images than --max-images-per-request": (dict(json={"images": ["aGk="] * 5}), 400),
    "a JSON body without images": (dict(json={"image": "aGk="}), 400),
    "a JSON body that is not JSON": (dict(content=b"{images", headers={"Content-Type": "application/json"}), 400),
    "multipart without a file field": (dict(files={"image": ("x.png", _noise_png())}), 400),
    "a malformed multipart body": (dict(content=b"--x\r\nnonsense", headers={"Content-Type": "multipart/form-data"}), 400),
    "topk 0": (dict(content=_noise_png(), params={"topk": 0}), 400),
    "topk not a number": (dict(content=_noise_png(), params={"topk": "many"}), 400),
}  # fmt: skip


@pytest.mark.parametrize("request_kwargs, status", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_a_bad_request_gets_a_one_line_json_error_and_the_server_keeps_serving(client, request_kwargs, status):
    r = client.post("/v1/predict", **request_kwargs)
    assert r.status_code == status
    assert set(r.json()) == {"error"} and "\n" not in r.json()["error"]
    assert client.post("/v1/predict", content=_noise_png()).status_code == 200


def test_a_streamed_upload_over_the_limit_is_refused_before_it_is_all_read(model):
    """The model never sees it, and only the drain's bound is read after the limit (max(2 x limit, 1 MiB):
    the lingering close that lets a client which writes before it reads get the 413)."""
    app = create_app(model, CLASSES, max_upload_bytes=64 * 1024)
    sent = 0

    async def endless() -> Any:
        nonlocal sent
        for _ in range(1000):  # 64 MB if it were all read
            sent += 1
            yield b"\x00" * 64 * 1024

    async def work(c: httpx.AsyncClient) -> int:
        return (await c.post("/v1/predict", content=endless())).status_code

    assert asyncio.run(_with_async_client(app, work)) == 413 and sent <= (1 << 20) // (64 * 1024) + 2


def test_the_api_key_is_required_on_v1_as_bearer_or_x_api_key(model):
    with TestClient(create_app(model, CLASSES, api_key="s3cret")) as c:
        image = _noise_png()
        missing = c.post("/v1/predict", content=image)
        wrong = c.post("/v1/predict", content=image, headers={"X-API-Key": "guess"})
        bearer = c.post("/v1/predict", content=image, headers={"Authorization": "Bearer s3cret"})
        header = c.get("/v1/model", headers={"X-API-Key": "s3cret"})
        open_paths = [c.get(path).status_code for path in ("/healthz", "/", "/static/app.js")]
        assert c.post("/v1/predict", content=image).status_code == 401  # still serving, still refusing
    assert missing.status_code == wrong.status_code == 401 and "API key" in wrong.json()["error"]
    assert bearer.status_code == header.status_code == 200 and open_paths == [200, 200, 200]


@pytest.mark.parametrize("path", ["/static/../app.py", "/static/..%2fapp.py", "/samples/..%2f..%2fapp.py",
                                  "/static/%2fetc%2fpasswd", "/samples/../../../../etc/passwd"])  # fmt: skip
def test_no_request_reads_a_path_from_disk(client, path):
    r = client.get(path)
    assert r.status_code == 404 and "error" in r.json()


# --- the page ----------------------------------------------------------------------------------------------


def test_the_page_and_its_assets_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assets = [a for a in re.findall(r'(?:href|src)="([^"]+)"', page.text) if a != "data:,"]  # no favicon
    assert assets and all(a.startswith("/static/") for a in assets)  # no CDN
    assert all(client.get(a).status_code == 200 for a in assets)
    assert not re.search(r"https?://", client.get("/static/app.js").text + client.get("/static/style.css").text)


def test_the_page_offers_fashion_mnist_samples_for_a_fashion_mnist_model_and_photos_otherwise(
    client, fashion_checkpoint
):
    with TestClient(app_from_checkpoint(fashion_checkpoint, "cpu")) as c:
        fashion = [Image.open(io.BytesIO(c.get(url).content)) for url in c.get("/samples").json()]
    photos = [Image.open(io.BytesIO(client.get(url).content)) for url in client.get("/samples").json()]
    assert len(fashion) >= 3 and all(im.size == (28, 28) and im.mode == "L" for im in fashion)
    assert len(photos) >= 3 and all(im.mode == "RGB" and max(im.size) > 28 for im in photos)


def test_a_hybrid_is_explained_on_its_token_grid():
    """R26+ViT-S/32 at 64 px: 2x2 tokens from the ResNet's feature map."""
    hybrid = create_model("vit_small_r26_s32_224", img_size=64, depth=1, num_classes=10).eval()
    with TestClient(create_app(hybrid, CLASSES)) as c:
        body = c.post("/v1/explain", content=_noise_png(70)).json()
    assert torch.tensor(body["rollout"]).shape == (2, 2) and _decode_data_uri(body["overlay_png"]).size == (64, 64)


def test_bf16_probabilities_are_those_of_fp32_within_bf16_rounding(model):
    image = _noise_png()
    with TestClient(create_app(model, CLASSES)) as fp32, TestClient(create_app(model, CLASSES, precision="bf16")) as bf16:
        exact = fp32.post("/v1/predict?topk=10", content=image).json()["topk"]
        low = bf16.post("/v1/predict?topk=10", content=image).json()["topk"]
    by_index = {t["index"]: t["prob"] for t in exact}
    assert all(abs(t["prob"] - by_index[t["index"]]) < 0.02 for t in low)
    assert low != exact  # bf16 did run


needs_int8_cpu = pytest.mark.skipif(
    not hardware.cpu().int8, reason=f"needs {hardware.cpu().missing_int8}: this CPU is {hardware.cpu().summary()}"
)


@needs_int8_cpu
def test_int8_serving_is_calibrated_on_the_checkpoints_data_and_follows_fp32(fashion_checkpoint, fashion_pngs):
    """`serve --precision int8`: quantised (compiled, batch sizes up to max_batch) on Fashion-MNIST training
    images named by the checkpoint; the classes follow fp32's, and /v1/explain keeps the fp32 rollout."""
    pytest.importorskip("torchao")
    images = fashion_pngs[:16]
    with TestClient(app_from_checkpoint(fashion_checkpoint, "cpu", precision="fp32", max_batch=1)) as fp32:
        exact = [fp32.post("/v1/predict?topk=10", content=png).json()["topk"] for png in images]
        exact_rollout = fp32.post("/v1/explain", content=images[0]).json()["rollout"]
    with TestClient(app_from_checkpoint(fashion_checkpoint, "cpu", precision="int8", max_batch=1)) as int8:
        assert int8.get("/v1/model").json()["precision"] == "int8"
        low = [int8.post("/v1/predict?topk=10", content=png).json()["topk"] for png in images]
        explained = int8.post("/v1/explain", content=images[0]).json()
    agree = sum(a[0]["index"] == b[0]["index"] for a, b in zip(exact, low))
    assert agree >= 15, f"int8 picked fp32's class on {agree} of 16 images"
    for a, b in zip(exact, low):
        by_index = {t["index"]: t["prob"] for t in a}
        assert max(abs(t["prob"] - by_index[t["index"]]) for t in b) < 0.05
    assert low != exact  # int8 did run
    assert explained["rollout"] == exact_rollout and explained["topk"][0]["index"] == low[0][0]["index"]


def test_int8_serving_without_calibration_images_is_a_one_line_error(tmp_path):
    path = tmp_path / "no-dataset.safetensors"
    save(noisy_test_model(), path)  # no training dataset recorded
    with pytest.raises(ValueError, match=r"--calibrate DATASET") as e:
        app_from_checkpoint(path, "cpu", precision="int8")
    assert "\n" not in str(e.value)
