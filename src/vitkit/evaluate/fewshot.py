"""Linear evaluation of frozen representations: the paper's few-shot regression (section 4.1) and a
full-data logistic-regression probe.

Few-shot follows big_vision's `evaluators/fewshot_lsr.py`: standardise with the support set's mean and
std, append a constant bias feature of 100 (large, so the bias is almost unregularised), regress onto
targets 2·onehot − 1 with ridge penalty λ = 2^10 in closed form, through an eigendecomposition of the
smaller of XᵀX and XXᵀ; accuracy of the argmax on the test split. For each seed every class's training
examples are permuted once and the first k of them are the k-shot support set, so the sets are nested.
Only the examples some support set draws need features: `support_pool` names them, and `fewshot(...,
pool=...)` takes the features of those alone (a few hundred images instead of a whole training split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data.subsets import class_permutations

BIAS_FEATURE = 100.0  # big_vision's BIAS_CONSTANT
STD_EPS = 1e-5  # added to the std, as big_vision
DEFAULT_L2 = 2.0**10
DEFAULT_SHOTS = (1, 5, 10, 25)


def representations(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The frozen pre-logits representation and the logits of every (images, labels) batch of `loader`,
    from one forward pass on the model's device. -> features (N, F) and logits (N, K) float32, labels
    (N,) int64, on the CPU, in loader order."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    features, logits, labels = [], [], []
    for images, targets in loader:
        with torch.inference_mode():
            tokens = model.forward_features(images.to(device))
            features.append(model.forward_head(tokens, pre_logits=True).float().cpu())
            logits.append(model.forward_head(tokens).float().cpu())
        labels.append(torch.as_tensor(targets, dtype=torch.int64))
    model.train(was_training)
    if not features:
        raise ValueError("the loader yielded no images")
    return torch.cat(features), torch.cat(logits), torch.cat(labels)  # concatenated outside inference mode


def extract_features(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen pre-logits representation of every (images, labels) batch of `loader`, computed on
    the model's device. -> features (N, F) float32 and labels (N,) int64, on the CPU, in loader order.
    """
    features, _, labels = representations(model, loader)
    return features, labels


@dataclass
class LinearReadout:
    """scores = ((x - mean) / std) @ weight + bias. mean, std: (F,), weight: (F, K), bias: (K,); float64."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, F) -> (B, K)."""
        return ((x.double() - self.mean) / self.std) @ self.weight + self.bias

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Fraction of x (B, F) whose argmax score is the label y (B,)."""
        return (self.scores(x).argmax(dim=1) == y).double().mean().item()


def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (N, F) -> (x - mean) / std, mean (F,), std (F,); population std plus STD_EPS, as big_vision."""
    x = x.double()
    mean, std = x.mean(dim=0), x.std(dim=0, correction=0) + STD_EPS
    return (x - mean) / std, mean, std


def ridge_readout(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = DEFAULT_L2) -> LinearReadout:
    """Closed-form regularised least squares from x (N, F) to targets 2·onehot(y) − 1 (N, K).

    W = (ZᵀZ + λI)⁻¹ Zᵀ T when N ≥ F + 1, else Zᵀ (ZZᵀ + λI)⁻¹ T, where Z is the standardised x
    with the bias feature appended; both through the eigendecomposition of the smaller Gram matrix.
    """
    z, mean, std = _standardise(x)
    z = F.pad(z, (0, 1), value=BIAS_FEATURE)  # (N, F + 1)
    targets = 2.0 * F.one_hot(y, num_classes).double() - 1.0
    n, d = z.shape
    if n >= d:
        eigs, q = torch.linalg.eigh(z.T @ z)
        lhs, rhs = q, q.T @ (z.T @ targets)
    else:
        eigs, q = torch.linalg.eigh(z @ z.T)
        lhs, rhs = z.T @ q, q.T @ targets
    w = (lhs / (eigs + l2)) @ rhs  # (F + 1, K)
    return LinearReadout(mean, std, w[:-1], BIAS_FEATURE * w[-1])


@dataclass
class FewShotResult:
    """Test accuracy for each number of shots (per class) and each seed. accuracy: (len(shots), seeds)."""

    shots: list[int]
    accuracy: torch.Tensor
    l2: float

    @property
    def mean(self) -> list[float]:
        return self.accuracy.mean(dim=1).tolist()

    @property
    def std(self) -> list[float]:
        """Population standard deviation over seeds (0 for a single seed)."""
        return self.accuracy.std(dim=1, correction=0).tolist()

    def to_dict(self) -> dict[str, Any]:
        return {
            "l2": self.l2,
            "seeds": self.accuracy.shape[1],
            "shots": {
                str(k): {"mean": m, "std": s, "per_seed": row}
                for k, m, s, row in zip(self.shots, self.mean, self.std, self.accuracy.tolist())
            },
        }


def _check_shots(train_y: torch.Tensor, shots: Sequence[int], seeds: int, num_classes: int) -> None:
    """One-line ValueError when seeds or shots are not positive, or a class has fewer than max(shots) examples."""
    if seeds < 1 or not shots or min(shots) < 1:
        raise ValueError(f"need seeds >= 1 and shots >= 1, got seeds={seeds}, shots={list(shots)}")
    counts = torch.bincount(train_y, minlength=num_classes)
    if int(counts.min()) < max(shots):
        c = int(counts.argmin())
        k = max(shots)
        raise ValueError(f"{k}-shot needs {k} training examples per class; class {c} has {int(counts[c])}")


def support_pool(train_y: torch.Tensor, shots: Sequence[int], seeds: int, num_classes: int) -> torch.Tensor:
    """The sorted indices (P,) into train_y (N,) of every example that `fewshot` draws into a support set, over
    seeds 0..seeds-1: at most seeds · max(shots) · K of them."""
    _check_shots(train_y, shots, seeds, num_classes)
    k = max(shots)
    drawn = [idx[:k] for seed in range(seeds) for idx in class_permutations(train_y, num_classes, seed)]
    return torch.cat(drawn).unique()  # sorted


def fewshot(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    shots: Sequence[int] = DEFAULT_SHOTS,
    seeds: int = 3,
    l2: float = DEFAULT_L2,
    num_classes: int | None = None,
    pool: torch.Tensor | None = None,
) -> FewShotResult:
    """k-shot linear regression accuracy, for each k in `shots` and seeds 0..seeds-1.

    train_y: (N,) labels in [0, K) of the whole training split; train_x: (N, F) frozen features, or with
    `pool` (P,) (from `support_pool`, sorted indices into train_y) the features (P, F) of those examples only.
    test_x: (M, F), test_y: (M,).
    """
    K = num_classes or int(max(train_y.max(), test_y.max())) + 1
    _check_shots(train_y, shots, seeds, K)
    if pool is not None and len(pool) != len(train_x):
        raise ValueError(f"train_x has {len(train_x)} rows but the pool names {len(pool)} examples")
    accuracy = torch.zeros(len(shots), seeds, dtype=torch.float64)
    for seed in range(seeds):
        per_class = class_permutations(train_y, K, seed)
        for i, k in enumerate(shots):
            support = torch.cat([idx[:k] for idx in per_class])
            rows = support if pool is None else torch.searchsorted(pool, support)
            readout = ridge_readout(train_x[rows], train_y[support], K, l2)
            accuracy[i, seed] = readout.accuracy(test_x, test_y)
    return FewShotResult(list(shots), accuracy, l2)


def logistic_readout(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-4, max_iter: int = 500, tol: float = 1e-6
) -> LinearReadout:
    """Multinomial logistic regression on standardised x (N, F), labels y (N,), by full-batch L-BFGS,
    stopped after `max_iter` iterations or when the gradient's largest entry is below `tol`.

    Minimises mean cross-entropy + l2/2 · ‖W‖² (the bias unpenalised): scikit-learn's
    LogisticRegression with C = 1 / (N · l2).
    """
    z, mean, std = _standardise(x)
    y = y.clone()  # a tensor made under inference mode cannot be saved for backward; its copy can
    weight = torch.zeros(z.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(z @ weight + bias, y) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return LinearReadout(mean, std, weight.detach(), bias.detach())


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    l2: float = 1e-4,
    num_classes: int | None = None,
) -> float:
    """Test accuracy of a logistic regression fitted on all of train_x (N, F), train_y (N,)."""
    K = num_classes or int(max(train_y.max(), test_y.max())) + 1
    return logistic_readout(train_x, train_y, K, l2).accuracy(test_x, test_y)
