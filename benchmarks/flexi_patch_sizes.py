"""FlexiViT without training: a trained checkpoint's test top-1 at other patch sizes (Beyer et al. 2023).

The patch-embedding kernel is resampled by the pseudo-inverse of the resize (vitkit.load(path, patch_size=p));
nothing is trained after loading. Two settings per patch size: the trained image size (the grid, and with it
E_pos, follows the new patch), and the image resized by the patch's factor (FlexiViT's setting: the grid
and E_pos stay). Train the model first,
e.g. the Fashion-MNIST benchmark's vit_fashion_patch4_28:

    vitkit train --data fashion_mnist --model vit_fashion_patch4_28 --recipe fashion-cpu --out runs/fm4
    PYTHONPATH=src python benchmarks/flexi_patch_sizes.py --checkpoint runs/fm4/model.safetensors

Writes benchmarks/results/flexi_patch_sizes.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import Subset

import vitkit
from vitkit.data import load_data
from vitkit.evaluate.classify import eval_loader, evaluate

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a vitkit .safetensors file")
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--patch-sizes", type=int, nargs="+", default=[2, 4, 7])
    p.add_argument("--limit", type=int, help="evaluate on the first N test images only")
    p.add_argument("--out", default=str(RESULTS / "flexi_patch_sizes.json"))
    args = p.parse_args()
    data = load_data(args.data)
    test = data.split("test")
    test = Subset(test, range(min(args.limit, len(test)))) if args.limit else test
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trained = vitkit.load(args.checkpoint).config.patch_size
    rows = []
    img_size = vitkit.load(args.checkpoint).config.img_size[0]
    for size in args.patch_sizes:
        for image in dict.fromkeys([img_size, img_size * size // trained]):
            if image % size:
                continue
            model = vitkit.load(args.checkpoint, patch_size=size, img_size=image).to(device).eval()
            loader = eval_loader(test, model.config.data_config, data.channels, batch_size=256)
            result = evaluate(model, loader, len(data.classes), device, "fp32")
            rows.append({"patch_size": size, "img_size": image, "grid": list(model.config.grid_size),
                         "top1": result.top1})
    report = {"checkpoint": args.checkpoint, "data": data.name, "trained_patch_size": trained,
              "n_test": len(test), "rows": rows}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    base = next((r["top1"] for r in rows if r["patch_size"] == trained), None)
    print(f"| patch size | image | grid | top-1 | share of patch {trained}'s |\n|---|---|---|---|---|")
    for r in rows:
        share = f"{r['top1'] / base:.0%}" if base else "-"
        print(f"| {r['patch_size']} | {r['img_size']} | {r['grid'][0]}x{r['grid'][1]} | {r['top1']:.2%} | {share} |")


if __name__ == "__main__":
    main()
