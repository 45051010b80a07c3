"""Hugging Face transformers ViT (`ViTModel`, `ViTForImageClassification`), read and written; and read
only, the descendants that transformers has: DeiT (`DeiTModel`, `DeiTForImageClassificationWithTeacher`),
DINOv2 (`Dinov2Model`, `Dinov2WithRegistersModel`) and MAE (`ViTMAEModel`, `ViTMAEForPreTraining`).

transformers v5 renamed the encoder's parameters and renames v4 files while loading them
(transformers/conversion_mapping.py, entry "ViTModel"): both namings are read here, v5's is written.
HF keeps q, k and v as three (D, D) Linear layers; vitkit, like timm, fuses them into one (3D, D)
in the order q, k, v. Every other tensor has the same shape on both sides.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from ..models import ViTConfig
from .io import CheckpointError

# ViTForImageClassification nests a ViTModel under this prefix; its classifier sits outside it.
PREFIX = "vit."
CLASSIFIER = "classifier"
PREFIXES = (PREFIX, "deit.")  # DeiTForImageClassificationWithTeacher nests a DeiTModel

# (vitkit, transformers v5, transformers v4) names relative to ViTModel; {i} is the layer index.
# A name is a parameter, or a module whose .weight and .bias follow it.
NAMES: list[tuple[str, str, str]] = [
    ("cls_token", "embeddings.cls_token", "embeddings.cls_token"),
    ("pos_embed", "embeddings.position_embeddings", "embeddings.position_embeddings"),
    ("patch_embed.proj", "embeddings.patch_embeddings.projection", "embeddings.patch_embeddings.projection"),
    ("blocks.{i}.norm1", "layers.{i}.layernorm_before", "encoder.layer.{i}.layernorm_before"),
    ("blocks.{i}.attn.proj", "layers.{i}.attention.o_proj", "encoder.layer.{i}.attention.output.dense"),
    ("blocks.{i}.norm2", "layers.{i}.layernorm_after", "encoder.layer.{i}.layernorm_after"),
    ("blocks.{i}.mlp.fc1", "layers.{i}.mlp.fc1", "encoder.layer.{i}.intermediate.dense"),
    ("blocks.{i}.mlp.fc2", "layers.{i}.mlp.fc2", "encoder.layer.{i}.output.dense"),
    ("norm", "layernorm", "layernorm"),
    # HF's pooler, Dense + tanh on the class token, is the paper's representation layer
    ("pre_logits.fc", "pooler.dense", "pooler.dense"),
    ("head", CLASSIFIER, CLASSIFIER),
]
# Rule: these three, in this order, are concatenated along the output dimension into QKV.
QKV = "blocks.{i}.attn.qkv"
QKV_PARTS: list[tuple[str, str]] = [  # (transformers v5, transformers v4)
    ("layers.{i}.attention.q_proj", "encoder.layer.{i}.attention.attention.query"),
    ("layers.{i}.attention.k_proj", "encoder.layer.{i}.attention.attention.key"),
    ("layers.{i}.attention.v_proj", "encoder.layer.{i}.attention.attention.value"),
]
# The descendants' own names, read only: (vitkit, transformers v5 and v4 alike unless listed twice).
DESCENDANT_NAMES: list[tuple[str, str]] = [
    ("dist_token", "embeddings.distillation_token"),  # DeiT
    ("head", "cls_classifier"),
    ("head_dist", "distillation_classifier"),
    ("reg_token", "embeddings.register_tokens"),  # DINOv2 with registers
    ("blocks.{i}.norm1", "encoder.layer.{i}.norm1"),  # DINOv2's encoder layer
    ("blocks.{i}.attn.proj", "encoder.layer.{i}.attention.o_proj"),
    ("blocks.{i}.ls1.gamma", "encoder.layer.{i}.layer_scale1.lambda1"),
    ("blocks.{i}.norm2", "encoder.layer.{i}.norm2"),
    ("blocks.{i}.mlp.fc1", "encoder.layer.{i}.mlp.fc1"),
    ("blocks.{i}.mlp.fc2", "encoder.layer.{i}.mlp.fc2"),
    ("blocks.{i}.ls2.gamma", "encoder.layer.{i}.layer_scale2.lambda1"),
]
DINOV2_QKV = [f"encoder.layer.{{i}}.attention.{part}_proj" for part in "qkv"]
# Parts of ViTForMaskedImageModeling, ViTMAEForPreTraining and DINOv2 that the encoder does not use.
IGNORED = re.compile(r"embeddings\.mask_token|decoder\..+")
# Keys of DINOv2's SwiGLU MLP (the giant models), which vitkit does not build.
UNSUPPORTED = re.compile(r".*\.mlp\.(weights_in|weights_out|gate_proj|up_proj|down_proj)\..*")

# config.json key -> ViTConfig field, with transformers' default and the JSON type.
CONFIG_KEYS: list[tuple[str, str, type, Any]] = [
    ("hidden_size", "embed_dim", int, 768),
    ("num_hidden_layers", "depth", int, 12),
    ("num_attention_heads", "num_heads", int, 12),
    ("intermediate_size", "mlp_dim", int, 3072),
    ("num_channels", "in_chans", int, 3),
    ("qkv_bias", "qkv_bias", bool, True),
    ("layer_norm_eps", "norm_eps", float, 1e-12),  # not the official code's 1e-6 (PAPER.md)
    # HF has no dropout after the MLP's first layer and none before the head; vitkit follows the paper
    ("hidden_dropout_prob", "dropout", float, 0.0),
    ("attention_probs_dropout_prob", "attn_dropout", float, 0.0),
]
# For error messages: the config.json key behind each ViTConfig field.
_HF_KEY = {field: key for key, field, *_ in CONFIG_KEYS} | {"img_size": "image_size", "patch_size": "patch_size"}
_MAX_LABELS = 1 << 20


def _pattern(template: str) -> re.Pattern[str]:
    """'layers.{i}.mlp.fc1' -> a regex for it, or its .weight/.bias, capturing `i` and the `leaf`."""
    body = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile(body + r"(?P<leaf>\.weight|\.bias)?")


def _target(match: re.Match[str], template: str) -> str:
    groups = match.groupdict(default="")
    return template.format(**groups) + groups["leaf"]


# (HF pattern, vitkit name, index in the fused qkv or None)
_READ: list[tuple[re.Pattern[str], str, int | None]] = [
    *((_pattern(hf), vitkit, None) for vitkit, v5, v4 in NAMES for hf in (v5, v4)),
    *((_pattern(hf), QKV, part) for part, names in enumerate(QKV_PARTS) for hf in names),
    *((_pattern(hf), vitkit, None) for vitkit, hf in DESCENDANT_NAMES),
    *((_pattern(hf), QKV, part) for part, hf in enumerate(DINOV2_QKV)),
]
_WRITE: list[tuple[re.Pattern[str], str]] = [(_pattern(vitkit), v5) for vitkit, v5, _ in NAMES]
_WRITE_QKV = _pattern(QKV)


def _rename(key: str) -> tuple[str, int | None]:
    """An HF name -> (vitkit name, index in the fused qkv or None); unknown names are kept."""
    for pattern, name, part in _READ:
        if m := pattern.fullmatch(key):
            return _target(m, name), part
    return key, None


def convert(state: Mapping[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """HF ViT, DeiT, DINOv2 or MAE state dict (v4 or v5 names, with or without the `vit.`/`deit.`
    prefix) -> vitkit state dict.

    q, k, v (D, D) and (D,) -> qkv (3D, D) and (3D,); unknown keys pass through for the loader to
    report. `cfg` is unused: the names alone decide.
    """
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, list[torch.Tensor | None]] = {}
    for key, value in state.items():
        key = next((key.removeprefix(p) for p in PREFIXES if key.startswith(p)), key)
        if IGNORED.fullmatch(key):
            continue
        if UNSUPPORTED.fullmatch(key):
            raise CheckpointError(f"key {key!r} belongs to DINOv2's SwiGLU MLP, which vitkit does not support")
        name, part = _rename(key)
        if part is None:
            out[name] = value
        else:
            parts.setdefault(name, [None] * 3)[part] = value
    for key, (q, k, v) in parts.items():
        if q is None or k is None or v is None:
            raise ValueError(f"Hugging Face ViT checkpoint: {key} lacks one of query, key, value")
        out[key] = torch.cat([q, k, v], dim=0)
    return _fold_class_position(out)


def _fold_class_position(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINOv2 with registers adds E_pos to [class; patches], then inserts the registers: vitkit, as timm,
    adds the class token's row to the token itself and keeps E_pos for the patches (no_embed_class)."""
    if "reg_token" in state and "pos_embed" in state and "cls_token" in state:
        pos = state["pos_embed"]
        state["cls_token"], state["pos_embed"] = state["cls_token"] + pos[:, :1], pos[:, 1:]
    return state


def export(state: Mapping[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """vitkit state dict -> the state dict of HF ViTForImageClassification (ViTModel when
    cfg.num_classes is 0), in transformers v5 names. qkv (3D, D) -> q, k, v (D, D)."""
    _check_exportable(cfg)
    prefix = PREFIX if cfg.num_classes else ""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := _WRITE_QKV.fullmatch(key):
            for (v5, _), chunk in zip(QKV_PARTS, value.chunk(3, dim=0)):
                out[prefix + _target(m, v5)] = chunk.clone()  # own storage: safetensors refuses shared tensors
            continue
        name = next((_target(m, hf) for pattern, hf in _WRITE if (m := pattern.fullmatch(key))), None)
        if name is None:
            raise ValueError(f"no Hugging Face ViT name for {key!r}")
        out[name if name.startswith(CLASSIFIER) else prefix + name] = value
    return out


def _check_exportable(cfg: ViTConfig) -> None:
    problems = [
        (cfg.is_hybrid, "a hybrid (ResNet backbone)"),
        (cfg.fc_norm, "fc_norm"), (cfg.reg_tokens > 0, "register tokens"), (cfg.distilled, "a distillation token"),
        (cfg.no_embed_class, "no_embed_class"), (cfg.init_values is not None, "LayerScale"),
        (cfg.pos_embed != "learn", "fixed sin-cos position embeddings"), (not cfg.class_token, "class_token=False"),
        (cfg.pool != "token", f"pool={cfg.pool!r} (HF classifies the class token)"),
        (bool(cfg.representation_size and cfg.num_classes), "a representation layer before the head"),
    ]
    for bad, what in problems:
        if bad:
            raise ValueError(f"Hugging Face ViT has no equivalent of {what}")


def _read(hf_config: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = hf_config.get(key, default)
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:  # bool is an int subclass: compare types exactly
        raise ValueError(f"Hugging Face ViT config: {key} must be {kind.__name__}, got {value!r:.40}")
    return value


def _pair(hf_config: Mapping[str, Any], key: str, default: int) -> tuple[int, int]:
    value = hf_config.get(key, default)
    pair = (value, value) if type(value) is int else value
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(type(v) is int for v in pair)):
        raise ValueError(f"Hugging Face ViT config: {key} must be an int or [height, width], got {value!r:.40}")
    return pair[0], pair[1]


# model_type -> the architecture whose classifier vitkit reproduces (None: features only).
MODEL_TYPES: dict[str, str | None] = {
    "vit": "ViTForImageClassification", "deit": "DeiTForImageClassificationWithTeacher",
    "dinov2": None, "dinov2_with_registers": None, "vit_mae": None,
}  # fmt: skip
# Heads that vitkit has no equivalent of.
UNSUPPORTED_ARCHITECTURES: dict[str, str] = {
    "DeiTForImageClassification": "a classifier on the class token alone of a distilled model "
    "(vitkit averages the class and distillation heads, as DeiTForImageClassificationWithTeacher)",
    "Dinov2ForImageClassification": "a classifier on [class token; mean patch token]",
    "Dinov2WithRegistersForImageClassification": "a classifier on [class token; mean patch token]",
}
_IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _family_fields(hf_config: Mapping[str, Any], model_type: str) -> dict[str, Any]:
    """The ViTConfig fields in which a descendant differs from ViT: its options and preprocessing."""
    if model_type == "deit":  # DeiTImageProcessor: resize to 256, centre crop 224, bicubic
        return dict(distilled=True, crop_pct=0.875, interpolation="bicubic", **_IMAGENET)
    if model_type == "vit_mae":
        return dict(crop_pct=1.0, interpolation="bicubic", **_IMAGENET)
    if hf_config.get("use_swiglu_ffn", False):
        raise ValueError("Hugging Face DINOv2 config: use_swiglu_ffn=true (a SwiGLU MLP) is not supported by vitkit")
    fields: dict[str, Any] = dict(
        mlp_dim=round(_read(hf_config, "hidden_size", int, 768) * _read(hf_config, "mlp_ratio", float, 4.0)),
        init_values=_read(hf_config, "layerscale_value", float, 1.0), crop_pct=0.875, interpolation="bicubic",
        **_IMAGENET,
    )  # fmt: skip
    if model_type == "dinov2_with_registers":
        fields.update(reg_tokens=_read(hf_config, "num_register_tokens", int, 4), no_embed_class=True)
    return fields


def _num_classes(hf_config: Mapping[str, Any], model_type: str) -> int:
    """id2label's size (or label2id's, or num_labels); 0 for a model without vitkit's classifier."""
    architectures = hf_config.get("architectures") or []
    for arch in architectures:
        if arch in UNSUPPORTED_ARCHITECTURES:
            raise ValueError(f"Hugging Face config: architectures {arch!r} has {UNSUPPORTED_ARCHITECTURES[arch]}, "
                             "which vitkit does not support")  # fmt: skip
    classifier = MODEL_TYPES[model_type]
    if classifier is None or (architectures and classifier not in architectures):
        return 0
    labels = hf_config.get("id2label") or hf_config.get("label2id")
    if labels and not isinstance(labels, Mapping):
        raise ValueError(f"Hugging Face ViT config: id2label must be a mapping, got {labels!r:.40}")
    return len(labels) if labels else _read(hf_config, "num_labels", int, 2)


def config_from_hf(hf_config: Mapping[str, Any]) -> ViTConfig:
    """A transformers config.json (model_type 'vit', 'deit', 'dinov2', 'dinov2_with_registers' or
    'vit_mae') -> ViTConfig, validated before anything is built.

    The class count is that of id2label (or label2id, or num_labels); 0 when `architectures` names no
    classifier (ViTModel, DeiTModel) or the family publishes none (DINOv2, MAE).
    """
    model_type = hf_config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"Hugging Face config: model_type must be one of {list(MODEL_TYPES)}, got {model_type!r:.40}")
    if hf_config.get("hidden_act", "gelu") != "gelu":  # HF's "gelu" is exact (erf) GELU, as nn.GELU
        raise ValueError(f"Hugging Face ViT config: hidden_act must be 'gelu', got {hf_config['hidden_act']!r:.40}")
    dinov2 = model_type.startswith("dinov2")
    fields = {
        field: _read(hf_config, key, kind, 1e-6 if dinov2 and key == "layer_norm_eps" else default)
        for key, field, kind, default in CONFIG_KEYS
        if not (dinov2 and key == "intermediate_size")  # DINOv2 gives mlp_ratio instead
    }
    if not 0.0 < fields["norm_eps"] < 1.0:
        raise ValueError(f"Hugging Face ViT config: layer_norm_eps must be in (0, 1), got {fields['norm_eps']}")
    patch = _pair(hf_config, "patch_size", 14 if dinov2 else 16)
    if patch[0] != patch[1]:
        raise ValueError(f"Hugging Face ViT config: patch_size must be square, got {list(patch)}")
    num_classes = _num_classes(hf_config, model_type)
    if not 0 <= num_classes <= _MAX_LABELS:
        raise ValueError(f"Hugging Face ViT config: num_labels must be in [0, {_MAX_LABELS}], got {num_classes}")
    # ViTImageProcessor: resize (bilinear) to the model's size, no crop, mean = std = 0.5
    family = dict(crop_pct=1.0, interpolation="bilinear", mean=(0.5,) * fields["in_chans"],
                         std=(0.5,) * fields["in_chans"])  # fmt: skip
    if model_type != "vit":
        family.update(_family_fields(hf_config, model_type))
    try:
        return ViTConfig(
            **fields, **family, img_size=_pair(hf_config, "image_size", 518 if dinov2 else 224),
            patch_size=patch[0], num_classes=num_classes,
        )  # fmt: skip
    except ValueError as e:
        named = [key for field, key in _HF_KEY.items() if re.search(rf"\b{field}\b", str(e))]
        raise ValueError(f"{e} (config.json: {', '.join(named)})" if named else str(e)) from None


def config_to_hf(cfg: ViTConfig) -> dict[str, Any]:
    """ViTConfig -> a transformers config.json dict for the state dict that `export` writes."""
    _check_exportable(cfg)
    height, width = cfg.img_size
    out: dict[str, Any] = {
        "model_type": "vit",
        "architectures": ["ViTForImageClassification" if cfg.num_classes else "ViTModel"],
        **{key: getattr(cfg, field) for key, field, *_ in CONFIG_KEYS},
        "hidden_act": "gelu",
        "image_size": height if height == width else [height, width],
        "patch_size": cfg.patch_size,
        "id2label": {str(i): f"LABEL_{i}" for i in range(cfg.num_classes)},
        "label2id": {f"LABEL_{i}": i for i in range(cfg.num_classes)},
    }
    if cfg.representation_size:
        out.update(pooler_output_size=cfg.representation_size, pooler_act="tanh")
    return out
