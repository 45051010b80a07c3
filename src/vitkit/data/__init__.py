"""Datasets and preprocessing: named datasets, torchvision v2 transforms, reproducible loaders."""

from ..lazy import lazy_exports

EXPORTS = {
    ".datasets": ("DataSource", "TensorImages", "data_root", "dataset_defaults", "dataset_names", "load_data"),
    ".imagefolder": ("TolerantImageFolder",),
    ".loader": ("ResumableSampler", "SeededTransform", "Transformed", "make_loader", "mix_seed"),
    ".transforms": ("batch_mix", "eval_transform", "per_channel", "train_transform"),
}
__all__ = sorted(name for names in EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
