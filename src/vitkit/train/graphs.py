"""The training step as one CUDA graph: forward, backward, clipping and the optimiser in a single launch.

A small model's step on a GPU is bound by its ~1,000 kernel launches and the Python around them, not by
the GPU (12.9 ms a step at batch 128 and 12.0 ms at batch 1024 for vit_fashion_patch4_28 on an H200).
Captured once and replayed (PyTorch's "whole network capture", torch.cuda.graphs), the step costs one
launch. What that asks of the run, and how it is met:

- static shapes and addresses: every micro-batch is copied into the same input buffers; the last partial
  micro-batch of an epoch is dropped, by both feeds;
- no host sync inside: AdamW runs with capturable=True and its learning rate in a device tensor that the
  schedule `fill_`s each step (torch.optim.Muon and SGD apply their lr as `add_`'s alpha, a number a
  tensor lr would be read back into, so they keep the eager step); clip_grad_norm_ without error_if_nonfinite; the loss, train accuracy, gradient
  norm and a count of non-finite losses are summed on the device and read every --log-every steps;
- the warm-up that capture needs (three steps on a side stream, to settle lazy state) is undone: weights
  and optimiser state are put back, so the captured run starts where the eager one would;
- augmentation (the feed's crops, Mixup/CutMix) stays outside the graph, ahead of the copy.

A non-finite loss cannot skip its update inside a graph: the run stops at the next read (before any
checkpoint or evaluation), and `--skip-nonfinite` keeps the eager step.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from ..precision import DTYPES
from . import distributed
from .config import TrainConfig

WARMUP_STEPS = 3  # on a side stream before capture, as torch.cuda.graphs' documentation does


def graphs_allowed(cfg: TrainConfig, procs: distributed.Processes, accum: int) -> tuple[bool, str]:
    """(whether to capture the step, why not): --cuda-graphs on raises a one-line ValueError, naming the
    alternative, for a run whose step cannot be captured; auto falls back to the eager step."""
    if cfg.cuda_graphs == "off":
        return False, "--cuda-graphs off"
    recipe = cfg.recipe
    reasons = [
        (procs.device.type != "cuda", f"the device is {procs.device.type}, not CUDA"),
        (recipe.optimizer != "adamw", f"{recipe.optimizer} reads its learning rate on the host each step (only "
                                      "AdamW's capturable step runs in a graph): use --optimizer adamw"),
        (procs.distributed, "several processes all-reduce their gradients outside the graph"),
        (cfg.compile, "--compile and a hand-captured graph do not mix: leave out --compile"),
        (cfg.precision == "fp16", "fp16's gradient scaler checks for inf on the host: use --precision bf16"),
        (recipe.patch_drop > 0, "patch dropout changes the token count mid-run: use --patch-drop 0"),
        (cfg.skip_nonfinite > 0, "--skip-nonfinite decides on the host whether to apply each step"),
        (accum > 1, "gradient accumulation (--micro-batch) takes several passes a step: leave out --micro-batch"),
    ]  # fmt: skip
    why = next((reason for bad, reason in reasons if bad), None)
    if why is None:
        return True, "the step is captured as one CUDA graph"
    if cfg.cuda_graphs == "on":
        raise ValueError(f"--cuda-graphs on: {why} (or --cuda-graphs off)")
    return False, why


class GraphStep:
    """The whole optimiser step of `model` captured as one CUDA graph over static input buffers.

    `example`: a micro-batch (images (b, C, H, W), labels (b,) or soft labels (b, K)) of the shapes and
    dtypes every step will have. `loss_fn(logits, labels, label_smoothing) -> loss ()`."""

    def __init__(self, model: nn.Module, optimizer: Any, loss_fn: Callable[..., torch.Tensor],
                 label_smoothing: float, clip_grad: float | None, precision: str,
                 example: tuple[torch.Tensor, torch.Tensor]) -> None:  # fmt: skip
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.label_smoothing, self.clip_grad, self.precision = label_smoothing, clip_grad, precision
        self.params = [p for p in model.parameters() if p.requires_grad]
        device = self.params[0].device
        for group in optimizer.param_groups:
            group["capturable"] = True
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        optimizer.register_state_dict_post_hook(_plain_state)  # checkpoints resume with or without graphs
        for state in optimizer.state.values():  # a resumed optimiser's step counts come back on the CPU
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(device, torch.float32)
        self.x, self.y = example[0].detach().clone(), example[1].detach().clone()
        self.sums = torch.zeros(4, device=device)  # loss, correct, grad norm, non-finite losses
        self.steps = 0  # since the last read
        self.loss = torch.zeros((), device=device)
        self.graph = self._capture()

    def _body(self) -> None:
        cast = (contextlib.nullcontext() if self.precision == "fp32" else  # the cast cache breaks replays
                torch.autocast("cuda", dtype=DTYPES[self.precision], cache_enabled=False))  # fmt: skip
        with cast:
            logits = self.model(self.x)
        loss = self.loss_fn(logits, self.y, self.label_smoothing)
        loss.backward()
        norm = (torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad, foreach=True) if self.clip_grad
                else torch.full((), float("nan"), device=loss.device))  # fmt: skip
        self.optimizer.step()
        head = logits[0] if isinstance(logits, tuple) else logits
        target = self.y if self.y.ndim == 1 else self.y.argmax(dim=1)
        correct = (head.argmax(dim=1) == target).float().mean()
        loss = loss.detach()
        self.loss.copy_(loss)
        self.sums.add_(torch.stack([loss, correct, norm.float(), (~torch.isfinite(loss)).float()]))

    def _capture(self) -> torch.cuda.CUDAGraph:
        saved = _snapshot(self.params, self.optimizer)
        try:
            return self._warm_up_and_capture(saved)
        except Exception:  # put back what the warm-up changed; the caller may go on eagerly
            torch.cuda.synchronize()
            _restore(saved, self.params, self.optimizer)
            self.optimizer.zero_grad(set_to_none=True)
            for group in self.optimizer.param_groups:
                group["capturable"], group["lr"] = False, float(group["lr"])
            raise

    def _warm_up_and_capture(self, saved: tuple[list[torch.Tensor], dict]) -> torch.cuda.CUDAGraph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.optimizer.zero_grad(set_to_none=True)
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # a loader thread may pin memory
            self._body()
        _restore(saved, self.params, self.optimizer)
        self.sums.zero_()
        return graph

    def step(self, images: torch.Tensor, labels: torch.Tensor, lr: float) -> torch.Tensor:
        """One replay on this micro-batch at learning rate `lr`; returns the step's loss (a device tensor)."""
        for group in self.optimizer.param_groups:
            group["lr"].fill_(lr)
        self.x.copy_(images, non_blocking=True)
        self.y.copy_(labels, non_blocking=True)
        self.graph.replay()
        self.steps += 1
        return self.loss

    def read(self) -> dict[str, float]:
        """Means over the steps since the last read (one host sync): loss, train_top1, grad_norm, and the
        count of non-finite losses; resets the sums."""
        loss, correct, norm, bad = self.sums.tolist()
        n, self.steps = max(self.steps, 1), 0
        self.sums.zero_()
        return {"train_loss": loss / n, "train_top1": correct / n, "grad_norm": norm / n, "nonfinite": bad}


def _tensors(params: list[torch.Tensor], optimizer: Any) -> dict[tuple[int, str], tuple[dict, str]]:
    """The optimiser's state tensors, keyed by (parameter id, name)."""
    return {(id(p), k): (state, k) for p in params for state in [optimizer.state.get(p, {})]
            for k, v in state.items() if torch.is_tensor(v)}  # fmt: skip


def _snapshot(params: list[torch.Tensor], optimizer: Any) -> tuple[list[torch.Tensor], dict]:
    weights = [p.detach().clone() for p in params]
    return weights, {key: s[k].clone() for key, (s, k) in _tensors(params, optimizer).items()}


def _restore(saved: tuple[list[torch.Tensor], dict], params: list[torch.Tensor], optimizer: Any) -> None:
    """Weights and optimiser state as they were before the warm-up: state the warm-up created is zeroed
    (AdamW's fresh moments and step count)."""
    weights, state = saved
    with torch.no_grad():
        for p, w in zip(params, weights):
            p.copy_(w)
        for key, (s, k) in _tensors(params, optimizer).items():
            if key in state:
                s[k].copy_(state[key])
            else:
                s[k].zero_()


def _plain_state(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """The optimiser's state dict as the eager step keeps it (lr a number, capturable off), so that a run
    checkpointed under graphs resumes with or without them, on any device."""
    for group in state_dict["param_groups"]:
        if torch.is_tensor(group.get("lr")):
            group["lr"] = group["lr"].item()
        group["capturable"] = False
    return state_dict


def check_graph_row(device: str, mode: str, precision: str, compile: bool, runtime: str) -> None:
    """One-line ValueError, naming the alternative, for a benchmark row (vitkit.bench) that cannot be captured."""
    reasons = [
        (device != "cuda", "CUDA graphs need --device cuda"),
        (compile, "--cuda-graphs captures the eager model: leave out --compile"),
        (runtime != "torch" or precision == "int8", "--cuda-graphs times PyTorch's own fp32/bf16/fp16 rows"),
        (mode == "train" and precision == "fp16", "fp16's gradient scaler checks for inf on the host: use bf16"),
    ]  # fmt: skip
    why = next((reason for bad, reason in reasons if bad), None)
    if why is not None:
        raise ValueError(f"--cuda-graphs: {why}")


def captured(step: Callable[[], Any], warmup: int = WARMUP_STEPS) -> Callable[[], None]:
    """`step`, a closure over static tensors (a benchmark's inference or training step; a training step's
    optimiser built with capturable=True), captured as one CUDA graph after `warmup` runs on a side stream;
    returns the replay. Autocast's cast cache is off while capturing (cached casts would outlive the graph)."""
    cache = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            step()
    finally:
        torch.set_autocast_cache_enabled(cache)
    return graph.replay
