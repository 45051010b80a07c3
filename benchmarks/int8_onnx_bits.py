"""The int8 ONNX export with 7-bit weights (the default) and 8-bit ones (--int8-full-range), against fp32.

For a Fashion-MNIST checkpoint: both files are exported (calibrated on 256 training images, as `vitkit
export --int8` does), then ONNX Runtime runs each on the 10,000 test images, here ("native") and in a
process under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ("avx2 caps"). Reports per file and kind:
the smallest and mean logit cosine with PyTorch fp32, top-1 agreement with fp32, top-1 accuracy, and
whether the two kinds' logits are identical (ONNX Runtime picks its int8 kernels from the CPU's own
feature flags, so the caps, which steer PyTorch and oneDNN, may not reach it).

Writes benchmarks/results/int8_onnx_bits.json and prints a table.

    python benchmarks/int8_onnx_bits.py --checkpoint runs/quickstart/model.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _onnx_logits(path: str, images: str, out: str) -> None:
    """ONNX Runtime's logits of the file at `path` for the images in the .npy `images`, saved to `out`."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.load(images)
    np.save(out, np.concatenate([session.run(None, {"images": b})[0] for b in np.array_split(x, max(1, len(x) // 500))]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--result", default=str(RESULTS / "int8_onnx_bits.json"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _onnx_logits(*args.child)
        return

    from vitkit import load
    from vitkit.data import load_data
    from vitkit.evaluate import eval_loader
    from vitkit.export import export_onnx_int8, int8_onnx_images
    from vitkit.hardware import AVX2_ENV, cpu
    from vitkit.quantize import logit_fidelity

    model = load(args.checkpoint).eval()
    source = load_data(args.data)
    batches = list(eval_loader(source.test, model.config.data_config, source.channels, 500))
    images, labels = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    with torch.inference_mode():
        fp32 = torch.cat([model(x) for x in images.split(500)])
    result = {"command": " ".join(["python", "benchmarks/int8_onnx_bits.py", *sys.argv[1:]]), "cpu": cpu().summary(),
              "checkpoint": args.checkpoint, "n": len(labels),
              "fp32_top1": (fp32.argmax(-1) == labels).float().mean().item(), "files": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vitkit-int8-bits-") as tmp:
        np.save(Path(tmp) / "images.npy", images.numpy())
        calibration, check = int8_onnx_images(args.data, model.config)
        for bits, full_range in ((7, False), (8, True)):
            path = str(Path(tmp) / f"int8-{bits}.onnx")
            export_onnx_int8(model, path, calibration, check, full_range=full_range, min_cosine=0.0)
            kinds = {}
            for kind, env in (("native", {}), ("avx2 caps", AVX2_ENV)):
                out = str(Path(tmp) / f"logits-{bits}-{kind[:4]}.npy")
                command = [sys.executable, __file__, "--checkpoint", args.checkpoint, "--child", path,
                           str(Path(tmp) / "images.npy"), out]  # fmt: skip
                subprocess.run(command, env={**os.environ, **env}, check=True)
                logits = torch.from_numpy(np.load(out))
                cosines = torch.nn.functional.cosine_similarity(logits, fp32, dim=-1)
                kinds[kind] = {**logit_fidelity(fp32, logits), "mean_logit_cosine_vs_fp32": cosines.mean().item(),
                               "top1": (logits.argmax(-1) == labels).float().mean().item(), "logits": logits}  # fmt: skip
            same = torch.equal(kinds["native"]["logits"], kinds["avx2 caps"]["logits"])
            for k in kinds.values():
                del k["logits"]
            result["files"][f"{bits}-bit weights"] = {"kinds": kinds, "identical_under_caps": same}
    path = Path(args.result)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(result, indent=1) + "\n")
    path.with_suffix(".tmp").replace(path)
    print(f"{result['cpu']}; fp32 top-1 {result['fp32_top1']:.2%} on {result['n']} test images")
    for name, f in result["files"].items():
        for kind, k in f["kinds"].items():
            print(f"{name:<15} {kind:<10} cosine min {k['logit_cosine_vs_fp32']:.4f} mean {k['mean_logit_cosine_vs_fp32']:.5f}"
                  f"  top-1 agreement {k['top1_agreement_vs_fp32']:.2%}  top-1 {k['top1']:.2%}")
        print(f"{name:<15} logits identical under the caps: {f['identical_under_caps']}")


if __name__ == "__main__":
    main()
