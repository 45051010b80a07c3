"""`vitkit bench`'s result as the text table it prints: a row per library, the ratio and its spread."""

from __future__ import annotations

from typing import Any


def format_table(result: dict[str, Any]) -> str:
    """The result as a text table: one row for vitkit and, when compared, one for timm."""
    header = (
        f"{'library':<8} {'runtime':<11} {'img/s':>9} {'latency ms (min-max)':>24} {'peak MB':>9} "
        f"{'GFLOP/s':>9} {'of peak':>8}"
    )
    rows = [("vitkit", result["runtime"], "")] + ([("timm", "torch", "timm_")] if "timm_images_per_s" in result else [])
    lines = [
        f"{result['model']}  batch {result['batch_size']}  {result['img_size'][0]}x{result['img_size'][1]}  "
        f"{result['precision']} {result['mode']}{' compiled' if result['compile'] else ''}"
        f"{' CUDA graph' if result.get('cuda_graphs') else ''}  on {result['device']} "
        f"({result['threads']} threads)  {result['gflops_per_image']:.2f} GFLOP/image  "
        f"matmul peak {result['matmul_peak_gflops_per_s']:.0f} GFLOP/s",
        header,
    ]
    for name, runtime, p in rows:
        median, low, high = (result[p + k] for k in ("latency_ms", "latency_ms_min", "latency_ms_max"))
        spread = f"{median:.1f} ({low:.1f}-{high:.1f})"
        lines.append(
            f"{name:<8} {runtime:<11} {result[p + 'images_per_s']:>9.1f} {spread:>24} "
            f"{result[p + 'peak_memory_mb']:>9.0f} {result[p + 'gflops_per_s']:>9.1f} "
            f"{result[p + 'fraction_of_peak']:>8.1%}"
        )
    if "logit_cosine_vs_fp32" in result:
        lines.append(
            f"int8 vs fp32 on photographs: logit cosine >= {result['logit_cosine_vs_fp32']:.4f}, "
            f"top-1 agreement {result['top1_agreement_vs_fp32']:.0%}"
        )
    if "ratio" in result:
        what = "vitkit / timm" if "max_abs_diff" in result else "vitkit int8 / timm bf16 eager"
        lines.append(
            f"{what}: {result['ratio']:.2f}x, the median of {result['rounds']} alternating rounds' ratios "
            f"(quartiles {result['ratio_q1']:.2f}-{result['ratio_q3']:.2f}, range {result['ratio_min']:.2f}-"
            f"{result['ratio_max']:.2f})"
        )
    if "max_abs_diff" in result:
        lines.append(f"outputs agree: max |diff| {result['max_abs_diff']:.1e}")
    return "\n".join(lines)
