"""The data-scale study (paper section 4.3, Figs. 3-5) at the scale of one dataset: how the ViT, a BiT
ResNet and a hybrid compare as the training set grows.

Every model trains from scratch on nested, class-balanced subsets of the training split
(vitkit.data.subsets), each run on the same budget of images seen, with its family's small-data recipe
(vitkit.train.recipes.FAMILY_RECIPES) and no tuning per size. A class-balanced part of each subset is
held out: the best held-out checkpoint (early stopping, as the paper's Fig. 4) is evaluated on the full
test split (top-1) and by 10-shot linear regression on its frozen features (section 4.1).

Each run is an ordinary `vitkit train` run directory, OUT/<model>/n<size>/seed<k>, finished by a
result.json; OUT/manifest.json holds the study's identity. A study started again skips the finished runs
and resumes the interrupted one from its last checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence, get_args

import torch
from matplotlib.figure import Figure
from torch.utils.data import Subset
from tqdm import tqdm

from .bench import step_flops
from .checkpoints.io import atomic_write
from .checkpoints.load import load
from .data import DataSource, load_data
from .data.datasets import parse_spec
from .data.streaming import StreamedSplit
from .data.subsets import check_size, dataset_labels, split_subset, subset_indices
from .evaluate import eval_loader
from .evaluate.fewshot import extract_features, fewshot, representations
from .models import get_config, resolve_name
from .precision import Requested
from .train import NonFiniteLoss, fit, get_recipe, make_config
from .train.loop import BEST
from .train.recipes import FAMILY_RECIPES, Recipe
from .train.runlog import read_metrics

FAMILIES = tuple(FAMILY_RECIPES)
# The model of each family that a dataset studies by default (`--models vit,resnet,hybrid`).
FAMILY_MODELS: dict[str, dict[str, str]] = {
    "fashion_mnist": {"vit": "vit_fashion_patch4_28", "resnet": "resnetv2_fashion_28", "hybrid": "vit_fashion_hybrid_28"},
    "mnist5k": {"vit": "vit_fashion_patch4_28", "resnet": "resnetv2_fashion_28", "hybrid": "vit_fashion_hybrid_28"},
    "digits": {"vit": "vit_test_patch4_16", "resnet": "resnetv2_test_16"},
    "cifar10": {"vit": "vit_micro_patch4_32"},
    "cifar100": {"vit": "vit_micro_patch4_32"},
    "imagefolder": {"vit": "vit_small_patch16_224", "resnet": "resnetv2_50x1_bit", "hybrid": "vit_small_r26_s32_224"},
}  # fmt: skip
SHOTS = 10
FEWSHOT_POOL = 50  # images per class whose features the 10-shot support sets are drawn from
FEWSHOT_SEEDS = 3
MANIFEST, RESULT = "manifest.json", "result.json"
RUN_FIELDS = ("model", "family", "size", "seed", "top1", "fewshot_10", "train_flops", "heldout_top1", "steps",
              "images_seen", "run_dir", "diverged")  # fmt: skip


def resolve_models(data: str, models: Sequence[str]) -> dict[str, str]:
    """Family names ('vit', 'resnet', 'hybrid') -> the dataset's model of that family; registry names as
    they are. Returns {model name: family}, in the order given."""
    defaults = FAMILY_MODELS.get(parse_spec(data)[0], {})
    resolved: dict[str, str] = {}
    for entry in models:
        if entry in FAMILIES:
            if entry not in defaults:
                raise ValueError(f"no default {entry} model for dataset {data}: name a registered model instead")
            entry = defaults[entry]
        try:
            name = resolve_name(entry)  # a paper alias ('ViT-B/16') becomes the registry name, a folder name
            resolved[name] = get_config(name).family
        except ValueError as e:
            raise ValueError(f"{e} (--models takes the families {', '.join(FAMILIES)} or registered names)") from None
    if not resolved:
        raise ValueError("no models given: --models vit,resnet,hybrid or registered names")
    return resolved


@dataclasses.dataclass
class Plan:
    """What a study computes; `identity()` is what OUT/manifest.json records."""

    data: str
    sizes: list[int]
    models: dict[str, str]  # name -> family
    images_seen: int
    seeds: list[int]  # per size
    holdout: float
    precision: Requested  # auto: each run's choice is in its config.yaml
    recipe_overrides: dict[str, Any]
    evaluations: int  # held-out evaluations (and checkpoints) per run

    def recipe(self, model: str) -> Recipe:
        """The model's family recipe with the overrides and the study's run length."""
        base = get_recipe(FAMILY_RECIPES[self.models[model]], **self.recipe_overrides)
        return base.replace(steps=math.ceil(self.images_seen / base.batch_size), epochs=None)

    def identity(self) -> dict[str, Any]:
        recipes = {m: dataclasses.asdict(self.recipe(m)) for m in self.models}
        doc = {**dataclasses.asdict(self), "recipes": recipes, "shots": SHOTS, "fewshot_pool": FEWSHOT_POOL,
               "fewshot_seeds": FEWSHOT_SEEDS}  # fmt: skip
        return json.loads(json.dumps(doc))  # tuples -> lists, as read back

    def runs(self) -> list[tuple[str, int, int]]:
        """(model, size, seed) of every run: smallest sizes first, so an early stop leaves whole comparisons."""
        return [(m, n, s) for n, k in zip(self.sizes, self.seeds) for s in range(k) for m in self.models]


def _check(plan: Plan, data: DataSource) -> None:
    """Every bad input a one-line ValueError, before any training."""
    if plan.images_seen <= 0:
        raise ValueError(f"images_seen must be positive, got {plan.images_seen}")
    if not 0 <= plan.holdout < 1:
        raise ValueError(f"holdout is a fraction of each subset, in [0, 1), got {plan.holdout}")
    if plan.precision not in get_args(Requested):
        raise ValueError(f"precision must be one of {', '.join(get_args(Requested))}, got {plan.precision!r}")
    if plan.evaluations < 1:
        raise ValueError(f"evaluations must be positive, got {plan.evaluations}")
    if not plan.sizes or len(plan.seeds) != len(plan.sizes) or min(plan.seeds) < 1:
        raise ValueError(f"need one or more sizes and, per size, seeds >= 1; got sizes {plan.sizes}, seeds {plan.seeds}")
    labels, K = dataset_labels(data.train), len(data.classes)
    for size in plan.sizes:
        check_size(size, K, len(labels))
    smallest = min(plan.sizes)
    train, _ = subset_indices(labels, K, smallest, plan.holdout, seed=0)
    for model in plan.models:
        batch = plan.recipe(model).batch_size
        if batch > len(train):
            raise ValueError(f"{model}'s batch_size {batch} is larger than the {len(train)} training images of size "
                             f"{smallest} (after the held-out part): pass a smaller --batch-size")  # fmt: skip


def _claim(out: Path, identity: dict[str, Any]) -> None:
    """Record the study in OUT/manifest.json, or check that OUT holds this study and no other."""
    manifest = out / MANIFEST
    if manifest.is_file():
        held = json.loads(manifest.read_text())
        for key in identity:
            if held.get(key) != identity[key]:
                raise ValueError(f"{out} holds a different study ({key} is {held.get(key)!r} there, {identity[key]!r} "
                                 f"now): pass another --out")  # fmt: skip
        return
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no study ({MANIFEST} is missing): pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(manifest, lambda tmp: Path(tmp).write_text(json.dumps(identity, indent=1)))


def _fewshot_pool(data: DataSource) -> Subset | None:
    """The class-balanced images whose features the support sets come from; None when a class has too few."""
    labels = dataset_labels(data.train)
    K = len(data.classes)
    if int(torch.bincount(labels, minlength=K).min()) < SHOTS:
        return None
    pool, _ = split_subset(data.train, K, min(len(labels), FEWSHOT_POOL * K), 0.0, seed=0)
    return pool


def _evaluate(run_dir: Path, data: DataSource, pool: Subset | None, plan: Plan, device: torch.device) -> dict[str, Any]:
    """Test top-1 and 10-shot accuracy of the run's chosen weights (the best held-out, else the final), in fp32."""
    model = load(run_dir / (BEST if plan.holdout else "model.safetensors")).to(device).eval()
    test_x, test_logits, test_y = representations(model, eval_loader(data.test, model.config.data_config, data.channels))
    shots = None
    if pool is not None:
        support_x, support_y = extract_features(model, eval_loader(pool, model.config.data_config, data.channels))
        result = fewshot(support_x, support_y, test_x, test_y, (SHOTS,), FEWSHOT_SEEDS, num_classes=len(data.classes))
        shots = result.mean[0]
    top1 = (test_logits.argmax(dim=1) == test_y).double().mean().item()
    return {"top1": top1, "fewshot_10": shots, "step_flops": step_flops(model.config, "train")}


def _run(
    plan: Plan, model: str, size: int, seed: int, run_dir: Path, data: DataSource, pool: Subset | None,
    execution: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Train (or resume, or skip) one run and evaluate it; its record, also written to run_dir/result.json.
    A run whose loss goes to NaN/inf is recorded as diverged, with no accuracy, and the study goes on."""
    if (run_dir / RESULT).is_file():
        return json.loads((run_dir / RESULT).read_text())
    recipe = plan.recipe(model)
    record = {"model": model, "family": plan.models[model], "size": size, "seed": seed, "steps": recipe.steps,
              "images_seen": recipe.steps * recipe.batch_size, "run_dir": str(run_dir), "diverged": None}  # fmt: skip
    if not (run_dir / "model.safetensors").is_file():
        every = max(1, recipe.steps // plan.evaluations)
        cfg = make_config(
            dataclasses.asdict(recipe), data=plan.data, model=model, recipe_name=FAMILY_RECIPES[plan.models[model]],
            out=str(run_dir), resume=(run_dir / "config.yaml").is_file(), seed=seed, subset=size, subset_seed=seed,
            holdout=plan.holdout, eval_every=every, checkpoint_every=every, precision=plan.precision, **execution,
        )  # fmt: skip
        try:
            fit(cfg)
        except NonFiniteLoss as e:
            flops = step_flops(get_config(model), "train") * record["images_seen"]
            record.update(top1=None, fewshot_10=None, train_flops=flops, heldout_top1=None, diverged=str(e))
    if record["diverged"] is None:
        device = torch.device(execution.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        scores = _evaluate(run_dir, data, pool, plan, device)
        heldout = [r["eval_top1"] for r in read_metrics(run_dir / "metrics.jsonl") if "eval_top1" in r]
        record.update(top1=scores["top1"], fewshot_10=scores["fewshot_10"],
                      train_flops=scores["step_flops"] * record["images_seen"],
                      heldout_top1=max(heldout, default=None) if plan.holdout else None)  # fmt: skip
    text = json.dumps(record, indent=1)
    atomic_write(run_dir / RESULT, lambda tmp: Path(tmp).write_text(text))
    return record


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread (population std) over seeds of each (model, size)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[r["model"], r["size"]].append(r)
    rows = []
    for (model, size), group in groups.items():
        row: dict[str, Any] = {"model": model, "family": group[0]["family"], "size": size, "seeds": len(group),
                               "train_flops": group[0]["train_flops"],
                               "diverged": sum(r.get("diverged") is not None for r in group)}  # fmt: skip
        for key in ("top1", "fewshot_10"):
            values = torch.tensor([r[key] for r in group if r[key] is not None], dtype=torch.float64)
            row[key] = values.mean().item() if len(values) else None
            row[f"{key}_std"] = values.std(correction=0).item() if len(values) else None
        rows.append(row)
    return rows


def format_summary(study: dict[str, Any]) -> str:
    """A markdown table of the summary: a row per model and size."""
    def pct(mean: float | None, std: float | None) -> str:
        return "-" if mean is None else f"{mean:.2%} ± {std:.2%}"

    lines = ["| model | family | size | seeds | test top-1 | 10-shot | training FLOPs |", "|---|---|---|---|---|---|---|"]
    for r in study["summary"]:
        lines.append(f"| {r['model']} | {r['family']} | {r['size']:,} | {r['seeds']} | {pct(r['top1'], r['top1_std'])} "
                     f"| {pct(r['fewshot_10'], r['fewshot_10_std'])} | {r['train_flops']:.3g} |")  # fmt: skip
    return "\n".join(lines + [f"files: {', '.join(study['files'].values())}"])


def plot_accuracy_vs_size(summary: list[dict[str, Any]], path: Path) -> Path:
    """Test top-1 and 10-shot accuracy against training-set size (log x), mean ± std over seeds (Figs. 3/4)."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, key, title in zip(fig.subplots(1, 2), ("top1", "fewshot_10"), ("test top-1", f"{SHOTS}-shot linear")):
        for model in dict.fromkeys(r["model"] for r in summary):
            rows = sorted((r for r in summary if r["model"] == model and r[key] is not None), key=lambda r: r["size"])
            if not rows:
                continue
            x = [r["size"] for r in rows]
            y, s = torch.tensor([r[key] for r in rows]), torch.tensor([r[f"{key}_std"] for r in rows])
            ax.plot(x, y, marker="o", label=f"{model} ({rows[0]['family']})")
            ax.fill_between(x, y - s, y + s, alpha=0.2)
        ax.set_xscale("log")
        sizes = sorted({r["size"] for r in summary})
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_xlabel("training images")
        ax.set_ylabel("accuracy")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.savefig(path, dpi=100)
    return path


def plot_accuracy_vs_flops(summary: list[dict[str, Any]], path: Path) -> Path:
    """Test top-1 against training FLOPs (log x): a marker per model, a line per training-set size (Fig. 5)."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(r["model"] for r in summary))}
    for size in sorted({r["size"] for r in summary}):
        trained = (r for r in summary if r["size"] == size and r["top1"] is not None)  # not all diverged
        rows = sorted(trained, key=lambda r: r["train_flops"])
        if not rows:
            continue
        ax.plot([r["train_flops"] for r in rows], [r["top1"] for r in rows], color="grey", alpha=0.5, lw=1)
        ax.annotate(f"{size:,}", (rows[-1]["train_flops"], rows[-1]["top1"]), fontsize=7, xytext=(4, 0),
                    textcoords="offset points", va="center")  # fmt: skip
        for r in rows:
            ax.errorbar(r["train_flops"], r["top1"], yerr=r["top1_std"], color=colours[r["model"]], marker="o",
                        capsize=2)  # fmt: skip
    for model, colour in colours.items():
        ax.plot([], [], color=colour, marker="o", ls="", label=model)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (a training step's FLOPs per image × images seen)")
    ax.set_ylabel("test top-1")
    ax.set_title("accuracy against training compute (lines: one training-set size)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.savefig(path, dpi=100)
    return path


def _write_results(out: Path, study: dict[str, Any]) -> None:
    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=RUN_FIELDS)
            writer.writeheader()
            writer.writerows(study["runs"])

    atomic_write(out / "study.csv", write_csv)
    plot_accuracy_vs_size(study["summary"], out / "accuracy_vs_size.png")
    plot_accuracy_vs_flops(study["summary"], out / "accuracy_vs_flops.png")
    text = json.dumps(study, indent=1)
    atomic_write(out / "study.json", lambda tmp: Path(tmp).write_text(text))


def data_scale(
    data: str,
    sizes: Sequence[int],
    models: Sequence[str],
    images_seen: int,
    seeds: int | Sequence[int],
    out: str | Path,
    holdout: float = 0.1,
    precision: Requested = "auto",
    recipe_overrides: dict[str, Any] | None = None,
    data_root: str | None = None,
    device: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    evaluations: int = 10,
) -> dict[str, Any]:
    """Train every model on every size with `seeds` seeds (one number, or one per size); returns (and writes
    to OUT/study.json) {"study": identity, "runs": [...], "summary": [...], "files": {...}}.

    `images_seen`: the budget of every run (steps = images_seen / batch_size). `holdout`: the fraction of
    each subset held out for early stopping (0: the final weights are evaluated), evaluated `evaluations`
    times a run.
    """
    sizes = list(sizes)
    per_size = [seeds] * len(sizes) if isinstance(seeds, int) else list(seeds)
    plan = Plan(data, sizes, resolve_models(data, models), images_seen, per_size, holdout, precision,
                dict(recipe_overrides or {}), evaluations)  # fmt: skip
    source = load_data(data, data_root)
    if isinstance(source.train, StreamedSplit):  # subsets and the few-shot pool are drawn by index
        source = dataclasses.replace(source, train=source.train.held())
    _check(plan, source)
    out = Path(out)
    identity = plan.identity()
    _claim(out, identity)
    if (out / "study.json").is_file():
        return json.loads((out / "study.json").read_text())
    pool = _fewshot_pool(source)
    execution = {"data_root": data_root, "device": device, "workers": workers, "progress": progress}
    records = []
    for model, size, seed in tqdm(plan.runs(), desc="study", unit="run", position=0, disable=not progress):
        run_dir = out / model / f"n{size}" / f"seed{seed}"
        records.append(_run(plan, model, size, seed, run_dir, source, pool, execution))
    files = {name: str(out / name) for name in ("study.json", "study.csv", "accuracy_vs_size.png", "accuracy_vs_flops.png")}
    study = {"study": identity, "runs": records, "summary": summarise(records), "files": files}
    _write_results(out, study)
    return study
