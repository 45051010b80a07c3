"""A new user's first hour (issue 39): help at once, every option explained, a small image folder that trains
with no flags, bad input in one line with exit code 2, and one result schema for every prediction."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from vitkit.cli import build_parser, main

CLASSES = ("astronaut", "chelsea", "coffee")


def photo_folder(root: Path, per_class: int = 30) -> Path:
    """root/CLASS/i.png: 96x96 crops of three of scikit-image's photographs."""
    rng = np.random.default_rng(0)
    for name in CLASSES:
        photo = getattr(skimage.data, name)()
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            y, x = rng.integers(0, photo.shape[0] - 96), rng.integers(0, photo.shape[1] - 96)
            Image.fromarray(photo[y : y + 96, x : x + 96]).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return photo_folder(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def first_run(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """`vitkit train --data imagefolder:DIR` with the defaults, cut to 2 steps: the run directory and stderr's lines."""
    out = tmp_path_factory.mktemp("runs") / "photos"
    proc = subprocess.run([sys.executable, "-m", "vitkit", "train", "--data", f"imagefolder:{photos}", "--out", str(out),
                           "--steps", "2", "--workers", "0", "--no-progress"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stderr.splitlines()


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser (study's data-scale included), by name."""
    found = {}
    for action in build_parser()._subparsers._group_actions:  # argparse keeps subparsers nowhere public
        for name, parser in action.choices.items():
            found[name] = parser
            for sub in (parser._subparsers._group_actions if parser._subparsers else []):
                found.update({f"{name} {n}": p for n, p in sub.choices.items()})
    return found


# --- help -------------------------------------------------------------------------------------------------------


def test_help_of_every_command_and_a_usage_error_import_neither_torch_nor_numpy():
    script = (
        "import sys\n"
        "from vitkit.cli import build_parser\n"
        "for argv in [['--help'], *[[c, '--help'] for c in " + repr(sorted(_commands())) + "], ['trian']]:\n"
        "    try:\n"
        "        build_parser().parse_args([w for a in argv for w in a.split()])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'torchvision', 'PIL')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_option_has_help_and_shows_its_default(command):
    parser = _commands()[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.option_strings == ["-h", "--help"]:
            continue
        assert action.help, f"vitkit {command} {action.option_strings[0]} has no help"
        if not (action.default is None or action.default is False or action.default == argparse.SUPPRESS):
            assert "default" in formatter._get_help_string(action), f"{command} {action.option_strings[0]}"


def test_a_recipe_field_names_where_its_default_comes_from():
    train = _commands()["train"]
    group = next(g for g in train._action_groups if g.title == "recipe fields")
    assert "--recipe" in group.description and "overrides" in group.description


# --- a small image folder with the defaults -----------------------------------------------------------------------


def test_a_small_folder_gets_a_small_model_and_a_batch_that_fits_it(photos):
    from vitkit.data import load_data
    from vitkit.models import get_config
    from vitkit.train import make_config
    from vitkit.train.config import fit_to_data

    cfg, notes = fit_to_data(make_config(data=f"imagefolder:{photos}"), load_data(f"imagefolder:{photos}"), False)
    assert cfg.recipe.batch_size <= 81 // 4 and cfg.recipe_name == "small-data-vit"
    model = get_config(cfg.model)
    assert model.img_size[0] <= 64 and model.embed_dim * model.depth <= 192 * 6  # not ViT-S/16 at 224 px
    assert any(f"batch_size {cfg.recipe.batch_size}" in n and "--batch-size" in n for n in notes)


def test_a_batch_size_given_is_kept_and_then_too_large_is_one_line(photos, tmp_path, capsys):
    assert main(["train", "--data", f"imagefolder:{photos}", "--batch-size", "128", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "batch_size 128 is larger than the 81 training images" in err.splitlines()[-1]


def test_the_first_line_of_a_run_says_what_was_held_out_why_and_how_to_choose(first_run, photos):
    _, lines = first_run
    assert lines[0].startswith("imagefolder: 9 of 90 images held out")
    assert "no train/ and val/ folders" in lines[0] and f"{photos}/val/CLASS" in lines[0]
    assert lines[1].startswith("batch_size 16: the recipe's 128 is more than the 81 training images")


def test_the_run_writes_megabytes_not_hundreds(first_run):
    out, _ = first_run
    sizes = [f.stat().st_size for f in out.rglob("*.safetensors")]
    assert sizes and max(sizes) < 20 * 2**20


def test_eval_leaves_out_top5_for_three_classes(first_run, photos, capsys):
    out, _ = first_run
    assert main(["eval", "--checkpoint", str(out / "model.safetensors"), "--data", f"imagefolder:{photos}"]) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "top-5" not in printed


# --- one schema ---------------------------------------------------------------------------------------------------


def test_predict_json_answers_as_the_server_answers_a_batch(first_run, photos, capsys):
    out, _ = first_run
    image = str(photos / "coffee" / "0.png")
    assert main(["predict", "--checkpoint", str(out / "model.safetensors"), image, "--json", "--topk", "2"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert set(answer) == {"results", "model"} and answer["results"][0]["image"] == image
    top = answer["results"][0]["topk"]
    assert [set(t) for t in top] == [{"label", "index", "prob"}] * 2 and top[0]["label"] == CLASSES[top[0]["index"]]


def test_a_bad_image_in_a_multipart_batch_is_named_by_its_part_and_index():
    from starlette.testclient import TestClient

    import vitkit
    from vitkit.serve.app import create_app

    buffer = __import__("io").BytesIO()
    Image.new("RGB", (20, 20)).save(buffer, "PNG")
    model = vitkit.create_model("vit_test_patch4_16", num_classes=3)
    with TestClient(create_app(model, list(CLASSES))) as client:
        files = [("file", ("good.png", buffer.getvalue())), ("file", ("broken.png", b"not an image"))]
        results = client.post("/v1/predict", files=files).json()["results"]
    assert "topk" in results[0] and results[1]["error"].startswith("file[1] (broken.png): not a decodable image")


# --- bad input: one line, exit code 2 -----------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["eval", "--checkpoint", "m.safetensors", "--data", "digits", "--batch-size", "-4"],
     "argument --batch-size: expected a positive integer, got '-4'"),
    (["serve", "--checkpoint", "m.safetensors", "--workers", "0"], "argument --workers: expected a positive integer, got '0'"),
    (["predict", "--checkpoint", "m.safetensors", "x.png", "--topk", "0"], "argument --topk: expected a positive integer"),
    (["serve", "--checkpoint", "m.safetensors", "--port", "99999"], "argument --port: expected a port number in 1-65535"),
])  # fmt: skip
def test_an_option_out_of_range_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_a_run_directory_as_checkpoint_says_which_file_was_meant(first_run, capsys):
    out, _ = first_run
    assert main(["predict", "--checkpoint", str(out), "x.png"]) == 2
    err = capsys.readouterr().err
    assert err == f"vitkit predict: error: {out} is a run directory, not a checkpoint file: did you mean " \
                  f"{out / 'model.safetensors'}?\n"


def test_an_undecodable_file_in_a_folder_is_one_vitkit_line(first_run, photos, tmp_path, capsys):
    out, _ = first_run
    for name in CLASSES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "0.png").write_bytes((photos / name / "0.png").read_bytes())
    (tmp_path / "coffee" / "broken.png").write_bytes(b"\x89PNG not really")
    assert main(["eval", "--checkpoint", str(out / "model.safetensors"), "--data", f"imagefolder:{tmp_path}"]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "broken.png" in line]
    assert len(warning) == 1 and warning[0].startswith("vitkit: warning: imagefolder: ")
    assert "is left out" in warning[0] and "fix or remove the file" in warning[0]


def test_values_repeated_without_torch_agree_with_their_homes():
    from vitkit.analysis.cli import RIDGE
    from vitkit.commands import SHARD_FORMATS
    from vitkit.data.shard_format import EXTENSIONS
    from vitkit.evaluate.fewshot import DEFAULT_L2

    assert RIDGE == DEFAULT_L2 and set(SHARD_FORMATS) == set(EXTENSIONS)
