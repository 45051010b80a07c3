"""`vitkit analyze` and `vitkit fewshot`: parse, load the checkpoint and the data, call the Python API.

Each `add_*_parser(sub)` adds its subcommand to the `vitkit` command's subparsers and sets `func`. The
parsers are built without torch (vitkit.cli): a command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ..options import nonnegative_int, positive_int

if TYPE_CHECKING:
    import torch
    from torch import nn

    from torch.utils.data import Dataset

RIDGE = 2.0**10  # big_vision's ridge penalty: vitkit.evaluate.fewshot.DEFAULT_L2 (a test checks), without torch


def _shots(text: str) -> list[int]:
    shots = [int(k) for k in text.split(",") if k.strip()]
    if not shots or min(shots) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return shots


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="vitkit .safetensors (or any format that carries a config)")
    p.add_argument("--data", required=True, help="dataset: fashion_mnist, mnist5k, digits, imagefolder:PATH, wds:DIR_OR_URL, hf:NAME, ...")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    p.add_argument("--workers", type=nonnegative_int, default=0, help="data-loading processes (0: in this one)")
    p.add_argument("--data-root", help="where datasets are unpacked/downloaded")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")


def _analyze(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import Subset

    from ..data import load_data
    from ..evaluate.classify import eval_loader
    from ..inference import load_for_inference
    from .report import analyze

    model = load_for_inference(args.checkpoint, args.device, "fp32").model  # the analyses read fp32 weights
    data = load_data(args.data, args.data_root)
    split = data.split(args.split)
    subset = Subset(split, range(min(args.images, len(split))))
    loader = eval_loader(subset, model.config.data_config, data.channels, args.batch_size, args.workers)
    batches = list(loader)
    images, labels = torch.cat([x for x, _ in batches]), torch.cat([torch.as_tensor(y) for _, y in batches])
    report = analyze(model, images, args.out, rollout_images=args.rollout_images, labels=labels, classes=data.classes)
    if args.json:
        print(json.dumps(report))
        return 0
    if "attention_distance" not in report:
        print(f"{report['family']} model: the filters only (no attention, no position embeddings); "
              f"filters.png and analysis.json in {args.out}")
        return 0
    pos, dist = report["pos_embed_similarity"], report["attention_distance"]
    print(f"position embeddings: neighbours {pos['neighbour']:.3f} vs far {pos['far']:.3f}; "
          f"same row/column {pos['same_row_or_column']:.3f} vs other {pos['other']:.3f}")  # fmt: skip
    print("mean attention distance per layer (pixels): " + " ".join(f"{d:.1f}" for d in dist["per_layer_mean"]))
    print(f"figures and analysis.json in {args.out}")
    return 0


def add_analyze_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="the paper's analyses: filters, pos-embed similarity, attention distance, "
                                       "rollout; PNGs and analysis.json")
    _common(p)
    p.add_argument("--out", required=True, help="directory for the PNG figures and analysis.json")
    p.add_argument("--images", type=positive_int, default=128, help="images averaged over for the attention distance")
    p.add_argument("--rollout-images", type=positive_int, default=8, help="images shown in the rollout figures")
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split of --data the images come from")
    p.add_argument("--json", action="store_true", help="print analysis.json's content on stdout")
    p.set_defaults(func=_analyze)


def _features(
    model: nn.Module, dataset: Dataset, channels: int, args: argparse.Namespace
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features (N, F) and labels (N,) of a dataset's images."""
    from ..evaluate.classify import eval_loader
    from ..evaluate.fewshot import extract_features

    loader = eval_loader(dataset, model.config.data_config, channels, args.batch_size, args.workers)
    return extract_features(model, loader)


def _fewshot(args: argparse.Namespace) -> int:
    from torch.utils.data import IterableDataset, Subset

    from ..data import load_data
    from ..data.subsets import dataset_labels
    from ..evaluate.fewshot import fewshot, linear_probe, support_pool
    from ..inference import load_for_inference

    model = load_for_inference(args.checkpoint, args.device, "fp32").model  # frozen features, in fp32
    data = load_data(args.data, args.data_root)
    K, train = len(data.classes), data.split("train")
    pool = None
    if args.probe is None and not isinstance(train, IterableDataset):  # features of the drawn supports only
        train_y = dataset_labels(train)
        pool = support_pool(train_y, args.shots, args.seeds, K)
        train_x, _ = _features(model, Subset(train, pool.tolist()), data.channels, args)
    else:  # the probe fits all of them; a streamed split has no indices to draw by
        train_x, train_y = _features(model, train, data.channels, args)
    test_x, test_y = _features(model, data.split("test"), data.channels, args)
    result = fewshot(train_x, train_y, test_x, test_y, args.shots, args.seeds, args.ridge, K, pool)
    report: dict[str, Any] = {
        "checkpoint": args.checkpoint, "data": data.name, "feature_dim": train_x.shape[1],
        "n_train": len(train_y), "n_test": len(test_y), **result.to_dict(),
    }  # fmt: skip
    if args.probe == "logistic":
        top1 = linear_probe(train_x, train_y, test_x, test_y, args.probe_l2, K)
        report["linear_probe"] = {"l2": args.probe_l2, "top1": top1}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{data.name}: {report['feature_dim']}-d frozen features, ridge λ={args.ridge:g}, {args.seeds} seeds, "
          f"{len(test_y)} test images")  # fmt: skip
    for k, m, s in zip(result.shots, result.mean, result.std):
        print(f"  {k:>4}-shot: {m:.2%} ± {s:.2%}")
    if "linear_probe" in report:
        print(f"  linear probe (logistic, all {len(train_y)} training images): {report['linear_probe']['top1']:.2%}")
    return 0


def add_fewshot_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fewshot", help="few-shot linear regression accuracy of frozen features (paper section 4.1)")
    _common(p)
    p.add_argument("--shots", type=_shots, default=[1, 5, 10, 25], help="examples per class, e.g. 1,5,10,25")
    p.add_argument("--seeds", type=positive_int, default=3, help="support sets drawn per shot count")
    p.add_argument("--ridge", type=float, default=RIDGE, help="ridge penalty λ (big_vision's 2^10)")
    p.add_argument("--probe", choices=["logistic"], help="also fit a linear probe on all training features "
                                                          "(default: none)")  # fmt: skip
    p.add_argument("--probe-l2", type=float, default=1e-4, help="the probe's L2 penalty on the mean loss")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=_fewshot)
