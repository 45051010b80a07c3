"""The parsers of `vitkit bench`, `vitkit export` and `vitkit shard`, whose modules import torch at their top:
here, the parsers are built without it (vitkit.cli), and each command imports its module when it runs."""

from __future__ import annotations

import argparse

from .options import positive_int

# vitkit.data.shard_format.EXTENSIONS's keys (that module imports webdataset, and so torch); a test checks them.
SHARD_FORMATS = ("png", "jpeg", "webp")


def _bench(args: argparse.Namespace) -> int:
    from .bench import run

    return run(args)


def _export(args: argparse.Namespace) -> int:
    from .export import run

    return run(args)


def _shard(args: argparse.Namespace) -> int:
    from .data.shards import run

    return run(args)


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput, latency, memory and FLOP utilisation, optionally against timm")
    p.add_argument("--model", required=True, help="registered model name or paper alias (ViTs and ResNets)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per step")
    p.add_argument("--img-size", type=positive_int, help="input resolution (default: the model's)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16", "int8"], default="auto",
                   help="auto: bf16 where the hardware runs it natively, else fp32; int8: CPU inference, compiled, "
                        "against timm's bf16 eager")  # fmt: skip
    p.add_argument("--calibrate", metavar="DATASET", help="int8 calibration images (default: photographs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (both rows)")
    p.add_argument("--cuda-graphs", action="store_true", help="capture the step as one CUDA graph (both rows)")
    p.add_argument("--mode", choices=["infer", "train"], default="infer",
                   help="time a forward pass, or a training step (forward, backward, optimiser)")  # fmt: skip
    p.add_argument("--compare", choices=["timm"],
                   help="also measure timm's same architecture and weights, in this process, round by round")
    p.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch",
                   help="what runs the forward pass (onnxruntime: the model exported to ONNX)")  # fmt: skip
    p.add_argument("--device", choices=["cpu", "cuda"], help="where to run (default: cuda when present)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first, for each row")
    p.add_argument("--rounds", "--repeats", dest="repeats", type=positive_int, default=10,
                   help="timed rounds; with --compare, one step of each row per round, alternating which goes "
                        "first (medians and spread reported)")  # fmt: skip
    p.add_argument("--threads", type=positive_int, help="intra-op threads (default: one per core)")
    p.add_argument("--in-process", action="store_true",
                   help="no fresh processes: peak memory measured here too (with --compare, timm's after vitkit's)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    p.set_defaults(func=_bench)


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX, checked against PyTorch on real photographs")
    p.add_argument("--checkpoint", required=True, help="a checkpoint that carries its config (vitkit, Hugging Face)")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="the file format written")
    p.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    p.add_argument("--opset", type=positive_int, default=17, help="the ONNX operator set version")
    p.add_argument("--int8", action="store_true", help="static int8 (QDQ) quantisation, 7-bit weights; needs --calibrate")
    p.add_argument("--int8-full-range", action="store_true",
                   help="--int8 with 8-bit weights: a little closer to fp32 on CPUs with VNNI/AMX, further on others")
    p.add_argument("--calibrate", metavar="DATASET", help="--int8 calibration images: this dataset's training split")
    p.add_argument("--img-size", type=positive_int,
                   help="export at another resolution, position embeddings resampled (default: the model's)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    p.set_defaults(func=_export)


def add_shard_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shard", help="write WebDataset tar shards and an index.json of any dataset vitkit reads")
    p.add_argument("src", metavar="SRC", help="dataset: fashion_mnist, imagefolder:PATH, cifar10:PATH, ...")
    p.add_argument("out", metavar="OUT", help="directory for the shards and index.json")
    p.add_argument("--split", choices=["train", "test", "all"], default="all", help="which splits of SRC to write")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--per-shard", type=positive_int, help="samples per shard (default: by --shard-mb)")
    size.add_argument("--shard-mb", type=float, help="about this many MiB per shard (default 256)")
    p.add_argument("--format", choices=SHARD_FORMATS, default="png", help="image encoding; png is lossless")
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality")
    p.add_argument("--limit", type=positive_int, help="only the first N samples of each split (default: all)")
    p.add_argument("--data-root", help="where datasets are unpacked/downloaded")
    p.set_defaults(func=_shard)
