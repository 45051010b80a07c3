"""The `vitkit` command: parsers for every subcommand, each of which calls the functions a Python user calls.

The parsers are built without importing torch (about 3 s on two cores): `vitkit --help`, a subcommand's
--help and a usage error return at once, and a command imports what it needs when it runs.
Machine-readable output (--json) goes to stdout; everything else to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
import warnings
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

from .options import nonnegative_int, positive_int

if TYPE_CHECKING:
    from .inference import InferenceModel

DESCRIPTION = """\
vitkit trains, evaluates, explains and serves Vision Transformers (ViT, Dosovitskiy et al.,
ICLR 2021) and the paper's ResNet and hybrid baselines, on a CPU or a GPU: from a folder of
images (imagefolder:DIR, one sub-folder per class), a named dataset (fashion_mnist, ...) or
published weights (timm, Hugging Face, Google)."""
EPILOG = """\
start here:
  vitkit train --data imagefolder:photos --out runs/photos
  vitkit predict --checkpoint runs/photos/model.safetensors photo.jpg
  vitkit serve --checkpoint runs/photos/model.safetensors
'vitkit COMMAND --help' lists a command's options."""
CHECKPOINT_HELP = "a .safetensors file written by `vitkit train` or `vitkit convert` (or any format with a config)"
PRECISION_HELP = "auto: bf16 where the hardware runs it natively, else fp32"


def _convert(args: argparse.Namespace) -> int:
    from .checkpoints.load import convert_file

    report = convert_file(args.src, args.dst, model_name=args.model, pos_method=args.pos_method)
    print(report, file=sys.stderr)
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    from .models.config import RESAMPLE_METHODS

    p = sub.add_parser("convert", help="any supported checkpoint -> vitkit safetensors (config embedded)")
    p.add_argument("src", help="a file (.npz, .pth, .bin, .safetensors) or a Hugging Face model directory")
    p.add_argument("dst", help="output .safetensors path")
    p.add_argument("--model", help="registered model name, needed when SRC carries no config (timm, torchvision, .npz)")
    p.add_argument("--pos-method", choices=RESAMPLE_METHODS,
                   help="position-embedding resampling (default: the convention of SRC's format)")  # fmt: skip
    p.set_defaults(func=_convert)


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_or_none(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)

    parse_or_none.__name__ = parse.__name__  # argparse names the type in its error messages
    return parse_or_none


def _add_fields(
    p: argparse._ActionsContainer, cls: type, flags: dict[str, str], skip: tuple[str, ...] = (),
    show_defaults: bool = False,
) -> list[str]:  # fmt: skip
    """An option for each field of dataclass `cls` (--field-name, typed from its annotation, help from its
    metadata, with the field's default if `show_defaults`: not for a recipe's fields, whose defaults are the
    recipe's), absent from the namespace unless given; returns the field names."""
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint, optional = hints[f.name], False
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            hint, optional = next(a for a in typing.get_args(hint) if a is not type(None)), True
        help_text = f.metadata.get("help", "")
        if show_defaults and f.default not in (None, dataclasses.MISSING) and "default" not in help_text:
            shown = ("on" if f.default else "off") if isinstance(f.default, bool) else f.default
            help_text += f" (default: {' '.join(map(str, shown)) if isinstance(shown, tuple) else shown})"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name, "help": help_text}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is Literal:
            kwargs["choices"] = typing.get_args(hint)
        elif typing.get_origin(hint) is tuple:
            element = typing.get_args(hint)[0]
            kwargs.update(nargs="+" if optional else len(typing.get_args(hint)), metavar=element.__name__.upper(),
                          type=_optional(element) if optional else element)  # fmt: skip
        else:
            kwargs["type"] = _optional(hint) if optional else hint
        p.add_argument(flags.get(f.name, "--" + f.name.replace("_", "-")), **kwargs)
        names.append(f.name)
    return names


def _given(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The options given on the command line; a tuple option given as 'none' is None."""
    given = {n: getattr(args, n) for n in names if hasattr(args, n)}
    return {n: None if isinstance(v, list) and None in v else v for n, v in given.items()}


def _train(args: argparse.Namespace) -> int:
    from .data import load_data
    from .train import CheckpointWriteError, Interrupted, NonFiniteLoss, fit, make_config
    from .train.config import fit_to_data

    recipe_given = _given(args, args.recipe_fields)
    cfg = make_config(recipe_given, **_given(args, args.run_fields))
    data = load_data(cfg.data, cfg.data_root)
    cfg, notes = fit_to_data(cfg, data, batch_size_given="batch_size" in recipe_given)
    for note in notes:
        print(note, file=sys.stderr)
    try:
        result = fit(cfg, data)
    except Interrupted as e:
        print(f"vitkit train: {e}", file=sys.stderr)
        return 128 + e.signum  # the shell's convention for a process ended by a signal
    except (NonFiniteLoss, CheckpointWriteError) as e:
        print(f"vitkit train: error: {e}", file=sys.stderr)
        return 1
    print(result.summary(), file=sys.stderr)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .train.config import TrainConfig
    from .train.recipes import Recipe

    p = sub.add_parser("train", help="train or fine-tune a model; a run directory with checkpoints, metrics, plots",
                       description="Train a model on a dataset, from scratch or from --init-from weights. With only\n"
                                   "--data, the dataset's default model and recipe are used.")  # fmt: skip
    run = p.add_argument_group("run")
    run_fields = _add_fields(run, TrainConfig, {"recipe_name": "--recipe"}, skip=("recipe",), show_defaults=True)
    recipe = p.add_argument_group("recipe fields", "Each recipe (--recipe) sets these; an option given here "
                                                   "overrides the recipe's value.")  # fmt: skip
    recipe_fields = _add_fields(recipe, Recipe, {})
    p.set_defaults(func=_train, run_fields=run_fields, recipe_fields=recipe_fields)


def _load(args: argparse.Namespace, **calibration: Any) -> InferenceModel:
    """`--checkpoint` loaded for inference (`vitkit.inference`) with --device, --precision and --calibrate;
    a precision warning, if any, goes to stderr."""
    from .inference import load_for_inference

    loaded = load_for_inference(args.checkpoint, args.device, args.precision, args.calibrate, **calibration)
    if loaded.choice.warning:
        print(f"vitkit: warning: {loaded.choice.warning}", file=sys.stderr)
    return loaded


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data import load_data
    from .data.streaming import first
    from .evaluate import eval_loader, evaluate, plot_confusion

    loaded = _load(args, calibrate_default=args.data, data_root=args.data_root)  # int8: --data's training split
    model, choice = loaded.model, loaded.choice
    data = load_data(args.data, args.data_root)
    dataset = first(data.split(args.split), args.limit)
    if model.config.num_classes != len(data.classes):
        raise ValueError(f"the checkpoint has {model.config.num_classes} classes, {data.name} has {len(data.classes)}")
    loader = eval_loader(dataset, model.config.data_config, data.channels, args.batch_size, args.workers)
    ev = evaluate(loaded.classifier, loader, len(data.classes), loaded.device, loaded.precision)
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    png = plot_confusion(ev.confusion, data.classes, out / f"confusion-{args.split}.png")
    report = {**ev.to_dict(data.classes), "checkpoint": args.checkpoint, "data": data.name, "split": args.split,
              "confusion_png": str(png), "precision": choice.to_dict()}  # fmt: skip
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{data.name} {args.split}: {ev.accuracy_text()} on {ev.n} images (loss {ev.loss:.4f}, {choice.precision})")
    for name, acc in report["per_class"].items():
        print(f"  {name:>24}: {acc:.2%}")
    print(f"confusion matrix: {png}")
    return 0


def _add_inference_options(p: argparse.ArgumentParser, precisions: Sequence[str], calibrate: str) -> None:
    p.add_argument("--precision", choices=precisions, default="auto", help=f"{PRECISION_HELP}; int8: on the CPU")
    p.add_argument("--calibrate", metavar="DATASET", help=f"int8 calibration images: {calibrate}")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="top-1/top-5 and per-class accuracy of a checkpoint; a confusion-matrix PNG")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--data", required=True, help="dataset: fashion_mnist, imagefolder:PATH, wds:DIR_OR_URL, hf:NAME, ...")
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split of --data to evaluate")
    p.add_argument("--json", action="store_true", help="print one JSON object (top1, top5, n, per_class, ...)")
    p.add_argument("--out", help="where to write confusion-<split>.png (default: the checkpoint's folder)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    p.add_argument("--limit", type=positive_int, help="only the first N images (default: all)")
    _add_inference_options(p, ["auto", "fp32", "bf16", "fp16", "int8"], "this dataset's training split "
                                                                      "(default: --data's)")  # fmt: skip
    p.add_argument("--workers", type=nonnegative_int, default=0, help="data-loading processes (0: in this one)")
    p.add_argument("--data-root", help="where datasets are unpacked/downloaded (default: $VITKIT_DATA, else "
                                       "~/.cache/vitkit/data)")  # fmt: skip
    p.set_defaults(func=_eval)


def _predict(args: argparse.Namespace) -> int:
    from .checkpoints.metadata import checkpoint_classes
    from .evaluate import predict_files
    from .precision import autocast

    loaded = _load(args)  # int8: no default calibration data, --calibrate is required
    with autocast(loaded.device, loaded.precision):
        predictions = predict_files(loaded.classifier, args.images, checkpoint_classes(args.checkpoint), args.topk)
    for p in predictions:
        if p.error is not None:
            print(f"vitkit predict: error: {p.image}: {p.error}", file=sys.stderr)
    if args.json:  # the shape of a batch answered by POST /v1/predict, each result naming its image
        print(json.dumps({"results": [p.to_dict() for p in predictions], "model": loaded.model.config.name}))
    else:
        for p in predictions:
            if p.error is None:
                print(f"{p.image}: " + ", ".join(f"{t['label']} {t['prob']:.1%}" for t in p.topk))
    return 1 if any(p.error is not None for p in predictions) else 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="the most probable classes of image files")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, ...; any size)")
    p.add_argument("--topk", type=positive_int, default=5, help="classes shown per image, most probable first")
    p.add_argument("--json", action="store_true", help='print one JSON object, as POST /v1/predict answers a batch: '
                                                       '{"results": [{"image", "topk": [{"label", "index", "prob"}]}], '
                                                       '"model"}')  # fmt: skip
    _add_inference_options(p, ["auto", "fp32", "bf16", "int8"], "this dataset's training split (needed for int8)")
    p.set_defaults(func=_predict)


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def _study(args: argparse.Namespace) -> int:
    from .study import data_scale, format_summary, read_recipes, report
    from .train import Interrupted

    if args.study == "report":
        study = report(args.ledger, args.out)
        print(json.dumps(study) if args.json else format_summary(study))
        return 0
    seeds = args.seeds[0] if len(args.seeds) == 1 else args.seeds
    try:
        study = data_scale(
            args.data, args.sizes, args.models.split(","), args.images_seen, seeds, args.out, args.holdout,
            args.precision, _given(args, args.recipe_fields), args.data_root, args.device, args.workers, args.progress,
            args.evaluations, args.epochs_of_largest, args.patience, args.transfer,
            read_recipes(args.recipes) if args.recipes else None, args.epochs_per_size, args.max_images_seen,
            args.ledger, args.compile,
        )  # fmt: skip
    except Interrupted as e:
        print(f"vitkit study: {e}; run the same command again to continue the study", file=sys.stderr)
        return 128 + e.signum
    print(json.dumps(study) if args.json else format_summary(study))
    return 0


def _add_study(sub: argparse._SubParsersAction) -> None:
    from .train import Recipe

    p = sub.add_parser("study", help="studies made of many training runs")
    kinds = p.add_subparsers(dest="study", required=True)
    d = kinds.add_parser("data-scale", help="ViT, ResNet and hybrid trained on nested subsets of a dataset "
                                            "(the paper's Figs. 3-5); study.json, study.csv, plots")  # fmt: skip
    d.add_argument("--data", required=True, help="dataset: fashion_mnist, mnist5k, digits, imagefolder:PATH, ...")
    d.add_argument("--sizes", required=True, type=_int_list, help="training-set sizes, e.g. 1000,3000,10000")
    d.add_argument("--models", default="vit,resnet,hybrid", help="families (vit, resnet, hybrid: the dataset's "
                                                                 "default model of each) or registered names")  # fmt: skip
    d.add_argument("--images-seen", type=int, help="training budget of every run, in images")
    d.add_argument("--epochs-of-largest", type=float, help="instead of --images-seen: a budget of E passes over the "
                                                           "largest size, for every run")  # fmt: skip
    d.add_argument("--epochs-per-size", type=float, help="instead of --images-seen: a run at size N sees E passes over "
                                                         "its training part (N less the held-out images)")  # fmt: skip
    d.add_argument("--max-images-seen", type=int, help="with --epochs-per-size: no run sees more than M images")
    d.add_argument("--ledger", help="a JSON-lines file each finished run is appended to; the runs it holds are not "
                                    "trained again, even in an empty --out (keep it in git to continue anywhere)")  # fmt: skip
    d.add_argument("--patience", type=int, help="stop a run after N held-out evaluations without a better one")
    d.add_argument("--transfer", help="also score every run by 10-shot linear regression on this dataset's frozen "
                                      "features (e.g. mnist5k), resized to the model's input")  # fmt: skip
    d.add_argument("--recipes", help="a JSON file of per-family recipes (benchmarks/tune_recipes.py --recipes-out)")
    d.add_argument("--seeds", type=_int_list, default=[1], help="seeds per size: one number, or one per size")
    d.add_argument("--out", required=True, help="the study's directory (a run directory per model, size and seed)")
    d.add_argument("--holdout", type=float, default=0.1, help="fraction of each subset held out for early stopping")
    d.add_argument("--evaluations", type=int, default=10, help="held-out evaluations (and checkpoints) per run")
    d.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto: bf16 where the hardware runs it natively, else fp32")
    d.add_argument("--json", action="store_true", help='print one JSON object: {"runs": [...], "summary": [...], ...}')
    d.add_argument("--data-root", help="where datasets are unpacked/downloaded")
    d.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    d.add_argument("--workers", type=int, help="data-loading processes per run")
    d.add_argument("--compile", action="store_true", help="torch.compile each run's training step (how it runs, "
                                                          "not what: a ledger continues with or without it)")  # fmt: skip
    d.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars")
    recipe = d.add_argument_group("recipe fields (override every family's recipe)")
    # the study sets the run length; FLOPs are counted with every patch; nothing is fine-tuned
    recipe_fields = _add_fields(recipe, Recipe, {}, skip=("epochs", "steps", "patch_drop", "patch_drop_until",
                                                          "reset_head"))  # fmt: skip
    d.set_defaults(func=_study, recipe_fields=recipe_fields)
    r = kinds.add_parser("report", help="study.json, study.csv, the plots and the gap analysis, rebuilt from a "
                                        "ledger alone (vitkit study data-scale --ledger)")  # fmt: skip
    r.add_argument("--ledger", required=True, help="the study's JSON-lines ledger")
    r.add_argument("--out", required=True, help="where to write study.json, study.csv and the plots")
    r.add_argument("--json", action="store_true", help="print study.json's object instead of the table")
    r.set_defaults(func=_study)


# Each subcommand registers itself here: a function that adds its parser and sets `func`.
def _add_others(sub: argparse._SubParsersAction) -> None:
    """fewshot, analyze, export, bench, serve and shard: their parsers live beside their code."""
    from .analysis.cli import add_analyze_parser, add_fewshot_parser
    from .commands import add_bench_parser, add_export_parser, add_shard_parser
    from .serve.cli import add_parser as add_serve_parser

    for add in (add_fewshot_parser, add_analyze_parser, add_export_parser, add_bench_parser, add_serve_parser,
                add_shard_parser):
        add(sub)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_train, _add_eval, _add_predict, _add_others, _add_convert, _add_study,
]  # fmt: skip


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help, where it has one to show (not None or off) and the help does
    not already say it; descriptions and examples as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or unset or not action.option_strings:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (what to fix, and where to read more) instead of the usage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)  # subcommands' parsers are of this class too
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vitkit", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def check_checkpoint(path: str) -> None:
    """A run directory given as a checkpoint: a one-line error naming the file in it that was meant."""
    from .train.rundir import RunDir

    run = RunDir(path)
    if run.config.is_file():
        meant = next((f for f in (run.final, run.best) if f.is_file()), run.final)
        raise ValueError(f"{path} is a run directory, not a checkpoint file: did you mean {meant}?")


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    print(f"vitkit: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """The `vitkit` command with `argv` (default: sys.argv); returns its exit code (2: bad input)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return int(e.code or 0)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning  # a user reads one line, not the library's file and line
            if getattr(args, "checkpoint", None):
                check_checkpoint(args.checkpoint)
            return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: one line, no traceback
        print(f"vitkit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
