"""The data-scale study (paper section 4.3, Figs. 3-5) at the scale of one dataset: how the ViT, a BiT
ResNet and a hybrid compare as the training set grows.

Every model trains from scratch on nested, class-balanced subsets of the training split
(vitkit.data.subsets), each run on a budget of images seen (vitkit.study_plan: one for all, or a number of
passes over each run's own training part), with its family's small-data recipe (vitkit.train.recipes.FAMILY_RECIPES, or
the tuned ones a recipes file names) and no tuning per size. A class-balanced part of each subset is held
out: the best held-out checkpoint (early stopping, as the paper's Fig. 4; with `patience`, the run also stops
there) is evaluated on the full test split (top-1), by 10-shot linear regression on its frozen features
(section 4.1) and, with `transfer`, by the same 10-shot regression on a second dataset (Figs. 3-4 judge
pre-training by transfer).

Each run is an ordinary `vitkit train` run directory, OUT/<model>/n<size>/seed<k>, finished by a
result.json; OUT/manifest.json holds the study's identity. OUT/study.json is rewritten as each run finishes
("complete": false until the last), so a study cut short still has usable results; started again, it skips
the finished runs and resumes the interrupted one from its last checkpoint. With a ledger (vitkit.study_ledger)
each finished run is also appended to a small JSON-lines file that outlives OUT and the machine: a study started
with it trains only the runs it lacks. vitkit.study_analysis turns the runs into gaps to the ViT per size and
their trend against log size; vitkit.study_report writes the results.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence, get_args

import torch
from torch.utils.data import Subset
from tqdm import tqdm

from .checkpoints.load import load
from .data import DataSource, load_data
from .data.subsets import check_size, dataset_labels, split_subset, subset_indices
from .data.transforms import eval_transform
from .evaluate import eval_loader
from .evaluate.fewshot import extract_features, fewshot, representations
from .files import atomic_write
from .flops import step_flops
from .hardware import compile_missing, default_device
from .models import get_config
from .precision import Requested
from .study_ledger import Ledger, run_key
from .study_plan import (FAMILIES, FAMILY_MODELS, FEWSHOT_POOL, FEWSHOT_SEEDS, SHOTS, Plan, budget, plan_of,
                         read_recipes, resolve_models)  # fmt: skip
from .study_report import (FIGURES, MANIFEST, RESULT, RUN_FIELDS, STUDY, collect, format_summary, reference_vit,
                           report, results, write_results)  # fmt: skip
from .train import NonFiniteLoss, fit, make_config
from .train.rundir import RunDir
from .train.runlog import read_metrics

__all__ = ["FAMILIES", "FAMILY_MODELS", "FIGURES", "RUN_FIELDS", "Plan", "budget", "collect", "data_scale",
           "format_summary", "plan_of", "read_recipes", "reference_vit", "report", "resolve_models", "transfer_task"]  # fmt: skip


def _check(plan: Plan, data: DataSource) -> None:
    """Every bad input a one-line ValueError, before any training."""
    if plan.images_seen is not None and plan.images_seen <= 0:
        raise ValueError(f"images_seen must be positive, got {plan.images_seen}")
    batch, model = max((plan.base_recipe(m).batch_size, m) for m in plan.models)
    if plan.max_images_seen is not None and plan.max_images_seen < batch:
        raise ValueError(f"--max-images-seen {plan.max_images_seen} is below one batch ({batch} images of {model}'s "
                         f"recipe): give at least {batch}")  # fmt: skip
    if plan.patience is not None and (plan.patience < 1 or not plan.holdout):
        raise ValueError(f"patience counts held-out evaluations: give it >= 1 and a holdout, got {plan.patience}")
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
    subset_indices(labels, K, min(plan.sizes), plan.holdout, seed=0)  # a holdout that leaves no held-out image


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


@dataclasses.dataclass
class FewShotTask:
    """A frozen-feature 10-shot evaluation: the class-balanced pool its support sets are drawn from, and the
    split it is scored on, with the images' channel count and the class count."""

    pool: Subset
    test: Any  # a Dataset
    channels: int
    num_classes: int

    def accuracy(self, model: torch.nn.Module, test_features: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
        """Mean 10-shot accuracy over FEWSHOT_SEEDS support draws from the model's frozen pre-logits features;
        `test_features` (features (N, F), labels (N,)) when the caller already has them."""
        cfg = model.config.data_config
        support_x, support_y = extract_features(model, eval_loader(self.pool, cfg, self.channels))
        test_x, test_y = test_features or extract_features(model, eval_loader(self.test, cfg, self.channels))
        return fewshot(support_x, support_y, test_x, test_y, (SHOTS,), FEWSHOT_SEEDS, num_classes=self.num_classes).mean[0]


def fewshot_task(data: DataSource) -> FewShotTask | None:
    """The dataset's 10-shot task: FEWSHOT_POOL training images per class (seed 0) and the test split; None
    when a class has fewer than SHOTS training images."""
    labels = dataset_labels(data.split("train"))
    K = len(data.classes)
    if int(torch.bincount(labels, minlength=K).min()) < SHOTS:
        return None
    pool, _ = split_subset(data.train, K, min(len(labels), FEWSHOT_POOL * K), 0.0, seed=0)
    return FewShotTask(pool, data.split("test"), data.channels, K)


def transfer_task(spec: str, models: Sequence[str], data_root: str | None = None) -> FewShotTask:
    """The transfer dataset's 10-shot task, once its images have been checked to resize to every model's input;
    a one-line ValueError for a dataset that cannot be read or whose images cannot be fed to a model."""
    try:
        source = load_data(spec, data_root).indexable()  # the few-shot pool is drawn by index
        task = fewshot_task(source)
        image = source.split("test")[0][0]
    except (ValueError, OSError, ImportError, IndexError, RuntimeError) as e:
        raise ValueError(f"--transfer {spec} cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if task is None:
        raise ValueError(f"--transfer {spec}: a class has fewer than {SHOTS} training images, too few for {SHOTS}-shot")
    for model in models:
        cfg = get_config(model).data_config
        try:
            eval_transform(cfg, source.channels)(image)
        except (ValueError, RuntimeError, TypeError) as e:
            raise ValueError(f"--transfer {spec}: its images cannot be resized to {model}'s input "
                             f"({cfg.in_chans}x{'x'.join(map(str, cfg.img_size))}): {str(e).splitlines()[0]}") from None  # fmt: skip
    return task


def _evaluate(run_dir: Path, task: FewShotTask | None, transfer: FewShotTask | None, data: DataSource, plan: Plan,
              device: torch.device) -> dict[str, Any]:  # fmt: skip
    """Test top-1, 10-shot and transfer 10-shot accuracy of the run's chosen weights (the best held-out, else the
    final), in fp32; one forward pass gives the test split's logits and features."""
    files = RunDir(run_dir)
    model = load(files.best if plan.holdout else files.final).to(device).eval()
    test_x, test_logits, test_y = representations(model, eval_loader(data.test, model.config.data_config, data.channels))
    return {
        "top1": (test_logits.argmax(dim=1) == test_y).double().mean().item(),
        "fewshot_10": task.accuracy(model, (test_x, test_y)) if task is not None else None,
        "transfer_10": transfer.accuracy(model) if transfer is not None else None,
        "step_flops": step_flops(model.config, "train"),
    }


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """One run of a study: its model, size and seed, how many of its subset's images it trains on (the rest are
    held out), its ledger key (vitkit.study_ledger.run_key) and its run directory."""

    model: str
    size: int
    seed: int
    train_images: int
    key: dict[str, Any]
    run_dir: Path

    def describe(self, plan: Plan) -> str:
        recipe = plan.recipe(self.model, self.train_images)
        return (f"{self.model} on {self.size:,} images ({self.train_images:,} trained on), seed {self.seed}: "
                f"{recipe.steps * recipe.batch_size:,} images at most ({recipe.steps:,} steps)")  # fmt: skip


def _stopped(record: dict[str, Any]) -> str:
    """Why a run ended: its budget, early stopping (patience) or a non-finite loss."""
    return "diverged" if record["diverged"] else "patience" if record["steps"] < record["budget_steps"] else "budget"


def _run(
    plan: Plan, run: StudyRun, data: DataSource, tasks: tuple[FewShotTask | None, ...], execution: dict[str, Any]
) -> dict[str, Any]:  # fmt: skip
    """Train (or resume, or skip) one run and evaluate it; its record, also written to run_dir/result.json.
    A run whose loss goes to NaN/inf is recorded as diverged, with no accuracy, and the study goes on."""
    model, run_dir = run.model, run.run_dir
    if (run_dir / RESULT).is_file():
        return json.loads((run_dir / RESULT).read_text())
    recipe = plan.recipe(model, run.train_images)
    record = {"model": model, "family": plan.models[model], "size": run.size, "seed": run.seed, "steps": recipe.steps,
              "budget_steps": recipe.steps, "budget_images": plan.images(run.train_images),
              "images_seen": recipe.steps * recipe.batch_size, "run_dir": str(run_dir), "diverged": None}  # fmt: skip
    files = RunDir(run_dir)
    if not files.final.is_file():
        every = max(1, recipe.steps // plan.evaluations)
        cfg = make_config(
            dataclasses.asdict(recipe), data=plan.data, model=model, recipe_name=plan.recipe_name(model),
            out=str(run_dir), resume=files.config.is_file(), seed=run.seed, subset=run.size, subset_seed=run.seed,
            holdout=plan.holdout, eval_every=every, checkpoint_every=every, patience=plan.patience,
            precision=plan.precision, **execution,
        )  # fmt: skip
        try:
            fit(cfg, data)  # the study's copy of the data, held once
        except NonFiniteLoss as e:
            flops = step_flops(get_config(model), "train") * record["images_seen"]
            record.update(top1=None, fewshot_10=None, transfer_10=None, train_flops=flops, heldout_top1=None,
                          diverged=str(e))  # fmt: skip
    if record["diverged"] is None:
        device = torch.device(execution.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        scores = _evaluate(run_dir, *tasks, data, plan, device)
        metrics = read_metrics(files.metrics)
        heldout = [r["eval_top1"] for r in metrics if "eval_top1" in r]
        steps = max(r["step"] for r in metrics)  # fewer than the budget when the run stopped early
        record.update(top1=scores["top1"], fewshot_10=scores["fewshot_10"], transfer_10=scores["transfer_10"],
                      steps=steps, images_seen=steps * recipe.batch_size,
                      train_flops=scores["step_flops"] * steps * recipe.batch_size,
                      heldout_top1=max(heldout, default=None) if plan.holdout else None)  # fmt: skip
    record["stopped"] = _stopped(record)
    text = json.dumps(record, indent=1)
    atomic_write(run_dir / RESULT, lambda tmp: Path(tmp).write_text(text))
    return record


def logged_evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics a run logged at each of its evaluations (the lines of metrics.jsonl with eval_* values)."""
    path = RunDir(run_dir).metrics
    return [r for r in read_metrics(path) if any(k.startswith("eval_") for k in r)] if path.is_file() else []


def study_runs(plan: Plan, data: DataSource, out: Path) -> list[StudyRun]:
    """Every run of the plan, in its order, with the size of its training part and its ledger key."""
    labels, K = dataset_labels(data.train), len(data.classes)
    runs = []
    for model, size, seed in plan.runs():
        train_images = len(subset_indices(labels, K, size, plan.holdout, seed)[0])
        runs.append(StudyRun(model, size, seed, train_images, run_key(plan, model, size, seed, train_images),
                             out / model / f"n{size}" / f"seed{seed}"))  # fmt: skip
    return runs


def data_scale(
    data: str,
    sizes: Sequence[int],
    models: Sequence[str],
    images_seen: int | None,
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
    epochs_of_largest: float | None = None,
    patience: int | None = None,
    transfer: str | None = None,
    recipes: dict[str, dict[str, Any]] | None = None,
    epochs_per_size: float | None = None,
    max_images_seen: int | None = None,
    ledger: str | Path | None = None,
    compile: bool = False,
) -> dict[str, Any]:
    """Train every model on every size with `seeds` seeds (one number, or one per size); returns (and writes
    to OUT/study.json) {"study": identity, "complete", "runs": [...], "summary": [...], "analysis", "files"}.

    The budget of a run, one of: `images_seen`; `epochs_of_largest` x the largest size; `epochs_per_size` x its
    training part, capped at `max_images_seen` (steps = budget / batch_size). `holdout`: the fraction of each
    subset held out for early stopping (0: the final weights are evaluated), evaluated `evaluations` times a
    run; `patience`: stop a run once that many evaluations in a row brought no better held-out top-1.
    `transfer`: a second dataset, scored by 10-shot linear regression on every run's frozen features.
    `recipes`: per family {"recipe": name, "overrides": {}} (read_recipes), instead of FAMILY_RECIPES.
    `ledger`: a JSON-lines file (vitkit.study_ledger) that every finished run is appended to; the runs it holds
    are not trained again, even in an empty OUT. `compile`: torch.compile each run's training step; how a run
    executes, like `device` and `workers`, so not part of its ledger key (each line records it).
    """
    sizes = list(sizes)
    per_size = [seeds] * len(sizes) if isinstance(seeds, int) else list(seeds)
    plan = Plan(data, sizes, resolve_models(data, models),
                budget(sizes, images_seen, epochs_of_largest, epochs_per_size, max_images_seen), per_size, holdout,
                precision, dict(recipe_overrides or {}), evaluations, epochs_of_largest, patience, transfer,
                recipes or None, epochs_per_size, max_images_seen)  # fmt: skip
    source = load_data(data, data_root).indexable()  # held once, for the subsets, the few-shot pool and every run
    _check(plan, source)
    if compile and (why := compile_missing(device or default_device(precision))):
        raise ValueError(f"--compile: {why}; leave out --compile (the ledger continues with or without it)")
    out = Path(out)
    runs = study_runs(plan, source, out)
    book = Ledger(ledger, data) if ledger is not None else None
    held = [book.check(run.key) if book else None for run in runs]  # a line that disagrees: an error, now
    tasks = (fewshot_task(source), transfer_task(transfer, list(plan.models), data_root) if transfer else None)
    identity = plan.identity()
    _claim(out, identity)
    if (out / STUDY).is_file() and book is None:
        done = json.loads((out / STUDY).read_text())
        if done.get("complete", True):
            return done
    execution = {"data_root": data_root, "device": device, "workers": workers, "progress": progress, "compile": compile}
    records: list[dict[str, Any]] = []
    for i, (run, line) in enumerate(tqdm(list(zip(runs, held)), desc="study", unit="run", disable=not progress), 1):
        if line is None:
            tqdm.write(f"study: run {i} of {len(runs)}: {run.describe(plan)}", file=sys.stderr)
            record = _run(plan, run, source, tasks, execution)
            if book is not None:
                book.append(run.key, record, logged_evaluations(run.run_dir), {"compile": compile})
        records.append(record if line is None else line["result"])
        if i < len(runs):  # results so far, for a study cut short; figures at the end
            write_results(out, results(out, identity, records, False), figures=False)
    study = results(out, identity, records, True)
    write_results(out, study)
    return study
