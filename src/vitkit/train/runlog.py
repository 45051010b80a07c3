"""A run's record: metrics.jsonl (one JSON object per line), TensorBoard events when tensorboard is
installed, and PNG curves of loss, accuracy and learning rate."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..files import atomic_write
from .rundir import RunDir

PLOT_EVERY_S = 20.0  # between redrawn curves: three PNGs cost ~0.3 s, a GPU epoch of Fashion-MNIST less
# figure file -> the metrics drawn in it (against the optimiser step)
PLOTS = {
    "loss.png": ("loss", "eval_loss"),
    "accuracy.png": ("eval_top1", "eval_top5"),
    "lr.png": ("lr",),
}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash mid-write
            continue
    return records


def plot_metrics(records: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Draw each of PLOTS that has data into out_dir; returns the files written."""
    written = []
    for filename, keys in PLOTS.items():
        series = {k: [(r["step"], r[k]) for r in records if k in r] for k in keys}
        if not any(series.values()):
            continue
        fig = Figure(figsize=(6, 4), layout="constrained")  # no pyplot: no global backend or state
        ax = fig.add_subplot()
        for key, points in series.items():
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=key, marker="o" if len(points) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(filename.removesuffix(".png"))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.savefig(Path(out_dir) / filename, dpi=100)
        written.append(Path(out_dir) / filename)
    return written


class RunLog:
    """Appends records to out_dir/metrics.jsonl and mirrors numbers to TensorBoard; inert when not `enabled`
    (processes other than rank 0)."""

    def __init__(self, out_dir: Path, enabled: bool = True, resume_step: int | None = None) -> None:
        self.out_dir, self.enabled = out_dir, enabled
        self.path = RunDir(out_dir).metrics
        self.records: list[dict[str, Any]] = []
        self.plotted: float | None = None  # when the curves were last drawn
        self.tb = None
        if not enabled:
            return
        if resume_step is not None:  # drop what was logged after the checkpoint the run resumes from
            self.records = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])

    def plot(self, force: bool = True) -> None:
        """Draw the curves; unless `force`d, at most every PLOT_EVERY_S seconds (the first time always)."""
        if not self.enabled or not (force or self.plotted is None or time.time() - self.plotted >= PLOT_EVERY_S):
            return
        plot_metrics(self.records, self.out_dir)
        self.plotted = time.time()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
