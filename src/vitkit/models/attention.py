"""Softmax attention, softmax(q kᵀ / √d) v, whose backward pass recomputes the T×T weights.

On the CPU, PyTorch's fused attention kernel is slow to differentiate in bf16 (3-7x the explicit
matmuls, benchmarks/attention_cpu.py), and plain autograd of the explicit form keeps each layer's
(B, heads, T, T) weights until the backward pass. Here only q, k and v are kept, as by the fused
kernel; the backward pass computes the weights again, one more q kᵀ product per layer, then

    dV = Pᵀ dO,   dP = dO Vᵀ,   dS = P ∘ (dP − rowsum(dP ∘ P)),   dQ = dS K / √d,   dK = dSᵀ Q / √d.
"""

from __future__ import annotations

from typing import Any

import torch

# Rows of the attention weights shorter than this take a bf16/fp16 softmax in fp32 on the CPU.
FP32_SOFTMAX_BELOW = 128
# Up to this many tokens, bf16 training on the CPU keeps the weights for the backward pass (plain autograd of
# softmax(q kᵀ/√d) v) rather than recomputing them: 1.05-1.55x faster in the attention's forward and backward at
# 17-128 tokens (batch 128, 4 heads of 32, one thread; benchmarks/cpu_levers.py), for weights of a few MB a layer.
# Where bf16 is emulated (AVX2) it is 1.1-1.5x faster too (issue 38; docs/benchmarks.md).
SAVED_WEIGHTS_UP_TO = 128


def attention_weights(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """P = softmax(S), S = q kᵀ · scale: q, k (B, heads, T, d) -> (B, heads, T, T).

    On the CPU, PyTorch's bf16 softmax over rows of a few dozen is about twice as slow as its fp32 one,
    so short rows in bf16/fp16 take theirs in fp32, rounded once (Fashion-MNIST's T = 50: 5.0 -> 3.6 ms
    forward and backward). Over ViT-S/16's rows of 197 the conversion costs more than it saves
    (benchmarks/attention_cpu.py)."""
    scores = q * scale @ k.transpose(-2, -1)
    short_rows = scores.shape[-1] < FP32_SOFTMAX_BELOW
    if scores.device.type == "cpu" and scores.dtype in (torch.bfloat16, torch.float16) and short_rows:
        return scores.softmax(dim=-1, dtype=torch.float32).to(scores.dtype)
    return scores.softmax(dim=-1)


class _RecomputedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        ctx.save_for_backward(q, k, v)
        return attention_weights(q, k, scale) @ v

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        q, k, v = ctx.saved_tensors
        scale = ctx.scale
        weights = attention_weights(q, k, scale)  # P again, exactly as in the forward pass
        grad_v = weights.transpose(-2, -1) @ grad_out
        grad_weights = grad_out @ v.transpose(-2, -1)
        grad_scores = torch._softmax_backward_data(grad_weights, weights, -1, weights.dtype)
        del weights, grad_weights  # freed before the products below
        grad_q = grad_scores @ k * scale
        grad_k = grad_scores.transpose(-2, -1) @ (q * scale)
        return grad_q, grad_k, grad_v, None


def recomputed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q kᵀ · scale) v for q, k, v (B, heads, T, d) -> (B, heads, T, d), keeping for the backward
    pass only q, k and v (the weights are recomputed there)."""
    return _RecomputedAttention.apply(q, k, v, scale)
