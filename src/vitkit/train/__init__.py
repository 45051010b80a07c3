"""Training and fine-tuning: recipes, schedules, optimisers, the loop, checkpoint/resume, several processes."""

from .config import TrainConfig, make_config
from .loop import Interrupted, NonFiniteLoss, TrainResult, fit, train_step
from .recipes import RECIPES, Recipe, get_recipe
from .resume import CheckpointWriteError
from .schedule import lr_factor

__all__ = [
    "RECIPES", "CheckpointWriteError", "Interrupted", "NonFiniteLoss", "Recipe", "TrainConfig", "TrainResult", "fit", "get_recipe", "lr_factor",
    "make_config", "train_step",
]  # fmt: skip
