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
        (40, 0, "vit"), (40, 0, "resnet"), (80, 0, "vit"), (80, 0, "resnet")]  # fmt: skip
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
    [row] = study.summarise(runs)
    assert row["seeds"] == 3 and row["top1"] == pytest.approx(0.7) and row["top1_std"] == pytest.approx((0.08 / 3) ** 0.5)
    assert row["fewshot_10"] == pytest.approx(0.3) and row["fewshot_10_std"] == pytest.approx(0.1)


def test_an_interrupted_study_skips_finished_runs_resumes_the_cut_one_and_ends_with_the_same_result(
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
    first = tmp_path / "vit_test_patch4_16" / "n40" / "seed0"
    finished_at = (first / "result.json").stat().st_mtime_ns

    configs = []
    real_fit = study.fit
    monkeypatch.setattr(study, "fit", lambda cfg: configs.append(cfg) or real_fit(cfg))
    result = study.data_scale(**STUDY, out=tmp_path)
    assert [(c.model, Path(c.out).parent.name, Path(c.out).name, c.resume) for c in configs] == [
        ("resnetv2_test_16", "n40", "seed0", True), ("vit_test_patch4_16", "n80", "seed0", False),
        ("resnetv2_test_16", "n80", "seed0", False)]  # fmt: skip
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
    second = tmp_path / "resnetv2_test_16" / "n40" / "seed0"
    assert not (second / "result.json").exists() and any((second / "checkpoints").iterdir())
    finished_at = (tmp_path / "vit_test_patch4_16" / "n40" / "seed0" / "result.json").stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-m", "vitkit", *CLI, "--out", str(tmp_path), "--json"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stderr and f"{second}" in again.stderr
    assert (tmp_path / "vit_test_patch4_16" / "n40" / "seed0" / "result.json").stat().st_mtime_ns == finished_at
    assert without_dirs(json.loads(again.stdout)["runs"]) == without_dirs(reference[1]["runs"])


def test_a_run_that_diverges_is_recorded_as_diverged_and_the_study_goes_on(tmp_path, monkeypatch):
    """SGD at lr 1e9 (the ViT's recipe only) sends the ViT's loss to NaN: its run is recorded with no accuracy
    and the error, the ResNet's run still trains, and a rerun does not train the diverged run again."""
    real_recipe = study.Plan.recipe

    def recipe(plan, model):
        r = real_recipe(plan, model)
        return r.replace(optimizer="sgd", lr=1e9, clip_grad=None) if model.startswith("vit") else r

    monkeypatch.setattr(study.Plan, "recipe", recipe)
    result = study.data_scale(**{**STUDY, "sizes": [40]}, out=tmp_path)
    vit, resnet = result["runs"]
    assert vit["top1"] is None and vit["fewshot_10"] is None and "loss is" in vit["diverged"]
    assert resnet["diverged"] is None and 0 <= resnet["top1"] <= 1
    assert [r["diverged"] for r in result["summary"]] == [1, 0] and result["summary"][0]["top1"] is None
    assert all((tmp_path / name).is_file() for name in ("study.csv", "accuracy_vs_size.png", "accuracy_vs_flops.png"))
    (tmp_path / "study.json").unlink()
    monkeypatch.setattr(study, "fit", lambda cfg: pytest.fail("a finished run trained again"))
    assert study.data_scale(**{**STUDY, "sizes": [40]}, out=tmp_path)["runs"] == result["runs"]


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
