#!/usr/bin/env bash
# The GPU checks and figures of the README in one go, about 6 minutes on one H200:
#   bash benchmarks/gpu_suite.sh OUT_DIR        (PYTHON=... to choose the interpreter)
# 1. tests/test_cuda.py: timm parity, flash / memory-efficient attention forward and backward, the
#    benchmark's CUDA rows, a CUDA training run that follows the CPU run step for step;
# 2. the standard table (ViT-S/16, B/16; fp32/bf16; inference/training; against timm) at batch 16 and 128;
# 3. Fashion-MNIST, 10 epochs of the fashion-cpu-long recipe's model on the GPU;
# 4. torch.compile: ViT-B/16 bf16 inference at batch 128, both libraries compiled.
# Each step's output lands in OUT_DIR as it runs.
set -u
out=${1:?usage: gpu_suite.sh OUT_DIR}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)"
} 2>&1 | tee "$out/machine.txt"
timeout 150 $py -m pytest tests/test_cuda.py -q -p no:cacheprovider -rs 2>&1 | tee "$out/test_cuda.log"
for bs in 16 128; do
  timeout 180 $py benchmarks/bench_table.py --device cuda --in-process --warmup 10 --repeats 50 --batch-size "$bs" \
    --result "$out/bench_cuda_b$bs.json" 2>&1 | tee "$out/bench_cuda_b$bs.log"
done
timeout 150 $py benchmarks/fashion_mnist.py --device cuda --epochs 10 --out "${TMPDIR:-/tmp}/vitkit-fashion-cuda" \
  --result "$out/fashion_mnist_cuda_10ep.json" 2>&1 | tail -n 4 | tee "$out/fashion_mnist_cuda.log"
timeout 200 $py -m vitkit bench --model vit_base_patch16_224 --device cuda --precision bf16 --batch-size 128 \
  --compile --compare timm --in-process --warmup 10 --repeats 50 --json >"$out/compile_b16_bf16_b128.json" \
  2>"$out/compile_b16_bf16_b128.log"
tail -n 6 "$out/compile_b16_bf16_b128.log"
