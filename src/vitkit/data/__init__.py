"""Datasets and preprocessing: named datasets, torchvision v2 transforms, reproducible loaders."""

from .datasets import DataSource, TensorImages, data_root, dataset_defaults, dataset_names, load_data
from .imagefolder import TolerantImageFolder
from .loader import ResumableSampler, SeededTransform, Transformed, make_loader, mix_seed
from .transforms import batch_mix, eval_transform, per_channel, train_transform

__all__ = [
    "DataSource", "ResumableSampler", "SeededTransform", "TensorImages", "TolerantImageFolder", "Transformed",
    "batch_mix", "data_root", "dataset_defaults", "dataset_names", "eval_transform", "load_data", "make_loader",
    "mix_seed", "per_channel", "train_transform",
]  # fmt: skip
