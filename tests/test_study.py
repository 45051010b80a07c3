"""The data-scale study (vitkit.study) and the nested, class-balanced subsets it trains on (vitkit.data.subsets)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import vitkit
import vitkit.study as study
import vitkit.train.loop as loop
from vitkit.cli import main
from vitkit.data.subsets import balanced_order, nested_subset, subset_indices
from vitkit.evaluate.fewshot import representations
from vitkit.flops import step_flops
from vitkit.study_analysis import format_by_size, summarise
from vitkit.train.runlog import read_metrics

# Four tiny runs on scikit-learn's digits (1,437 training images, 10 classes), a ViT and a ResNet at each size
# and seed: 6 steps of 10 images each,
# a quarter of each subset held out (10 of 40 images), two held-out evaluations and checkpoints a run.
STUDY = dict(data="digits", sizes=[40, 80], models=["vit", "resnet"], images_seen=60, seeds=1, holdout=0.25,
             recipe_overrides={"batch_size": 10}, workers=0, progress=False, evaluations=2)  # fmt: skip
CLI = ["study", "data-scale", "--data", "digits", "--sizes", "40,80", "--models", "vit,resnet", "--images-seen", "60",
       "--seeds", "1", "--holdout", "0.25", "--batch-size", "10", "--workers", "0", "--no-progress",
       "--evaluations", "2"]  # fmt: skip
RUN_KEYS = {"model", "family", "size", "seed", "top1", "fewshot_10", "train_flops", "run_dir"}


def without_dirs(runs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "run_dir"} for r in runs]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("study") / "whole"
    return out, study.data_scale(**STUDY, out=out)


# ---- subsets ------------------------------------------------------------------------------------


def test_subsets_are_nested_class_balanced_and_fixed_by_the_seed():
    labels = torch.arange(10).repeat(50)[torch.randperm(500)]
    for small, large in [(10, 30), (30, 35), (35, 100), (100, 500)]:
        a, b = nested_subset(labels, small, 10, seed=3), nested_subset(labels, large, 10, seed=3)
        assert set(a.tolist()) <= set(b.tolist()) and len(set(b.tolist())) == large
        counts = labels[b].bincount(minlength=10)
        assert counts.max() - counts.min() <= 1  # 35: five classes get a fourth image
    assert torch.equal(nested_subset(labels, 35, 10, seed=3), nested_subset(labels, 35, 10, seed=3))
    assert not torch.equal(nested_subset(labels, 35, 10, seed=3), nested_subset(labels, 35, 10, seed=4))


def test_a_class_that_runs_out_leaves_its_share_to_the_others():
    labels = torch.cat([torch.zeros(3), torch.ones(20), torch.full((20,), 2)]).long()
    counts = labels[nested_subset(labels, 23, 3, seed=0)].bincount(minlength=3)
    assert counts.tolist() == [3, 10, 10]
    indices, rounds = balanced_order(labels, 3, seed=0)
    assert sorted(indices.tolist()) == list(range(43)) and rounds.tolist() == sorted(rounds.tolist())


def test_the_held_out_part_is_class_balanced_disjoint_and_nested():
    labels = torch.arange(10).repeat(100)[torch.randperm(1000)]
    train_a, held_a = subset_indices(labels, 10, 200, 0.1, seed=1)
    train_b, held_b = subset_indices(labels, 10, 600, 0.1, seed=1)
    assert labels[held_a].bincount(minlength=10).tolist() == [2] * 10
    assert not set(train_a.tolist()) & set(held_a.tolist()) and len(train_a) + len(held_a) == 200
    assert set(held_a.tolist()) <= set(held_b.tolist()) and set(train_a.tolist()) <= set(train_b.tolist())


# ---- features, families ----------------------------------------------------------------------------


def test_one_pass_gives_the_models_logits_and_its_pre_logits_features():
    model = vitkit.create_model("vit_test_patch4_16", num_classes=3).eval()
    torch.nn.init.normal_(model.head.weight)
    images = torch.randn(5, 3, 16, 16)
    features, logits, labels = representations(model, [(images, torch.arange(5))])
    torch.testing.assert_close(logits, model(images))
    torch.testing.assert_close(features, model.forward_head(model.forward_features(images), pre_logits=True))
    assert labels.tolist() == list(range(5))


def test_family_names_pick_the_datasets_default_model():
    assert study.resolve_models("digits", ["vit", "vit_tiny_r_s16_p8_224"]) == {
        "vit_test_patch4_16": "vit", "vit_tiny_r_s16_p8_224": "hybrid"}  # fmt: skip
    assert study.resolve_models("fashion_mnist", ["vit", "resnet", "hybrid"]) == {
        "vit_fashion_patch4_28": "vit", "resnetv2_fashion_28": "resnet", "vit_fashion_hybrid_28": "hybrid"}  # fmt: skip


# ---- the study ----------------------------------------------------------------------------------


def test_a_study_writes_one_run_directory_per_model_size_and_seed_and_its_results(reference):
    out, result = reference
    models = {"vit": "vit_test_patch4_16", "resnet": "resnetv2_test_16"}
    assert [(r["size"], r["seed"], r["family"]) for r in result["runs"]] == [
        (80, 0, "vit"), (80, 0, "resnet"), (40, 0, "vit"), (40, 0, "resnet")]  # fmt: skip
    for r in result["runs"]:
        run = Path(r["run_dir"])
        assert r["model"] == models[r["family"]] and run == out / r["model"] / f"n{r['size']}" / f"seed{r['seed']}"
        derived = yaml.safe_load((run / "config.yaml").read_text())["derived"]
        assert (derived["train_images"], derived["eval_images"], derived["eval_split"]) == (
            r["size"] * 3 // 4, r["size"] // 4, "held-out")  # fmt: skip
        assert (run / "best.safetensors").is_file()
        assert 0 <= r["top1"] <= 1 and 0 <= r["fewshot_10"] <= 1
        assert r["train_flops"] == step_flops(vitkit.load(run / "best.safetensors").config, "train") * 60
    for name in ("study.json", "study.csv", "accuracy_vs_size.png", "accuracy_vs_flops.png"):
        assert (out / name).is_file()
    assert len((out / "study.csv").read_text().splitlines()) == 1 + 4


def test_the_summary_is_the_mean_and_population_std_over_seeds():
    runs = [{"model": "m", "family": "vit", "size": 10, "seed": s, "top1": t, "fewshot_10": f, "train_flops": 5}
            for s, t, f in [(0, 0.5, 0.2), (1, 0.7, None), (2, 0.9, 0.4)]]  # fmt: skip
    [row] = summarise(runs)
    assert row["seeds"] == 3 and row["top1"] == pytest.approx(0.7) and row["top1_std"] == pytest.approx((0.08 / 3) ** 0.5)
    assert row["fewshot_10"] == pytest.approx(0.3) and row["fewshot_10_std"] == pytest.approx(0.1)


def test_an_interrupted_study_reports_its_finished_runs_then_resumes_and_ends_with_the_same_result(
    reference, tmp_path, monkeypatch
):
    real, steps = loop.train_step, []

    def killed_in_the_second_run(*args, **kwargs):
        steps.append(1)
        if len(steps) == 6 + 5:  # two steps after the second run's checkpoint at step 3
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", killed_in_the_second_run)
    with pytest.raises(KeyboardInterrupt):
        study.data_scale(**STUDY, out=tmp_path)
    monkeypatch.setattr(loop, "train_step", real)
    partial = json.loads((tmp_path / "study.json").read_text())  # written as each run finished
    assert partial["complete"] is False and [r["model"] for r in partial["runs"]] == ["vit_test_patch4_16"]
    assert study.collect(tmp_path)["runs"] == partial["runs"] and (tmp_path / "accuracy_vs_size.png").is_file()
    first = tmp_path / "vit_test_patch4_16" / "n80" / "seed0"
    finished_at = (first / "result.json").stat().st_mtime_ns

    configs = []
    real_fit = study.fit
    monkeypatch.setattr(study, "fit", lambda cfg, *data: configs.append(cfg) or real_fit(cfg, *data))
    result = study.data_scale(**STUDY, out=tmp_path)
    assert [(c.model, Path(c.out).parent.name, Path(c.out).name, c.resume) for c in configs] == [
        ("resnetv2_test_16", "n80", "seed0", True), ("vit_test_patch4_16", "n40", "seed0", False),
        ("resnetv2_test_16", "n40", "seed0", False)]  # fmt: skip
    assert (first / "result.json").stat().st_mtime_ns == finished_at
    assert without_dirs(result["runs"]) == without_dirs(reference[1]["runs"])


def test_a_study_killed_by_sigkill_mid_run_continues_and_ends_with_the_same_result(reference, tmp_path):
    """`vitkit study` in its own process, SIGKILLed (no handler runs) two steps after the second run's
    checkpoint; the same command again skips the first run, resumes the second and matches the reference."""
    runner = (
        "import os, signal, sys\n"
        "import vitkit.train.loop as loop\n"
        "from vitkit.cli import main\n"
        "real, count = loop.train_step, [0]\n"
        "def step(*args, **kwargs):\n"
        "    count[0] += 1\n"
        "    if count[0] == 6 + 5:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(*args, **kwargs)\n"
        "loop.train_step = step\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    command = [sys.executable, "-c", runner, *CLI, "--out", str(tmp_path), "--json"]
    killed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    second = tmp_path / "resnetv2_test_16" / "n80" / "seed0"
    assert not (second / "result.json").exists() and any((second / "checkpoints").iterdir())
    finished_at = (tmp_path / "vit_test_patch4_16" / "n80" / "seed0" / "result.json").stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-m", "vitkit", *CLI, "--out", str(tmp_path), "--json"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stderr and f"{second}" in again.stderr
    assert (tmp_path / "vit_test_patch4_16" / "n80" / "seed0" / "result.json").stat().st_mtime_ns == finished_at
    assert without_dirs(json.loads(again.stdout)["runs"]) == without_dirs(reference[1]["runs"])


def test_a_run_that_diverges_is_recorded_as_diverged_and_the_study_goes_on(tmp_path, monkeypatch):
    """SGD at lr 1e9 (the ViT's recipe only) sends the ViT's loss to NaN: its run is recorded with no accuracy
    and the error, the ResNet's run still trains, and a rerun does not train the diverged run again."""
    real_recipe = study.Plan.recipe

    def recipe(plan, model, train_images=None):
        r = real_recipe(plan, model, train_images)
        return r.replace(optimizer="sgd", lr=1e9, clip_grad=None) if model.startswith("vit") else r

    monkeypatch.setattr(study.Plan, "recipe", recipe)
    result = study.data_scale(**{**STUDY, "sizes": [40]}, out=tmp_path)
    vit, resnet = result["runs"]
    assert vit["top1"] is None and vit["fewshot_10"] is None and "loss is" in vit["diverged"]
    assert resnet["diverged"] is None and 0 <= resnet["top1"] <= 1
    assert [r["diverged"] for r in result["summary"]] == [1, 0] and result["summary"][0]["top1"] is None
    table = format_by_size(result["summary"], ("top1",))
    assert "| diverged (1 of 1) |" in table and "| diverged" not in table.splitlines()[-1]  # the ResNet's row
    assert all((tmp_path / name).is_file() for name in ("study.csv", "accuracy_vs_size.png", "accuracy_vs_flops.png"))
    (tmp_path / "study.json").unlink()
    monkeypatch.setattr(study, "fit", lambda cfg: pytest.fail("a finished run trained again"))
    assert study.data_scale(**{**STUDY, "sizes": [40]}, out=tmp_path)["runs"] == result["runs"]


def test_a_size_where_some_seeds_diverged_counts_only_those_that_trained():
    runs = [{"model": "vit", "family": "vit", "size": 1000, "seed": s, "train_flops": 1.0, "top1": t,
             "diverged": None if t is not None else "loss is nan at step 9"} for s, t in enumerate([0.5, None, 0.7])]
    (row,) = summarise(runs)
    assert row["diverged"] == 1 and abs(row["top1"] - 0.6) < 1e-12
    assert "| 60.00% ± 10.00% (2 of 3; 1 diverged) |" in format_by_size([row], ("top1",))


def test_the_size_figure_marks_a_size_where_every_seed_diverged(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from vitkit.study_plots import plot_accuracy_vs_size

    runs = [{"model": m, "family": m, "size": n, "seed": 0, "train_flops": 1.0, "top1": t,
             "diverged": None if t is not None else "loss is nan at step 9"}
            for m, n, t in [("vit", 100, None), ("vit", 300, 0.6), ("resnet", 100, 0.5), ("resnet", 300, 0.7)]]  # fmt: skip
    saved: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: saved.append(fig))
    plot_accuracy_vs_size(summarise(runs), tmp_path / "size.png")
    crosses = [line for line in saved[0].axes[0].get_lines() if line.get_marker() == "x"]
    assert [list(line.get_xdata()) for line in crosses] == [[100]] and "vit: every seed diverged" in crosses[0].get_label()


def test_rerunning_a_finished_study_prints_its_result_at_once_as_json(reference, capsys, monkeypatch):
    out, result = reference
    monkeypatch.setattr(study, "fit", lambda cfg: pytest.fail("a finished study trained again"))
    assert main([*CLI, "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["runs"] == result["runs"]
    assert all(set(r) >= RUN_KEYS for r in printed["runs"])
    assert all(isinstance(r["top1"], float) and 0 <= r["top1"] <= 1 for r in printed["runs"])


@pytest.mark.parametrize("change, message", [
    (["--models", "vit,cnn"], "unknown model 'cnn'"),
    (["--models", "vit,resnet,hybrid"], "no default hybrid model for dataset digits"),
    (["--sizes", "40,5000"], "subset size 5000 must be between the 10 classes and the 1437 training images"),
    (["--sizes", "5,40"], "subset size 5 must be between"),
    (["--images-seen", "0"], "images_seen must be positive"),
])  # fmt: skip
def test_bad_input_is_a_one_line_error_before_any_training(change, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(study, "fit", lambda cfg: pytest.fail("trained despite bad input"))
    args = list(CLI)
    flag = change[0]
    args[args.index(flag) + 1] = change[1]
    assert main([*args, "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitkit study: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "new").exists()


def test_a_directory_that_holds_another_study_is_refused(reference, capsys, monkeypatch):
    out, _ = reference
    monkeypatch.setattr(study, "fit", lambda cfg: pytest.fail("trained in another study's directory"))
    args = list(CLI)
    args[args.index("--sizes") + 1] = "40,120"
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{out} holds a different study (sizes is [40, 80] there, [40, 120] now)" in err and "\n" not in err


# ---- the fair budget, early stopping, transfer, recipes files (issue 26) ------------------------------


def test_epochs_of_largest_sets_every_runs_budget_to_passes_over_the_largest_size(reference, tmp_path):
    """0.75 passes over the largest size (80) is the reference's budget of 60 images: the same runs."""
    fair = study.data_scale(**{**STUDY, "images_seen": None}, epochs_of_largest=0.75, out=tmp_path)
    assert fair["study"]["images_seen"] == 60 and fair["study"]["epochs_of_largest"] == 0.75
    assert without_dirs(fair["runs"]) == without_dirs(reference[1]["runs"])


@pytest.mark.parametrize("change, message", [
    (["--epochs-of-largest", "2"], "give the budget one way: --images-seen N, --epochs-of-largest E or "
                                   "--epochs-per-size E, not 2"),
    (["--images-seen", None], "no budget given: --images-seen N, --epochs-of-largest E or --epochs-per-size E"),
    (["--epochs-per-size", "2"], "give the budget one way"),
    (["--images-seen", None, "--epochs-per-size", "2", "--max-images-seen", "5"],
     "--max-images-seen 5 is below one batch (10 images of"),
    (["--max-images-seen", "500"], "--max-images-seen caps --epochs-per-size"),
    (["--ledger", "/etc/hostname"], "ledger /etc/hostname line 1 is not a ledger line"),
    (["--transfer", "nosuch"], "--transfer nosuch cannot be read: unknown dataset"),
    (["--transfer", "imagefolder:/nonexistent/dir"], "--transfer imagefolder:/nonexistent/dir cannot be read"),
    (["--patience", "2", "--holdout", "0"], "patience counts held-out evaluations"),
    (["--recipes", "/nonexistent.json"], "recipes file /nonexistent.json"),
])  # fmt: skip
def test_a_bad_budget_transfer_set_or_recipes_file_is_a_one_line_error_before_training(
    change, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(study, "fit", lambda cfg: pytest.fail("trained despite bad input"))
    args = [*CLI, "--out", str(tmp_path / "new")]
    for flag, value in zip(change[::2], change[1::2]):
        if flag in args:
            i = args.index(flag)
            args[i:i + 2] = [] if value is None else [flag, value]
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitkit study: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "new").exists()


def test_a_transfer_set_whose_images_cannot_be_fed_to_a_model_is_refused_before_training(tmp_path, monkeypatch):
    """Two-channel input: digits' grayscale images cannot be turned into it (vitkit.data.transforms.match_channels)."""
    monkeypatch.setitem(vitkit.models.registry.MODELS, "vit_test2ch_patch4_16",
                        {**vitkit.models.registry.MODELS["vit_test_patch4_16"], "in_chans": 2})  # fmt: skip
    monkeypatch.setattr(study, "fit", lambda cfg: pytest.fail("trained despite bad input"))
    with pytest.raises(ValueError, match=r"--transfer digits: its images cannot be resized to vit_test2ch_patch4_16's "
                                         r"input \(2x16x16\): cannot feed 1-channel images"):  # fmt: skip
        study.data_scale(**{**STUDY, "models": ["vit_test2ch_patch4_16"]}, transfer="digits", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_the_transfer_column_is_a_10_shot_regression_on_the_same_frozen_features(tmp_path):
    """Each run's transfer_10 equals vitkit.evaluate.fewshot on the chosen weights' pre-logits features of the
    transfer set's pool (50 a class, seed 0) and test split; it is a column of study.csv and a panel."""
    from vitkit.data import load_data
    from vitkit.data.subsets import split_subset
    from vitkit.evaluate import eval_loader
    from vitkit.evaluate.fewshot import extract_features, fewshot

    result = study.data_scale(**{**STUDY, "sizes": [40], "models": ["vit"]}, transfer="digits", out=tmp_path)
    [run] = result["runs"]
    digits = load_data("digits")
    pool, _ = split_subset(digits.train, 10, 500, 0.0, seed=0)
    model = vitkit.load(Path(run["run_dir"]) / "best.safetensors").eval()
    support = extract_features(model, eval_loader(pool, model.config.data_config, digits.channels))
    test = extract_features(model, eval_loader(digits.test, model.config.data_config, digits.channels))
    direct = fewshot(*support, *test, shots=(10,), seeds=3, num_classes=10).mean[0]
    assert run["transfer_10"] == direct and 0 < direct <= 1
    assert result["summary"][0]["transfer_10"] == direct
    header = (tmp_path / "study.csv").read_text().splitlines()[0].split(",")
    assert "transfer_10" in header
    from matplotlib.image import imread
    assert imread(tmp_path / "accuracy_vs_size.png").shape[1] == 1500  # three 5-inch panels at 100 dpi


def test_patience_ends_a_run_at_the_first_evaluation_without_a_better_held_out_score(tmp_path):
    """Patience 1, an evaluation every step: the held-out top-1 rose at every evaluation but the last, where
    the run stopped, short of its budget; its steps and FLOPs are those it trained."""
    result = study.data_scale(**{**STUDY, "sizes": [40], "models": ["vit"], "images_seen": 200, "evaluations": 20},
                              patience=1, out=tmp_path)  # fmt: skip
    [run] = result["runs"]
    evals = [r["eval_top1"] for r in read_metrics(Path(run["run_dir"]) / "metrics.jsonl") if "eval_top1" in r]
    assert run["steps"] == len(evals) < run["budget_steps"] == 20
    assert all(b > a for a, b in zip(evals[:-2], evals[1:-1])) and evals[-1] <= max(evals[:-1])
    assert run["train_flops"] == step_flops(vitkit.load(Path(run["run_dir"]) / "best.safetensors").config, "train") \
        * run["steps"] * 10


def test_a_recipes_file_sets_each_familys_recipe_and_the_study_sets_its_length(tmp_path):
    path = tmp_path / "recipes.json"
    path.write_text(json.dumps({"recipes": {"vit": {"recipe": "small-data-vit-gpu", "overrides": {"lr": 0.01}}}}))
    plan = study.Plan("digits", [40], {"vit_test_patch4_16": "vit", "resnetv2_test_16": "resnet"}, 4096, [1], 0.1,
                      "fp32", {}, 2, family_recipes=study.read_recipes(path))  # fmt: skip
    vit, resnet = plan.recipe("vit_test_patch4_16"), plan.recipe("resnetv2_test_16")
    assert (vit.lr, vit.batch_size, vit.steps, plan.recipe_name("vit_test_patch4_16")) == (0.01, 1024, 4, "small-data-vit-gpu")
    assert (resnet.batch_size, plan.recipe_name("resnetv2_test_16")) == (128, "small-data-resnet")
    path.write_text(json.dumps({"recipes": {"cnn": {"recipe": "small-data-vit"}}}))
    with pytest.raises(ValueError, match="unknown family 'cnn'"):
        study.read_recipes(path)


def test_seed_zero_runs_at_every_size_largest_first_before_the_further_seeds():
    plan = study.Plan("digits", [40, 80, 160], {"a": "vit"}, 10, [3, 2, 1], 0.1, "fp32", {}, 2)
    assert [(n, s) for _, n, s in plan.runs()] == [(160, 0), (80, 0), (40, 0), (80, 1), (40, 1), (40, 2)]


# ---- the gap analysis (vitkit.study_analysis) ---------------------------------------------------------


def _runs(gaps: dict[int, list[float]]) -> list[dict]:
    """A ViT at 0.5 and a ResNet at 0.5 + gap, per size and seed."""
    runs = []
    for size, per_seed in gaps.items():
        for seed, gap in enumerate(per_seed):
            runs += [{"model": "vit", "size": size, "seed": seed, "top1": 0.5},
                     {"model": "resnet", "size": size, "seed": seed, "top1": 0.5 + gap}]  # fmt: skip
    return runs


def test_a_gap_that_shrinks_by_two_points_a_decade_meets_zero_at_a_million_images():
    from vitkit.study_analysis import analyse

    result = analyse(_runs({1000: [0.06, 0.06], 10_000: [0.04, 0.04], 100_000: [0.02]}), "vit", ["top1"])
    resnet = result["gaps"]["top1"]["resnet"]
    assert [(r["size"], r["seeds"]) for r in resnet["per_size"]] == [(1000, 2), (10_000, 2), (100_000, 1)]
    assert resnet["per_size"][0]["mean"] == pytest.approx(0.06) and resnet["per_size"][0]["std"] == pytest.approx(0)
    trend = resnet["trend"]
    assert trend["slope_per_decade"] == pytest.approx(-0.02) and trend["intercept"] == pytest.approx(0.12)
    assert trend["slope_se"] == pytest.approx(0, abs=1e-12) and trend["bootstrap"]["share_shrinking"] == 1
    assert trend["crossing"]["size"] == pytest.approx(1e6) and trend["crossing"]["extrapolation"] is True


def test_the_gaps_spread_over_seeds_is_paired_by_seed_and_bounds_the_slope():
    """At 1k the seeds' gaps are 0.02 and 0.08 (std 0.03); resampling them moves the fitted slope, which is
    +0.01 a decade from the means (0.05 at 1k, 0.06 at 10k): a growing gap, so no crossing."""
    from vitkit.study_analysis import analyse, paired_gaps

    runs = _runs({1000: [0.02, 0.08], 10_000: [0.06]}) + [{"model": "vit", "size": 10_000, "seed": 1, "top1": 0.9}]
    assert paired_gaps(runs, "top1", "resnet", "vit") == {1000: pytest.approx([0.02, 0.08]), 10_000: pytest.approx([0.06])}
    trend = analyse(runs, "vit", ["top1"])["gaps"]["top1"]["resnet"]["trend"]
    assert trend["slope_per_decade"] == pytest.approx(0.01) and trend["slope_se"] is None  # two sizes: no residuals
    b = trend["bootstrap"]
    assert b["slope_2.5"] == pytest.approx(-0.02) and b["slope_97.5"] == pytest.approx(0.04) and trend["crossing"] is None


def test_a_subset_smaller_than_a_batch_repeats_within_an_epoch(tmp_path):
    """30 training images, batch 64: each epoch passes over them 3 times (90 images), so a GPU batch trains on 1k."""
    result = study.data_scale(**{**STUDY, "sizes": [40], "models": ["vit"], "images_seen": 128,
                                 "recipe_overrides": {"batch_size": 64}}, out=tmp_path)  # fmt: skip
    [run] = result["runs"]
    derived = yaml.safe_load((Path(run["run_dir"]) / "config.yaml").read_text())["derived"]
    assert (derived["train_images"], derived["steps_per_epoch"], run["steps"]) == (90, 1, 2)
