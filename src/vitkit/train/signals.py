"""Stopping a run: SIGINT/SIGTERM ask the loop to stop after the current step (a flag read every step and
between evaluation batches, no host sync), and the errors that end a run early."""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch

from . import distributed


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run after a final checkpoint; `signum` says which."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """While active, SIGINT and SIGTERM ask the loop to stop after the current step (`requested`);
    a second one interrupts at once (atomic writes keep the last checkpoint whole)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum

    def install(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def restore(self) -> None:
        """Put back the handlers that were there before install()."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def stop_requested(signals: StopSignals, procs: distributed.Processes) -> bool:
    """Whether any process received SIGINT/SIGTERM (torchrun passes them to every rank, not at once)."""
    flag = torch.tensor(float(signals.requested is not None))
    return bool(procs.mean(flag) > 0)
