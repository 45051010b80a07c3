"""Official Google .npz checkpoints, checked against timm's npz loader (`_load_weights`).

`export` is shown to be the inverse of timm's loader (timm reads the file back to the same outputs);
`convert` is shown to give vitkit the logits of the timm model the file came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import _load_weights

import vitkit
from vitkit.checkpoints.google import convert, export, strip_prefix

ATOL = 1e-4  # fp32, vitkit vs timm

# (registry name, overrides both libraries accept; mlp_dim becomes timm's mlp_ratio)
NARROW = dict(embed_dim=64, num_heads=2, mlp_dim=128)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "vit_p16": ("vit_tiny_patch16_224", dict(img_size=32, depth=2, num_classes=5)),
    "vit_p32": ("vit_small_patch32_224", dict(img_size=64, depth=2, num_classes=5, **NARROW)),
    "r50_hybrid": ("vit_base_r50_s16_224", dict(img_size=64, depth=1, num_classes=5, **NARROW)),
    "stem_hybrid": ("vit_tiny_r_s16_p8_224", dict(img_size=64, depth=1, num_classes=5)),
}
# google-research/vision_transformer -> big_vision names of the same modules
BIG_VISION_NAMES = [
    ("MultiHeadDotProductAttention_1/", "MultiHeadDotProductAttention_0/"),
    ("LayerNorm_2/", "LayerNorm_1/"),
    ("MlpBlock_3/", "MlpBlock_0/"),
    ("Transformer/posembed_input/pos_embedding", "pos_embedding"),
]


def _timm_model(name: str, **kw: Any) -> torch.nn.Module:
    if "mlp_dim" in kw:
        kw["mlp_ratio"] = kw.pop("mlp_dim") / kw["embed_dim"]
    return timm.create_model(name, **kw).eval()


@torch.no_grad()
def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """timm initialises the head, biases and norms to constants; noise everywhere lets a swap show."""
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.1)
    return model


def _vitkit_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's stem-only hybrid makes the stem itself the backbone; every other name is vitkit's."""
    stem = r"^patch_embed\.backbone\.(conv|norm)\."
    return {re.sub(stem, r"patch_embed.backbone.stem.\1.", k): v for k, v in state.items()}


def _vitkit_from(arrays: dict[str, np.ndarray], name: str, **kw: Any) -> vitkit.VisionTransformer:
    model = vitkit.create_model(name, **kw).eval()
    model.load_state_dict(convert(arrays, model.config))
    return model


def _timm_from(path: Path, name: str, **kw: Any) -> torch.nn.Module:
    model = _timm_model(name, **kw)
    _load_weights(model, str(path))
    return model


def _save(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@dataclass
class Reference:
    """A randomised timm model, its export as an official .npz, and an input batch."""

    name: str
    kw: dict[str, Any]
    timm: torch.nn.Module
    arrays: dict[str, np.ndarray]
    path: Path
    x: torch.Tensor

    @torch.no_grad()
    def logits(self) -> torch.Tensor:
        return self.timm(self.x)


def _reference(case: str, tmp: Path, **extra: Any) -> Reference:
    torch.manual_seed(0)
    name, kw = CASES[case]
    kw = {**kw, **extra}
    model = _randomise(_timm_model(name, **kw))
    vit_cfg = vitkit.get_config(name, **kw)
    arrays = export(_vitkit_names(model.state_dict()), vit_cfg)
    x = torch.randn(2, 3, *vit_cfg.img_size)
    return Reference(name, kw, model, arrays, _save(tmp / f"{case}.npz", arrays), x)


@pytest.fixture(scope="module", params=list(CASES))
def ref(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return _reference(request.param, tmp_path_factory.mktemp("npz"))


@pytest.fixture(scope="module")
def vit_p16(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return _reference("vit_p16", tmp_path_factory.mktemp("npz"))


# ---- export is the inverse of timm's loader ------------------------------------------------------
@torch.no_grad()
def test_timm_loads_the_exported_npz_to_the_same_outputs(ref: Reference) -> None:
    reloaded = _timm_from(ref.path, ref.name, **ref.kw)
    assert _max_diff(reloaded(ref.x), ref.logits()) == 0.0


# ---- convert reproduces timm's logits ------------------------------------------------------------
@torch.no_grad()
def test_convert_gives_timms_logits(ref: Reference) -> None:
    model = _vitkit_from(dict(np.load(ref.path)), ref.name, **ref.kw)
    assert _max_diff(model(ref.x), ref.logits()) < ATOL


@pytest.mark.parametrize("prefix", ["opt/target/", "params/img/"])
@torch.no_grad()
def test_a_prefix_is_found_and_stripped(vit_p16: Reference, prefix: str, tmp_path: Path) -> None:
    arrays = {prefix + k: v for k, v in vit_p16.arrays.items()}
    path = _save(tmp_path / "prefixed.npz", arrays)
    if prefix == "opt/target/":  # timm reads 'params/...' as big_vision names, tested below
        assert _max_diff(_timm_from(path, vit_p16.name, **vit_p16.kw)(vit_p16.x), vit_p16.logits()) == 0.0
    model = _vitkit_from(dict(np.load(path)), vit_p16.name, **vit_p16.kw)
    assert _max_diff(model(vit_p16.x), vit_p16.logits()) < ATOL


def test_strip_prefix_names_the_parameter_tree() -> None:
    assert strip_prefix(["cls", "embedding/kernel"]) == ""
    assert strip_prefix(["opt/target/embedding/kernel", "opt/state/step"]) == "opt/target/"
    assert strip_prefix(["params/embedding/kernel"]) == "params/"


# ---- big_vision ------------------------------------------------------------------------------------
def _big_vision(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in arrays.items():
        for old, new in BIG_VISION_NAMES:
            key = key.replace(old, new)
        out["params/" + key] = value
    return out


@torch.no_grad()
def test_big_vision_names_load_as_timm_reads_them(vit_p16: Reference, tmp_path: Path) -> None:
    path = _save(tmp_path / "bv.npz", _big_vision(vit_p16.arrays))
    assert _max_diff(_timm_from(path, vit_p16.name, **vit_p16.kw)(vit_p16.x), vit_p16.logits()) == 0.0
    model = _vitkit_from(dict(np.load(path)), vit_p16.name, **vit_p16.kw)
    assert _max_diff(model(vit_p16.x), vit_p16.logits()) < ATOL


@torch.no_grad()
def test_big_vision_scanned_blocks_are_unstacked(vit_p16: Reference, tmp_path: Path) -> None:
    """big_vision's scan_layers stores block i's arrays at index i of one stacked array, as timm reads it."""
    arrays = _big_vision(vit_p16.arrays)
    blocks = sorted(k for k in arrays if "encoderblock_0/" in k)
    for key in blocks:
        stacked = [arrays.pop(key.replace("encoderblock_0/", f"encoderblock_{i}/")) for i in range(2)]
        arrays[key.replace("encoderblock_0/", "encoderblock/")] = np.stack(stacked)
    path = _save(tmp_path / "scanned.npz", arrays)
    assert _max_diff(_timm_from(path, vit_p16.name, **vit_p16.kw)(vit_p16.x), vit_p16.logits()) == 0.0
    model = _vitkit_from(dict(np.load(path)), vit_p16.name, **vit_p16.kw)
    assert _max_diff(model(vit_p16.x), vit_p16.logits()) < ATOL


@torch.no_grad()
def test_big_vision_pos_embedding_without_a_class_position(vit_p16: Reference) -> None:
    """Current big_vision adds E_pos to the patches only, then prepends the class token: the class
    position folds into the token, and the (1, N, D) table must give the same logits."""
    arrays = _big_vision(vit_p16.arrays)
    pos = arrays["params/pos_embedding"]
    arrays["params/cls"] = arrays["params/cls"] + pos[:, :1]
    arrays["params/pos_embedding"] = pos[:, 1:]
    model = _vitkit_from(arrays, vit_p16.name, **vit_p16.kw)
    assert _max_diff(model(vit_p16.x), vit_p16.logits()) < ATOL


# ---- optional and missing parts ----------------------------------------------------------------------
@torch.no_grad()
def test_pre_logits_is_the_flax_dense_then_tanh() -> None:
    """flax Dense: y = x @ kernel + bias with kernel (in, out); the representation layer adds tanh."""
    model = _randomise(vitkit.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=5,
                                           representation_size=16)).eval()  # fmt: skip
    arrays = export(model.state_dict(), model.config)
    assert arrays["pre_logits/kernel"].shape == (192, 16)
    x = torch.randn(2, 3, 32, 32)
    pooled = model.pool(model.forward_features(x)).numpy()
    expected = np.tanh(pooled @ arrays["pre_logits/kernel"] + arrays["pre_logits/bias"])
    np.testing.assert_allclose(model.forward_head(model.forward_features(x), pre_logits=True), expected, atol=1e-5)
    reloaded = _vitkit_from(arrays, "vit_tiny_patch16_224", img_size=32, depth=2, num_classes=5, representation_size=16)
    assert _max_diff(reloaded(x), model(x)) == 0.0


@torch.no_grad()
def test_a_checkpoint_without_head_gives_no_head_keys(tmp_path: Path) -> None:
    ref = _reference("vit_p16", tmp_path, num_classes=0)
    assert not any(k.startswith("head/") for k in ref.arrays)
    state = convert(ref.arrays, vitkit.get_config(ref.name, **ref.kw))
    assert not any(k.startswith("head.") for k in state)
    model = _vitkit_from(ref.arrays, ref.name, **ref.kw)
    assert _max_diff(model(ref.x), ref.logits()) < ATOL


def test_the_files_depth_is_kept_for_the_loader(vit_p16: Reference) -> None:
    state = convert(vit_p16.arrays, vitkit.get_config(vit_p16.name))  # the registry's depth is 12, the file's 2
    assert {k.split(".")[1] for k in state if k.startswith("blocks.")} == {"0", "1"}


@pytest.mark.parametrize("prefix", ["", "opt/target/"])
def test_a_missing_key_is_named(vit_p16: Reference, prefix: str) -> None:
    missing = "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/value/kernel"
    arrays = {prefix + k: v for k, v in vit_p16.arrays.items() if k != missing}
    with pytest.raises(ValueError, match=re.escape(repr(prefix + missing))):
        convert(arrays, vitkit.get_config(vit_p16.name, **vit_p16.kw))


def test_keys_the_model_has_no_place_for_are_an_error(vit_p16: Reference) -> None:
    arrays = {**vit_p16.arrays, "MAPHead_0/probe": np.zeros((1, 1, 192), np.float32)}
    with pytest.raises(ValueError, match="MAPHead_0/probe"):
        convert(arrays, vitkit.get_config(vit_p16.name, **vit_p16.kw))
