"""The Open Inference Protocol v2 over REST (KServe v2: what Triton, KServe and Seldon MLServer speak),
beside /v1, with Triton's binary tensor data extension (tritonclient's default).

The model takes one of two inputs and gives one output:
  `images`: BYTES [N], each element an encoded image (decoded and preprocessed as /v1/predict does);
  `pixels`: FP32 [N, C, H, W], images already preprocessed by the client (/v1/model says how);
  -> `probabilities`: FP32 [N, classes].
Errors are the protocol's `{"error": "<one line>"}`: 400 for a bad request, 404 for an unknown model.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from .. import __version__
from .served import Served

VERSION = "1"
INFER = ("/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{version}/infer")
COMPUTING_ROUTES = dict.fromkeys(INFER, "predict")  # by the batcher they queue on, as routes_v1's
HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary extension: JSON header, then raw tensors
INFER_SCHEMA = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["inputs"]}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                            "description": f"a JSON header of {HEADER_LENGTH} bytes, then the tensors"}},
}}}  # fmt: skip


def add_oip_routes(app: FastAPI, served: Served, name: str, dependencies: list[Any]) -> None:
    cfg = served.cfg
    C, (H, W) = cfg.in_chans, cfg.img_size
    K = cfg.num_classes
    metadata = {
        "name": name, "versions": [VERSION], "platform": "pytorch_vitkit",
        "inputs": [{"name": "images", "datatype": "BYTES", "shape": [-1]},
                   {"name": "pixels", "datatype": "FP32", "shape": [-1, C, H, W]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, K]}],
    }  # fmt: skip

    def model(model_name: str) -> None:
        if model_name != name:
            raise HTTPException(404, f"unknown model {model_name!r}: this server serves {name!r}")

    def ready() -> Response:
        return JSONResponse({}, status_code=200 if served.readiness.status()["status"] == "ready" else 503)

    @app.get("/v2")
    def server_metadata() -> dict[str, Any]:
        """The server's name, version and protocol extensions."""
        return {"name": "vitkit", "version": __version__, "extensions": ["binary_tensor_data"]}

    app.get("/v2/health/live", summary="Live")(lambda: {})
    app.get("/v2/health/ready", summary="Ready")(ready)

    @app.get("/v2/models/{model_name}", dependencies=dependencies)
    @app.get("/v2/models/{model_name}/versions/{version}", dependencies=dependencies)
    def model_metadata(model_name: str, version: str = VERSION) -> dict[str, Any]:
        """The model's inputs and outputs, with datatype and shape."""
        model(model_name)
        return metadata

    @app.get("/v2/models/{model_name}/ready", dependencies=dependencies)
    @app.get("/v2/models/{model_name}/versions/{version}/ready", dependencies=dependencies)
    def model_ready(model_name: str, version: str = VERSION) -> Response:
        """200 once every worker has warmed up, else 503."""
        model(model_name)
        return ready()

    @app.post(INFER[0], dependencies=dependencies, openapi_extra=INFER_SCHEMA)
    @app.post(INFER[1], dependencies=dependencies, openapi_extra=INFER_SCHEMA)
    async def infer(request: Request, model_name: str, version: str = VERSION) -> Response:
        """The probabilities of a batch of encoded images (`images`) or preprocessed pixels (`pixels`)."""
        model(model_name)
        header, tensors = _split_body(await request.body(), request.headers.get(HEADER_LENGTH))
        images = await _images(header, tensors, served, (C, H, W))
        reservation = served.admit(request, "predict", len(images))
        try:
            probs = torch.stack(await served.compute(request, "predict", images, reservation)).float().numpy()
        finally:
            reservation.release()
        return _response(header, name, probs)


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The request's JSON header and the binary tensor data after it."""
    try:
        end = int(header_length) if header_length is not None else len(body)
        if not 0 <= end <= len(body):
            raise ValueError
        header = json.loads(body[:end])
    except ValueError:
        raise HTTPException(400, f"the request is not OIP JSON (with {HEADER_LENGTH} for binary data)") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise HTTPException(400, "the request has no 'inputs' list")
    return header, body[end:]


async def _images(
    header: dict[str, Any], tensors: bytes, served: Served, chw: tuple[int, int, int]
) -> list[torch.Tensor]:
    """The request's one input -> the images as the model sees them, each (C, H, W)."""
    inputs = header["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict) or inputs[0].get("name") not in ("images", "pixels"):
        given = [i.get("name") if isinstance(i, dict) else i for i in inputs]
        raise HTTPException(400, f"expected one input, 'images' (BYTES) or 'pixels' (FP32), got {given}")
    tensor = inputs[0]
    input_name, datatype, shape = tensor["name"], tensor.get("datatype"), tensor.get("shape")
    expected_type = "BYTES" if input_name == "images" else "FP32"
    if datatype != expected_type:
        raise HTTPException(400, f"input {input_name!r} has datatype {datatype!r}: expected {expected_type}")
    expected_shape = [-1] if input_name == "images" else [-1, *chw]
    if not (isinstance(shape, list) and len(shape) == len(expected_shape) and all(isinstance(d, int) for d in shape)
            and shape[0] >= 1 and shape[1:] == expected_shape[1:]):  # fmt: skip
        raise HTTPException(400, f"input {input_name!r} has shape {shape}: expected {expected_shape} with N >= 1")
    if shape[0] > served.max_images:
        raise HTTPException(400, f"{shape[0]} images in one request: the limit is {served.max_images} "
                                 "(--max-images-per-request)")  # fmt: skip
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    raw = tensors[:size] if size is not None else None
    if input_name == "pixels":
        return list(_pixels(tensor, raw, shape))
    decoded = await served.decode_async(_byte_elements(tensor, raw, shape[0]))
    for i, image in enumerate(decoded):
        if isinstance(image, str):
            raise HTTPException(400, f"images[{i}]: {image}")
    return decoded


def _pixels(tensor: dict[str, Any], raw: bytes | None, shape: list[int]) -> torch.Tensor:
    """FP32 [N, C, H, W], as raw little-endian floats or JSON numbers -> (N, C, H, W)."""
    count = int(np.prod(shape))
    try:
        array = (np.frombuffer(raw, dtype="<f4") if raw is not None else
                 np.asarray(tensor.get("data"), dtype=np.float32).reshape(-1))  # fmt: skip
    except (ValueError, TypeError):
        raise HTTPException(400, "input 'pixels' has data that are not FP32 numbers") from None
    if array.size != count:
        raise HTTPException(400, f"input 'pixels' has {array.size} values: its shape {shape} needs {count}")
    return torch.from_numpy(array.astype(np.float32).reshape(shape))


def _byte_elements(tensor: dict[str, Any], raw: bytes | None, n: int) -> list[bytes]:
    """BYTES [N]: binary (each element a 4-byte little-endian length, then its bytes) or JSON base64 strings."""
    if raw is None:
        data = tensor.get("data")
        try:
            elements = [base64.b64decode(d, validate=True) for d in data] if isinstance(data, list) else None
        except (binascii.Error, ValueError, TypeError):
            raise HTTPException(400, "input 'images' in JSON must be base64 strings") from None
    else:
        elements, offset = [], 0
        while offset + 4 <= len(raw):
            (length,) = struct.unpack_from("<I", raw, offset)
            elements.append(raw[offset + 4 : offset + 4 + length])
            offset += 4 + length
        if offset != len(raw):
            raise HTTPException(400, "input 'images' has malformed binary data")
    if elements is None or len(elements) != n:
        raise HTTPException(400, f"input 'images' has {len(elements or [])} elements: its shape says {n}")
    return elements


def _response(header: dict[str, Any], name: str, probs: np.ndarray) -> Response:
    """probs: (N, classes) -> the OIP answer, its tensor in binary when the client asked for that."""
    requested = header.get("outputs") or [{"name": "probabilities"}]
    if any(not isinstance(o, dict) or o.get("name") != "probabilities" for o in requested):
        raise HTTPException(400, "this model has one output, 'probabilities'")
    params = requested[0].get("parameters") or {}
    binary = params.get("binary_data", (header.get("parameters") or {}).get("binary_data_output", False))
    output: dict[str, Any] = {"name": "probabilities", "datatype": "FP32", "shape": list(probs.shape)}
    data = probs.astype("<f4").tobytes()
    if binary:
        output["parameters"] = {"binary_data_size": len(data)}
    else:
        output["data"] = probs.reshape(-1).tolist()
    body: dict[str, Any] = {"model_name": name, "model_version": VERSION, "outputs": [output]}
    if "id" in header:
        body["id"] = header["id"]
    text = json.dumps(body).encode()
    if not binary:
        return Response(text, media_type="application/json")
    return Response(text + data, media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(text))})
