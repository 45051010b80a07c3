"""`vitkit bench`: FLOPs counted from the config equal torch's FlopCounterMode; the benchmark produces
every field, and its timm comparison agrees numerically. Tiny models only; no timed assertions."""

from __future__ import annotations

import argparse
import functools
import json
import statistics

import pytest
import timm
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import vitkit
from vitkit import bench
from vitkit.commands import add_bench_parser
from vitkit.flops import forward_flops, step_flops
from vitkit.measure import time_rounds
from vitkit.peers import timm_twin

TINY = "vit_test_patch4_16"  # 16×16 images, patch 4, depth 2, width 32
ROW_FIELDS = ["images_per_s", "latency_ms", "latency_ms_min", "latency_ms_max", "peak_memory_mb", "gflops_per_s",
              "fraction_of_peak"]  # fmt: skip
QUICK = dict(batch_size=2, warmup=1, repeats=3, threads=1)  # one thread: the CI machine may be shared


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def counted_flops(model: torch.nn.Module, x: torch.Tensor, train: bool = False) -> int:
    """FlopCounterMode's total (2·MACs); the math attention kernel, whose matmuls it sees, unlike the fused ones."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(x)
        if train:
            out.sum().backward()
    return counter.get_total_flops()


# ---- FLOPs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [{}, dict(pool="gap", class_token=False), dict(representation_size=24, img_size=(16, 24)), dict(num_classes=0)],
)
def test_analytic_forward_flops_equal_flop_counter(overrides):
    model = vitkit.create_model(TINY, **overrides).eval()
    x = torch.randn(3, 3, *model.config.img_size)
    assert 3 * forward_flops(model.config) == counted_flops(model, x)


def test_analytic_training_flops_equal_flop_counter_forward_and_backward():
    model = vitkit.create_model(TINY).train()
    x = torch.randn(3, 3, 16, 16)
    assert 3 * step_flops(model.config, "train") == counted_flops(model, x, train=True)


def test_vit_b16_forward_is_the_commonly_quoted_17_6_gflops():
    # timm and the DeiT paper quote 17.6 GFLOPs (MACs, as fvcore counts) for ViT-B/16 at 224
    assert forward_flops(vitkit.get_config("vit_base_patch16_224")) / 2e9 == pytest.approx(17.56, abs=0.01)


def test_hybrids_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="hybrid"):
        forward_flops(vitkit.get_config("vit_tiny_r_s16_p8_224"))


# ---- the benchmark -------------------------------------------------------------------------------------
def test_timm_twin_computes_the_same_function():
    model = bench.bench_model(TINY).eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(timm_twin(model)(x), model(x), atol=1e-5, rtol=0)
    assert model(x).std() > 0.1  # the head is random, so agreeing logits mean something


@pytest.mark.parametrize("precision,mode", [("fp32", "infer"), ("bf16", "infer"), ("fp32", "train"), ("bf16", "train")])
def test_bench_against_timm_produces_every_field_and_agreeing_outputs(precision, mode):
    result = bench.benchmark(TINY, precision=precision, mode=mode, compare="timm", isolate=False, **QUICK)
    for field in ROW_FIELDS:
        assert result[field] > 0 or field == "peak_memory_mb", field
        assert f"timm_{field}" in result
    assert len(result["round_ratios"]) == result["rounds"] == QUICK["repeats"]
    assert result["ratio"] == statistics.median(result["round_ratios"])
    assert result["ratio_min"] <= result["ratio_q1"] <= result["ratio"] <= result["ratio_q3"] <= result["ratio_max"]
    assert result["gflops_per_image"] == step_flops(vitkit.get_config(TINY), mode) / 1e9
    assert result["max_abs_diff"] <= (1e-4 if precision == "fp32" else 0.1)
    assert result["precision"] == precision and result["mode"] == mode


def test_a_row_measured_in_its_own_process_reports_the_memory_it_used():
    result = bench.benchmark(TINY, mode="train", isolate=True, **QUICK)
    assert result["peak_memory_mb"] > 0 and result["images_per_s"] > 0


def test_compared_rows_take_their_memory_from_processes_of_their_own():
    result = bench.benchmark(TINY, mode="train", compare="timm", isolate=True, **QUICK)
    assert result["peak_memory_mb"] > 0 and result["timm_peak_memory_mb"] > 0


# ---- the comparison: one process, alternating rounds, the median of the rounds' ratios ------------------
class FakeClock:
    """A clock that moves only when a fake step says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rounds_alternate_which_row_goes_first():
    clock, calls = FakeClock(), []

    def step(name: str, seconds: float) -> None:
        calls.append(name)
        clock.now += seconds

    seconds = time_rounds([lambda: step("a", 1.0), lambda: step("b", 2.0)], rounds=4, clock=clock)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert seconds == [[1.0] * 4, [2.0] * 4]


def test_the_reported_ratio_is_the_median_of_the_rounds_ratios_after_each_row_warms_up(monkeypatch):
    """Steps that take scripted times on a fake clock: vitkit 1, 2, 4 s and timm 2, 6, 2 s in the three
    rounds give per-round ratios 2, 3, 0.5 (median 2), where the ratio of the medians of images/s would be 1."""
    clock, calls = FakeClock(), []
    seconds = {"vitkit": [9.0, 1.0, 2.0, 4.0], "timm": [9.0, 2.0, 6.0, 2.0]}  # the first: the warm-up step
    real_step_fn = bench._step_fn

    def scripted_step_fn(spec, model, device):
        step, extras = real_step_fn(spec, model, device)

        def scripted() -> None:
            step()
            calls.append(spec.library)
            clock.now += seconds[spec.library].pop(0)

        return scripted, extras

    monkeypatch.setattr(bench, "_step_fn", scripted_step_fn)
    monkeypatch.setattr(bench, "time_rounds", functools.partial(time_rounds, clock=clock))
    result = bench.benchmark(TINY, compare="timm", isolate=False, batch_size=2, warmup=1, repeats=3, threads=1)
    assert calls == ["vitkit", "timm", "vitkit", "timm", "timm", "vitkit", "vitkit", "timm"]
    assert result["round_ratios"] == [2.0, 3.0, 0.5] and result["ratio"] == 2.0
    assert (result["ratio_min"], result["ratio_max"]) == (0.5, 3.0)
    assert result["images_per_s"] == result["timm_images_per_s"] == 1.0  # 2 images in the median round's 2 s
    assert result["latency_ms"] == 2000.0 and result["timm_latency_ms_max"] == 6000.0


def test_onnxruntime_runtime_checks_the_export_then_measures_it():
    result = bench.benchmark(TINY, runtime="onnxruntime", isolate=False, **QUICK)
    assert result["runtime"] == "onnxruntime" and result["images_per_s"] > 0
    assert result["onnx_max_abs_diff"] <= 1e-4


@pytest.mark.parametrize(
    "kwargs,message",
    [(dict(runtime="onnxruntime", precision="bf16"), "onnxruntime"), (dict(precision="fp8"), "precision"),
     (dict(compare="timm", model_name="vit_tiny_r_s16_p8_224"), "hybrid")],
)  # fmt: skip
def test_unsupported_settings_fail_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bench.benchmark(**{"model_name": TINY, **kwargs, **QUICK})


def test_compile_without_a_cpp_compiler_is_a_clear_error():
    import torch._inductor.config as inductor

    no_compiler = inductor.patch({"cpp.cxx": ("no-such-compiler++",)})
    with no_compiler, pytest.raises(ValueError, match="--compile: .*C[+][+] compiler.*leave out --compile"):
        bench.benchmark(**{"model_name": TINY, **QUICK, "compile": True, "device": "cpu"})


def test_a_refusal_in_a_rows_own_process_reaches_the_caller_as_the_same_one_line_error():
    """A row measured in a fresh process (isolate=True) that refuses its settings: the caller gets the child's
    ValueError, not 'failed in its own process (exit 1)'."""
    spec = bench.RowSpec("vit_no_such_model", None, "vitkit", 1, "fp32", "infer", False, "torch", "cpu", 0, 1, 1, 0,
                         weights_path="unused.safetensors")  # fmt: skip
    with pytest.raises(ValueError, match="vit_no_such_model") as refusal:
        bench._measure(spec, isolate=True)
    assert "\n" not in str(refusal.value) and "own process" not in str(refusal.value)


def test_cli_json_is_one_object_on_stdout_and_the_table_goes_to_stderr(capsys):
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["bench", "--model", TINY, "--batch-size", "2", "--warmup", "1", "--rounds", "2", "--threads", "1",
         "--compare", "timm", "--in-process", "--json"]
    )  # fmt: skip
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    for field in ["images_per_s", "peak_memory_mb", "gflops_per_image", "fraction_of_peak", "timm_images_per_s"]:
        assert field in result
    assert result["ratio"] > 0
    assert "vitkit / timm" in err and "median of 2 alternating rounds" in err
    assert timm.__version__ == result["timm_version"]


def test_top1_agreement_counts_matching_classes_between_precisions():
    from vitkit.precision import top1_agreement

    model = vitkit.create_model("vit_test_patch4_16", num_classes=7)
    torch.nn.init.normal_(model.head.weight)
    batches = [torch.randn(5, 3, 16, 16), torch.randn(3, 3, 16, 16)]
    same = top1_agreement(model, batches, torch.float32)
    assert same == {"agreement": 1.0, "n": 8, "max_abs_logit_diff": 0.0}
    low = top1_agreement(model, batches, torch.bfloat16)
    assert low["n"] == 8 and 0 < low["max_abs_logit_diff"] < 0.5 and low["agreement"] in {k / 8 for k in range(9)}
    assert next(model.parameters()).dtype == torch.float32
