"""FLOP counts of one image's inference or training step, as the benchmark and the study report them.

- FLOPs = 2 · multiply-accumulates, counted for matmuls and convolutions only, as
  `torch.utils.flop_counter` counts them; softmax, LayerNorm, GELU and elementwise ops are left out.
- A training step (forward, backward, AdamW) costs 3× the forward: the backward computes a gradient
  for each matmul's input and for its weight. The patch embedding's input gradient (the images')
  is never computed, so its share counts twice, not three times. Plain ViTs are counted from the
  config; ResNets and hybrids by running the step on the meta device under `FlopCounterMode`.
"""

from __future__ import annotations

from typing import Literal

import torch

from .models import ModelConfig, ViTConfig, build_model

Mode = Literal["infer", "train"]


def patch_flops(cfg: ViTConfig) -> int:
    """FLOPs of one image's patch embedding: N patches, each a (C·P²) -> D projection."""
    return 2 * cfg.grid_size[0] * cfg.grid_size[1] * cfg.embed_dim * cfg.in_chans * cfg.patch_size**2


def forward_flops(cfg: ViTConfig) -> int:
    """FLOPs (2·MACs) of one image's forward pass: patch embedding, per layer qkv, q kᵀ, softmax·v,
    proj and the two MLP layers, then the pre-logits layer and the head."""
    if cfg.is_hybrid:
        raise ValueError(
            f"{cfg.name or 'this model'} is a hybrid: FLOPs are counted analytically for plain ViTs only "
            f"(count a hybrid with torch.utils.flop_counter.FlopCounterMode)"
        )
    N = cfg.grid_size[0] * cfg.grid_size[1]
    T, D, M = cfg.num_prefix_tokens + N, cfg.embed_dim, cfg.mlp_dim
    attention = 2 * T * D * 3 * D + 2 * (2 * T * T * D) + 2 * T * D * D  # qkv; q kᵀ and a·v over all heads; proj
    mlp = 2 * (2 * T * D * M)
    head = 2 * D * (cfg.representation_size or 0) + 2 * cfg.num_features * cfg.num_classes
    return patch_flops(cfg) + cfg.depth * (attention + mlp) + head


def counted_flops(cfg: ModelConfig, mode: Mode) -> int:
    """FLOPs of one image's inference or training step (forward and backward, the images needing no
    gradient), as torch.utils.flop_counter counts them on the meta device: no memory, no compute."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model, x = build_model(cfg).train(mode == "train"), torch.zeros(1, cfg.in_chans, *cfg.img_size)
    with FlopCounterMode(display=False) as counter:
        if mode == "train":
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    return counter.get_total_flops()


def step_flops(cfg: ModelConfig, mode: Mode) -> int:
    """FLOPs of one image's inference, or of its training step: 3× the forward less the images' gradient."""
    if cfg.family != "vit":
        return counted_flops(cfg, mode)
    forward = forward_flops(cfg)
    if mode == "infer":
        return forward
    return 3 * forward - patch_flops(cfg)
