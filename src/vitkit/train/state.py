"""The resumable training state beside a model checkpoint: `last.safetensors` holds the weights
(vitkit.save), `last.state.pt` the optimiser, gradient scaler, EMA, position and bookkeeping.

The state file holds only tensors, numbers, strings and containers of them, written with torch.save
and read back with torch.load(weights_only=True), which refuses anything else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoints.io import atomic_write

STATE_SUFFIX = ".state.pt"


def state_path(checkpoint: str | os.PathLike) -> Path:
    """last.safetensors -> last.state.pt"""
    p = Path(checkpoint)
    return p.with_name(p.name.removesuffix(".safetensors") + STATE_SUFFIX)


def save_state(checkpoint: str | os.PathLike, state: dict[str, Any]) -> None:
    atomic_write(state_path(checkpoint), lambda tmp: torch.save(state, tmp))


def load_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    path = state_path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)
