"""The `vitkit train`, `eval` and `predict` commands (vitkit.cli)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vitkit.cli import main
from vitkit.data import load_data
from vitkit.data.datasets import DEBIAN_FASHION_MNIST

needs_fashion_mnist = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="apt-get install dataset-fashion-mnist"
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_root: str) -> Path:
    """A run directory: a 2-layer ViT trained for 8 steps on 64 Fashion-MNIST images."""
    out = tmp_path_factory.mktemp("run")
    code = main(["train", "--data", "fashion_mnist", "--model", "vit_test_patch4_16", "--steps", "8", "--batch-size", "16",
                 "--limit-train", "64", "--limit-eval", "32", "--data-root", data_root, "--no-progress",
                 "--workers", "0", "--out", str(out), "--in-chans", "1"])  # fmt: skip
    assert code == 0
    return out


@needs_fashion_mnist
def test_train_writes_a_run_directory(trained):
    assert (trained / "model.safetensors").is_file() and (trained / "config.yaml").is_file()


@needs_fashion_mnist
def test_eval_json_reports_top1_top5_n_and_per_class_accuracy(trained, data_root, capsys, tmp_path):
    code = main(["eval", "--checkpoint", str(trained / "model.safetensors"), "--data", "fashion_mnist", "--limit", "50",
                 "--data-root", data_root, "--json", "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 50 and 0 <= report["top1"] <= report["top5"] <= 1
    assert set(report["per_class"]) == set(load_data("fashion_mnist", data_root).classes)
    assert Path(report["confusion_png"]) == tmp_path / "confusion-test.png" and (tmp_path / "confusion-test.png").is_file()


@needs_fashion_mnist
def test_predict_names_classes_and_reports_a_bad_image_on_one_line(trained, data_root, capsys, tmp_path):
    image, _ = load_data("fashion_mnist", data_root).test[0]
    image.save(tmp_path / "boot.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    code = main(["predict", "--checkpoint", str(trained / "model.safetensors"), str(tmp_path / "boot.png"),
                 str(tmp_path / "broken.png"), "--topk", "3", "--json"])  # fmt: skip
    assert code == 1
    out, err = capsys.readouterr()
    good, bad = json.loads(out)["results"]
    assert len(good["topk"]) == 3 and good["topk"][0]["label"] in load_data("fashion_mnist", data_root).classes
    assert good["topk"][0]["prob"] >= good["topk"][1]["prob"]
    assert bad["image"].endswith("broken.png") and "error" in bad
    assert err.count("\n") == 1 and "broken.png" in err and err.startswith("vitkit predict: error:")


@needs_fashion_mnist
def test_resume_of_a_finished_run_only_reports(trained, capsys):
    assert main(["train", "--resume", "--out", str(trained), "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "fashion"], "unknown dataset 'fashion'; did you mean fashion_mnist?"),
    (["train", "--data", "digits", "--recipe", "paper"], "unknown recipe 'paper'; did you mean paper-pretrain, paper-finetune?"),
    (["train", "--data", "digits", "--label-smoothing", "1.5"], "label_smoothing must be in [0, 1), got 1.5"),
    (["train", "--data", "digits", "--patch-drop", "1"], "patch_drop must be in [0, 1), got 1.0"),
    (["train", "--data", "imagefolder:/no/such/folder"], "imagefolder: /no/such/folder does not exist"),
    (["train", "--resume"], "--resume needs --out DIR"),
    (["train", "--data", "digits", "--model", "vit_nope"], "unknown model 'vit_nope'"),
    (["eval", "--checkpoint", "/no/such.safetensors", "--data", "digits"], "/no/such.safetensors: no such file"),
])  # fmt: skip
def test_bad_input_gets_a_one_line_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_every_recipe_field_is_an_option():
    from vitkit.cli import build_parser

    args = build_parser().parse_args(["train", "--data", "digits", "--clip-grad", "none", "--randaugment", "none",
                                      "--crop-scale", "0.3", "1", "--no-hflip", "--recipe", "deit"])  # fmt: skip
    assert (args.clip_grad, args.randaugment, args.crop_scale, args.hflip, args.recipe_name) == (
        None, [None], [0.3, 1.0], False, "deit")  # fmt: skip
    assert not hasattr(args, "lr")  # not given: the recipe's own value stays


def _recipe_file(tmp_path: Path) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text("lr: 0.001\nwarmup_steps: 100\n")
    return str(path)


@pytest.mark.parametrize("extra, message", [
    (["--model", "vit_smal_patch16_224"], "unknown model 'vit_smal_patch16_224'; did you mean vit_small_patch16_224"),
    (["--model", "vit_test_patch4_16", "--patch-size", "5"], "img_size=(16, 16) is not divisible by the patch stride 5"),
    (["--model", "vit_test_patch4_16", "--img-size", "18"], "img_size=(18, 18) is not divisible by the patch stride 4"),
    (["--lr", "-0.1"], "lr must be a positive number, got -0.1"),
    (["--lr", "0"], "lr must be a positive number, got 0.0"),
    (["--batch-size", "0"], "batch_size must be positive, got 0"),
    (["--recipe", "RECIPE_FILE"], "recipe.yaml: unknown recipe fields ['warmup_steps'] (did you mean: warmup_steps -> warmup?)"),
])  # fmt: skip
def test_bad_configuration_is_one_line_before_any_work(extra, message, capsys, tmp_path):
    extra = [_recipe_file(tmp_path) if a == "RECIPE_FILE" else a for a in extra]
    assert main(["train", "--data", "digits", "--out", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitkit train: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_heads_that_do_not_divide_the_width_are_one_line_before_allocation():
    import vitkit

    with pytest.raises(ValueError, match=r"^invalid ViT config .vit_test_patch4_16.: num_heads=5 does not divide embed_dim=32$") as e:
        vitkit.create_model("vit_test_patch4_16", num_heads=5)
    assert "\n" not in str(e.value)
