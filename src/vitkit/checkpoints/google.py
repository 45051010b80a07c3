"""Official Google .npz checkpoints (google-research/vision_transformer and big_vision) <-> vitkit.

The map is data: tables of (vitkit module, npz module, parameter rows), where a row names a vitkit
parameter, the npz array(s) it is made from and the reshape rule between the two layouts. The rules
follow flax's conventions, as timm's `_load_weights` reads them:

    conv kernel   (kh, kw, C_in, C_out)  HWIO    <->  weight (C_out, C_in, kh, kw)  OIHW
    Dense kernel  (in, out)                      <->  weight (out, in)
    q, k, v kernels (D, H, D/H), biases (H, D/H) <->  fused qkv weight (3D, D), bias (3D,)
    out kernel    (H, D/H, D)                    <->  proj weight (D, D)

Weight-standardised conv kernels are stored unstandardised, as vitkit (and timm) keep them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Mapping, Sequence

import numpy as np
import torch

from ..models import ViTConfig

# ---- reshape rules -----------------------------------------------------------------------------
Rule = Literal["copy", "vector", "conv", "dense", "qkv_kernel", "qkv_bias", "out_kernel", "posemb_patches_only"]
ToTorch = Callable[[Sequence[np.ndarray], ViTConfig], np.ndarray]
ToNpz = Callable[[np.ndarray, ViTConfig], list[np.ndarray]]
QKV = ("query", "key", "value")


def _posemb_patches_only(a: Sequence[np.ndarray], cfg: ViTConfig) -> np.ndarray:
    """big_vision adds E_pos before prepending the class token, so its (1, N, D) table has no class
    position: the prefix tokens get zero rows, -> (1, prefix + N, D). Older big_vision files prepended
    first and have N + 1 rows; they are recognised as big_vision's own `fix_old_checkpoints` does."""
    pos = a[0]
    n, p = pos.shape[1], cfg.num_prefix_tokens
    if p == 0 or math.isqrt(n) ** 2 + 1 == n:
        return pos
    return np.concatenate([np.zeros((1, p, pos.shape[2]), pos.dtype), pos], axis=1)


def _split_heads(w: np.ndarray, cfg: ViTConfig) -> np.ndarray:
    """(D, D) Dense kernel (in, out) -> (D, H, D/H): flax's DenseGeneral layout of q, k and v."""
    return w.reshape(w.shape[0], cfg.num_heads, -1)


TO_TORCH: dict[Rule, ToTorch] = {
    "copy": lambda a, cfg: a[0],
    # 1-D parameters; BiT-style files may store GroupNorm's as (1, 1, 1, C), which timm's _n2p flattens too
    "vector": lambda a, cfg: a[0].reshape(-1),
    "conv": lambda a, cfg: a[0].transpose(3, 2, 0, 1),
    "dense": lambda a, cfg: a[0].T,
    "qkv_kernel": lambda a, cfg: np.concatenate([k.reshape(k.shape[0], -1).T for k in a]),
    "qkv_bias": lambda a, cfg: np.concatenate([b.reshape(-1) for b in a]),
    "out_kernel": lambda a, cfg: a[0].reshape(-1, a[0].shape[-1]).T,
    "posemb_patches_only": _posemb_patches_only,
}
# export writes google-research/vision_transformer's layout, whose E_pos includes the class position
TO_NPZ: dict[Rule, ToNpz] = {
    "copy": lambda w, cfg: [w],
    "vector": lambda w, cfg: [w],
    "conv": lambda w, cfg: [w.transpose(2, 3, 1, 0)],
    "dense": lambda w, cfg: [w.T],
    "qkv_kernel": lambda w, cfg: [_split_heads(part.T, cfg) for part in np.split(w, 3)],
    "qkv_bias": lambda w, cfg: [part.reshape(cfg.num_heads, -1) for part in np.split(w, 3)],
    "out_kernel": lambda w, cfg: [w.T.reshape(cfg.num_heads, -1, w.shape[0])],
}

# ---- the key map -------------------------------------------------------------------------------
# A parameter row: (vitkit parameter, npz parameter or q/k/v triple, rule).
Row = tuple[str, str | tuple[str, ...], Rule]
NORM: tuple[Row, ...] = (("weight", "scale", "vector"), ("bias", "bias", "vector"))
DENSE: tuple[Row, ...] = (("weight", "kernel", "dense"), ("bias", "bias", "vector"))
CONV: tuple[Row, ...] = (("weight", "kernel", "conv"), ("bias", "bias", "vector"))
STD_CONV: tuple[Row, ...] = (("weight", "kernel", "conv"),)  # BiT's convolutions have no bias
ATTENTION: tuple[Row, ...] = (
    ("qkv.weight", tuple(f"{n}/kernel" for n in QKV), "qkv_kernel"),
    ("qkv.bias", tuple(f"{n}/bias" for n in QKV), "qkv_bias"),
    ("proj.weight", "out/kernel", "out_kernel"),
    ("proj.bias", "out/bias", "vector"),
)

# A module row: (vitkit module, npz module, its parameter rows). Names in braces come from the Layout.
BLOCK = (
    ("norm1", "{norm1}", NORM),
    ("attn", "{attn}", ATTENTION),
    ("norm2", "{norm2}", NORM),
    ("mlp.fc1", "{mlp}/Dense_0", DENSE),
    ("mlp.fc2", "{mlp}/Dense_1", DENSE),
)
# The hybrid's BiT ResNet: names as google-research/vision_transformer's models_resnet.py, 1-based.
STEM = (
    ("patch_embed.backbone.stem.conv", "conv_root", STD_CONV),
    ("patch_embed.backbone.stem.norm", "gn_root", NORM),
)
UNIT = (
    ("conv1", "conv1", STD_CONV), ("norm1", "gn1", NORM),
    ("conv2", "conv2", STD_CONV), ("norm2", "gn2", NORM),
    ("conv3", "conv3", STD_CONV), ("norm3", "gn3", NORM),
)  # fmt: skip
# the first unit of every stage changes the width (and stride), so it has the projection shortcut
SHORTCUT = (("downsample.conv", "conv_proj", STD_CONV), ("downsample.norm", "gn_proj", NORM))
ENCODER_NORM = (("norm", "Transformer/encoder_norm", NORM),)
# absent from some files (in21k without a classifier; pre_logits only in some pretrained files):
# emitted when present, and the loader drops what the model has no place for
OPTIONAL = (("pre_logits.fc", "pre_logits", DENSE), ("head", "head", DENSE))


@dataclass(frozen=True)
class Layout:
    """Where a code base stores E_pos (and how), and what it calls an encoder block's sub-modules."""

    pos_embed: str
    pos_rule: Rule
    norm1: str
    attn: str
    norm2: str
    mlp: str

    @property
    def signature(self) -> tuple[str, ...]:
        return self.pos_embed, f"Transformer/encoderblock_0/{self.attn}/query/kernel"


VISION_TRANSFORMER = Layout(
    "Transformer/posembed_input/pos_embedding", "copy",
    "LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3",
)  # fmt: skip
BIG_VISION = Layout(
    "pos_embedding", "posemb_patches_only", "LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"
)


@dataclass(frozen=True)
class Entry:
    """One vitkit parameter and the npz array(s), without prefix, that it is made from."""

    name: str
    npz: tuple[str, ...]
    rule: Rule
    required: bool = True


def _entries(modules: Iterable[tuple[str, str, tuple[Row, ...]]], required: bool = True) -> list[Entry]:
    out = []
    for torch_module, npz_module, rows in modules:
        for param, npz, rule in rows:
            npz = (npz,) if isinstance(npz, str) else npz
            name = ".".join(filter(None, (torch_module, param)))
            out.append(Entry(name, tuple("/".join(filter(None, (npz_module, n))) for n in npz), rule, required))
    return out


def key_map(cfg: ViTConfig, layout: Layout = VISION_TRANSFORMER, depth: int | None = None) -> list[Entry]:
    """Every parameter of the model `cfg` describes (with `depth` blocks, default cfg.depth), in `layout`."""
    names = dict(norm1=layout.norm1, attn=layout.attn, norm2=layout.norm2, mlp=layout.mlp)
    modules: list[tuple[str, str, tuple[Row, ...]]] = []
    if cfg.backbone_layers is not None:
        modules += STEM
        for s, units in enumerate(cfg.backbone_layers):
            for u in range(units):
                modules += [
                    (f"patch_embed.backbone.stages.{s}.blocks.{u}.{t}", f"block{s + 1}/unit{u + 1}/{n}", rows)
                    for t, n, rows in UNIT + (SHORTCUT if u == 0 else ())
                ]
    modules.append(("patch_embed.proj", "embedding", CONV))
    # the tokens are top-level parameters: no module name on either side
    if cfg.class_token:
        modules.append(("", "", (("cls_token", "cls", "copy"),)))
    modules.append(("", "", (("pos_embed", layout.pos_embed, layout.pos_rule),)))
    for i in range(cfg.depth if depth is None else depth):
        modules += [
            (f"blocks.{i}.{t}", f"Transformer/encoderblock_{i}/{n.format(**names)}", rows) for t, n, rows in BLOCK
        ]
    modules += ENCODER_NORM
    return _entries(modules) + _entries(OPTIONAL, required=False)


# ---- reading -----------------------------------------------------------------------------------
_ANCHOR = "embedding/kernel"
_SCANNED = "Transformer/encoderblock/"
_BLOCK_INDEX = re.compile(r"^Transformer/encoderblock_(\d+)/")


def strip_prefix(keys: Iterable[str]) -> str:
    """The path under which the parameters live: '', 'opt/target/', 'params/', 'params/img/', ...

    Found from the patch embedding's kernel, which every layout has exactly once.
    """
    found = sorted({k[: -len(_ANCHOR)] for k in keys if k == _ANCHOR or k.endswith("/" + _ANCHOR)})
    if not found:
        raise ValueError(f"missing npz key {_ANCHOR!r} (under any prefix)")
    if len(found) > 1:
        raise ValueError(f"several parameter trees in one file: {[p + _ANCHOR for p in found]}")
    return found[0]


def _unscan(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """big_vision with scan_layers stores all encoder blocks stacked on a leading axis under one name."""
    out = {}
    for key, value in params.items():
        if key.startswith(_SCANNED):
            rest = key[len(_SCANNED) :]
            out.update({f"Transformer/encoderblock_{i}/{rest}": value[i] for i in range(value.shape[0])})
        else:
            out[key] = value
    return out


def convert(arrays: Mapping[str, np.ndarray], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """Official .npz arrays (keys joined with '/', under any prefix) -> vitkit state dict (timm names).

    Encoder blocks are taken as many as the file has, so that the loader can report (or infer) a depth
    other than cfg.depth; everything else follows `cfg`. E_pos keeps the checkpoint's grid.
    Raises ValueError naming a missing npz key, or listing keys that this model has no place for.
    """
    prefix = strip_prefix(arrays.keys())
    params = _unscan({k[len(prefix) :]: np.asarray(arrays[k]) for k in arrays.keys() if k.startswith(prefix)})
    layout = BIG_VISION if any(k in params for k in BIG_VISION.signature) else VISION_TRANSFORMER
    blocks = {int(m.group(1)) for m in map(_BLOCK_INDEX.match, params) if m}
    state: dict[str, torch.Tensor] = {}
    for entry in key_map(cfg, layout, depth=max(blocks) + 1 if blocks else None):
        missing = [k for k in entry.npz if k not in params]
        if missing:
            if entry.required:
                raise ValueError(f"missing npz key {prefix + missing[0]!r}")
            continue
        value = TO_TORCH[entry.rule]([params.pop(k) for k in entry.npz], cfg)
        state[entry.name] = torch.from_numpy(np.ascontiguousarray(value))
    if params:
        unused = sorted(prefix + k for k in params)
        raise ValueError(
            f"npz keys that a model with backbone_layers={cfg.backbone_layers}, class_token={cfg.class_token} "
            f"has no place for: {unused[:5]}{f' and {len(unused) - 5} more' if len(unused) > 5 else ''}"
        )
    return state


def export(state: Mapping[str, torch.Tensor], cfg: ViTConfig) -> dict[str, np.ndarray]:
    """vitkit state dict -> official .npz arrays, float32, in google-research/vision_transformer's
    names without prefix (as its published files). head and pre_logits are written when present."""
    remaining = dict(state)
    arrays: dict[str, np.ndarray] = {}
    for entry in key_map(cfg):
        if entry.name not in remaining:
            if entry.required:
                raise ValueError(f"missing vitkit key {entry.name!r}")
            continue
        value = remaining.pop(entry.name).detach().cpu().float().numpy()
        arrays.update(zip(entry.npz, (np.ascontiguousarray(a) for a in TO_NPZ[entry.rule](value, cfg))))
    if remaining:
        raise ValueError(f"vitkit keys with no place in the official layout: {sorted(remaining)[:5]}")
    return arrays
