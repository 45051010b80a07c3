"""Training recipes: the paper's (Tables 3 and 4), DeiT's, CPU-sized ones for Fashion-MNIST, and one
from-scratch recipe per model family for small data (the data-scale study, vitkit.study).

A recipe is data: one `Recipe` row per name. Every field can be overridden (on the command line as
--field-name), and a YAML file of fields can stand in for a name.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from ..models.config import check_fields

Optimizer = Literal["adamw", "sgd", "muon"]
Decay = Literal["cosine", "linear", "constant"]


def option(default: Any, help: str) -> Any:
    """A dataclass field with the help text that its command-line option shows (vitkit.cli)."""
    return field(default=default, metadata={"help": help})


@dataclass
class Recipe:
    """How to train: optimiser, schedule, regularisation and augmentation.

    The schedule is relative to the run's length: `warmup` is a fraction of the steps, and the decay
    reaches zero at the last step, whatever `epochs`/`steps` is.
    """

    optimizer: Optimizer = option(
        "adamw", "adamw (Adam, decoupled weight decay), sgd (momentum) or muon (Muon on the Transformer's weight "
        "matrices, AdamW on the rest)"
    )
    lr: float = option(1e-3, "peak learning rate")
    betas: tuple[float, float] = option((0.9, 0.999), "Adam's beta1 beta2")
    momentum: float = option(0.9, "SGD's (and Muon's) momentum")
    weight_decay: float = option(0.0, "decoupled weight decay, on weight matrices only")
    batch_size: int = option(512, "images per optimiser step, over all processes")
    epochs: float | None = option(None, "run length in passes over the training set")
    steps: int | None = option(None, "run length in optimiser steps (wins over epochs)")
    warmup: float = option(0.05, "linear warm-up, as a fraction of the run")
    decay: Decay = option("cosine", "learning-rate decay after warm-up, to zero")
    clip_grad: float | None = option(1.0, "clip gradients at this global norm ('none': off)")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")
    dropout: float = option(0.0, "dropout after dense layers and the embedding")
    drop_path: float = option(0.0, "stochastic depth rate of the last block")
    patch_drop: float = option(0.0, "fraction of patch tokens dropped from each training image (PatchDropout)")
    patch_drop_until: float = option(1.0, "patch_drop applies up to this fraction of the run, then every patch is kept")
    img_size: int | None = option(None, "training resolution ('none': the model's)")
    crop_scale: tuple[float, float] = option((0.05, 1.0), "inception crop's area range")
    crop_padding: int | None = option(None, "instead of the inception crop: pad by N pixels, crop at random")
    hflip: bool = option(True, "random horizontal flips (where the dataset allows)")
    randaugment: tuple[int, int] | None = option(None, "RandAugment num_ops magnitude ('none': off)")
    mixup: float = option(0.0, "Mixup alpha (0: off)")
    cutmix: float = option(0.0, "CutMix alpha (0: off)")
    random_erasing: float = option(0.0, "random-erasing probability")
    ema_decay: float | None = option(None, "keep an EMA of the weights with this decay ('none': off)")
    reset_head: bool = option(True, "with init_from: a new zero-initialised head")

    def __post_init__(self) -> None:
        for name in ("betas", "crop_scale", "randaugment"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """One-line ValueError for a value out of range."""
        checks = [
            (self.optimizer in get_args(Optimizer), f"optimizer must be one of {get_args(Optimizer)}"),
            (self.decay in get_args(Decay), f"decay must be one of {get_args(Decay)}"),
            (self.lr > 0 and math.isfinite(self.lr), "lr must be a positive number"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas must be two numbers in [0, 1)"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.batch_size > 0, "batch_size must be positive"),
            (self.epochs is None or self.epochs > 0, "epochs must be positive"),
            (self.steps is None or self.steps > 0, "steps must be positive"),
            (0 <= self.warmup < 1, "warmup is a fraction of the run, in [0, 1)"),
            (self.clip_grad is None or self.clip_grad > 0, "clip_grad must be positive or none"),
            *[(0 <= getattr(self, k) < 1, f"{k} must be in [0, 1)")
              for k in ("label_smoothing", "dropout", "drop_path", "patch_drop", "random_erasing")],
            (0 < self.patch_drop_until <= 1, "patch_drop_until is a fraction of the run, in (0, 1]"),
            (self.img_size is None or self.img_size > 0, "img_size must be positive"),
            (self.crop_padding is None or self.crop_padding >= 0, "crop_padding must be >= 0 or none"),
            (len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
             "crop_scale must be two numbers, 0 < min <= max <= 1"),
            (self.randaugment is None or (len(self.randaugment) == 2 and self.randaugment[0] >= 0
                                          and 0 <= self.randaugment[1] <= 30),
             "randaugment is num_ops magnitude (magnitude 0..30)"),
            (self.mixup >= 0 and self.cutmix >= 0, "mixup and cutmix alphas must be >= 0"),
            (self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay must be in (0, 1)"),
        ]  # fmt: skip
        for ok, what in checks:
            if not ok:
                field_name = what.split()[0]
                raise ValueError(f"recipe: {what}, got {getattr(self, field_name, None)!r}")

    def replace(self, **overrides: Any) -> "Recipe":
        return recipe_from_dict({**dataclasses.asdict(self), **overrides})


def recipe_from_dict(d: dict[str, Any]) -> Recipe:
    check_fields(Recipe, d, "recipe fields")
    return Recipe(**d)


RECIPES: dict[str, Recipe] = {
    # Table 3: Adam, linear warm-up (10k of ~300k steps) then linear decay, wd 0.1 (JFT), clip at 1,
    # batch 4096 (reached through gradient accumulation where memory is short), dropout 0.1.
    "paper-pretrain": Recipe(
        optimizer="adamw", lr=8e-4, weight_decay=0.1, batch_size=4096, epochs=7, warmup=0.03, decay="linear",
        clip_grad=1.0, dropout=0.1, crop_scale=(0.05, 1.0),
    ),
    # Table 4: SGD momentum 0.9, no weight decay, clip at 1, cosine after a short warm-up (500 of 10k-20k
    # steps), batch 512, resolution 384, zero-initialised head; inception crop and flip.
    "paper-finetune": Recipe(
        optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=0.0, batch_size=512, steps=10_000, warmup=0.05,
        decay="cosine", clip_grad=1.0, img_size=384, crop_scale=(0.05, 1.0),
    ),
    # Touvron et al. 2021 for ImageNet-1k from scratch: lr 5e-4 * batch / 512, 5 of 300 epochs warm-up.
    "deit": Recipe(
        optimizer="adamw", lr=1e-3, weight_decay=0.05, batch_size=1024, epochs=300, warmup=5 / 300, decay="cosine",
        clip_grad=None, label_smoothing=0.1, drop_path=0.1, crop_scale=(0.08, 1.0), randaugment=(2, 9),
        mixup=0.8, cutmix=1.0, random_erasing=0.25,
    ),
    # `vitkit train --data fashion_mnist` (make run) with vit_fashion_patch7_28, sized to 5 minutes of training
    # on 2 cores of an AVX2-only CPU as well as of an AVX512-BF16 one. A short run wants mild augmentation: on
    # 12.8k images x 2 epochs, crops of 85-100% of the area reached 74% where 50-100% reached 66% (lr 1e-3 vs
    # 2e-3, label smoothing, wd 0.05 vs 0.1: +-0.5%). Muon instead of AdamW, side by side on one thread each:
    # 88.9% vs 86.1% after 5 epochs (11.3 vs 10.3 minutes), 88.5% after 4. 3 epochs since 2026-12-05 (issue
    # 24): 4 took 5.2 min under the AVX2 caps (fp32, 88.1%); 3 took 3.8 min there (87.3%) and 2.9 min with
    # native bf16 (87.3%) on the 2-core AMD EPYC (README, "What each CPU gets").
    "fashion-cpu": Recipe(
        optimizer="muon", lr=2e-3, momentum=0.95, weight_decay=0.05, batch_size=128, epochs=3, warmup=0.05,
        decay="cosine", clip_grad=1.0, label_smoothing=0.1, crop_scale=(0.85, 1.0),
    ),
    # The Fashion-MNIST benchmark: vit_fashion_patch4_28 with bf16 autocast on 2 AVX512-BF16 CPU cores,
    # 70 epochs, sized to 60 minutes at the speed of 2026-11-26's VM: 94% after 58 epochs (about 47-51
    # minutes at that speed; 97.8 on the 2026-12-03 VM at half speed), 94.27% at the end; `--epochs 27`:
    # 93% after 24 epochs (docs/benchmarks.md). Muon on the Transformer's
    # matrices: in equal-time probes it led AdamW by 4 points (90.6% vs 86.6% after 9 epochs, 22 vs 20
    # minutes). Half of each image's patches for the first 80% of the run (1.55x the images/s), then all of
    # them (+0.8% in the first epoch back); every patch for 50 epochs with drop_path 0.05 reached 92.1%.
    # Over 1.5-epoch probes, lr 2e-3 beat 1e-3 (80.5% vs 79.0%) and mean pooling (79.1%), batch 64 at
    # 1.4e-3 did a little better (81.4%), and the 85-100% crops beat shifts of up to 2 pixels (76.7% vs
    # 73.8% after one epoch). docs/benchmarks.md: what else was tried.
    "fashion-cpu-long": Recipe(
        optimizer="muon", lr=2e-3, momentum=0.95, weight_decay=0.05, batch_size=128, epochs=70, warmup=0.05,
        decay="cosine", clip_grad=1.0, label_smoothing=0.1, patch_drop=0.5, patch_drop_until=0.8,
        crop_scale=(0.85, 1.0),
    ),
    # The Fashion-MNIST benchmark on one GPU (benchmarks/fashion_mnist.py --device cuda --recipe fashion-gpu;
    # targets on an H200: 93% in 30 s, 94% in 60 s): vit_fashion_patch4_28 from scratch at batch 1024 with the
    # whole step as one CUDA graph over the device-resident feed (vitkit.train.graphs, device_feed). So AdamW,
    # not Muon (torch.optim.Muon reads its lr on the host, which a graph cannot hold), and no patch dropout
    # (it changes the token count mid-run). lr: small-data-vit's 2e-3 at batch 128, scaled by the square root
    # of the 8x batch (5.7e-3) and taken down to 4e-3 for the short warm-up at this batch; beta2 0.99 so
    # that the second moment follows a run of only ~4.7k steps; warm-up 5% as fashion-cpu-long. Chosen on
    # paper, not yet tuned on a GPU.
    "fashion-gpu": Recipe(
        optimizer="adamw", lr=4e-3, betas=(0.9, 0.99), weight_decay=0.05, batch_size=1024, epochs=80, warmup=0.05,
        decay="cosine", clip_grad=1.0, label_smoothing=0.1, crop_scale=(0.85, 1.0),
    ),
    # From scratch on small data, one recipe per family (vitkit.study; docs/study.md). All three share the
    # batch, schedule shape, loss and augmentation (85-100% crops and flips, as fashion-cpu); a study sets
    # the run length. ViT: fashion-cpu-long's optimiser without its patch dropout (a speed trick that
    # changes a run's FLOPs), plus DeiT's stochastic depth 0.1, the regulariser ViTs on small data lean on.
    "small-data-vit": Recipe(
        optimizer="adamw", lr=2e-3, weight_decay=0.05, batch_size=128, epochs=10, warmup=0.05, decay="cosine",
        clip_grad=1.0, label_smoothing=0.1, drop_path=0.1, crop_scale=(0.85, 1.0),
    ),
    # The hybrid is the ViT's Transformer on a ResNet stem; the paper trains hybrids with the ViT's recipe.
    # benchmarks/tune_recipes.py's grid picked SGD at 0.03 (held-out 81.3%; AdamW 2e-3, the ViT's: 81.0%).
    "small-data-hybrid": Recipe(
        optimizer="sgd", lr=0.03, momentum=0.9, weight_decay=1e-4, batch_size=128, epochs=10, warmup=0.05,
        decay="cosine", clip_grad=None, label_smoothing=0.1, drop_path=0.1, crop_scale=(0.85, 1.0),
    ),
    # BiT ResNets from scratch. The grid (benchmarks/tune_recipes.py, the same six points for every family)
    # picked AdamW at 4e-3 with decoupled weight decay 0.05 and clipping at 1 (held-out 90.7%), over the
    # classic SGD 0.1 / wd 1e-4 of He et al. and BiT (89.3%); the paper, too, trained its ResNets with Adam
    # (appendix D.1).
    "small-data-resnet": Recipe(
        optimizer="adamw", lr=4e-3, weight_decay=0.05, batch_size=128, epochs=10, warmup=0.05, decay="cosine",
        clip_grad=1.0, label_smoothing=0.1, crop_scale=(0.85, 1.0),
    ),
}

# The small-data recipes at a GPU batch of 1024 (8x the CPU ones), for the data-scale study at tens of epochs
# (issue 26): AdamW's lr scaled by sqrt(8) (the square-root rule for adaptive optimisers, Malladi et al. 2022),
# SGD's by 8 (the linear rule, Goyal et al. 2017), and twice the warm-up (Goyal et al.'s gradual warm-up for
# large batches); the rest as the CPU recipe. Starting points of benchmarks/tune_recipes.py's grid on the GPU,
# whose winners the study reads from a recipes file (vitkit.study.read_recipes).
GPU_BATCH = 1024
RECIPES.update({
    f"{name}-gpu": RECIPES[name].replace(
        batch_size=GPU_BATCH, warmup=0.1,
        lr=RECIPES[name].lr * (GPU_BATCH / RECIPES[name].batch_size) ** (0.5 if RECIPES[name].optimizer == "adamw" else 1),
    )
    for name in ("small-data-vit", "small-data-hybrid", "small-data-resnet")
})  # fmt: skip

# The from-scratch small-data recipe of each model family.
FAMILY_RECIPES: dict[str, str] = {"vit": "small-data-vit", "hybrid": "small-data-hybrid", "resnet": "small-data-resnet"}


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """A named recipe, or the fields of a YAML file, with `overrides` applied."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"recipe file {path} does not exist")
        fields = yaml.safe_load(path.read_text()) or {}
        if not isinstance(fields, dict):
            raise ValueError(f"recipe file {path}: expected a mapping of recipe fields")
        try:
            return recipe_from_dict({**fields, **overrides})
        except (TypeError, ValueError) as e:
            raise ValueError(f"recipe file {path}: {e}") from None
    if name not in RECIPES:
        close = difflib.get_close_matches(name, list(RECIPES), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown recipe {name!r}; {hint}expected one of {', '.join(RECIPES)} or a .yaml file")
    return RECIPES[name].replace(**overrides)
