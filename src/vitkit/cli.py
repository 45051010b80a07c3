"""The `vitkit` command. Thin: it parses arguments, then calls the functions a Python user calls.

Machine-readable output (--json) goes to stdout; everything else to stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


def _convert(args: argparse.Namespace) -> int:
    from .checkpoints.load import convert_file

    report = convert_file(args.src, args.dst, model_name=args.model, pos_method=args.pos_method)
    print(report, file=sys.stderr)
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="any supported checkpoint -> vitkit safetensors (config embedded)")
    p.add_argument("src", help="a file (.npz, .pth, .bin, .safetensors) or a Hugging Face model directory")
    p.add_argument("dst", help="output .safetensors path")
    p.add_argument("--model", help="registered model name, needed when SRC carries no config (timm, torchvision, .npz)")
    p.add_argument("--pos-method", choices=["bicubic", "bilinear", "official"], help="position-embedding resampling")
    p.set_defaults(func=_convert)


# Each subcommand registers itself here: a function that adds its parser and sets `func`.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_convert]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: one line, no traceback
        print(f"vitkit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
