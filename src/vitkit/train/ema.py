"""An exponential moving average of the weights, evaluated in place of the raw weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """ema <- decay * ema + (1 - decay) * weights after every optimiser step; buffers are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema, live = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in ema.items() if v.is_floating_point()]
        torch._foreach_lerp_([ema[k] for k in floats], [live[k] for k in floats], 1.0 - self.decay)
        for k, v in ema.items():
            if not v.is_floating_point():
                v.copy_(live[k])
