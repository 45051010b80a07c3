"""Datasets, transforms and reproducible loading (vitkit.data)."""

from __future__ import annotations

import dataclasses
import io
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

import vitkit
from vitkit.data import (
    ResumableSampler, SeededTransform, TolerantImageFolder, batch_mix, eval_transform, load_data, train_transform,
)  # fmt: skip
from vitkit.data.datasets import DEBIAN_FASHION_MNIST
from vitkit.data.images import ImageDecodeError

needs_fashion_mnist = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="apt-get install dataset-fashion-mnist",
)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory: pytest.TempPathFactory) -> vitkit.data.DataSource:
    return load_data("fashion_mnist", root=tmp_path_factory.mktemp("data"))


@needs_fashion_mnist
def test_fashion_mnist_reads_the_debian_files(fashion):
    assert (len(fashion.train), len(fashion.test)) == (60000, 10000)
    assert fashion.classes[9] == "Ankle boot" and fashion.channels == 1
    image, label = fashion.train[0]
    assert image.size == (28, 28) and label == 9  # the first training image of the published set


def test_mnist5k_has_a_fixed_held_out_split():
    a, b = load_data("mnist5k"), load_data("mnist5k")
    assert (len(a.train), len(a.test)) == (4000, 1000)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.test.labels.bincount(minlength=10).min() > 50  # a permutation, not the class-sorted tail
    assert not a.hflip


def test_digits_are_8x8_uint8_images():
    d = load_data("digits")
    image, label = d.test[0]
    assert isinstance(image, tv_tensors.Image) and image.shape == (1, 8, 8) and image.dtype == torch.uint8
    assert int(image.max()) <= 255 and 0 <= label < 10
    assert (len(d.train), len(d.test)) == (1437, 360)


@pytest.mark.parametrize("spec, message", [
    ("fashion", "unknown dataset 'fashion'; did you mean fashion_mnist?"),
    ("imagefolder", "needs a path: imagefolder:PATH"),
    ("cifar10:/no/such/dir", "cifar10: /no/such/dir does not exist"),
])  # fmt: skip
def test_bad_dataset_names_get_one_line_errors(spec, message):
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        load_data(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cifar_folder_without_the_data_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not hold the python version"):
        load_data(f"cifar100:{tmp_path}")


def _png(color: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), (color, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="JPEG")
    return buf.getvalue()


def test_imagefolder_skips_undecodable_images_naming_them(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            (tmp_path / cls / f"{i}.png").write_bytes(_png(40 * i))
    bad = {
        "cat/empty.png": b"",
        "cat/text.jpg": b"not an image at all",
        "dog/truncated.png": _png(1)[:-30],
        "dog/late.jpg": _jpeg()[:-800],  # the header is whole: the missing end-of-image marker gives it away
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "dog" / "notes.txt").write_text("not an image file name: ignored silently")
    with pytest.warns(UserWarning) as record:
        ds = TolerantImageFolder(tmp_path)
    assert sorted(Path(p).relative_to(tmp_path).as_posix() for p in ds.skipped) == sorted(bad)
    assert all(any(str(tmp_path / name) in str(w.message) for w in record) for name in bad)
    assert ds.classes == ["cat", "dog"] and len(ds) == 6


def test_imagefolder_replaces_an_image_that_fails_only_when_decoded(tmp_path, monkeypatch):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            (tmp_path / cls / f"{i}.png").write_bytes(_png(40 * i + 1))
    ds = TolerantImageFolder(tmp_path)
    real = ds.loader

    def fails_on_cat_1(path: str):
        if path.endswith("cat/1.png"):
            raise ImageDecodeError(path, "not a decodable image (broken data stream)")
        return real(path)

    monkeypatch.setattr(ds, "loader", fails_on_cat_1)
    with pytest.warns(UserWarning, match="cat/1.png: not a decodable image"):
        images = [ds[i] for i in range(len(ds))]
    assert images[1][1] == 1 and images[1][0].getpixel((0, 0)) == images[2][0].getpixel((0, 0))  # the next image
    assert all(im.mode == "RGB" for im, _ in images) and ds.skipped == [str(tmp_path / "cat" / "1.png")]


def test_imagefolder_split_by_train_and_val_folders(tmp_path):
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            (tmp_path / split / cls / "x.png").write_bytes(_png(9))
    d = load_data(f"imagefolder:{tmp_path}")
    assert d.classes == ["a", "b"] and len(d.train) == 2 and len(d.test) == 2 and d.skipped_files() == []


def test_empty_imagefolder_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="has no class folders"):
        load_data(f"imagefolder:{tmp_path}")
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "broken.png").write_bytes(b"")
    with warnings.catch_warnings(), pytest.raises(ValueError, match="no decodable images"):
        warnings.simplefilter("ignore")
        load_data(f"imagefolder:{tmp_path}")


def _gray(seed: int = 0) -> tv_tensors.Image:
    return tv_tensors.Image(torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)))


def test_train_transform_gives_normalised_model_input():
    cfg = vitkit.get_config("vit_nano_patch4_28")
    x = train_transform(cfg, 1, crop_scale=(0.05, 1.0), randaugment=(2, 9), random_erasing=0.25)(_gray())
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert -1.0 <= x.min() and x.max() <= 1.0  # the paper's [-1, 1] (mean = std = 0.5)


def test_padded_crop_shifts_the_image_without_resampling():
    cfg = vitkit.get_config("vit_nano_patch4_28")
    image = torch.randint(1, 256, (1, 28, 28), dtype=torch.uint8)
    transform = train_transform(cfg, 1, hflip=False, crop_padding=3)
    shifts = set()
    for _ in range(20):
        x = ((transform(tv_tensors.Image(image)) * 0.5 + 0.5) * 255).round().to(torch.uint8)
        padded = torch.nn.functional.pad(image, (3, 3, 3, 3))
        found = [(dy, dx) for dy in range(7) for dx in range(7) if torch.equal(padded[:, dy:dy + 28, dx:dx + 28], x)]
        assert len(found) == 1  # exactly a window of the zero-padded image
        shifts.add(found[0])
    assert len(shifts) > 5


def test_eval_transform_resizes_and_centre_crops():
    cfg = vitkit.get_config("vit_test_patch4_16", crop_pct=0.875)
    image = Image.new("L", (40, 30), 255)
    x = eval_transform(cfg, 1)(image)
    assert x.shape == (3, 16, 16)  # resized to 18 on the short side, cropped to 16, grey repeated to RGB
    assert torch.allclose(x, torch.ones_like(x))
    assert torch.equal(x, eval_transform(cfg, 1)(image))


def test_grayscale_is_repeated_for_rgb_models_and_rgb_reduced_for_grayscale_models():
    rgb_model = vitkit.get_config("vit_test_patch4_16", img_size=28)
    x = eval_transform(rgb_model, 1)(_gray())
    assert x.shape == (3, 28, 28) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    gray_model = vitkit.get_config("vit_nano_patch4_28")
    rgb = tv_tensors.Image(_gray().repeat(3, 1, 1))
    assert torch.allclose(eval_transform(gray_model, 3)(rgb), eval_transform(gray_model, 1)(_gray()), atol=1 / 127)


def test_mixup_and_cutmix_give_soft_labels():
    mix = batch_mix(0.8, 1.0, num_classes=10)
    images, labels = mix(torch.randn(8, 1, 28, 28), torch.arange(8))
    assert images.shape == (8, 1, 28, 28) and labels.shape == (8, 10)
    assert torch.allclose(labels.sum(dim=1), torch.ones(8))
    assert batch_mix(0.0, 0.0, 10) is None


def test_seeded_transform_depends_only_on_seed_epoch_and_index():
    images = [_gray(i) for i in range(4)]
    data = [(im, 0) for im in images]
    cfg = vitkit.get_config("vit_nano_patch4_28")
    ds = SeededTransform(data, train_transform(cfg, 1, randaugment=(2, 9)), seed=3)
    first = [ds[i][0] for i in range(4)]
    torch.rand(5)  # the global generator's state does not matter ...
    assert all(torch.equal(ds[i][0], first[i]) for i in reversed(range(4)))  # ... nor the order of access
    state = torch.get_rng_state()
    ds[0]
    assert torch.equal(torch.get_rng_state(), state)  # and the caller's generator is left as it was
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], first[0])


def test_resumable_sampler_skips_into_the_epoch_and_shards_like_distributed_sampler():
    data = list(range(20))
    full = ResumableSampler(data, seed=1)
    full.set_position(epoch=2)
    order = list(full)
    full.set_position(epoch=2, start=7)
    assert list(full) == order[7:] and len(full) == 13
    shards = [ResumableSampler(data, num_replicas=2, rank=r, seed=1) for r in (0, 1)]
    for s in shards:
        s.set_position(epoch=2)
    rank0, rank1 = (list(s) for s in shards)
    assert rank0 == order[0::2] and rank1 == order[1::2]


# ---- the batched path for images held in memory (vitkit.data.batched) -----------------------------------


@needs_fashion_mnist
@pytest.mark.parametrize("interpolation, size, scale, channels", [
    ("bicubic", 28, (0.85, 1.0), 1),  # the Fashion-MNIST recipe: upsampled crops
    ("bilinear", 20, (0.05, 1.0), 1),  # downsampled crops: torchvision's antialiasing
    ("bicubic", 40, (0.08, 1.0), 3),  # a larger RGB model: the gray channel repeated
])  # fmt: skip
def test_batched_crops_equal_the_per_image_transforms_on_float_images(fashion, interpolation, size, scale, channels):
    from torchvision.transforms import v2

    from vitkit.data.batched import batched_training_data, in_memory

    cfg = dataclasses.replace(vitkit.get_config("vit_fashion_patch4_28"), interpolation=interpolation,
                              img_size=(size, size), in_chans=channels)  # fmt: skip
    dataset, collate = batched_training_data(fashion.train, cfg, 1, scale, hflip=True, seed=3)
    dataset.set_epoch(2)
    images, labels = collate([dataset[i] for i in range(48)])

    # the reference: torchvision's per-image pipeline, on float images, seeded by (seed, epoch, index)
    reference = SeededTransform(in_memory(fashion.train), v2.Compose([
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
        v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode(interpolation), antialias=True),
        v2.RandomHorizontalFlip(), v2.Lambda(lambda x: x.clamp(0, 1)), v2.Grayscale(channels) if channels == 3
        else v2.Identity(), v2.Normalize([0.5] * channels, [0.5] * channels),
    ]), seed=3)  # fmt: skip
    reference.set_epoch(2)
    expected = torch.stack([reference[i][0] for i in range(48)])
    assert images.shape == (48, channels, size, size)
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)
    assert labels.tolist() == [fashion.train[i][1] for i in range(48)]
    flips = torch.stack([dataset[i][1] for i in range(48)])[:, 4]
    assert 0 < flips.sum() < 48  # some flipped, some not

    # PIL's 8-bit resampling on the per-image path (rounded, and clipped between its two passes) differs by
    # a fraction of a grey level on average (a few pixels at sharp bicubic edges by up to ~15 levels)
    per_image = SeededTransform(fashion.train, train_transform(cfg, 1, scale, hflip=True), seed=3)
    per_image.set_epoch(2)
    grey_levels = (images - torch.stack([per_image[i][0] for i in range(48)])).abs() * 0.5 * 255
    assert grey_levels.mean() < 0.5


@needs_fashion_mnist
def test_batched_evaluation_equals_the_per_image_transform(fashion):
    from torch.utils.data import Subset

    from vitkit.evaluate import eval_loader

    from vitkit.data.batched import in_memory

    cfg = dataclasses.replace(vitkit.get_config("vit_fashion_patch4_28"), img_size=(24, 24), crop_pct=0.875)
    subset = Subset(fashion.test, range(100, 140))
    images, labels = next(iter(eval_loader(subset, cfg, 1, batch_size=40)))
    transform, held = eval_transform(cfg, 1), in_memory(fashion.test)  # the uint8 images the batch is made of
    assert torch.equal(images, torch.stack([transform(held[i][0]) for i in range(100, 140)]))
    assert labels.tolist() == [fashion.test[i][1] for i in range(100, 140)]
