"""Initialisers of the official (flax) code that torch.nn.init lacks."""

import math

import torch
from torch import nn


@torch.no_grad()
def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """flax's default kernel init: truncated normal (±2σ) with variance 1/fan_in."""
    # 0.8796... is the std of a unit normal truncated to [-2, 2]; jax divides it out
    std = math.sqrt(1.0 / math.prod(weight.shape[1:])) / 0.87962566103423978
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)
