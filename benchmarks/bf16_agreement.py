"""bf16 inference against fp32 on real images: top-1 agreement and accuracy of both.

A trained Fashion-MNIST ViT (the checkpoint of benchmarks/fashion_mnist.py) on the 10,000 test images,
run once with fp32 weights and once with bf16 weights (vitkit's `--precision bf16` inference path,
explicit attention included). Writes benchmarks/results/bf16_agreement.json.

    .venv/bin/python benchmarks/bf16_agreement.py [--checkpoint runs/bench-fashion-mnist/model.safetensors]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import vitkit
from vitkit.data import load_data
from vitkit.evaluate import eval_loader
from vitkit.precision import top1_agreement

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/bench-fashion-mnist/model.safetensors")
    parser.add_argument("--data", default="fashion_mnist")
    args = parser.parse_args()

    model = vitkit.load(args.checkpoint).eval()
    data = load_data(args.data)
    loader = eval_loader(data.test, model.config, data.channels, batch_size=500)
    images, labels = zip(*loader)
    result = top1_agreement(model, images, torch.bfloat16, labels)
    result.update(checkpoint=args.checkpoint, data=f"{args.data} test", bf16_top1=result.pop("low_top1"))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bf16_agreement.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
