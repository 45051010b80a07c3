"""Round 6: does the forward pass need the GIL? A batch of the Fashion ViT, fp32, 1 torch thread, alone and
beside a thread running pure Python (as `vitkit serve`'s event loop does under load), at `vitkit serve`'s
switch interval (0.1 ms), in three runtimes: eager PyTorch, a frozen TorchScript trace and ONNX Runtime
(both of which run the whole forward without taking the GIL back between ops). Checks that the three agree.

    .venv/bin/python benchmarks/experiments/round6_gil_free_runtimes.py [--batch 32] [--seconds 3]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
import vitkit
from gil_convoy import rate
from vitkit import hardware
from vitkit.serve.batcher import SWITCH_INTERVAL_S

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--batch", type=int, default=32)
parser.add_argument("--seconds", type=float, default=3.0)
parser.add_argument("--passes", type=int, default=2)
args = parser.parse_args()
torch.set_num_threads(1)
sys.setswitchinterval(SWITCH_INTERVAL_S)
model = vitkit.create_model("vit_fashion_patch4_28").eval()
torch.nn.init.normal_(model.head.weight, std=0.02)  # the head starts at zero: logits would all agree
x = torch.randn(args.batch, 1, 28, 28)
with torch.inference_mode():
    reference = model(x)
    traced = torch.jit.freeze(torch.jit.trace(model, x))
onnx = io.BytesIO()
torch.onnx.export(model, (x,), onnx, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
options = ort.SessionOptions()
options.intra_op_num_threads = options.inter_op_num_threads = 1
session = ort.InferenceSession(onnx.getvalue(), options, providers=["CPUExecutionProvider"])
inputs = {"x": x.numpy()}


@torch.inference_mode()
def eager() -> torch.Tensor:
    return model(x)


@torch.inference_mode()
def torchscript() -> torch.Tensor:
    return traced(x)


def onnxruntime() -> torch.Tensor:
    return torch.from_numpy(session.run(None, inputs)[0])


print(f"vit_fashion_patch4_28, batch {args.batch}, fp32, 1 torch thread, switch interval "
      f"{SWITCH_INTERVAL_S * 1e3:.1f} ms; {hardware.cpu().summary()}")
for name, fn in (("TorchScript", torchscript), ("ONNX Runtime", onnxruntime)):
    print(f"{name}: largest logit difference from eager {(fn() - reference).abs().max().item():.1e}")
for _ in range(args.passes):
    for name, fn in (("eager", eager), ("TorchScript", torchscript), ("ONNX Runtime", onnxruntime)):
        alone = rate(fn, args.seconds, False)[0]
        beside = rate(fn, args.seconds, True)[0]
        print(f"{name}: {1e3 / alone:.1f} ms alone, {1e3 / beside:.1f} ms beside a busy thread "
              f"({alone / beside:.2f}x)", flush=True)
