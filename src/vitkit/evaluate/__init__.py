"""Evaluation: classification accuracy and the confusion matrix; predictions for image files."""

from .classify import Evaluation, eval_loader, evaluate, plot_confusion
from .predict import Prediction, predict_files

__all__ = ["Evaluation", "Prediction", "eval_loader", "evaluate", "plot_confusion", "predict_files"]
