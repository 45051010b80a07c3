"""Reading image files as RGB, whatever their mode, with a guard against decompression bombs.

Every decodable file becomes the RGB image a viewer would show: EXIF orientation applied, 16-bit
samples scaled to 8 bits (not clipped), palettes expanded, transparency composited onto white, CMYK
and grayscale converted. Anything else raises ImageDecodeError naming the file.

With `keep_gray`, a grayscale file (8 or 16 bits, float, bilevel, with or without transparency) becomes
an 8-bit grayscale image (mode L) instead, its grey levels those of the RGB one: `vitkit predict` and the
server read files so, and a 1-channel model then sees the file's own pixels (torchvision's Grayscale,
which an RGB copy would go through, darkens about a third of them by one level).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import IO, Iterator, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# A path, or an open binary file (uploaded bytes in a BytesIO) named by the `name` given with it.
Source = Union[str, os.PathLike, IO[bytes]]

# PIL's own threshold for its DecompressionBombWarning (it refuses outright only at twice this)
MAX_PIXELS = 89_478_485
DECODE_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)


class ImageDecodeError(ValueError):
    """A file that is not a decodable image (or too large to decode safely); the message names it."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def check_size(path: str | os.PathLike, image: Image.Image, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse, from the header alone, an image whose decoded size would exceed `max_pixels`."""
    w, h = image.size
    if w * h > max_pixels:
        raise ImageDecodeError(path, f"{w}x{h} pixels is over the {max_pixels:,} allowed (decompression-bomb guard)")


def to_rgb(image: Image.Image, keep_gray: bool = False) -> Image.Image:
    """An RGB image as it is meant to be seen (see the module's docstring); with `keep_gray`, a grayscale
    one stays grayscale (mode L)."""
    image = ImageOps.exif_transpose(image)
    gray = keep_gray and image.mode in ("1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grayscale (PIL reads some as 32-bit "I")
        samples = np.asarray(image, dtype=np.float64).clip(0, 65535)
        image = Image.fromarray(np.rint(samples / 257).astype(np.uint8), mode="L")
    elif image.mode == "F":
        samples = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.rint(samples.clip(0, 1) * 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (image.mode in ("L", "RGB") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        image = background
    return image.convert("L" if gray else "RGB")  # an RGB copy of a grey image converts back to L exactly


@contextlib.contextmanager
def _guarded_open(source: Source, max_pixels: int, name: str | None = None) -> Iterator[Image.Image]:
    """PIL's Image.open with the size guard; any failure inside, reading or decoding, becomes an
    ImageDecodeError naming the file (`name`, by default the path)."""
    path = name if name is not None else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                check_size(path, image, max_pixels)
                yield image
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(name, "no such file") from None
    except (*DECODE_ERRORS, Image.DecompressionBombWarning) as e:
        reason = str(e).replace(repr(source), repr(name)) if name is not None else str(e)  # not an object's repr
        raise ImageDecodeError(path, f"not a decodable image ({reason or type(e).__name__})") from None


def open_image(
    source: Source, max_pixels: int = MAX_PIXELS, name: str | None = None, keep_gray: bool = False
) -> Image.Image:
    """Decode a file fully into an RGB PIL image (with `keep_gray`, a grayscale file into an L one);
    ImageDecodeError (one line, naming the file) otherwise. `source`: a path, or an open binary file such
    as io.BytesIO(uploaded bytes), called `name` in errors."""
    with _guarded_open(source, max_pixels, name) as image:
        image.load()  # a truncated file fails here, not lazily later
        return to_rgb(image, keep_gray)


def looks_intact(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> str | None:
    """A cheap check without decoding the pixels: None when the file looks like a whole image, else why not.

    PIL recognises the format and verifies its structure (whole-file CRCs for PNG); a JPEG must end
    with its end-of-image marker, which a truncated one lacks."""
    try:
        with _guarded_open(path, max_pixels) as image:
            fmt = image.format
            image.verify()
    except ImageDecodeError as e:
        return e.reason
    if fmt == "JPEG":
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 1024))
            if b"\xff\xd9" not in f.read():
                return "truncated JPEG (no end-of-image marker)"
    return None
