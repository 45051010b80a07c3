"""Optimisers of the recipes: Adam with decoupled weight decay (AdamW) and SGD with momentum."""

from __future__ import annotations

import torch
from torch import nn

from .recipes import Recipe

# Like big_vision, decay only weight matrices and kernels: not biases, norms, or the learned embeddings.
_NO_DECAY = ("pos_embed", "cls_token", "dist_token", "reg_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and name.split(".")[-1] not in _NO_DECAY else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    groups = param_groups(model, recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum)
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas)
