"""Embedding filters (Fig. 7 left): the principal components of the patch-embedding filters."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torch import nn


@dataclass
class EmbeddingFilters:
    """components: (n, C, k, k), unit-norm principal directions of the filters; explained: (n,), the
    fraction of the filters' variance along each; source: the convolution they come from."""

    components: torch.Tensor
    explained: torch.Tensor
    source: str


# The convolution that sees pixels, by family.
FIRST_CONV = {"vit": "patch_embed.proj", "hybrid": "patch_embed.backbone.stem.conv", "resnet": "stem.conv"}


def first_layer_filters(model: nn.Module) -> tuple[torch.Tensor, str]:
    """The convolution that sees pixels: (filters, C, k, k) and its name.

    For a pure ViT that is E, the P×P patch projection. A hybrid's projection acts on ResNet features, not
    pixels, so its filters, like a ResNet's, are those of the 7×7 stem, weight-standardised as the
    forward pass uses them.
    """
    source = FIRST_CONV[model.config.family]
    conv = model.get_submodule(source)
    w = conv.standardized_weight() if hasattr(conv, "standardized_weight") else conv.weight
    return w.detach(), source


def embedding_filters(model: nn.Module, n: int = 28) -> EmbeddingFilters:
    """The first `n` principal components (fewer if the filters span fewer) of the filters as images.

    Each filter, flattened to C·k·k values, is one observation; signs are fixed so that each component's
    largest-magnitude value is positive.
    """
    w, source = first_layer_filters(model)
    D, C, kh, kw = w.shape
    x = w.double().reshape(D, -1)
    x = x - x.mean(dim=0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    n = min(n, len(s))
    vh = vh[:n]
    peak = vh.gather(1, vh.abs().argmax(dim=1, keepdim=True))
    vh = vh * peak.sign()
    variance = s.square()
    return EmbeddingFilters(vh.reshape(n, C, kh, kw).float(), (variance[:n] / variance.sum()).float(), source)
