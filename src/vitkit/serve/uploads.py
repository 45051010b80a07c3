"""The images a /v1 request carries: one (a multipart field `file`, or the raw body) or several (several
`file` fields, or a JSON body `{"images": ["<base64>", ...]}`).

Nothing here decodes an image: it returns the encoded bytes, or for a JSON entry that is not base64 the
error for that entry, so that one bad image of a batch gets its own error and the rest are answered.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

# Uploads are multipart (field `file`), JSON, or the image's bytes as the body with one of these types, or with
# any other type when the body starts as an image file does: `curl --data-binary @x.png` labels it
# application/x-www-form-urlencoded unless told otherwise.
RAW_TYPES = ("", "application/octet-stream")
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def looks_like_an_image(data: bytes) -> bool:
    """Whether `data` starts with the signature of PNG, JPEG, GIF, BMP, TIFF or WebP (nothing is decoded)."""
    return data.startswith(IMAGE_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


@dataclass
class Upload:
    """The request's images in order, each its bytes or the one-line error that refuses it; `batch`: whether
    the client sent a batch (and so gets `{"results": [...]}`) rather than one image."""

    images: list[bytes | str]
    batch: bool
    names: list[str]  # how an error names each image: its multipart part or JSON entry and index


async def read_upload(request: Request, max_images: int) -> Upload:
    """The request's images; a client that goes away before its upload ends gets a 400 (nobody reads it)
    instead of an error in the server's log."""
    try:
        return await _read_upload(request, max_images)
    except ClientDisconnect:
        raise HTTPException(400, "the client disconnected before its upload ended") from None


def _too_many(n: int | str, max_images: int) -> HTTPException:
    return HTTPException(400, f"{n} images in one request: the limit is {max_images} (--max-images-per-request)")


async def _read_upload(request: Request, max_images: int) -> Upload:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        try:
            form = await request.form(max_files=max_images, max_fields=max_images + 8)
        except HTTPException as e:
            raise (_too_many("more", max_images) if "Too many files" in str(e.detail) else e) from None
        files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
        if not files:
            raise HTTPException(400, "the multipart upload has no file in field 'file'")
        names = [f"file[{i}] ({f.filename})" if f.filename else f"file[{i}]" for i, f in enumerate(files)]
        images: list[bytes | str] = [await f.read() or f"{name}: empty, no image bytes" for f, name in zip(files, names)]
        if len(images) == 1 and isinstance(images[0], str):
            raise HTTPException(400, images[0])
        return Upload(images, batch=len(files) > 1, names=names)
    if kind == "application/json":
        images = _json_images(await request.body(), max_images)
        return Upload(images, batch=True, names=[f"images[{i}]" for i in range(len(images))])
    data = await request.body()
    if kind in RAW_TYPES or kind.startswith("image/") or looks_like_an_image(data):
        if not data:
            raise HTTPException(400, "empty upload: no image bytes")
        return Upload([data], batch=False, names=["upload"])
    raise HTTPException(415, f"content type {kind!r} with a body that is not an image file: send image/*, "
                             "application/octet-stream, multipart/form-data with the images in fields 'file', or "
                             'JSON {"images": ["<base64>", ...]}')  # fmt: skip


def _json_images(body: bytes, max_images: int) -> list[bytes | str]:
    """{"images": ["<base64 or a data: URI>", ...]} -> each image's bytes, or the error for that entry."""
    try:
        entries = json.loads(body)["images"]
    except (ValueError, KeyError, TypeError):
        entries = None
    if not isinstance(entries, list) or not entries:
        raise HTTPException(400, 'the JSON body must be {"images": ["<base64>", ...]} with at least one image')
    if len(entries) > max_images:
        raise _too_many(len(entries), max_images)
    return [_base64(entry, i) for i, entry in enumerate(entries)]


def _base64(entry: object, index: int) -> bytes | str:
    if not isinstance(entry, str):
        return f"images[{index}] is not a base64 string"
    text = entry.split(",", 1)[1] if entry.startswith("data:") else entry
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return f"images[{index}] is not valid base64"
    return data or f"images[{index}] is empty: no image bytes"
