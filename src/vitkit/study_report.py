"""A data-scale study's results (vitkit.study): study.json, study.csv and the two figures, from the records of its
finished runs, whether they come from the run directories of OUT (`collect`) or from a ledger alone (`report`).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

from .data.datasets import parse_spec
from .files import atomic_write
from .study_analysis import METRICS, analyse, summarise, with_spread
from .study_ledger import Ledger
from .study_plan import FAMILY_MODELS, plan_of
from .study_plots import plot_accuracy_vs_flops, plot_accuracy_vs_size

MANIFEST, RESULT, STUDY = "manifest.json", "result.json", "study.json"
FIGURES = ("accuracy_vs_size.png", "accuracy_vs_flops.png")
RUN_FIELDS = ("model", "family", "size", "seed", "top1", "fewshot_10", "transfer_10", "train_flops", "heldout_top1",
              "steps", "budget_steps", "budget_images", "images_seen", "stopped", "run_dir", "diverged")  # fmt: skip


def reference_vit(data: str, models: dict[str, str]) -> str | None:
    """The ViT the gaps are measured from: the dataset's `vit` model if studied, else the first ViT."""
    default = FAMILY_MODELS.get(parse_spec(data)[0], {}).get("vit")
    return default if default in models else next((m for m, f in models.items() if f == "vit"), None)


def results(out: Path, identity: dict[str, Any], records: list[dict[str, Any]], complete: bool | None) -> dict[str, Any]:
    """study.json's document: the identity, the runs, their summary over seeds and the gaps to the reference ViT."""
    models = {r["model"]: r["family"] for r in records} or identity.get("models", {})
    reference = reference_vit(identity["data"], {**identity.get("models", {}), **models})
    return {"study": identity, "complete": complete, "runs": records, "summary": summarise(records),
            "analysis": analyse(records, reference) if reference else None,
            "files": {name: str(out / name) for name in (STUDY, "study.csv", *FIGURES)}}  # fmt: skip


def write_results(out: Path, study: dict[str, Any], figures: bool = True) -> None:
    """study.json and study.csv (atomic), and with `figures` the two plots."""
    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=RUN_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(study["runs"])

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "study.csv", write_csv)
    if figures and study["runs"]:
        plot_accuracy_vs_size(study["summary"], out / FIGURES[0], study["study"].get("transfer"))
        plot_accuracy_vs_flops(study["summary"], out / FIGURES[1])
    text = json.dumps(study, indent=1)
    atomic_write(out / STUDY, lambda tmp: Path(tmp).write_text(text))


def collect(out: str | Path) -> dict[str, Any]:
    """The results of the runs of the study in OUT that have finished (a study cut short, too), without training:
    rewrites OUT/study.json, study.csv and the plots from the runs' result.json files."""
    out = Path(out)
    if not (out / MANIFEST).is_file():
        raise ValueError(f"{out} holds no study ({MANIFEST} is missing)")
    identity = json.loads((out / MANIFEST).read_text())
    plan = plan_of(identity)
    records = []
    for model, size, seed in plan.runs():
        result = out / model / f"n{size}" / f"seed{seed}" / RESULT
        if result.is_file():
            records.append(json.loads(result.read_text()))
    study = results(out, identity, records, len(records) == len(plan.runs()))
    write_results(out, study)
    return study


def ledger_identity(ledger: Ledger) -> dict[str, Any]:
    """What a ledger's runs have in common, as study.json's "study": the dataset, models, sizes, seeds per size,
    and each field of the keys that every line shares (the budget rule, recipe per model, protocol)."""
    keys = [line["key"] for line in ledger.lines.values()]
    seeds = Counter(k["size"] for k in keys if k["model"] == keys[0]["model"])
    shared = {name: keys[0][name] for name in keys[0] if name not in ("model", "size", "seed", "recipe", "budget")
              and all(k.get(name) == keys[0][name] for k in keys)}  # fmt: skip
    rules = {json.dumps({n: v for n, v in k["budget"].items() if n != "images"}, sort_keys=True) for k in keys}
    recipes = {k["model"]: {n: v for n, v in k["recipe"].items() if n != "steps"} for k in keys}
    return {**shared, "models": {line["result"]["model"]: line["result"]["family"] for line in ledger.lines.values()},
            "sizes": sorted(seeds), "seeds": [seeds[n] for n in sorted(seeds)],
            "budget": [json.loads(r) for r in sorted(rules)], "recipes": recipes, "ledger": str(ledger.path)}  # fmt: skip


def report(ledger_path: str | Path, out: str | Path) -> dict[str, Any]:
    """study.json, study.csv, the figures and the analysis of every run in a ledger, rebuilt from it alone."""
    path = Path(ledger_path)
    if not path.is_file():
        raise ValueError(f"ledger {path} does not exist")
    ledger = Ledger(path)
    if not ledger.lines:
        raise ValueError(f"ledger {path} holds no finished run")
    datasets = {line["key"]["data"] for line in ledger.lines.values()}
    if len(datasets) > 1:
        raise ValueError(f"ledger {path} mixes datasets ({', '.join(sorted(datasets))}): one study a ledger")
    study = results(Path(out), ledger_identity(ledger), ledger.results(), None)
    write_results(Path(out), study)
    return study


def format_summary(study: dict[str, Any]) -> str:
    """A markdown table of the summary: a row per model and size, sizes ascending; a spread only over 2+ seeds."""
    keys = [k for k in METRICS if any(r.get(k) is not None for r in study["summary"])] or ["top1"]
    lines = [f"| model | family | size | seeds | {' | '.join(METRICS[k] for k in keys)} | training FLOPs |",
             "|---" * (len(keys) + 5) + "|"]  # fmt: skip
    for r in study["summary"]:
        cells = " | ".join("-" if r.get(k) is None else with_spread(f"{r[k]:.2%}", f"{r[k + '_std']:.2%}", r["seeds"])
                           for k in keys)  # fmt: skip
        lines.append(f"| {r['model']} | {r['family']} | {r['size']:,} | {r['seeds']} | {cells} | {r['train_flops']:.3g} |")
    done = "" if study.get("complete") is not False else f" (incomplete: {len(study['runs'])} runs so far)"
    return "\n".join(lines + [f"files{done}: {', '.join(study['files'].values())}"])
