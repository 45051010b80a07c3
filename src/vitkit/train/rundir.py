"""A run directory (`vitkit train --out DIR`) and the name of each file in it, defined here once:

    DIR/config.yaml          the run, resolved (vitkit.train.config)
    DIR/metrics.jsonl        one JSON record per logged step or evaluation (vitkit.train.runlog)
    DIR/best.safetensors     the weights of the best evaluation so far
    DIR/model.safetensors    the final weights
    DIR/checkpoints/         the resumable step-N pairs (vitkit.train.resume)
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG, METRICS = "config.yaml", "metrics.jsonl"
BEST, FINAL = "best.safetensors", "model.safetensors"
CHECKPOINTS = "checkpoints"


class RunDir:
    """The paths of one run directory's files; nothing is read or written here."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def final(self) -> Path:
        return self.path / FINAL

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS
