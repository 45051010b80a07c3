"""Optimisers of the recipes: Adam with decoupled weight decay (AdamW), SGD with momentum, and Muon.

Muon (Jordan et al. 2024; torch.optim.Muon) orthogonalises the momentum of each hidden weight matrix
by Newton-Schulz iterations before the step. It applies to 2-D matrices only, so the `muon` recipe
steps the Transformer's matrices (qkv, proj, fc1, fc2) with Muon and everything else (the patch
embedding, the head, biases, norms, position embeddings; all of a BiT ResNet, which has no such
matrices) with AdamW, at the same learning rate and weight decay: Muon's update is scaled to AdamW's
RMS ("match_rms_adamw", Liu et al. 2025).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .recipes import Recipe

# Like big_vision, decay only weight matrices and kernels: not biases, norms, or the learned embeddings.
_NO_DECAY = ("pos_embed", "cls_token", "dist_token", "reg_token")


def _decays(name: str, p: torch.Tensor) -> bool:
    return p.ndim >= 2 and name.split(".")[-1] not in _NO_DECAY


def _hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """A matrix Muon steps: 2-D, not the classifier head (whose rows are per-class, not a hidden map)."""
    return p.ndim == 2 and _decays(name, p) and not name.startswith("head.")


def param_groups(model: nn.Module, weight_decay: float, skip: set[str] = frozenset()) -> list[dict]:
    """Decayed and undecayed groups of the trainable parameters not named in `skip`."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad and name not in skip:
            (decay if _decays(name, p) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Composite:
    """Several optimisers stepped as one: their param groups in one list (so a schedule sets every
    group's lr), one state dict holding each one's."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self, closure: Any = None) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {f"optimizer{i}": o.state_dict() for i, o in enumerate(self.optimizers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, o in enumerate(self.optimizers):
            o.load_state_dict(state[f"optimizer{i}"])


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer | Composite:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(param_groups(model, recipe.weight_decay), lr=recipe.lr, momentum=recipe.momentum)
    # muon: the hidden matrices to Muon, the rest to AdamW; a BiT ResNet has none, so AdamW takes it all
    matrices = {name: p for name, p in model.named_parameters()
                if recipe.optimizer == "muon" and p.requires_grad and _hidden_matrix(name, p)}  # fmt: skip
    rest = param_groups(model, recipe.weight_decay, skip=set(matrices))
    adamw = torch.optim.AdamW(rest, lr=recipe.lr, betas=recipe.betas)
    if not matrices:
        return adamw
    muon = torch.optim.Muon(list(matrices.values()), lr=recipe.lr, weight_decay=recipe.weight_decay,
                            momentum=recipe.momentum, adjust_lr_fn="match_rms_adamw")  # fmt: skip
    return Composite(muon, adamw)
