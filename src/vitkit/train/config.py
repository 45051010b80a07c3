"""A training run's configuration: what to train on what (model, data, recipe) and how to run it."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_type_hints

import yaml

from ..files import atomic_write
from ..models.config import ResampleMethod, check_fields
from ..precision_kinds import Requested
from .recipes import Recipe, get_recipe, option, recipe_from_dict
from .rundir import RunDir

if TYPE_CHECKING:  # torch comes with these: the CLI's parser reads this module without them
    from ..data import DataSource
    from . import distributed


DATASETS_HELP = ("the dataset (required): imagefolder:PATH (PATH/CLASS_NAME/*.jpg), fashion_mnist, mnist5k, digits, "
                 "cifar10:PATH, cifar100:PATH, wds:DIR_OR_URL or hf:NAME")


@dataclass
class TrainConfig:
    """Everything a run needs; written, fully resolved, to the run directory as config.yaml."""

    data: str = field(metadata={"help": DATASETS_HELP})
    model: str | None = option(None, "registered model name (default: the dataset's)")
    recipe_name: str | None = option(None, "a recipe's name or a .yaml file of recipe fields (default: the dataset's)")
    recipe: Recipe | None = None
    patch_size: int | None = option(None, "patch size (default: the model's)")
    in_chans: int | None = option(None, "model input channels (default: the model's)")
    init_from: str | None = option(None, "start from these weights, any supported format (default: none, from scratch)")
    pos_method: ResampleMethod | None = option(None, "position-embedding resampling for init_from (default: the "
                                                              "convention of its format)")
    out: str | None = option(None, "run directory (default: runs/<data>-<model>-<time>)")
    resume: bool = option(False, "continue the run in --out from its last checkpoint")
    precision: Requested = option("auto", "auto (bf16 where the hardware runs it natively, else fp32), fp32, or "
                                          "bf16/fp16 autocast")
    compile: bool = option(False, "torch.compile the model")
    fsdp: bool = option(False, "under torchrun: shard weights, gradients and optimiser state over the processes "
                               "(FSDP) instead of copying them to each (DDP)")
    seed: int = option(0, "seed of initialisation, data order and augmentation")
    micro_batch: int | None = option(None, "images per forward pass and process, accumulated up to "
                                                   "batch_size (default: the whole batch)")
    workers: int | None = option(None, "data-loading processes per training process (default: "
                                               "chosen from the cores and the data)")
    checkpoint_every: int = option(500, "write a resumable checkpoint every N steps (and at the end)")
    keep_checkpoints: int = option(2, "resumable checkpoints kept in OUT/checkpoints (the newest)")
    skip_nonfinite: int = option(0, "skip up to N steps whose loss is NaN/inf (0: stop at the first)")
    log_every: int = option(10, "record training loss every N steps")
    limit_train: int | None = option(None, "use only the first N training images (default: all)")
    subset: int | None = option(None, "train on a class-balanced subset of N training images, nested across N "
                                      "(vitkit.data.subsets; default: all)")
    subset_seed: int = option(0, "seed of the subset's (and the held-out part's) draw")
    holdout: float = option(0.0, "hold out this class-balanced fraction of the training images: evaluate on it "
                                 "during training and keep the best as best.safetensors (the test split is left alone)")
    eval_every: int | None = option(None, "evaluate every N steps (default: every epoch)")
    patience: int | None = option(None, "with --holdout: stop once N evaluations in a row have not improved on "
                                        "the best held-out top-1 (early stopping; default: run to the end)")
    limit_eval: int | None = option(None, "evaluate on only the first N test images (default: all)")
    data_root: str | None = option(None, "where datasets are unpacked/downloaded (default: $VITKIT_DATA, "
                                                "else ~/.cache/vitkit/data)")
    device: str | None = option(None, "cpu, cuda, cuda:1 (default: cuda when available)")
    feed: Literal["auto", "device", "loader"] = option(
        "auto", "training images from a loader, or held on the device and augmented there in batches "
        "(vitkit.train.device_feed; auto: the device feed on CUDA when the data is in memory and fits)")
    cuda_graphs: Literal["auto", "on", "off"] = option(
        "auto", "capture the training step as one CUDA graph (vitkit.train.graphs; auto: on CUDA when the run "
        "allows it)")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        positive = ("patch_size", "in_chans", "micro_batch", "checkpoint_every", "keep_checkpoints", "log_every",
                    "limit_train", "limit_eval", "subset", "eval_every", "patience")  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        for name in ("workers", "skip_nonfinite"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout is a fraction of the training images, in [0, 1), got {self.holdout}")
        for name in ("feed", "cuda_graphs"):
            choices = get_args(get_type_hints(TrainConfig)[name])
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.patience is not None and not self.holdout:
            raise ValueError("patience stops on the held-out score: give --holdout too")
        if self.precision not in get_args(Requested):
            raise ValueError(f"precision must be one of {', '.join(get_args(Requested))}, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        check_fields(cls, d, "training config fields")
        recipe = d.get("recipe")
        return cls(**{**d, "recipe": recipe_from_dict(recipe) if isinstance(recipe, dict) else recipe})


# Fields that only change how a run executes, not what it computes: they may differ on --resume.
EXECUTION_FIELDS = ("resume", "workers", "progress", "device", "data_root", "log_every", "checkpoint_every",
                    "keep_checkpoints", "skip_nonfinite", "compile", "cuda_graphs")


def read_run_config(out: str | Path) -> TrainConfig:
    """The `train` section of a run directory's config.yaml."""
    path = RunDir(out).config
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist")
    return TrainConfig.from_dict(yaml.safe_load(path.read_text())["train"])


def check_resumable(saved: TrainConfig, current: TrainConfig) -> None:
    """A resumed run must compute what the interrupted one would have: one-line error naming a difference."""
    a, b = saved.to_dict(), current.to_dict()
    for key in a:
        if key in EXECUTION_FIELDS:
            continue
        if key == "recipe":
            for k in (k for k in a[key] if a[key][k] != b[key][k]):
                now, then = b[key][k], a[key][k]
                raise ValueError(f"--resume: recipe field {k} is {now!r}, the run in {current.out} used {then!r}")
        elif a[key] != b[key]:
            raise ValueError(f"--resume: {key} is {b[key]!r}, the run in {current.out} used {a[key]!r}")


def with_defaults(cfg: TrainConfig, **recipe_overrides: Any) -> TrainConfig:
    """`cfg` with the dataset's default model and recipe where none is given, and `recipe_overrides`
    applied to the recipe."""
    from ..data import dataset_defaults

    default_recipe, default_model = dataset_defaults(cfg.data)
    if "epochs" in recipe_overrides and "steps" not in recipe_overrides:
        recipe_overrides = {**recipe_overrides, "steps": None}  # a recipe's own steps would win over these epochs
    if cfg.recipe is None:
        name = cfg.recipe_name or default_recipe
        recipe, recipe_name = get_recipe(name, **recipe_overrides), name
    else:
        recipe, recipe_name = cfg.recipe.replace(**recipe_overrides), cfg.recipe_name or "custom"
    return dataclasses.replace(cfg, model=cfg.model or default_model, recipe=recipe, recipe_name=recipe_name)


def fit_to_data(cfg: TrainConfig, data: DataSource, batch_size_given: bool) -> tuple[TrainConfig, list[str]]:
    """The defaults that depend on the data, with the lines that tell the user: how the dataset's test split
    was made (where the user did not choose it), and, unless --batch-size was given, a batch that fits the
    training images (a quarter of them, a power of two) where the recipe's is larger than all of them."""
    notes = [data.note] if data.note else []
    if batch_size_given or cfg.resume or cfg.subset or cfg.holdout:  # a subset is repeated to fill a batch
        return cfg, notes
    try:
        images = len(data.split("train"))
    except TypeError:  # a stream of unknown length
        return cfg, notes
    images = min(images, cfg.limit_train or images)
    if images >= cfg.recipe.batch_size:
        return cfg, notes
    batch = 1 << max(0, (images // 4).bit_length() - 1)
    notes.append(f"batch_size {batch}: the recipe's {cfg.recipe.batch_size} is more than the {images} training "
                 f"images; --batch-size N to choose")  # fmt: skip
    return dataclasses.replace(cfg, recipe=cfg.recipe.replace(batch_size=batch)), notes


def make_config(recipe_overrides: dict[str, Any] | None = None, **fields: Any) -> TrainConfig:
    """The config of a run from the fields given (TrainConfig's and the recipe's); the rest comes from
    the dataset's defaults, or, with resume=True, from the run directory's config.yaml."""
    if fields.get("resume"):
        if not fields.get("out"):
            raise ValueError("--resume needs --out DIR, the run directory to continue")
        saved = read_run_config(fields["out"])
        resumed = TrainConfig.from_dict({**saved.to_dict(), **fields, "recipe": saved.recipe})
        cfg = with_defaults(resumed, **(recipe_overrides or {}))
        check_resumable(saved, cfg)
        return cfg
    if not fields.get("data"):
        raise ValueError("no dataset given: --data NAME (one of fashion_mnist, mnist5k, digits, imagefolder:PATH, ...)")
    return with_defaults(TrainConfig(**fields), **(recipe_overrides or {}))


def resolve(cfg: TrainConfig, procs: distributed.Processes) -> TrainConfig:
    """Fill in the defaults that depend on the dataset and the run directory (the same on every process)."""
    from ..models import get_config

    if cfg.recipe is None or cfg.model is None:
        cfg = with_defaults(cfg)
    get_config(cfg.model)  # an unknown name fails here, before any work
    if cfg.out is None:
        if cfg.resume:
            raise ValueError("--resume needs --out DIR, the run directory to continue")
        stamp = procs.broadcast(time.strftime("%Y%m%d-%H%M%S"))
        cfg = dataclasses.replace(cfg, out=f"runs/{cfg.data.split(':')[0]}-{cfg.model}-{stamp}")
    return cfg


def write_run_config(cfg: TrainConfig, model: Any, data: DataSource, extra: dict[str, Any]) -> None:
    """config.yaml: the run, the recipe, the model's config and what was derived, all resolved."""
    doc = {
        "train": cfg.to_dict(),
        "model": model.config.to_dict(),
        "data": {"name": data.name, "classes": data.classes, "channels": data.channels},
        **extra,
    }
    plain = json.loads(json.dumps(doc))  # tuples -> lists, for safe_dump
    text = yaml.safe_dump(plain, sort_keys=False)
    atomic_write(RunDir(cfg.out).config, lambda tmp: Path(tmp).write_text(text))
