"""A corpus of awkward and broken image files (issue 6), generated here: what training on an image
folder and `vitkit predict` make of each."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitkit
from vitkit.checkpoints.io import save
from vitkit.cli import main
from vitkit.data.images import ImageDecodeError, open_image
from vitkit.train import fit, make_config


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    """A 20x10 JPEG whose EXIF orientation 6 says: turn it 90° clockwise to view it (10x20)."""
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encoded(image, "JPEG", exif=exif.tobytes())


def _bomb() -> bytes:
    """A valid 1x1 PNG whose header claims 30000x30000 pixels (900 M): only the header is ever read."""
    png = bytearray(_encoded(Image.new("L", (1, 1)), "PNG"))
    ihdr = png[12:29]  # b"IHDR" + width, height, depth, colour type, ...
    ihdr[4:12] = struct.pack(">II", 30000, 30000)
    png[12:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(png)


def _palette(transparent: bool) -> bytes:
    image = Image.new("P", (6, 6), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    return _encoded(image, "PNG", **({"transparency": 1} if transparent else {}))


def _alpha() -> bytes:
    image = Image.new("RGBA", (8, 8), (200, 0, 0, 255))
    image.paste((10, 20, 30, 0), (0, 0, 4, 8))  # the left half fully transparent
    return _encoded(image, "PNG")


# name -> (file content, the RGB pixel expected at (0, 0) and the size, or None: not decodable)
CORPUS = {
    "alpha.png": (_alpha, ((255, 255, 255), (8, 8))),  # transparent: onto white
    "palette.png": (lambda: _palette(False), ((10, 200, 30), (6, 6))),
    "palette_transparent.png": (lambda: _palette(True), ((255, 255, 255), (6, 6))),
    "sixteen_bit.png": (lambda: _encoded(Image.fromarray(np.full((5, 7), 0x8080, np.uint16)), "PNG"), ((128,) * 3, (7, 5))),
    "gray.png": (lambda: _encoded(Image.new("L", (9, 9), 77), "PNG"), ((77,) * 3, (9, 9))),
    "cmyk.jpg": (lambda: _encoded(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95), ((255, 0, 0), (16, 16))),
    "one_pixel.png": (lambda: _encoded(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), ((1, 2, 3), (1, 1))),
    "exif_rotated.jpg": (_exif_rotated, ((0, 0, 255), (10, 20))),
    "truncated.jpg": (lambda: _encoded(Image.effect_noise((64, 64), 40).convert("RGB"), "JPEG")[:-600], None),
    "zero_bytes.jpg": (lambda: b"", None),
    "text.jpg": (lambda: b"just some text, not a JPEG\n", None),
    "bomb.png": (_bomb, None),
}
GOOD = sorted(name for name, (_, expect) in CORPUS.items() if expect is not None)
BAD = sorted(name for name, (_, expect) in CORPUS.items() if expect is None)


def write_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (make, _) in CORPUS.items():
        (folder / name).write_bytes(make())


@pytest.mark.parametrize("name", GOOD)
def test_decodable_images_become_the_rgb_image_a_viewer_shows(tmp_path, name):
    write_corpus(tmp_path)
    image = open_image(tmp_path / name)
    pixel, size = CORPUS[name][1]
    assert image.mode == "RGB" and image.size == size
    assert np.abs(np.subtract(image.getpixel((0, 0)), pixel)).max() <= 3, image.getpixel((0, 0))  # JPEG: near


def test_alpha_keeps_the_opaque_pixels(tmp_path):
    write_corpus(tmp_path)
    assert open_image(tmp_path / "alpha.png").getpixel((7, 0)) == (200, 0, 0)


@pytest.mark.parametrize("name, reason", [
    ("truncated.jpg", "image file is truncated"), ("zero_bytes.jpg", "cannot identify image file"),
    ("text.jpg", "cannot identify image file"), ("bomb.png", "decompression"),
])  # fmt: skip
def test_undecodable_files_raise_one_line_naming_the_file(tmp_path, name, reason):
    write_corpus(tmp_path)
    with pytest.raises(ImageDecodeError) as e:
        open_image(tmp_path / name)
    assert str(e.value).startswith(f"{tmp_path / name}: ") and reason in str(e.value) and "\n" not in str(e.value)


def test_training_on_the_corpus_converts_the_good_skips_and_counts_the_bad(tmp_path):
    for cls in ("first", "second"):
        write_corpus(tmp_path / "data" / cls)
    with pytest.warns(UserWarning) as record:
        result = fit(make_config({"steps": 3, "batch_size": 4}, data=f"imagefolder:{tmp_path / 'data'}",
                                 model="vit_test_patch4_16", out=str(tmp_path / "run"), progress=False, workers=0))  # fmt: skip
    warned = "\n".join(str(w.message) for w in record)
    assert all(str(tmp_path / "data" / cls / name) in warned for cls in ("first", "second") for name in BAD)
    assert result.steps == 3 and result.skipped_images == 2 * len(BAD)
    assert f"skipped {2 * len(BAD)} undecodable images" in result.summary()


def test_predict_answers_for_the_good_files_and_one_line_per_bad_one(tmp_path, capsys):
    write_corpus(tmp_path / "images")
    model = vitkit.create_model("vit_test_patch4_16", num_classes=3)
    save(model, tmp_path / "model.safetensors")
    files = [str(tmp_path / "images" / name) for name in CORPUS]
    code = main(["predict", "--checkpoint", str(tmp_path / "model.safetensors"), *files, "--json", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 1  # some failed
    predictions = {Path(p["image"]).name: p for p in json.loads(out)["results"]}
    assert all(len(predictions[name]["topk"]) == 3 for name in GOOD)
    assert all("error" in predictions[name] for name in BAD)
    lines = err.strip().splitlines()
    assert len(lines) == len(BAD) and all(line.startswith("vitkit predict: error: ") for line in lines)
    assert sorted(Path(line.split(": ")[2]).name for line in lines) == BAD
