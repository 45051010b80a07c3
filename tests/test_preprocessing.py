"""Images as a model sees them: evaluation resizes like timm (the shorter side, then a centre crop), and a
grayscale file reaches a 1-channel model with its own grey levels."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

import vitkit
from vitkit.data import eval_transform
from vitkit.data.datasets import DEBIAN_FASHION_MNIST
from vitkit.data.transforms import eval_resize

timm = pytest.importorskip("timm")

needs_fashion_mnist = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="apt-get install dataset-fashion-mnist",
)
# A ViT, a hybrid and a BiT ResNet, with the tag whose preprocessing timm resolves for them.
TIMM_MODELS = ["vit_base_patch16_224.augreg2_in21k_ft_in1k", "vit_small_r26_s32_224.augreg_in21k_ft_in1k",
               "resnetv2_50x1_bit.goog_in21k"]  # fmt: skip
SIZES = [(640, 480), (480, 640), (300, 900), (500, 500)]  # (width, height)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())  # 512 x 512 RGB


def _timm_transform(name: str, normalize: bool) -> tuple[v2.Transform, dict]:
    from timm.data import create_transform, resolve_data_config

    pretrained = resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())
    return create_transform(**pretrained, normalize=normalize), pretrained


def _pixels(cfg) -> v2.Compose:
    """vitkit's evaluation transform up to the uint8 crop (before the float conversion)."""
    return v2.Compose([eval_resize(cfg), v2.CenterCrop(cfg.img_size), v2.ToImage()])


@pytest.mark.parametrize("name", TIMM_MODELS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_eval_transform_gives_timms_tensor_on_non_square_photos(photo, name, size):
    """Reference: timm's resolve_data_config + create_transform (what timm's validate.py runs)."""
    image = photo.resize(size)
    reference, pretrained = _timm_transform(name, normalize=False)
    cfg = vitkit.get_config(name.split(".")[0]).data_config
    assert (cfg.in_chans, *cfg.img_size) == pretrained["input_size"]
    assert (cfg.crop_pct, cfg.interpolation, cfg.mean, cfg.std) == tuple(
        pretrained[k] for k in ("crop_pct", "interpolation", "mean", "std"))  # the same preprocessing asked for
    assert torch.equal(_pixels(cfg)(image), reference(image))  # the same pixels
    normalised, _ = _timm_transform(name, normalize=True)
    # and the same floats but for the rounding of x * (1 / 255) (torchvision v2) against x / 255 (timm)
    torch.testing.assert_close(eval_transform(cfg, 3)(image), normalised(image), atol=3e-7, rtol=0)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_a_non_square_model_is_resized_like_timms_resize_keep_ratio(photo, size):
    image = photo.resize(size)
    cfg = dataclasses.replace(vitkit.get_config("vit_base_patch16_224").data_config, img_size=(160, 224))
    reference = timm.data.create_transform(input_size=(3, 160, 224), crop_pct=0.9, interpolation="bicubic",
                                           normalize=False)  # fmt: skip
    assert torch.equal(_pixels(cfg)(image), reference(image))


def test_an_image_of_the_model_size_at_crop_pct_1_is_not_resampled():
    """Why figures measured on square data at its own size (Fashion-MNIST, 28 px, crop_pct 1) do not move."""
    cfg = vitkit.get_config("vit_fashion_patch7_28").data_config
    pixels = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for image in (Image.fromarray(pixels[0].numpy(), mode="L"), pixels):
        assert torch.equal(_pixels(cfg)(image), pixels)


# ---- grayscale -------------------------------------------------------------------------------------------


@needs_fashion_mnist
def test_a_grayscale_png_reaches_a_1_channel_model_with_its_own_grey_levels(fashion_pngs, tmp_path):
    """Reference: the eval transform of the dataset's own image. Through an RGB copy, torchvision's
    Grayscale (weights summing to 0.9999, truncated) made about a third of the pixels one level darker."""
    import io

    from vitkit.data import load_data
    from vitkit.evaluate.predict import image_transform, read_image

    cfg = vitkit.get_config("vit_fashion_patch7_28")
    test = load_data("fashion_mnist", tmp_path).test
    image = read_image(io.BytesIO(fashion_pngs[0]), name="png")
    assert image.mode == "L"
    assert torch.equal(image_transform(cfg)(image), eval_transform(cfg.data_config, 1)(test[0][0]))


@needs_fashion_mnist
def test_predict_on_fashion_mnist_pngs_gives_the_models_output_on_the_datasets_tensors(
    fashion_checkpoint, fashion_pngs, tmp_path
):
    """Reference: the model on the batch `vitkit eval --data fashion_mnist` feeds it (the same 8 images)."""
    from torch.utils.data import Subset

    from vitkit.data import load_data
    from vitkit.evaluate import eval_loader
    from vitkit.evaluate.predict import predict_files

    model = vitkit.load(fashion_checkpoint).eval()
    test = load_data("fashion_mnist", tmp_path).test
    images, _ = next(iter(eval_loader(Subset(test, range(8)), model.config, 1, batch_size=8)))
    with torch.no_grad():
        expected = model(images).softmax(-1)
    paths = []
    for i, png in enumerate(fashion_pngs[:8]):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png)
    predictions = predict_files(model, [str(p) for p in paths], classes=list(test.classes), topk=10)
    for prediction, want in zip(predictions, expected):
        got = {entry["label"]: entry["prob"] for entry in prediction.topk}
        assert [got[c] for c in test.classes] == want.tolist()


def test_a_grayscale_image_into_an_rgb_model_equals_its_rgb_copy():
    from vitkit.evaluate.predict import image_transform

    gray = Image.effect_noise((40, 30), 60)  # L, non-square: resized, then the grey repeated
    transform = image_transform(vitkit.get_config("vit_test_patch4_16", crop_pct=0.875))
    assert torch.equal(transform(gray), transform(gray.convert("RGB")))


@pytest.mark.parametrize("mode, suffix", [("1", "png"), ("L", "png"), ("LA", "png"), ("I;16", "png"), ("F", "tiff")])
def test_every_grayscale_file_is_read_as_l_with_the_grey_levels_of_its_rgb_reading(tmp_path, mode, suffix):
    import numpy as np

    from vitkit.data.images import open_image

    noise = np.asarray(Image.effect_noise((24, 16), 80), dtype=np.float64)  # (16, 24) in [0, 255]
    pixels = {"1": noise > 128, "L": noise, "LA": noise, "I;16": noise * 257, "F": noise / 255}[mode]
    image = Image.fromarray(pixels.astype({"1": bool, "I;16": np.uint16, "F": np.float32}.get(mode, np.uint8)))
    if mode == "LA":
        image = Image.merge("LA", [image, Image.fromarray((noise[::-1] > 60).astype(np.uint8) * 255)])
    image.save(tmp_path / f"gray.{suffix}")
    gray, rgb = (open_image(tmp_path / f"gray.{suffix}", keep_gray=keep) for keep in (True, False))
    assert (gray.mode, rgb.mode) == ("L", "RGB")
    assert np.array_equal(np.asarray(gray), np.asarray(rgb)[..., 0])
