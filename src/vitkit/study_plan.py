"""What a data-scale study (vitkit.study) trains: its models, sizes and seeds, the budget of every run, and each
model's recipe. Pure: no data is read and nothing is trained here.

The budget of a run is given one of three ways:
- `images_seen`: every run sees the same number of images (the committed CPU study's 102,400);
- `epochs_of_largest`: every run as long as E passes over the largest size (the paper's framing);
- `epochs_per_size`: a run at size N sees E passes over its training part (N less the held-out images),
  capped at `max_images_seen`. A small subset converges early, so the budget grows with the data; with
  patience, early stopping ends a run once its held-out score stops improving.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Sequence

from .data.datasets import parse_spec
from .models import get_config, resolve_name
from .precision import Requested
from .train import get_recipe
from .train.recipes import FAMILY_RECIPES, Recipe

FAMILIES = tuple(FAMILY_RECIPES)
_FASHION = {"vit": "vit_fashion_patch4_28", "vit_p7": "vit_fashion_patch7_28", "resnet": "resnetv2_fashion_28",
            "hybrid": "vit_fashion_hybrid_28", "vit_ti": "vit_fashion_tiny_patch4_28",
            "vit_s": "vit_fashion_small_patch4_28"}  # fmt: skip
# The model of each family that a dataset studies by default (`--models vit,resnet,hybrid`). `vit_p7` is the same
# ViT with 7-pixel patches (16 tokens instead of 49, a third of the FLOPs): the patch-size axis, as the paper's
# Figs. 3 and 5 set B/32 beside B/16. `vit_ti` and `vit_s` are larger ViTs of the same shape, the paper's Fig. 3
# model-size axis. The `vit` entry is the reference of the gaps (vitkit.study_analysis).
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
BUDGET_FLAGS = "--images-seen N, --epochs-of-largest E or --epochs-per-size E"


def resolve_models(data: str, models: Sequence[str]) -> dict[str, str]:
    """Family names ('vit', 'resnet', 'hybrid'; 'vit_p7', 'vit_ti', 'vit_s' where the dataset has them) -> the
    dataset's model of that name; registry names as they are. Returns {model name: family}, in the order given."""
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


def budget(
    sizes: Sequence[int], images_seen: int | None, epochs_of_largest: float | None,
    epochs_per_size: float | None = None, max_images_seen: int | None = None,
) -> int | None:  # fmt: skip
    """The images seen of every run when the budget is one number for all (`images_seen`, or `epochs_of_largest`
    passes over the largest size); None when it grows with the size (`epochs_per_size`, see Plan.images).
    Exactly one of the three; `max_images_seen` caps `epochs_per_size` only. One-line ValueError otherwise."""
    given = [v is not None for v in (images_seen, epochs_of_largest, epochs_per_size)]
    if sum(given) != 1:
        raise ValueError(f"give the budget one way: {BUDGET_FLAGS}, not {sum(given)}" if any(given) else
                         f"no budget given: {BUDGET_FLAGS}")  # fmt: skip
    if max_images_seen is not None and epochs_per_size is None:
        raise ValueError("--max-images-seen caps --epochs-per-size: give that too, or leave the cap out")
    for name, value in (("epochs_of_largest", epochs_of_largest), ("epochs_per_size", epochs_per_size)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if epochs_of_largest is not None:
        if not sizes:
            raise ValueError("epochs_of_largest needs the sizes")
        return math.ceil(epochs_of_largest * max(sizes))
    return images_seen


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
    images_seen: int | None  # every run's budget; None when it grows with the size (epochs_per_size)
    seeds: list[int]  # per size
    holdout: float
    precision: Requested  # auto: each run's choice is in its config.yaml
    recipe_overrides: dict[str, Any]
    evaluations: int  # held-out evaluations (and checkpoints) per run
    epochs_of_largest: float | None = None  # how images_seen was set, if it was
    patience: int | None = None  # stop a run after this many held-out evaluations without a better one
    transfer: str | None = None  # the dataset of the transfer 10-shot
    family_recipes: dict[str, dict[str, Any]] | None = None  # family -> {"recipe", "overrides"} (read_recipes)
    epochs_per_size: float | None = None  # a run's budget: E passes over its training part ...
    max_images_seen: int | None = None  # ... capped at this many images

    def _spec(self, model: str) -> dict[str, Any]:
        family = self.models[model]
        return (self.family_recipes or {}).get(family) or {"recipe": FAMILY_RECIPES[family]}

    def recipe_name(self, model: str) -> str:
        return self._spec(model)["recipe"]

    def base_recipe(self, model: str) -> Recipe:
        """The model's family recipe (or the recipes file's) with the study's overrides, before its length."""
        spec = self._spec(model)
        return get_recipe(spec["recipe"], **{**spec.get("overrides", {}), **self.recipe_overrides})

    def images(self, train_images: int | None = None) -> int:
        """The images seen by a run on `train_images` training images (its subset less the held-out part)."""
        if self.epochs_per_size is None:
            return self.images_seen  # type: ignore[return-value]
        if train_images is None:
            raise ValueError("a budget of epochs per size needs the run's number of training images")
        wanted = math.ceil(self.epochs_per_size * train_images)
        return wanted if self.max_images_seen is None else min(wanted, self.max_images_seen)

    def recipe(self, model: str, train_images: int | None = None) -> Recipe:
        """The model's recipe for a run on `train_images` training images: the base, run for its budget."""
        base = self.base_recipe(model)
        return base.replace(steps=math.ceil(self.images(train_images) / base.batch_size), epochs=None)

    def budget_rule(self) -> dict[str, Any]:
        """How the study sets a run's length, as recorded with every run (vitkit.study_ledger)."""
        fields = ("images_seen", "epochs_of_largest", "epochs_per_size", "max_images_seen")
        return {name: getattr(self, name) for name in fields}

    def identity(self) -> dict[str, Any]:
        per_size = self.epochs_per_size is not None  # the recipes' steps are each run's (study.json's runs)
        recipes = {m: dataclasses.asdict(self.base_recipe(m) if per_size else self.recipe(m)) for m in self.models}
        doc = {**dataclasses.asdict(self), "recipes": recipes, "shots": SHOTS, "fewshot_pool": FEWSHOT_POOL,
               "fewshot_seeds": FEWSHOT_SEEDS}  # fmt: skip
        return json.loads(json.dumps(doc))  # tuples -> lists, as read back

    def runs(self) -> list[tuple[str, int, int]]:
        """(model, size, seed) of every run: seed 0 at every size first, then the further seeds, each seed's
        largest size first, so a study cut short by a time limit leaves whole comparisons, every size, and
        the largest (the dearest, and the one the question turns on) before all."""
        by_size = sorted(zip(self.sizes, self.seeds), reverse=True)
        return [(m, n, s) for s in range(max(self.seeds)) for n, k in by_size if s < k for m in self.models]


def plan_of(identity: dict[str, Any]) -> Plan:
    """The Plan that a manifest (Plan.identity()) records."""
    return Plan(**{f.name: identity[f.name] for f in dataclasses.fields(Plan) if f.name in identity})
