"""Checkpoint I/O: format detection, vitkit files, the shared loading rules, the Hub path, bad files."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

import vitkit
from vitkit.checkpoints.formats import CheckpointError, read_checkpoint
from vitkit.files import atomic_write

TINY = dict(img_size=32, depth=2, num_classes=5)


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Noise on every parameter, zero-initialised heads included, so that parity tests can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


@pytest.fixture
def timm_tiny() -> torch.nn.Module:
    return randomise(timm.create_model("vit_tiny_patch16_224", **TINY))


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ---- formats, detected from content ------------------------------------------------------------
@pytest.mark.parametrize("name", ["weights.pth", "weights.bin", "weights.safetensors", "no_extension"])
@pytest.mark.parametrize("writer", ["torch", "torch_legacy", "safetensors"])
def test_timm_state_dict_is_detected_from_content_whatever_the_name(tmp_path, timm_tiny, images, name, writer):
    path = tmp_path / name
    sd = timm_tiny.state_dict()
    if writer == "safetensors":
        save_file(sd, path)
    else:
        torch.save(sd, path, _use_new_zipfile_serialization=writer == "torch")
    model = vitkit.create_model("vit_tiny_patch16_224", **TINY).eval()
    report = vitkit.load_checkpoint(model, path)
    assert report.format == "timm"
    torch.testing.assert_close(model(images), timm_tiny(images), atol=1e-4, rtol=0)


def test_training_script_wrappers_are_unwrapped(tmp_path, timm_tiny, images):
    torch.save({"epoch": 3, "state_dict": {k: v for k, v in timm_tiny.state_dict().items()}}, tmp_path / "c.pth")
    model = vitkit.create_model("vit_tiny_patch16_224", **TINY).eval()
    vitkit.load_checkpoint(model, tmp_path / "c.pth")
    torch.testing.assert_close(model(images), timm_tiny(images), atol=1e-4, rtol=0)


def test_timm_stem_only_hybrid_keys_are_renamed(tmp_path):
    peer = randomise(timm.create_model("vit_tiny_r_s16_p8_224", img_size=64, depth=1, num_classes=3))
    save_file(peer.state_dict(), tmp_path / "h.safetensors")
    model = vitkit.create_model("vit_tiny_r_s16_p8_224", img_size=64, depth=1, num_classes=3).eval()
    vitkit.load_checkpoint(model, tmp_path / "h.safetensors")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x), peer(x), atol=1e-4, rtol=0)


# ---- vitkit's own files ----------------------------------------------------------------------
def test_save_then_load_rebuilds_the_model_with_bit_identical_outputs(tmp_path, images):
    model = randomise(vitkit.create_model("vit_tiny_patch16_224", **TINY, norm_eps=1e-5, pool="gap"))
    vitkit.save(model, tmp_path / "m.safetensors", metadata={"classes": json.dumps(list("abcde"))})
    loaded = vitkit.load(tmp_path / "m.safetensors").eval()
    assert loaded.config == model.config
    assert torch.equal(loaded(images), model(images))
    assert json.loads(read_checkpoint(tmp_path / "m.safetensors").metadata["classes"]) == list("abcde")


def test_corrupted_vitkit_file_is_detected_by_its_checksum(tmp_path):
    path = tmp_path / "m.safetensors"
    vitkit.save(randomise(vitkit.create_model("vit_tiny_patch16_224", **TINY)), path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*checksum"):
        vitkit.load(path)


def test_a_failed_save_leaves_the_previous_file_loadable(tmp_path, monkeypatch, images):
    path = tmp_path / "m.safetensors"
    first = randomise(vitkit.create_model("vit_tiny_patch16_224", **TINY), seed=1)
    vitkit.save(first, path)

    def fail_midway(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, fail_midway)
    assert torch.equal(vitkit.load(path).eval()(images), first(images))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left behind


# ---- the shared loading rules ------------------------------------------------------------------
def test_other_class_count_loads_everything_but_the_head_which_is_zeroed(tmp_path, timm_tiny, images):
    torch.save(timm_tiny.state_dict(), tmp_path / "c.pth")
    model = vitkit.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=7).eval()
    report = vitkit.load_checkpoint(model, tmp_path / "c.pth")
    assert report.head_reset and "head re-initialised" in str(report)
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    torch.testing.assert_close(model.forward_features(images), timm_tiny.forward_features(images), atol=1e-4, rtol=0)


def test_224_weights_in_a_384_model_match_timms_own_resampling(tmp_path):
    # 1000 classes: timm keeps the head only when the class count equals its pretrained config's
    peer = randomise(timm.create_model("vit_tiny_patch16_224", depth=2))
    torch.save(peer.state_dict(), tmp_path / "c.pth")
    timm_384 = timm.create_model(
        "vit_tiny_patch16_384", depth=2, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "c.pth"))
    ).eval()
    model = vitkit.create_model("vit_tiny_patch16_384", depth=2).eval()
    report = vitkit.load_checkpoint(model, tmp_path / "c.pth")
    assert "resampled pos_embed" in str(report) and "bicubic" in str(report)
    x = torch.randn(1, 3, 384, 384)
    torch.testing.assert_close(model(x), timm_384(x), atol=1e-4, rtol=0)


def test_resampling_method_can_be_overridden(tmp_path, timm_tiny):
    torch.save(timm_tiny.state_dict(), tmp_path / "c.pth")
    model = vitkit.create_model("vit_tiny_patch16_224", img_size=64, depth=2, num_classes=5)
    report = vitkit.load_checkpoint(model, tmp_path / "c.pth", pos_method="official")
    expected = vitkit.resample_pos_embed(timm_tiny.pos_embed.detach(), (4, 4), method="official")
    assert "official" in str(report)
    assert torch.equal(model.pos_embed.detach(), expected)


@pytest.mark.parametrize("in_chans", [1, 2, 4])
def test_patch_embedding_is_adapted_to_other_input_channels_as_timm_does(tmp_path, timm_tiny, in_chans):
    torch.save(timm_tiny.state_dict(), tmp_path / "c.pth")
    model = vitkit.create_model("vit_tiny_patch16_224", **TINY, in_chans=in_chans).eval()
    vitkit.load_checkpoint(model, tmp_path / "c.pth")
    reference = timm.models.adapt_input_conv(in_chans, timm_tiny.patch_embed.proj.weight.detach())
    torch.testing.assert_close(model.patch_embed.proj.weight.detach(), reference)


def test_gray_checkpoint_into_an_rgb_model_gives_the_same_output_on_gray_images(tmp_path):
    gray = randomise(vitkit.create_model("vit_tiny_patch16_224", **TINY, in_chans=1))
    vitkit.save(gray, tmp_path / "g.safetensors")
    rgb = vitkit.create_model("vit_tiny_patch16_224", **TINY).eval()
    vitkit.load_checkpoint(rgb, tmp_path / "g.safetensors")
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(rgb(x.repeat(1, 3, 1, 1)), gray(x), atol=1e-5, rtol=0)


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path, timm_tiny):
    torch.save(timm_tiny.state_dict(), tmp_path / "c.pth")
    model = vitkit.create_model("vit_tiny_patch16_224", **TINY, mlp_dim=512)
    with pytest.raises(
        CheckpointError, match=r"c\.pth: blocks\.0\.mlp\.fc1\.weight has shape \(768, 192\) in the checkpoint, the model expects \(512, 192\)"
    ):
        vitkit.load_checkpoint(model, tmp_path / "c.pth")


def test_checkpoint_without_config_needs_a_name_and_then_follows_the_weights(tmp_path, timm_tiny, images):
    torch.save(timm_tiny.state_dict(), tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="carries no model config"):
        vitkit.load(tmp_path / "c.pth")
    model = vitkit.load(tmp_path / "c.pth", "ViT-Ti/16").eval()
    assert (model.config.depth, model.config.num_classes, model.config.img_size) == (2, 5, (32, 32))
    torch.testing.assert_close(model(images), timm_tiny(images), atol=1e-4, rtol=0)


# ---- vitkit convert ----------------------------------------------------------------------------
def test_cli_convert_writes_a_self_describing_file(tmp_path, timm_tiny, images):
    torch.save(timm_tiny.state_dict(), tmp_path / "c.pth")
    out = tmp_path / "c.safetensors"
    run = subprocess.run(
        [sys.executable, "-m", "vitkit", "convert", str(tmp_path / "c.pth"), str(out), "--model", "vit_tiny_patch16_224"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    torch.testing.assert_close(vitkit.load(out).eval()(images), timm_tiny(images), atol=1e-4, rtol=0)


def test_cli_convert_bad_file_is_a_one_line_error(tmp_path):
    (tmp_path / "notes.pth").write_text("not weights")
    run = subprocess.run(
        [sys.executable, "-m", "vitkit", "convert", str(tmp_path / "notes.pth"), str(tmp_path / "o.safetensors")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "notes.pth" in run.stderr and "supported:" in run.stderr


# ---- pretrained weights through the Hub cache (offline) ----------------------------------------
def _lay_out_hub_cache(cache, repo_id: str, files: dict[str, bytes]) -> None:
    """The directory layout huggingface_hub uses: models--org--name/{refs/main, snapshots/<rev>/...}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)


def test_pretrained_true_loads_the_default_timm_hub_weights_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    peer = randomise(timm.create_model("vit_tiny_patch16_224", depth=2))
    save_file(peer.state_dict(), tmp_path / "w.safetensors")
    timm_config = {
        "architecture": "vit_tiny_patch16_224", "num_classes": 1000,
        "pretrained_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "crop_pct": 0.875,
                           "input_size": [3, 224, 224], "interpolation": "bicubic"},
    }  # fmt: skip
    _lay_out_hub_cache(
        tmp_path / "hub", "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
        {"config.json": json.dumps(timm_config).encode(), "model.safetensors": (tmp_path / "w.safetensors").read_bytes()},
    )  # fmt: skip
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = vitkit.create_model("vit_tiny_patch16_224", pretrained=True, local_files_only=True, depth=2).eval()
    assert model.config.mean == (0.1, 0.2, 0.3) and model.config.crop_pct == 0.875
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(model(x), peer(x), atol=1e-4, rtol=0)
    by_id = vitkit.create_model(
        "vit_tiny_patch16_224", pretrained="timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
        local_files_only=True, depth=2, num_classes=10,
    )  # fmt: skip
    assert torch.count_nonzero(by_id.head.weight) == 0  # another class count: a fresh zero head


# ---- bad and hostile files ---------------------------------------------------------------------
class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/vitkit_pwned",))


def test_pickle_that_carries_code_is_refused_without_running_it(tmp_path):
    marker = "/tmp/vitkit_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    for name, legacy in [("zip.pth", False), ("legacy.pth", True)]:
        torch.save({"weights": torch.zeros(1), "payload": Exploit()}, tmp_path / name,
                   _use_new_zipfile_serialization=not legacy)  # fmt: skip
        with pytest.raises(CheckpointError, match=rf"{name}: refused to unpickle"):
            read_checkpoint(tmp_path / name)
    assert not os.path.exists(marker)


def test_npz_with_object_arrays_is_refused(tmp_path):
    np.savez(tmp_path / "o.npz", **{"embedding/kernel": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(CheckpointError, match=r"o\.npz: refused"):
        read_checkpoint(tmp_path / "o.npz")


def test_safetensors_whose_header_lies_about_sizes_is_refused(tmp_path):
    header = json.dumps({"pos_embed": {"dtype": "F32", "shape": [1, 1000, 1000], "data_offsets": [0, 4_000_000]}})
    (tmp_path / "lie.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"lie\.safetensors: invalid or truncated safetensors"):
        read_checkpoint(tmp_path / "lie.safetensors")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz"])
def test_truncated_files_give_a_clear_error(tmp_path, timm_tiny, fraction, suffix):
    path = tmp_path / f"t{suffix}"
    sd = timm_tiny.state_dict()
    if suffix == ".pth":
        torch.save(sd, path)
    elif suffix == ".safetensors":
        save_file(sd, path)
    else:
        np.savez(path, **{"embedding/kernel": np.zeros((16, 16, 3, 8), np.float32), "cls": np.zeros((1, 1, 8))})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match=rf"t\{suffix}: "):
        read_checkpoint(path)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty file"), (b"hello world", "not a checkpoint"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not a checkpoint")],
)
def test_files_that_are_no_checkpoint_list_the_supported_formats(tmp_path, content, message):
    (tmp_path / "x.pth").write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"x\.pth: {message}.*supported:"):
        read_checkpoint(tmp_path / "x.pth")


def test_state_dict_of_another_architecture_is_rejected(tmp_path):
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match=r"resnet\.pth: no weights of a supported model recognised"):
        read_checkpoint(tmp_path / "resnet.pth")


def test_missing_file_names_the_path():
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        read_checkpoint("nowhere.pth")


def test_pickle_module_is_not_needed_to_read_torch_files(tmp_path, timm_tiny, monkeypatch):
    """weights_only loading goes through torch's restricted unpickler, never pickle.load."""
    torch.save(timm_tiny.state_dict(), tmp_path / "c.pth")
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load called"))
    assert read_checkpoint(tmp_path / "c.pth").format == "timm"


# ---- Google .npz through the generic loader ----------------------------------------------------
def _write_npz(path, model: vitkit.VisionTransformer, prefix: str = "") -> None:
    from vitkit.checkpoints import google

    arrays = google.export({k: v.detach() for k, v in model.state_dict().items()}, model.config)
    np.savez(path, **{prefix + k: v for k, v in arrays.items()})


def test_npz_at_another_resolution_is_resampled_the_official_way_by_default(tmp_path):
    source = randomise(vitkit.create_model("vit_tiny_patch16_224", **TINY))
    _write_npz(tmp_path / "w.npz", source, prefix="opt/target/")
    model = vitkit.create_model("vit_tiny_patch16_224", img_size=64, depth=2, num_classes=5)
    report = vitkit.load_checkpoint(model, tmp_path / "w.npz")
    assert report.format == "google" and "(official)" in str(report)
    expected = vitkit.resample_pos_embed(source.pos_embed.detach(), (4, 4), method="official")
    torch.testing.assert_close(model.pos_embed.detach(), expected, atol=1e-6, rtol=0)


def test_npz_pre_logits_are_kept_when_the_model_has_a_representation_layer(tmp_path, images):
    source = randomise(vitkit.create_model("vit_tiny_patch16_224", **TINY, representation_size=48))
    _write_npz(tmp_path / "w.npz", source)
    with_layer = vitkit.load(tmp_path / "w.npz", "vit_tiny_patch16_224").eval()
    assert with_layer.config.representation_size == 48
    torch.testing.assert_close(with_layer(images), source(images), atol=1e-5, rtol=0)
    without = vitkit.create_model("vit_tiny_patch16_224", **TINY)
    report = vitkit.load_checkpoint(without, tmp_path / "w.npz")
    assert "dropped pre_logits.fc.weight" in str(report) and report.head_reset


# ---- convert from each format, then load -------------------------------------------------------
def test_convert_from_each_foreign_format_then_load_gives_the_same_outputs(tmp_path, images):
    import torchvision
    import transformers

    source = randomise(vitkit.create_model("vit_tiny_patch16_224", **TINY))
    expected = source(images)
    sd = {k: v.detach() for k, v in source.state_dict().items()}
    # Google .npz
    _write_npz(tmp_path / "g.npz", source)
    # Hugging Face directory
    from vitkit.checkpoints import huggingface

    hf = transformers.ViTForImageClassification(transformers.ViTConfig(**huggingface.config_to_hf(source.config)))
    hf.load_state_dict(huggingface.export(sd, source.config))
    hf.save_pretrained(tmp_path / "hf")
    # torchvision
    tv = torchvision.models.vision_transformer.VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=3, hidden_dim=192, mlp_dim=768, num_classes=5
    )
    tv_sd = {"class_token": sd["cls_token"], "conv_proj.weight": sd["patch_embed.proj.weight"],
             "conv_proj.bias": sd["patch_embed.proj.bias"], "encoder.pos_embedding": sd["pos_embed"],
             "encoder.ln.weight": sd["norm.weight"], "encoder.ln.bias": sd["norm.bias"],
             "heads.head.weight": sd["head.weight"], "heads.head.bias": sd["head.bias"]}  # fmt: skip
    for i in range(2):
        b, t = f"blocks.{i}.", f"encoder.layers.encoder_layer_{i}."
        for ours, theirs in [("norm1", "ln_1"), ("attn.qkv", "self_attention.in_proj"), ("norm2", "ln_2"),
                             ("attn.proj", "self_attention.out_proj"), ("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.3")]:  # fmt: skip
            sep = "_" if theirs.endswith("in_proj") else "."
            tv_sd[t + theirs + sep + "weight"] = sd[b + ours + ".weight"]
            tv_sd[t + theirs + sep + "bias"] = sd[b + ours + ".bias"]
    tv.load_state_dict(tv_sd)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    # timm
    torch.save(sd, tmp_path / "timm.pth")

    for src, name in [("g.npz", "vit_tiny_patch16_224"), ("hf", None), ("tv.pth", "vit_tiny_patch16_224"),
                      ("timm.pth", "ViT-Ti/16")]:  # fmt: skip
        out = tmp_path / f"{src}.safetensors"
        vitkit.checkpoints.load.convert_file(tmp_path / src, out, model_name=name)
        torch.testing.assert_close(vitkit.load(out).eval()(images), expected, atol=1e-4, rtol=0, msg=src)
    torch.testing.assert_close(tv.eval()(images), expected, atol=1e-4, rtol=0)


def test_pretrained_hub_id_of_a_transformers_repository_and_a_local_path(tmp_path, monkeypatch, images):
    import huggingface_hub.constants
    import transformers

    from vitkit.checkpoints import huggingface

    source = randomise(vitkit.create_model("vit_tiny_patch16_224", **TINY))
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(**huggingface.config_to_hf(source.config)))
    hf.load_state_dict(huggingface.export({k: v.detach() for k, v in source.state_dict().items()}, source.config))
    hf.save_pretrained(tmp_path / "hf")
    preprocessor = {"image_mean": [0.3, 0.3, 0.3], "image_std": [0.2, 0.2, 0.2], "size": {"height": 32, "width": 32}}
    files = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()}
    files["preprocessor_config.json"] = json.dumps(preprocessor).encode()
    _lay_out_hub_cache(tmp_path / "hub", "someone/tiny-vit", files)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    model = vitkit.create_model("vit_tiny_patch16_224", pretrained="someone/tiny-vit", local_files_only=True, **TINY)
    assert model.config.mean == (0.3, 0.3, 0.3) and model.config.extra["pretrained_input_size"] == [32, 32]
    torch.testing.assert_close(model.eval()(images), source(images), atol=1e-4, rtol=0)
    from_path = vitkit.create_model("vit_tiny_patch16_224", pretrained=str(tmp_path / "hf"), **TINY).eval()
    torch.testing.assert_close(from_path(images), source(images), atol=1e-4, rtol=0)
