"""Optimisers of the recipes: Adam with decoupled weight decay (AdamW), SGD with momentum, and Muon.

Muon (Jordan et al. 2024; torch.optim.Muon) orthogonalises the momentum of each hidden weight matrix
by Newton-Schulz iterations before the step. It applies to 2-D matrices only, so the `muon` recipe
steps the Transformer's matrices (qkv, proj, fc1, fc2) with Muon and everything else (the patch
embedding, the head, biases, norms, position embeddings; all of a BiT ResNet, which has no such
matrices) with AdamW, at the same learning rate and weight decay: Muon's update is scaled to AdamW's
RMS ("match_rms_adamw", Liu et al. 2025).

torch.optim.Muon always runs the Newton-Schulz iterations in bf16: fast where bf16 is native, and on a
CPU that emulates bf16 (AVX2 without AVX512-BF16) 20-40x slower than fp32, which made Muon, not the
model, the cost of a training step there. vitkit's `Muon` is torch's with the same state, coefficients
and update, and the orthogonalisation in bf16 only where `vitkit.hardware` says bf16 is native.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .. import hardware
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


def newton_schulz(
    g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    """The approximate orthogonal (polar) factor U V^T of each matrix g = U S V^T, (A, B) or a stack (K, A, B),
    in `dtype`: torch.optim.Muon's quintic Newton-Schulz iteration (Jordan et al. 2024), whose singular values
    land in about [0.7, 1.2]. A stack runs as one chain of batched products (torch.baddbmm), each matrix
    normalised by its own norm; a single matrix takes torch's 2-D products, as torch.optim.Muon does."""
    a, b, c = coefficients
    tall = g.size(-2) > g.size(-1)
    x = g.to(dtype, copy=True)
    if tall:
        x = x.mT
    x.div_(torch.linalg.matrix_norm(x, keepdim=True).clamp(min=eps) if x.dim() == 3 else x.norm().clamp(min=eps))
    add_product = torch.addmm if x.dim() == 2 else torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT
        x = add_product(x, add_product(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


# torch.optim.Muon's learning-rate scaling per matrix shape (A, B): the names its `adjust_lr_fn` takes
_LR_SCALES = {
    None: lambda a, b: math.sqrt(max(1, a / b)),
    "original": lambda a, b: math.sqrt(max(1, a / b)),
    "match_rms_adamw": lambda a, b: 0.2 * math.sqrt(max(a, b)),
    "spectral_unclamped": lambda a, b: math.sqrt(a / b),
}


class Muon(torch.optim.Muon):
    """torch.optim.Muon with its Newton-Schulz iterations in `ns_dtype` (default: bf16 where the parameters'
    device runs bf16 natively, else fp32), batched over the matrices of each shape. With ns_dtype=torch.bfloat16
    the step of a matrix alone in its shape equals torch's bit for bit, and of a batched one within rounding;
    its state dict is torch's, so either loads the other's."""

    def __init__(self, params: Any, ns_dtype: torch.dtype | None = None, **options: Any) -> None:
        super().__init__(params, **options)
        if ns_dtype is None:
            device = next(p.device for g in self.param_groups for p in g["params"])
            ns_dtype = torch.bfloat16 if hardware.native_bf16(device) else torch.float32
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            updates = [self._momentum_update(p, group) for p in params]
            for same_shape in _by_shape(params):
                self._orthogonalised_step([params[i] for i in same_shape], [updates[i] for i in same_shape], group)
        return loss

    def _momentum_update(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """The momentum buffer moved towards p's gradient; the update Newton-Schulz orthogonalises."""
        if torch.is_complex(p):
            raise ValueError("Muon does not support complex parameters")
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
        buf = state["momentum_buffer"]
        buf.lerp_(p.grad, 1 - group["momentum"])
        return p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf

    def _orthogonalised_step(self, params: list[torch.Tensor], updates: list[torch.Tensor], group: dict) -> None:
        """Decay and step matrices of one shape by their updates' polar factors, found together: one chain of
        batched products for the K matrices. On 2 threads the small products parallelise poorly one by one:
        the patch-7 ViT's 24 matrices as 4 shapes make `make run` 1.15x faster end to end natively (bf16) and
        1.07x under the AVX2 caps (fp32), on a quiet 2-core box (benchmarks/cpu_train.py; docs/benchmarks.md)."""
        stacked = updates[0] if len(updates) == 1 else torch.stack(updates)
        orthogonal = newton_schulz(stacked, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
        lr = float(group["lr"])
        alpha = -lr * _LR_SCALES[group["adjust_lr_fn"]](*params[0].shape[:2])
        for p, update in zip(params, orthogonal if len(params) > 1 else [orthogonal]):
            p.mul_(1 - lr * group["weight_decay"])
            p.add_(update, alpha=alpha)


def _by_shape(params: list[torch.Tensor]) -> list[list[int]]:
    """The indices of `params` grouped by shape, in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(tuple(p.shape), []).append(i)
    return list(groups.values())


def muon_dtype(optimizer: Any) -> str | None:
    """The precision of Muon's orthogonalisation in `optimizer` ("bf16", "fp32"), None without Muon."""
    parts = optimizer.optimizers if isinstance(optimizer, Composite) else (optimizer,)
    dtype = next((o.ns_dtype for o in parts if isinstance(o, Muon)), None)
    return None if dtype is None else {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]


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
    muon = Muon(list(matrices.values()), lr=recipe.lr, weight_decay=recipe.weight_decay,
                            momentum=recipe.momentum, adjust_lr_fn="match_rms_adamw")  # fmt: skip
    return Composite(muon, adamw)
