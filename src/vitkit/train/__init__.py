"""Training and fine-tuning: recipes, schedules, optimisers, the loop, checkpoint/resume, several processes."""

from ..lazy import lazy_exports

EXPORTS = {
    ".config": ("TrainConfig", "make_config"),
    ".loop": ("Interrupted", "NonFiniteLoss", "TrainResult", "fit", "train_step"),
    ".recipes": ("RECIPES", "Recipe", "get_recipe"),
    ".resume": ("CheckpointWriteError",),
    ".schedule": ("lr_factor",),
}
__all__ = sorted(name for names in EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
