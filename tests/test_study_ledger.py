"""The data-scale study's per-size budget (vitkit.study_plan), its ledger (vitkit.study_ledger) and the report
rebuilt from a ledger alone (vitkit.study_report), on tiny runs of scikit-learn's digits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import vitkit.study as study
from test_study import STUDY, without_dirs
from vitkit.cli import main
from vitkit.study_report import format_summary


def stripped(result: dict) -> dict:
    """study.json without what names its folder: the run directories and the files."""
    return {**{k: v for k, v in result.items() if k != "files"}, "runs": without_dirs(result["runs"])}


@pytest.fixture(scope="module")
def ledgered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    """An uncut 4-run study with a ledger: (out, its result, the ledger)."""
    root = tmp_path_factory.mktemp("ledgered")
    result = study.data_scale(**STUDY, out=root / "out", ledger=root / "ledger.jsonl")
    return root / "out", result, root / "ledger.jsonl"


def test_epochs_per_size_gives_each_run_passes_over_its_training_part_up_to_the_cap(tmp_path):
    """Sizes 40 and 80, a quarter held out: 30 and 60 training images. Two passes are 60 and 120 images, the
    second capped at 100; at batch 10 that is 6 and 10 steps. Each record says what it was given and why it ended."""
    result = study.data_scale(**{**STUDY, "images_seen": None, "models": ["vit"]}, epochs_per_size=2,
                              max_images_seen=100, out=tmp_path)  # fmt: skip
    by_size = {r["size"]: r for r in result["runs"]}
    assert {n: (r["budget_images"], r["budget_steps"], r["steps"]) for n, r in by_size.items()} == {
        40: (60, 6, 6), 80: (100, 10, 10)}  # fmt: skip
    assert all(r["stopped"] == "budget" for r in result["runs"])
    derived = yaml.safe_load((Path(by_size[80]["run_dir"]) / "config.yaml").read_text())["derived"]
    assert derived["train_images"] == 60
    assert result["study"]["epochs_per_size"] == 2 and result["study"]["max_images_seen"] == 100
    assert result["study"]["images_seen"] is None


def test_a_run_ended_by_patience_says_so():
    record = {"diverged": None, "steps": 4, "budget_steps": 10}
    assert study._stopped(record) == "patience"
    assert study._stopped({**record, "steps": 10}) == "budget"
    assert study._stopped({**record, "diverged": "loss is nan at step 3"}) == "diverged"


def test_each_finished_run_is_one_ledger_line_with_its_key_result_and_evaluations(ledgered):
    _, result, ledger = ledgered
    lines = [json.loads(row) for row in ledger.read_text().splitlines()]
    assert [line["result"] for line in lines] == result["runs"]
    key = lines[0]["key"]
    assert (key["data"], key["model"], key["size"], key["seed"]) == ("digits", "vit_test_patch4_16", 80, 0)
    assert key["budget"]["images_seen"] == 60 and key["budget"]["images"] == 60
    assert key["recipe"]["name"] == "small-data-vit" and key["recipe"]["steps"] == 6 and key["recipe"]["batch_size"] == 10
    assert [e["step"] for e in lines[0]["evaluations"]] == [3, 6] and "eval_top1" in lines[0]["evaluations"][0]
    assert lines[0]["vitkit"]["version"] and "commit" in lines[0]["vitkit"]


def test_a_study_killed_after_two_runs_continues_from_its_ledger_alone(ledgered, tmp_path, monkeypatch):
    """The third run is interrupted and OUT deleted; started again with the same ledger, the study trains only
    the last two runs, and its study.json equals the uncut study's."""
    _, whole, _ = ledgered
    real, trained = study.fit, []

    def fit(cfg, *data):
        trained.append((cfg.model, cfg.subset))
        if len(trained) == 3:
            raise KeyboardInterrupt
        return real(cfg, *data)

    monkeypatch.setattr(study, "fit", fit)
    with pytest.raises(KeyboardInterrupt):
        study.data_scale(**STUDY, out=tmp_path / "out", ledger=tmp_path / "ledger.jsonl")
    assert len((tmp_path / "ledger.jsonl").read_text().splitlines()) == 2
    shutil.rmtree(tmp_path / "out")
    trained.clear()
    monkeypatch.setattr(study, "fit", lambda cfg, *data: trained.append((cfg.model, cfg.subset)) or real(cfg, *data))
    again = study.data_scale(**STUDY, out=tmp_path / "out", ledger=tmp_path / "ledger.jsonl")
    assert trained == [("vit_test_patch4_16", 40), ("resnetv2_test_16", 40)]
    assert stripped(json.loads((tmp_path / "out" / "study.json").read_text())) == stripped(whole) == stripped(again)


def test_the_report_is_rebuilt_from_the_ledger_alone(ledgered, tmp_path, capsys):
    _, whole, ledger = ledgered
    assert main(["study", "report", "--ledger", str(ledger), "--out", str(tmp_path), "--json"]) == 0
    rebuilt = json.loads(capsys.readouterr().out)
    for name in ("runs", "summary", "analysis"):
        assert rebuilt[name] == whole[name]
    assert rebuilt["study"]["sizes"] == [40, 80] and rebuilt["study"]["seeds"] == [1, 1]
    assert rebuilt["study"]["budget"] == [{"images_seen": 60, "epochs_of_largest": None, "epochs_per_size": None,
                                           "max_images_seen": None}]  # fmt: skip
    for name in ("study.json", "study.csv", "accuracy_vs_size.png", "accuracy_vs_flops.png"):
        assert (tmp_path / name).is_file()


@pytest.mark.parametrize("change, field", [
    ({"recipe_overrides": {"batch_size": 10, "lr": 0.01}}, "recipe.lr = 0.002, this study asks for 0.01"),
    ({"images_seen": 80}, "budget.images_seen = 60, this study asks for 80"),
    ({"patience": 1}, "patience = None, this study asks for 1"),
])  # fmt: skip
def test_a_ledger_line_from_other_arguments_is_a_one_line_error_naming_the_field(ledgered, change, field, tmp_path,
                                                                               monkeypatch):  # fmt: skip
    _, _, ledger = ledgered
    monkeypatch.setattr(study, "fit", lambda cfg, *data: pytest.fail("trained despite a disagreeing ledger"))
    with pytest.raises(ValueError) as e:
        study.data_scale(**{**STUDY, **change}, out=tmp_path / "out", ledger=ledger)
    assert f"ledger {ledger} line 1: vit_test_patch4_16 at size 80 seed 0 was trained with {field}" in str(e.value)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_a_ledger_of_another_dataset_or_not_a_ledger_is_refused_before_training(ledgered, tmp_path, capsys):
    _, _, ledger = ledgered
    other = tmp_path / "other.jsonl"
    other.write_text(ledger.read_text().replace('"data":"digits"', '"data":"mnist5k"'))
    args = ["study", "data-scale", "--data", "digits", "--sizes", "40", "--models", "vit", "--images-seen", "60",
            "--batch-size", "10", "--holdout", "0.25", "--no-progress", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main([*args, "--ledger", str(other)]) == 2
    assert f"ledger {other} line 1 is a run on mnist5k, this study is on digits" in capsys.readouterr().err
    other.write_text("{}\n")
    assert main([*args, "--ledger", str(other)]) == 2
    assert "is not a ledger line" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_torn_last_line_is_dropped_with_a_warning_and_its_run_trains_again(ledgered, tmp_path, monkeypatch):
    _, whole, ledger = ledgered
    rows = ledger.read_text().splitlines(keepends=True)
    torn = tmp_path / "ledger.jsonl"
    torn.write_text("".join(rows[:3]) + rows[3][: len(rows[3]) // 2])  # killed while appending the 4th run
    real, trained = study.fit, []
    monkeypatch.setattr(study, "fit", lambda cfg, *data: trained.append((cfg.model, cfg.subset)) or real(cfg, *data))
    with pytest.warns(UserWarning, match="its last line is torn"):
        result = study.data_scale(**STUDY, out=tmp_path / "out", ledger=torn)
    assert trained == [("resnetv2_test_16", 40)]
    assert [json.loads(row)["result"] for row in torn.read_text().splitlines()] == result["runs"]
    assert without_dirs(result["runs"]) == without_dirs(whole["runs"])


def test_the_patch_size_axis_is_the_same_vit_with_7_pixel_patches_and_the_gaps_stay_from_patch_4():
    models = study.resolve_models("fashion_mnist", ["vit", "vit_p7", "resnet"])
    assert models == {"vit_fashion_patch4_28": "vit", "vit_fashion_patch7_28": "vit", "resnetv2_fashion_28": "resnet"}
    assert study.reference_vit("fashion_mnist", {"vit_fashion_patch7_28": "vit", **models}) == "vit_fashion_patch4_28"
    from vitkit.models import get_config

    p4, p7 = get_config("vit_fashion_patch4_28"), get_config("vit_fashion_patch7_28")
    assert (p4.patch_size, p7.patch_size, p4.embed_dim, p4.depth) == (4, 7, p7.embed_dim, p7.depth)


def test_the_log_names_each_run_as_it_starts_and_one_seed_shows_no_spread(ledgered, tmp_path, capsys):
    _, whole, _ = ledgered
    study.data_scale(**{**STUDY, "sizes": [40], "models": ["vit"]}, out=tmp_path)
    err = capsys.readouterr().err
    assert "study: run 1 of 1: vit_test_patch4_16 on 40 images (30 trained on), seed 0: 60 images at most (6 steps)" in err
    table = format_summary(whole)
    assert "±" not in table and [line.split(" | ")[2] for line in table.splitlines()[2:4]] == ["40", "80"]


def test_compile_is_recorded_not_compared_so_an_eager_study_continues_a_compiled_one(tmp_path):
    """`--compile` changes how a run executes, not its key: an eager study takes over a compiled study's
    ledger line and trains only the run it lacks; each line says whether its step was compiled."""
    ledger = tmp_path / "ledger.jsonl"
    compiled = [*CLI_ONE_VIT, "--sizes", "40", "--compile", "--ledger", str(ledger), "--out", str(tmp_path / "a")]
    assert main(compiled) == 0
    again = study.data_scale(**{**STUDY, "models": ["vit"]}, out=tmp_path / "b", ledger=ledger)
    lines = [json.loads(row) for row in ledger.read_text().splitlines()]
    assert [(line["key"]["size"], line["vitkit"]["compile"]) for line in lines] == [(40, True), (80, False)]
    assert sorted(r["size"] for r in again["runs"]) == [40, 80]
    config = yaml.safe_load((tmp_path / "a" / "vit_test_patch4_16" / "n40" / "seed0" / "config.yaml").read_text())
    assert config["train"]["compile"] is True


CLI_ONE_VIT = ["study", "data-scale", "--data", "digits", "--models", "vit", "--images-seen", "60", "--seeds", "1",
               "--holdout", "0.25", "--batch-size", "10", "--workers", "0", "--no-progress", "--evaluations", "2"]  # fmt: skip


def test_the_cpu_study_report_sets_the_fair_study_beside_the_starved_one(ledgered, tmp_path, monkeypatch):
    """benchmarks/data_scale_cpu.py's tables and figures for README and docs/study.md, from a ledger."""
    import importlib.util

    from vitkit.study_report import report

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))
    spec = importlib.util.spec_from_file_location("data_scale_cpu", benchmarks / "data_scale_cpu.py")
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    result = report(ledgered[2], tmp_path)
    result.update(machine="2 CPU cores", complete=True,
                  tuning_winners={"grid_points": 6, "recipes": {"vit": {"recipe": "small-data-vit", "grid_points_done": 3,
                  "overrides": {"optimizer": "adamw", "lr": 0.002, "weight_decay": 0.05}}}})  # fmt: skip
    probe = lambda lr, score, steps: {"overrides": {"optimizer": "adamw", "lr": lr}, "score": score,  # noqa: E731
                                      "steps": [steps], "stopped": ["patience"]}
    tuned = {"families": {"vit": {"model": "vit_m", "probes": [probe(0.002, 0.868, 3325), probe(0.004, 0.827, 300)]},
                          "resnet": {"model": "resnet_m", "probes": [probe(0.002, 0.897, 2450)]}}}  # fmt: skip
    (tmp_path / "tune_recipes_cpu_vit_resnet.json").write_text(json.dumps(tuned))
    (tmp_path / "recipes.json").write_text(json.dumps({"recipes": {"vit": {"overrides": probe(0.002, 0, 0)["overrides"]}}}))
    monkeypatch.setattr(driver, "RESULTS", tmp_path)
    monkeypatch.setattr(driver, "RECIPES", tmp_path / "recipes.json")
    text = driver.markdown({**result, "check_1k": result["summary"]}, "docs/study")
    starved, fair = text.index("docs/study/accuracy_vs_size.png"), text.index("docs/study/cpu_fair_accuracy_vs_size.png")
    assert starved < fair and "\n" not in text[starved:fair]  # one table row: side by side
    assert "vit adamw lr 0.002, weight decay 0.05 (so far: 3 of 6 grid points)" in text and "vit_test_patch4_16" in text and "(complete)" in text
    assert "| 1: adamw lr 0.002 | **86.8% (3,325 steps, patience)** | 89.7% (2,450 steps, patience) |" in text
    assert "| 2: adamw lr 0.004 | 82.7% (300 steps, patience) | - |" in text
    brief = driver.markdown(result, "docs/study", brief=True)  # the README's: test top-1 and its gaps
    assert "(10-shot linear)" in text and "fewshot_10: gap" in text and "grid point" in text
    assert text.count("| vit_test_patch4_16 (test top-1) |") == 2 and "The check at 1k" in text
    assert "(test top-1)" in brief and "10-shot" not in brief and "fewshot_10" not in brief and "grid point at" not in brief
    assert "cpu_fair_accuracy_vs_size.png" in brief
