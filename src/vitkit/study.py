"""The data-scale study (paper section 4.3, Figs. 3-5) at the scale of one dataset: how the ViT, a BiT
ResNet and a hybrid compare as the training set grows.

Every model trains from scratch on nested, class-balanced subsets of the training split
(vitkit.data.subsets), each run on the same budget of images seen (`images_seen`, or `epochs_of_largest`
passes over the largest size), with its family's small-data recipe (vitkit.train.recipes.FAMILY_RECIPES, or
the tuned ones a recipes file names) and no tuning per size. A class-balanced part of each subset is held
out: the best held-out checkpoint (early stopping, as the paper's Fig. 4; with `patience`, the run also stops
there) is evaluated on the full test split (top-1), by 10-shot linear regression on its frozen features
(section 4.1) and, with `transfer`, by the same 10-shot regression on a second dataset (Figs. 3-4 judge
pre-training by transfer).

Each run is an ordinary `vitkit train` run directory, OUT/<model>/n<size>/seed<k>, finished by a
result.json; OUT/manifest.json holds the study's identity. OUT/study.json is rewritten as each run finishes
("complete": false until the last), so a study cut short still has usable results; started again, it skips
the finished runs and resumes the interrupted one from its last checkpoint. vitkit.study_analysis turns the
runs into gaps to the ViT per size and their trend against log size.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Sequence, get_args

import torch
from torch.utils.data import Subset
from tqdm import tqdm

from .checkpoints.load import load
from .data import DataSource, load_data
from .data.datasets import parse_spec
from .data.subsets import check_size, dataset_labels, split_subset, subset_indices
from .data.transforms import eval_transform
from .evaluate import eval_loader
from .evaluate.fewshot import extract_features, fewshot, representations
from .files import atomic_write
from .flops import step_flops
from .models import get_config, resolve_name
from .precision import Requested
from .study_analysis import METRICS, analyse, summarise
from .study_plots import plot_accuracy_vs_flops, plot_accuracy_vs_size
from .train import NonFiniteLoss, fit, get_recipe, make_config
from .train.recipes import FAMILY_RECIPES, Recipe
from .train.rundir import RunDir
from .train.runlog import read_metrics

FAMILIES = tuple(FAMILY_RECIPES)
_FASHION = {"vit": "vit_fashion_patch4_28", "resnet": "resnetv2_fashion_28", "hybrid": "vit_fashion_hybrid_28",
            "vit_ti": "vit_fashion_tiny_patch4_28", "vit_s": "vit_fashion_small_patch4_28"}  # fmt: skip
# The model of each family that a dataset studies by default (`--models vit,resnet,hybrid`); `vit_ti` and `vit_s`
# name larger ViTs of the same shape, the paper's Fig. 3 model-size axis. The `vit` entry is the reference of
# the gaps (vitkit.study_analysis).
FAMILY_MODELS: dict[str, dict[str, str]] = {
    "fashion_mnist": _FASHION,
    "mnist5k": _FASHION,
    "digits": {"vit": "vit_test_patch4_16", "resnet": "resnetv2_test_16"},
    "cifar10": {"vit": "vit_micro_patch4_32"},
    "cifar100": {"vit": "vit_micro_patch4_32"},
    "imagefolder": {"vit": "vit_small_patch16_224", "resnet": "resnetv2_50x1_bit", "hybrid": "vit_small_r26_s32_224"},
}  # fmt: skip
SHOTS = 10
FEWSHOT_POOL = 50  # images per class whose features the 10-shot support sets are drawn from
FEWSHOT_SEEDS = 3
MANIFEST, RESULT, STUDY = "manifest.json", "result.json", "study.json"
FIGURES = ("accuracy_vs_size.png", "accuracy_vs_flops.png")
RUN_FIELDS = ("model", "family", "size", "seed", "top1", "fewshot_10", "transfer_10", "train_flops", "heldout_top1",
              "steps", "budget_steps", "images_seen", "run_dir", "diverged")  # fmt: skip


def resolve_models(data: str, models: Sequence[str]) -> dict[str, str]:
    """Family names ('vit', 'resnet', 'hybrid'; 'vit_ti', 'vit_s' where the dataset has them) -> the dataset's
    model of that name; registry names as they are. Returns {model name: family}, in the order given."""
    defaults = FAMILY_MODELS.get(parse_spec(data)[0], {})
    resolved: dict[str, str] = {}
    for entry in models:
        if entry in FAMILIES or entry in defaults:
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


def budget(sizes: Sequence[int], images_seen: int | None, epochs_of_largest: float | None) -> int:
    """Every run's images seen: `images_seen`, or `epochs_of_largest` passes over the largest size (the
    paper's framing: every subset trained as long as the full set would be). Exactly one of the two."""
    if (images_seen is None) == (epochs_of_largest is None):
        raise ValueError("give the budget one way: --images-seen N or --epochs-of-largest E, not both" if
                         images_seen is not None else "no budget given: --images-seen N or --epochs-of-largest E")  # fmt: skip
    if epochs_of_largest is None:
        return images_seen  # type: ignore[return-value]
    if not epochs_of_largest > 0 or not sizes:
        raise ValueError(f"epochs_of_largest must be positive and sizes given, got {epochs_of_largest}, {list(sizes)}")
    return math.ceil(epochs_of_largest * max(sizes))


def read_recipes(path: str | Path) -> dict[str, dict[str, Any]]:
    """A recipes file (benchmarks/tune_recipes.py writes one): {"recipes": {family: {"recipe": NAME,
    "overrides": {field: value}}}} -> its "recipes"; a one-line error for a file that is not one."""
    try:
        recipes = json.loads(Path(path).read_text())["recipes"]
        for family, spec in recipes.items():
            get_recipe(spec["recipe"], **spec.get("overrides", {}))
            if family not in FAMILIES:
                raise ValueError(f"unknown family {family!r}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"recipes file {path}: {e} (expected {{\"recipes\": {{family: {{\"recipe\": name, "
                         f"\"overrides\": {{...}}}}}}}})") from None  # fmt: skip
    return recipes


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
    epochs_of_largest: float | None = None  # how images_seen was set, if it was
    patience: int | None = None  # stop a run after this many held-out evaluations without a better one
    transfer: str | None = None  # the dataset of the transfer 10-shot
    family_recipes: dict[str, dict[str, Any]] | None = None  # family -> {"recipe", "overrides"} (read_recipes)

    def _spec(self, model: str) -> dict[str, Any]:
        family = self.models[model]
        return (self.family_recipes or {}).get(family) or {"recipe": FAMILY_RECIPES[family]}

    def recipe_name(self, model: str) -> str:
        return self._spec(model)["recipe"]

    def recipe(self, model: str) -> Recipe:
        """The model's family recipe (or the recipes file's) with the overrides and the study's run length."""
        spec = self._spec(model)
        base = get_recipe(spec["recipe"], **{**spec.get("overrides", {}), **self.recipe_overrides})
        return base.replace(steps=math.ceil(self.images_seen / base.batch_size), epochs=None)

    def identity(self) -> dict[str, Any]:
        recipes = {m: dataclasses.asdict(self.recipe(m)) for m in self.models}
        doc = {**dataclasses.asdict(self), "recipes": recipes, "shots": SHOTS, "fewshot_pool": FEWSHOT_POOL,
               "fewshot_seeds": FEWSHOT_SEEDS}  # fmt: skip
        return json.loads(json.dumps(doc))  # tuples -> lists, as read back

    def runs(self) -> list[tuple[str, int, int]]:
        """(model, size, seed) of every run: seed 0 at every size first, then the further seeds, each seed's
        largest size first, so a study cut short by a time limit leaves whole comparisons, every size, and
        the largest (the dearest, and the one the question turns on) before all."""
        by_size = sorted(zip(self.sizes, self.seeds), reverse=True)
        return [(m, n, s) for s in range(max(self.seeds)) for n, k in by_size if s < k for m in self.models]


def _check(plan: Plan, data: DataSource) -> None:
    """Every bad input a one-line ValueError, before any training."""
    if plan.images_seen <= 0:
        raise ValueError(f"images_seen must be positive, got {plan.images_seen}")
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


def _run(
    plan: Plan, model: str, size: int, seed: int, run_dir: Path, data: DataSource, tasks: tuple[FewShotTask | None, ...],
    execution: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Train (or resume, or skip) one run and evaluate it; its record, also written to run_dir/result.json.
    A run whose loss goes to NaN/inf is recorded as diverged, with no accuracy, and the study goes on."""
    if (run_dir / RESULT).is_file():
        return json.loads((run_dir / RESULT).read_text())
    recipe = plan.recipe(model)
    record = {"model": model, "family": plan.models[model], "size": size, "seed": seed, "steps": recipe.steps,
              "budget_steps": recipe.steps, "images_seen": recipe.steps * recipe.batch_size, "run_dir": str(run_dir),
              "diverged": None}  # fmt: skip
    files = RunDir(run_dir)
    if not files.final.is_file():
        every = max(1, recipe.steps // plan.evaluations)
        cfg = make_config(
            dataclasses.asdict(recipe), data=plan.data, model=model, recipe_name=plan.recipe_name(model),
            out=str(run_dir), resume=files.config.is_file(), seed=seed, subset=size, subset_seed=seed,
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
    text = json.dumps(record, indent=1)
    atomic_write(run_dir / RESULT, lambda tmp: Path(tmp).write_text(text))
    return record


def format_summary(study: dict[str, Any]) -> str:
    """A markdown table of the summary: a row per model and size."""
    def pct(mean: float | None, std: float | None) -> str:
        return "-" if mean is None else f"{mean:.2%} ± {std:.2%}"

    keys = [k for k in METRICS if any(r.get(k) is not None for r in study["summary"])] or ["top1"]
    lines = [f"| model | family | size | seeds | {' | '.join(METRICS[k] for k in keys)} | training FLOPs |",
             "|---" * (len(keys) + 5) + "|"]  # fmt: skip
    for r in study["summary"]:
        cells = " | ".join(pct(r.get(k), r.get(f"{k}_std")) for k in keys)
        lines.append(f"| {r['model']} | {r['family']} | {r['size']:,} | {r['seeds']} | {cells} | {r['train_flops']:.3g} |")
    done = "" if study.get("complete", True) else f" (incomplete: {len(study['runs'])} runs so far)"
    return "\n".join(lines + [f"files{done}: {', '.join(study['files'].values())}"])


def reference_vit(data: str, models: dict[str, str]) -> str | None:
    """The ViT the gaps are measured from: the dataset's `vit` model if studied, else the first ViT."""
    default = FAMILY_MODELS.get(parse_spec(data)[0], {}).get("vit")
    return default if default in models else next((m for m, f in models.items() if f == "vit"), None)


def _results(out: Path, plan: Plan, identity: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    reference = reference_vit(plan.data, plan.models)
    return {"study": identity, "complete": len(records) == len(plan.runs()), "runs": records,
            "summary": summarise(records), "analysis": analyse(records, reference) if reference else None,
            "files": {name: str(out / name) for name in (STUDY, "study.csv", *FIGURES)}}  # fmt: skip


def _write_results(out: Path, study: dict[str, Any], figures: bool = True) -> None:
    """study.json and study.csv (atomic), and with `figures` the two plots."""
    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=RUN_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(study["runs"])

    atomic_write(out / "study.csv", write_csv)
    if figures and study["runs"]:
        plot_accuracy_vs_size(study["summary"], out / FIGURES[0], study["study"].get("transfer"))
        plot_accuracy_vs_flops(study["summary"], out / FIGURES[1])
    text = json.dumps(study, indent=1)
    atomic_write(out / STUDY, lambda tmp: Path(tmp).write_text(text))


def _plan_of(identity: dict[str, Any]) -> Plan:
    return Plan(**{f.name: identity[f.name] for f in dataclasses.fields(Plan) if f.name in identity})


def collect(out: str | Path) -> dict[str, Any]:
    """The results of the runs of the study in OUT that have finished (a study cut short, too), without training:
    rewrites OUT/study.json, study.csv and the plots from the runs' result.json files."""
    out = Path(out)
    if not (out / MANIFEST).is_file():
        raise ValueError(f"{out} holds no study ({MANIFEST} is missing)")
    identity = json.loads((out / MANIFEST).read_text())
    plan = _plan_of(identity)
    records = []
    for model, size, seed in plan.runs():
        result = out / model / f"n{size}" / f"seed{seed}" / RESULT
        if result.is_file():
            records.append(json.loads(result.read_text()))
    study = _results(out, plan, identity, records)
    _write_results(out, study)
    return study


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
) -> dict[str, Any]:
    """Train every model on every size with `seeds` seeds (one number, or one per size); returns (and writes
    to OUT/study.json) {"study": identity, "complete", "runs": [...], "summary": [...], "analysis", "files"}.

    The budget of every run: `images_seen`, or `epochs_of_largest` x the largest size (one of the two;
    steps = budget / batch_size). `holdout`: the fraction of each subset held out for early stopping (0: the
    final weights are evaluated), evaluated `evaluations` times a run; `patience`: stop a run once that many
    evaluations in a row brought no better held-out top-1. `transfer`: a second dataset, scored by 10-shot
    linear regression on every run's frozen features. `recipes`: per family {"recipe": name, "overrides": {}}
    (read_recipes), instead of FAMILY_RECIPES.
    """
    sizes = list(sizes)
    per_size = [seeds] * len(sizes) if isinstance(seeds, int) else list(seeds)
    plan = Plan(data, sizes, resolve_models(data, models), budget(sizes, images_seen, epochs_of_largest), per_size,
                holdout, precision, dict(recipe_overrides or {}), evaluations, epochs_of_largest, patience, transfer,
                recipes or None)  # fmt: skip
    source = load_data(data, data_root).indexable()  # held once, for the subsets, the few-shot pool and every run
    _check(plan, source)
    tasks = (fewshot_task(source), transfer_task(transfer, list(plan.models), data_root) if transfer else None)
    out = Path(out)
    identity = plan.identity()
    _claim(out, identity)
    if (out / STUDY).is_file():
        done = json.loads((out / STUDY).read_text())
        if done.get("complete", True):
            return done
    execution = {"data_root": data_root, "device": device, "workers": workers, "progress": progress}
    records: list[dict[str, Any]] = []
    for model, size, seed in tqdm(plan.runs(), desc="study", unit="run", position=0, disable=not progress):
        run_dir = out / model / f"n{size}" / f"seed{seed}"
        records.append(_run(plan, model, size, seed, run_dir, source, tasks, execution))
        if len(records) < len(plan.runs()):  # results so far, for a study cut short; figures at the end
            _write_results(out, _results(out, plan, identity, records), figures=False)
    study = _results(out, plan, identity, records)
    _write_results(out, study)
    return study
