"""Classification accuracy: top-1, top-5, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import Transformed, eval_transform
from ..data.batched import TransformBatch, in_memory
from ..data.preprocessing import DataConfig
from ..data.streaming import StreamedSplit
from ..precision import Precision, autocast


@dataclass
class Evaluation:
    """Results over n images. confusion: (K, K), row = true class, column = predicted class."""

    top1: float
    top5: float
    n: int
    loss: float
    confusion: torch.Tensor

    @property
    def per_class(self) -> list[float]:
        """Accuracy of each true class (nan for a class with no images)."""
        totals = self.confusion.sum(dim=1)
        return (self.confusion.diagonal() / totals.clamp(min=1)).masked_fill(totals == 0, float("nan")).tolist()

    def accuracy_text(self) -> str:
        """'top-1 83.20%, top-5 99.10%'; top-5 left out where there are 5 classes or fewer (it is then 100%)."""
        top5 = f", top-5 {self.top5:.2%}" if len(self.confusion) > 5 else ""
        return f"top-1 {self.top1:.2%}{top5}"

    def to_dict(self, classes: list[str] | None = None) -> dict[str, Any]:
        names = classes or [str(i) for i in range(len(self.confusion))]
        return {
            "top1": self.top1, "top5": self.top5, "n": self.n, "loss": self.loss,
            "per_class": dict(zip(names, self.per_class)),
        }  # fmt: skip


def eval_loader(
    dataset: Dataset, cfg: DataConfig, data_channels: int, batch_size: int = 256, workers: int = 0
) -> DataLoader:
    """Batches of (images (B, C, H, W) as the model expects them, labels (B,)) in dataset order; images
    held in memory are transformed a whole batch at a time."""
    if isinstance(dataset, StreamedSplit):  # read in the shards' order, one part per worker
        stream = dataset.configured(eval_transform(cfg, data_channels), streams=max(1, workers))
        return DataLoader(stream, batch_size=batch_size, num_workers=workers)
    images = in_memory(dataset)
    if images is not None:
        collate = TransformBatch(eval_transform(cfg, data_channels))
        return DataLoader(images, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    return DataLoader(
        Transformed(dataset, eval_transform(cfg, data_channels)), batch_size=batch_size, num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    device: torch.device | str = "cpu",
    precision: Precision = "fp32",
    stop: Callable[[], bool] | None = None,
) -> Evaluation:
    """Run `model` over `loader`'s (images, labels) batches; top-5 is top-K when there are K < 5 classes.
    The sums stay on the device until the end (no host sync a batch); `stop()`, asked before each batch,
    ends the pass early (the result then covers the batches seen)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    k = min(5, num_classes)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss, top-k hits
    n = 0
    for images, labels in loader:
        if stop is not None and stop():
            break
        images, labels = images.to(device), labels.to(device)
        with autocast(device, precision):
            logits = model(images).float()
        top = logits.topk(k, dim=1).indices  # (B, k)
        hits = (top == labels[:, None]).any(dim=1).sum()
        sums += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(), hits.double()])
        confusion.index_add_(0, labels * num_classes + top[:, 0], torch.ones_like(labels))  # bincount syncs on CUDA
        n += len(labels)
    model.train(was_training)
    if n == 0:
        raise ValueError("evaluation set is empty")
    loss_sum, correct_k = sums.tolist()
    confusion = confusion.cpu().view(num_classes, num_classes)
    return Evaluation(confusion.diagonal().sum().item() / n, correct_k / n, n, loss_sum / n, confusion)


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: str | Path) -> Path:
    """Row-normalised confusion matrix as a PNG, with the counts written in cells when K <= 20."""
    K = len(classes)
    rates = confusion.double() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    side = min(4 + 0.45 * K, 30)
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if K <= 40:
        ax.set_xticks(range(K), classes, rotation=90)
        ax.set_yticks(range(K), classes)
    if K <= 20:
        for i in range(K):
            for j in range(K):
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.savefig(path, dpi=100)
    return Path(path)
