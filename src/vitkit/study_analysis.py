"""A data-scale study's (vitkit.study) runs summarised, each model and size over its seeds (`summarise`), and
what they say about the ViT's gap: per size, each model's accuracy minus the reference ViT's, paired by seed (at
a size and seed every model trains on the same images); the slope of that gap against log10(size), with its
uncertainty over seeds; and, where the other model still leads at the largest size and the gap shrinks, the
size at which the fitted line reaches zero, an extrapolation.

Pure functions of the runs' records ({"model", "size", "seed", metric: float | None, ...}); no training.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import torch

# the accuracies a study records for every run, and their labels
METRICS = {"top1": "test top-1", "fewshot_10": "10-shot linear", "transfer_10": "transfer 10-shot"}
BOOTSTRAP = 2000  # resamples of the seeds within each size


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread (population std) over seeds of each (model, size): the models in the order they first
    come, each model's sizes ascending."""
    order = {m: i for i, m in enumerate(dict.fromkeys(r["model"] for r in runs))}
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: (order[r["model"]], r["size"])):
        groups[r["model"], r["size"]].append(r)
    rows = []
    for (model, size), group in groups.items():
        row: dict[str, Any] = {"model": model, "family": group[0]["family"], "size": size, "seeds": len(group),
                               "train_flops": statistics.mean(r["train_flops"] for r in group),
                               "diverged": sum(r.get("diverged") is not None for r in group)}  # fmt: skip
        for key in METRICS:
            values = torch.tensor([r[key] for r in group if r.get(key) is not None], dtype=torch.float64)
            row[key] = values.mean().item() if len(values) else None
            row[f"{key}_std"] = values.std(correction=0).item() if len(values) else None
        rows.append(row)
    return rows


def paired_gaps(runs: Sequence[dict[str, Any]], key: str, model: str, reference: str) -> dict[int, list[float]]:
    """{size: [model's `key` - reference's `key` for each seed both have]}, sizes ascending; a run with no
    value (diverged, or a metric not measured) leaves its seed out."""
    values: dict[tuple[str, int, int], float] = {
        (r["model"], r["size"], r["seed"]): r[key] for r in runs if r.get(key) is not None
    }
    gaps: dict[int, list[float]] = defaultdict(list)
    for (name, size, seed), value in sorted(values.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if name == model and (reference, size, seed) in values:
            gaps[size].append(value - values[reference, size, seed])
    return dict(gaps)


def gap_trend(gaps: dict[int, list[float]], resamples: int = BOOTSTRAP, seed: int = 0) -> dict[str, Any] | None:
    """The least-squares line gap = intercept + slope * log10(size) through the per-size mean gaps.

    `slope_se`: the fit's standard error (from the residuals; needs 3 sizes). `bootstrap`: the slope's 2.5 and
    97.5 percentiles when each size's seeds are resampled with replacement, and the share of resamples whose
    slope is negative (the gap shrinks); a size with one seed adds no spread there, so read both. `crossing`:
    where the line reaches 0, when the model still leads at the largest size and the slope is negative (an
    extrapolation beyond the measured sizes). None with fewer than 2 sizes.
    """
    sizes = sorted(gaps)
    if len(sizes) < 2:
        return None
    x = np.log10(np.array(sizes, dtype=np.float64))
    means = np.array([np.mean(gaps[n]) for n in sizes])
    dx = x - x.mean()
    slope = float(dx @ means / (dx @ dx))
    intercept = float(means.mean() - slope * x.mean())
    residuals = means - (intercept + slope * x)
    # the ordinary least-squares standard error of the slope (scipy.stats.linregress's stderr)
    slope_se = float(np.sqrt(residuals @ residuals / (len(sizes) - 2) / (dx @ dx))) if len(sizes) > 2 else None
    rng = np.random.default_rng(seed)
    # (resamples, sizes): each size's mean over its seeds drawn with replacement
    boot = np.stack([rng.choice(np.array(gaps[n]), size=(resamples, len(gaps[n]))).mean(axis=1) for n in sizes], axis=1)
    slopes = (boot - boot.mean(axis=1, keepdims=True)) @ dx / (dx @ dx)
    lo, hi = np.percentile(slopes, [2.5, 97.5])
    trend: dict[str, Any] = {
        "slope_per_decade": slope, "intercept": intercept, "slope_se": slope_se,
        "bootstrap": {"resamples": resamples, "slope_2.5": float(lo), "slope_97.5": float(hi),
                      "share_shrinking": float(np.mean(slopes < 0))},
        "crossing": None,
    }  # fmt: skip
    if means[-1] > 0 and slope < 0:
        size = float(10 ** (-intercept / slope))
        beyond = size > sizes[-1]
        where = (f"beyond the largest measured size {sizes[-1]:,}: an extrapolation of a {len(sizes)}-point fit" if beyond
                 else "within the measured sizes, though the gap measured at the largest is still positive")  # fmt: skip
        trend["crossing"] = {"size": size, "extrapolation": beyond, "note": f"where the fitted line reaches 0, {where}"}
    return trend


def analyse(runs: Sequence[dict[str, Any]], reference: str, metrics: Sequence[str] = tuple(METRICS)) -> dict[str, Any]:
    """For every metric measured and every model other than `reference`: the gap per size (mean, population
    std and values over seeds) and its trend (gap_trend)."""
    out: dict[str, Any] = {"reference": reference, "gaps": {}}
    models = list(dict.fromkeys(r["model"] for r in runs if r["model"] != reference))
    for key in metrics:
        for model in models:
            gaps = paired_gaps(runs, key, model, reference)
            if not gaps:
                continue
            per_size = [{"size": n, "mean": float(np.mean(g)), "std": float(np.std(g)), "seeds": len(g), "per_seed": g}
                        for n, g in gaps.items()]  # fmt: skip
            out["gaps"].setdefault(key, {})[model] = {"per_size": per_size, "trend": gap_trend(gaps)}
    return out


def format_analysis(analysis: dict[str, Any]) -> str:
    """Markdown: a table per metric of each model's gap to the reference per size (points, mean ± std over
    seeds), its slope per decade of size, and the extrapolated crossing where there is one."""
    lines: list[str] = []
    for key, models in analysis["gaps"].items():
        sizes = sorted({row["size"] for m in models.values() for row in m["per_size"]})
        lines += ["", f"{key}: gap to {analysis['reference']} in points (mean ± std over seeds, seeds)", "",
                  "| model | " + " | ".join(f"{n:,}" for n in sizes) + " | slope per decade (se; bootstrap 95%) | "
                  "lines meet at (extrapolation) |", "|---" * (len(sizes) + 3) + "|"]  # fmt: skip
        for model, m in models.items():
            cells = {row["size"]: _gap_cell(row) for row in m["per_size"]}
            t = m["trend"]
            if t is None:
                slope, crossing = "-", "-"
            else:
                se = "-" if t["slope_se"] is None else f"{100 * t['slope_se']:.2f}"
                b = t["bootstrap"]
                slope = f"{100 * t['slope_per_decade']:+.2f} ({se}; {100 * b['slope_2.5']:+.2f} to {100 * b['slope_97.5']:+.2f})"
                c = t["crossing"]
                inside = "" if c is None or c["extrapolation"] else " (inside the measured sizes)"
                crossing = "-" if c is None else f"{c['size']:.3g} images{inside}"
                if c is not None and b["slope_97.5"] >= 0:
                    crossing += "; the slope's 95% interval includes 0"
            lines.append(f"| {model} | " + " | ".join(cells.get(n, "-") for n in sizes) + f" | {slope} | {crossing} |")
    return "\n".join(lines).strip()


def with_spread(mean: str, std: str, seeds: int) -> str:
    """'mean ± std' over 2+ seeds, 'mean' alone over one (no spread to show)."""
    return f"{mean} ± {std}" if seeds > 1 else mean


def _gap_cell(row: dict[str, Any]) -> str:
    """'+4.50 ± 2.52 (3)' in points, or '+1.80 (1)' for one seed."""
    mean, std = f"{100 * row['mean']:+.2f}", f"{100 * row['std']:.2f}"
    return f"{with_spread(mean, std, row['seeds'])} ({row['seeds']})"


def format_by_size(summary: Sequence[dict[str, Any]], metrics: Sequence[str] = tuple(METRICS)) -> str:
    """Markdown: a row per model and metric measured, a column per size; mean ± std over the seeds that trained
    (their count, and how many diverged where any did)."""
    models = list(dict.fromkeys(r["model"] for r in summary))
    sizes = sorted({r["size"] for r in summary})
    cell = {(r["model"], r["size"]): r for r in summary}
    lines = ["| model | " + " | ".join(f"{n:,}" for n in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for key in (k for k in metrics if any(r.get(k) is not None for r in summary)):
        for m in models:
            lines.append(f"| {m} ({METRICS[key]}) | " + " | ".join(_cell(cell.get((m, n)), key) for n in sizes) + " |")
    return "\n".join(lines)


def _cell(row: dict[str, Any] | None, key: str) -> str:
    """'88.20% ± 0.27% (3)', '88.61% (1)', '16.83% ± 3.38% (2 of 3; 1 diverged)', 'diverged (3 of 3)' or '-'."""
    if row is None:
        return "-"
    diverged, seeds = row.get("diverged", 0), row["seeds"]
    if row.get(key) is None:
        return f"diverged ({diverged} of {seeds})" if diverged else "-"
    counted = f"{seeds - diverged} of {seeds}; {diverged} diverged" if diverged else str(seeds)
    mean, std = f"{row[key]:.2%}", f"{row[key + '_std']:.2%}"
    return f"{with_spread(mean, std, seeds - diverged)} ({counted})"
