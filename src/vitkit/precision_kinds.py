"""The precisions a command takes, as names (vitkit.precision does the rest): torch-free, so that the
`vitkit` command's parser and TrainConfig read them without importing torch."""

from __future__ import annotations

from typing import Literal

Precision = Literal["fp32", "bf16", "fp16"]  # what a forward pass runs in
Requested = Literal["auto", "fp32", "bf16", "fp16"]  # what training takes: `auto` resolves to a Precision
InferencePrecision = Literal["auto", "fp32", "bf16", "fp16", "int8"]  # eval, predict, serve, bench
