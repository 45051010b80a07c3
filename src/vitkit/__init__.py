"""vitkit: the Vision Transformer of Dosovitskiy et al. (ICLR 2021), paper-faithful and practical.

The names below are imported on first use (vitkit.lazy): `import vitkit` itself does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .lazy import lazy_exports
from .version import __version__ as __version__

if TYPE_CHECKING:
    from torch import nn

EXPORTS = {
    ".checkpoints.hub": ("load_pretrained",),
    ".checkpoints.io": ("save",),
    ".checkpoints.load": ("LoadReport", "load", "load_checkpoint"),
    ".data.preprocessing": ("DataConfig",),
    ".models": ("ResNetConfig", "ResNetV2", "ViTConfig", "VisionTransformer", "build_model", "get_config",
                "list_models", "resample_pos_embed"),
}  # fmt: skip


def create_model(
    name: str, pretrained: bool | str | None = None, local_files_only: bool = False, **overrides: Any
) -> nn.Module:
    """Build a registered model (timm name or paper alias) with `overrides` of its config: a
    `VisionTransformer` (ViT or hybrid) or a BiT `ResNetV2`.

    `pretrained`: a local file or directory, a Hugging Face Hub id, or True for the default
    published weights of `name` (timm's Hub repositories). Weights for another class count get a
    zero-initialised head; another resolution gets resampled position embeddings.
    """
    from .checkpoints.hub import load_pretrained
    from .models import build_model, get_config

    model = build_model(get_config(name, **overrides))
    if pretrained:
        load_pretrained(model, name if pretrained is True else str(pretrained), local_files_only=local_files_only)
    return model


__all__ = sorted(["create_model", *(name for names in EXPORTS.values() for name in names)])
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
