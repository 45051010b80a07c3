"""Learning-rate schedules relative to the run's length: linear warm-up, then decay to zero at the end."""

from __future__ import annotations

import math

from .recipes import Decay


def lr_factor(step: int, total_steps: int, warmup: float, decay: Decay) -> float:
    """Multiplier of the peak learning rate for optimiser step `step` (0-based) of `total_steps`.

    Warm-up rises linearly over the first round(warmup * total_steps) steps, reaching 1 at its last
    step; the decay then falls from 1 to 0 over the remaining steps (linear or half a cosine).
    """
    warmup_steps = round(warmup * total_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if decay == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))
