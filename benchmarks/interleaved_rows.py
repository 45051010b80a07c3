"""One row of `vitkit bench`, vitkit and timm alternately, each in a fresh process, several rounds.

`vitkit bench --compare timm` measures vitkit's process first and timm's second. When a ratio
surprises, this tells an effect of the order (the CPU's clocks, a neighbour on a shared VM) from one
of the code: the rounds go timm, vitkit, vitkit, timm, timm, vitkit, ... so that each library runs
first as often as second.

    .venv/bin/python benchmarks/interleaved_rows.py --model vit_small_patch16_224 --precision bf16 [--rounds 4]

Writes benchmarks/results/interleaved_<model>_<precision>_<mode>.json and prints each measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from vitkit.bench import RowSpec, _measure, bench_model

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--mode", default="infer", choices=["infer", "train"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    images_per_s: dict[str, list[float]] = {"vitkit": [], "timm": []}
    with tempfile.TemporaryDirectory(prefix="vitkit-interleaved-") as tmp:
        weights = str(Path(tmp) / "weights.safetensors")
        save_file(bench_model(args.model).state_dict(), weights)
        spec = RowSpec(args.model, None, "vitkit", args.batch_size, args.precision, args.mode, False, "torch", "cpu",
                       warmup=3, repeats=10, threads=torch.get_num_threads(), seed=0, weights_path=weights)  # fmt: skip
        for r in range(args.rounds):
            order = ["timm", "vitkit"] if r % 2 == 0 else ["vitkit", "timm"]
            for library in order:
                ms = _measure(replace(spec, library=library), isolate=True)["latency_ms"]
                images_per_s[library].append(args.batch_size / ms * 1e3)
                print(f"round {r}: {library:<6} {images_per_s[library][-1]:.1f} img/s", flush=True)
    medians = {lib: statistics.median(v) for lib, v in images_per_s.items()}
    result = {**vars(args), "images_per_s": images_per_s, "median_images_per_s": medians,
              "ratio_of_medians": medians["vitkit"] / medians["timm"]}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"interleaved_{args.model}_{args.precision}_{args.mode}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"vitkit / timm, medians of {args.rounds}: {result['ratio_of_medians']:.2f}x -> {out}")


if __name__ == "__main__":
    main()
