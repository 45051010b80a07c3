"""Training: recipes, schedules, the loop, checkpoint/resume, several processes (vitkit.train)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import vitkit
import vitkit.train.loop as loop
from vitkit.checkpoints.io import save
from vitkit.data.datasets import DEBIAN_FASHION_MNIST
from vitkit.train import RECIPES, NonFiniteLoss, fit, get_recipe, lr_factor, make_config
from vitkit.train.optim import Muon, build_optimizer, param_groups

pytestmark = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="apt-get install dataset-fashion-mnist"
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("data"))


def tiny(data_root: str, out: Path, recipe: dict | None = None, **run) -> vitkit.train.TrainConfig:
    """A 2-layer ViT on 16x16 crops of a few Fashion-MNIST images; a run takes about a second. In fp32, not
    `auto`: these tests compare the loop's arithmetic exactly, on every CPU alike (auto: test_hardware.py)."""
    fields = dict(data="fashion_mnist", model="vit_test_patch4_16", limit_train=64, limit_eval=32, data_root=data_root,
                  progress=False, workers=0, out=str(out), precision="fp32")  # fmt: skip
    return make_config({"steps": 6, "batch_size": 16, **(recipe or {})}, **{**fields, **run})


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


# ---- schedules, optimisers, recipes -----------------------------------------------------------


def test_schedule_warms_up_then_decays_to_zero_relative_to_the_run_length():
    for total in (20, 10_000):
        factors = [lr_factor(s, total, warmup=0.1, decay="cosine") for s in range(total)]
        w = round(0.1 * total)
        assert factors[w - 1] == 1.0 and factors[0] == 1 / w
        assert all(a < b for a, b in zip(factors[:w], factors[1:w]))
        assert factors[-1] < 0.01 and all(a >= b for a, b in zip(factors[w:], factors[w + 1 :]))
    assert [lr_factor(s, 4, 0.0, "linear") for s in range(4)] == [1.0, 0.75, 0.5, 0.25]


def test_weight_decay_applies_to_weight_matrices_only():
    model = vitkit.create_model("vit_test_patch4_16")
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} >= {"pos_embed", "cls_token", "blocks.0.norm1.weight", "head.bias"}
    assert all(p.ndim >= 2 for p in decay["params"]) and no_decay["weight_decay"] == 0.0


def test_muon_steps_each_hidden_matrix_by_the_polar_factor_of_its_gradient_and_adamw_the_rest():
    torch.manual_seed(0)
    model = vitkit.create_model("vit_test_patch4_16")
    torch.nn.init.normal_(model.head.weight)  # not the zero head: the blocks get gradients
    optimizer = build_optimizer(model, get_recipe("fashion-cpu", optimizer="muon", weight_decay=0.0, lr=1e-2))
    muon, adamw = optimizer.optimizers
    names = {id(p): n for n, p in model.named_parameters()}
    stepped = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert stepped == {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2}
    assert {names[id(p)] for g in adamw.param_groups for p in g["params"]} == set(names.values()) - stepped
    assert len(optimizer.param_groups) == len(muon.param_groups) + len(adamw.param_groups)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(256, 3, 16, 16)).logsumexp(-1).sum().backward()  # gradients of full rank
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    optimizer.step()
    for name, p in model.named_parameters():
        if name in stepped:  # the naive reference: -lr * 0.2 sqrt(max(A, B)) U V^T for the SVD G = U S V^T
            u, _, vt = torch.linalg.svd(grads[name], full_matrices=False)
            polar = -1e-2 * 0.2 * max(p.shape) ** 0.5 * (u @ vt)
            delta = p.detach() - before[name]
            assert torch.nn.functional.cosine_similarity(delta.flatten(), polar.flatten(), dim=0) > 0.9, name
            assert 0.7 < delta.norm() / polar.norm() < 1.3, name  # Newton-Schulz: singular values near 1
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    state = optimizer.state_dict()
    fresh = build_optimizer(model, get_recipe("fashion-cpu", optimizer="muon"))
    fresh.load_state_dict(state)
    assert str(fresh.state_dict()) == str(state)
    resnet = build_optimizer(vitkit.create_model("resnetv2_test_16"), get_recipe("fashion-cpu", optimizer="muon"))
    assert isinstance(resnet, torch.optim.AdamW)  # no Transformer matrices: AdamW on every parameter


@pytest.mark.parametrize("ns_dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_muon_orthogonalises_same_shape_matrices_together_as_it_would_one_by_one(ns_dtype, tol):
    """Newton-Schulz batched over the matrices of one shape (issue 38) steps each matrix as a Muon that holds
    it alone (the 2-D path, torch.optim.Muon's): three steps of tall, wide and square matrices."""
    shapes = [(48, 32), (32, 48), (48, 32), (32, 32), (48, 32), (32, 48)]
    weights = [torch.randn(*shape) for shape in shapes]
    together = [torch.nn.Parameter(w.clone()) for w in weights]
    alone = [torch.nn.Parameter(w.clone()) for w in weights]
    options = dict(lr=0.02, weight_decay=0.05, momentum=0.95, nesterov=True, adjust_lr_fn="match_rms_adamw")
    batched = Muon(together, ns_dtype=ns_dtype, **options)
    looped = [Muon([p], ns_dtype=ns_dtype, **options) for p in alone]
    for _ in range(3):
        for a, b in zip(together, alone):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        batched.step()
        for optimizer in looped:
            optimizer.step()
    for a, b in zip(together, alone):
        assert torch.allclose(a, b, atol=tol * 0.02, rtol=0), (a - b).abs().max()
        assert not torch.equal(a, torch.zeros_like(a))


def test_muon_under_fsdp_is_a_one_line_error(data_root, tmp_path):
    with pytest.raises(ValueError, match="--fsdp shards each weight matrix, and Muon orthogonalises whole ones"):
        fit(tiny(data_root, tmp_path / "run", {"optimizer": "muon"}, fsdp=True))


def test_named_recipes_follow_the_paper():
    pre, ft = RECIPES["paper-pretrain"], RECIPES["paper-finetune"]
    assert (pre.optimizer, pre.betas, pre.weight_decay, pre.decay, pre.clip_grad, pre.batch_size) == (
        "adamw", (0.9, 0.999), 0.1, "linear", 1.0, 4096)  # fmt: skip
    assert (ft.optimizer, ft.momentum, ft.weight_decay, ft.decay, ft.clip_grad, ft.img_size) == (
        "sgd", 0.9, 0.0, "cosine", 1.0, 384)  # fmt: skip
    deit = RECIPES["deit"]
    assert deit.label_smoothing and deit.drop_path and deit.randaugment and deit.mixup and deit.cutmix and deit.random_erasing


def test_recipe_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe 'deit3'; did you mean deit"):
        get_recipe("deit3")
    with pytest.raises(ValueError, match=r"warmup is a fraction of the run, in \[0, 1\), got 2"):
        get_recipe("deit", warmup=2)
    (tmp_path / "r.yaml").write_text("lr: 0.5\nbogus: 1\n")
    with pytest.raises(ValueError, match="unknown recipe fields \\['bogus'\\]"):
        get_recipe(str(tmp_path / "r.yaml"))
    (tmp_path / "r.yaml").write_text("lr: 0.5\noptimizer: sgd\n")
    assert get_recipe(str(tmp_path / "r.yaml"), momentum=0.5).optimizer == "sgd"


def test_epochs_given_override_a_recipes_steps():
    cfg = make_config({"epochs": 2}, data="fashion_mnist", recipe_name="paper-finetune")
    assert cfg.recipe.steps is None and cfg.recipe.epochs == 2 and cfg.model == "vit_fashion_patch7_28"


# ---- the loop ----------------------------------------------------------------------------------


def test_a_run_directory_holds_config_metrics_checkpoints_and_plots(data_root, tmp_path):
    result = fit(tiny(data_root, tmp_path / "run", {"steps": 8}, log_every=2))
    out = result.out_dir
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["train"]["recipe"]["lr"] == RECIPES["fashion-cpu"].lr and config["train"]["recipe_name"] == "fashion-cpu"
    assert config["model"]["num_classes"] == 10 and config["derived"]["steps_per_epoch"] == 4
    assert config["derived"]["augmentation"] == "batched"  # Fashion-MNIST is in memory: vitkit.data.batched
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6, 8]
    assert [r["step"] for r in records if "eval_top1" in r] == [4, 8]  # every epoch
    assert {"lr", "images_per_s"} <= set(records[0])
    for name in ("checkpoints/step-00000008.safetensors", "checkpoints/step-00000008.state.pt", "best.safetensors",
                 "model.safetensors", "loss.png", "accuracy.png", "lr.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    assert result.evaluation.n == 32 and 0 <= result.evaluation.top1 <= 1
    assert json.loads(load_metadata(out / "model.safetensors")["classes"])[0] == "T-shirt/top"


def load_metadata(path: Path) -> dict[str, str]:
    from vitkit.checkpoints.metadata import checkpoint_metadata

    return checkpoint_metadata(path)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resumed_run_ends_with_exactly_the_weights_of_an_uninterrupted_one(data_root, tmp_path, monkeypatch,
                                                                          optimizer):
    # everything random at once: augmentation, Mixup/CutMix, stochastic depth, patch dropout (ending after
    # step 6, past the checkpoint resumed from), EMA, a worker process
    recipe = {"steps": 11, "optimizer": optimizer, "randaugment": (2, 9), "mixup": 0.8, "cutmix": 1.0, "drop_path": 0.1,
              "ema_decay": 0.9,
              "patch_drop": 0.5, "patch_drop_until": 0.6}
    fit(tiny(data_root, tmp_path / "whole", recipe, checkpoint_every=3, workers=1))

    real, calls = loop.train_step, []

    def preempted_at_step_8(*args, **kwargs):
        calls.append(1)
        if len(calls) == 8:  # mid-epoch (4 steps each), two steps after the checkpoint of step 6
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", preempted_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny(data_root, tmp_path / "resumed", recipe, checkpoint_every=3, workers=1))
    monkeypatch.setattr(loop, "train_step", real)
    fit(make_config(out=str(tmp_path / "resumed"), resume=True, progress=False))

    for name in ("checkpoints/step-00000011.safetensors", "model.safetensors", "best.safetensors"):
        a, b = weights(tmp_path / "whole" / name), weights(tmp_path / "resumed" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    lines = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("whole", "resumed")]
    drop_times = [[{k: v for k, v in json.loads(line).items() if k not in ("time_s", "images_per_s", "eval_images_per_s")} for line in ls]
                  for ls in lines]  # fmt: skip
    assert drop_times[0] == drop_times[1]


def test_resume_refuses_a_different_recipe(data_root, tmp_path):
    fit(tiny(data_root, tmp_path / "run"))
    with pytest.raises(ValueError, match="--resume: recipe field lr is 0.5, the run in .* used 0.002"):
        make_config({"lr": 0.5}, out=str(tmp_path / "run"), resume=True)
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        fit(tiny(data_root, tmp_path / "run"))


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(data_root, tmp_path):
    cfg = tiny(data_root, tmp_path / "run", {"steps": 40, "lr": 1e30, "warmup": 0.0, "clip_grad": None},
               checkpoint_every=1)  # fmt: skip
    with pytest.raises(NonFiniteLoss, match=r"loss is (nan|inf) at step (\d+); stopping \(the last good checkpoint is") as e:
        fit(cfg)
    step = int(e.value.args[0].split("at step ")[1].split(";")[0])
    last = tmp_path / "run" / "checkpoints" / f"step-{step - 1:08d}.safetensors"
    assert str(last) in e.value.args[0] and load_metadata(last)["step"] == str(step - 1)
    assert all(torch.isfinite(v).all() for v in weights(last).values())


def test_gradient_accumulation_matches_the_whole_batch(data_root, tmp_path):
    recipe = {"optimizer": "sgd", "lr": 0.1}
    fit(tiny(data_root, tmp_path / "whole", recipe))
    fit(tiny(data_root, tmp_path / "accum", recipe, micro_batch=4))
    a, b = weights(tmp_path / "whole" / "model.safetensors"), weights(tmp_path / "accum" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_bf16_autocast_trains(data_root, tmp_path):
    result = fit(tiny(data_root, tmp_path / "run", {"steps": 2}, precision="bf16"))
    assert all(torch.isfinite(v).all() for v in weights(result.checkpoint).values())


def test_patch_dropout_applies_for_the_first_part_of_the_run_then_every_patch_is_kept(data_root, tmp_path, monkeypatch):
    rates, set_patch_drop = [], vitkit.VisionTransformer.set_patch_drop
    record = lambda model, p: rates.append(p) or set_patch_drop(model, p)  # noqa: E731
    monkeypatch.setattr(vitkit.VisionTransformer, "set_patch_drop", record)
    result = fit(tiny(data_root, tmp_path / "run", {"patch_drop": 0.5, "patch_drop_until": 0.5}))
    assert rates == [0.5, 0.5, 0.5, 0.0, 0.0, 0.0]
    config = yaml.safe_load((result.out_dir / "config.yaml").read_text())
    assert config["model"]["patch_drop"] == 0.5 and config["train"]["recipe"]["patch_drop_until"] == 0.5


def test_init_from_resamples_position_embeddings_and_zeroes_the_head(data_root, tmp_path):
    source = vitkit.create_model("vit_test_patch4_16")  # 16x16: a 4x4 grid
    torch.nn.init.normal_(source.head.weight)
    save(source, tmp_path / "source.safetensors")
    cfg = tiny(data_root, tmp_path / "run", {"steps": 1, "img_size": 32, "lr": 1e-12},
               init_from=str(tmp_path / "source.safetensors"))  # fmt: skip
    tuned = vitkit.load(fit(cfg).checkpoint)
    assert tuned.config.img_size == (32, 32) and tuned.pos_embed.shape == (1, 1 + 64, 32)
    assert torch.allclose(tuned.patch_embed.proj.weight, source.patch_embed.proj.weight, atol=1e-9)
    assert tuned.head.weight.abs().max() < 1e-6  # the paper's zero-initialised fine-tuning head


def test_fsdp_trains_like_one_process_writes_whole_checkpoints_and_resumes(data_root, tmp_path):
    args = ["--data", "fashion_mnist", "--model", "vit_test_patch4_16", "--steps", "6", "--batch-size", "16",
            "--limit-train", "96", "--limit-eval", "16", "--data-root", data_root, "--no-progress", "--workers", "0", "--precision", "fp32",
            "--checkpoint-every", "3", "--keep-checkpoints", "3", "--optimizer", "sgd", "--lr", "0.1"]  # fmt: skip
    # SGD, as in the DDP test: Adam would divide by √v the rounding noise of gradients that are zero in exact
    # arithmetic (the key bias's), so that the two runs differ by 1e-5 there however exact the sharding
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]

    def run(cmd: list[str]) -> str:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stderr

    run([sys.executable, "-m", "vitkit", "train", *args, "--out", str(tmp_path / "one")])
    fsdp = [*torchrun, "-m", "vitkit", "train", *args, "--fsdp", "--out", str(tmp_path / "fsdp")]
    run(fsdp)
    # the files hold whole tensors, as an unsharded run's, and the same weights up to float tolerance
    one, two = weights(tmp_path / "one" / "model.safetensors"), weights(tmp_path / "fsdp" / "model.safetensors")
    assert one.keys() == two.keys() and all(one[k].shape == two[k].shape for k in one)
    assert all(torch.allclose(one[k], two[k], atol=1e-6, rtol=1e-5) for k in one)
    assert vitkit.load(tmp_path / "fsdp" / "best.safetensors").config.num_classes == 10
    # resumed from the checkpoint at step 3 (the optimiser state gathered and re-sharded), it ends the same
    (tmp_path / "fsdp" / "model.safetensors").unlink()
    for path in (tmp_path / "fsdp" / "checkpoints").glob("step-00000006.*"):
        path.unlink()
    # the optimiser state is keyed by parameter name when sharded: the run resumes with --fsdp only
    unsharded = [sys.executable, "-m", "vitkit", "train", *args, "--out", str(tmp_path / "fsdp"), "--resume",
                 "--no-fsdp"]
    refused = subprocess.run(unsharded, env=env, capture_output=True, text=True, timeout=180)
    assert refused.returncode != 0 and "--resume: fsdp is False, the run in" in refused.stderr
    assert "at step 3 of 6" in run([*fsdp, "--resume"])
    assert all(torch.equal(two[k], v) for k, v in weights(tmp_path / "fsdp" / "model.safetensors").items())


def test_fsdp_shards_a_bit_resnet_by_bottleneck_and_trains_like_one_process(data_root, tmp_path):
    args = ["--data", "fashion_mnist", "--model", "resnetv2_test_16", "--steps", "4", "--batch-size", "16",
            "--limit-train", "64", "--limit-eval", "16", "--data-root", data_root, "--no-progress", "--workers", "0", "--precision", "fp32",
            "--optimizer", "sgd", "--lr", "0.1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    fsdp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "vitkit", "train", *args, "--fsdp", "--out", str(tmp_path / "fsdp")]  # fmt: skip
    for cmd in ([sys.executable, "-m", "vitkit", "train", *args, "--out", str(tmp_path / "one")], fsdp):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
    one, two = weights(tmp_path / "one" / "model.safetensors"), weights(tmp_path / "fsdp" / "model.safetensors")
    assert one.keys() == two.keys() and all(one[k].shape == two[k].shape for k in one)
    assert all(torch.allclose(one[k], two[k], atol=1e-6, rtol=1e-5) for k in one)
    assert vitkit.load(tmp_path / "fsdp" / "model.safetensors").config.family == "resnet"


def test_fsdp_without_torchrun_is_a_one_line_error(data_root, tmp_path):
    with pytest.raises(ValueError, match="--fsdp shards the model over several processes: launch with torchrun"):
        fit(tiny(data_root, tmp_path / "run", {"optimizer": "adamw"}, fsdp=True))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("run, recipe, why", [
    ({"micro_batch": 5}, {}, "micro_batch 5 does not divide the per-process batch 16"),
    ({"cuda_graphs": "on"}, {}, "--cuda-graphs on: the device is cpu"),
    ({"limit_train": 8}, {}, "batch_size 16 is larger than the 8 training images"),
    ({"feed": "device"}, {"randaugment": (2, 9)}, "--feed device: the recipe's RandAugment"),
])  # fmt: skip
def test_a_config_rejected_after_the_data_is_read_leaves_no_run_directory(data_root, tmp_path, run, recipe, why):
    """The checks run before the first write (vitkit.train.checks): no empty run directory is left behind."""
    with pytest.raises(ValueError, match=why):
        fit(tiny(data_root, tmp_path / "run", recipe, **run))
    assert not (tmp_path / "run").exists()


def test_two_processes_train_like_one_with_the_same_global_batch(data_root, tmp_path):
    args = ["--data", "fashion_mnist", "--model", "vit_test_patch4_16", "--steps", "6", "--batch-size", "16",
            "--limit-train", "96", "--limit-eval", "16", "--data-root", data_root, "--no-progress", "--workers", "0", "--precision", "fp32",
            "--randaugment", "2", "9", "--optimizer", "sgd", "--lr", "0.1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = [sys.executable, "-m", "vitkit", "train", *args, "--out", str(tmp_path / "one")]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "vitkit", "train", *args, "--out", str(tmp_path / "two")]  # fmt: skip
    for cmd in (single, ddp):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = weights(tmp_path / "one" / "model.safetensors"), weights(tmp_path / "two" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)
    assert yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())["derived"]["world_size"] == 2


def test_training_on_an_image_folder_skips_and_counts_undecodable_images(tmp_path):
    for i, cls in enumerate(("circle", "square", "zigzag")):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for j in range(6):
            Image.new("RGB", (20 + j, 18), (80 * i, 40 * j, 0)).save(tmp_path / "data" / cls / f"{j}.png")
    (tmp_path / "data" / "square" / "zero.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match="zero.jpg"):
        result = fit(make_config({"steps": 2, "batch_size": 4}, data=f"imagefolder:{tmp_path / 'data'}",
                                 model="vit_test_patch4_16", out=str(tmp_path / "run"), progress=False, workers=0))  # fmt: skip
    assert result.skipped_images == 1 and "skipped 1 undecodable images" in result.summary()
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["train"]["recipe_name"] == "small-data-vit" and config["derived"]["augmentation"] == "per-image"
    assert vitkit.load(result.checkpoint).config.num_classes == 3


# ---- torch.compile ----------------------------------------------------------------------------------------


def test_compiled_step_computes_the_eager_gradients():
    """--compile changes how the step runs, not what it computes: the compiled model's loss and gradients are
    the eager model's in fp32, to float rounding (Inductor fuses the element-wise work and may reorder sums)."""
    torch.manual_seed(0)
    model = vitkit.create_model("vit_test_patch4_16").train()
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    grads = []
    for forward in (model, torch.compile(model)):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(forward(images), labels)
        loss.backward()
        grads.append({"loss": loss.detach(), **{n: p.grad.clone() for n, p in model.named_parameters()}})
    assert all(torch.allclose(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6) for k in grads[0])


def test_compiled_training_follows_the_eager_run(data_root, tmp_path):
    """A compiled run logs the eager run's losses and evaluations (to 1e-4; the weights after several Muon
    steps differ a little more, as Muon and Adam normalise away the scale of tiny gradient differences)."""
    recipe = {"steps": 6, "optimizer": "muon"}
    fit(tiny(data_root, tmp_path / "eager", recipe))
    fit(tiny(data_root, tmp_path / "compiled", recipe, compile=True))
    logs = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("eager", "compiled")]  # fmt: skip
    for key in ("loss", "eval_loss"):
        values = [[r[key] for r in log if key in r] for log in logs]
        assert values[0] and values[0] == pytest.approx(values[1], rel=1e-4), key
    assert config_of(tmp_path / "compiled")["train"]["compile"] is True


def test_compile_without_a_cpp_compiler_is_a_one_line_error_before_any_write(data_root, tmp_path):
    import torch._inductor.config as inductor

    no_compiler = inductor.patch({"cpp.cxx": ("no-such-compiler++",)})
    with no_compiler, pytest.raises(ValueError, match="--compile: .*C[+][+] compiler.*leave out --compile") as refusal:
        fit(tiny(data_root, tmp_path / "run", compile=True))
    assert "\n" not in str(refusal.value) and not (tmp_path / "run").exists()


def config_of(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_compiled_run_resumes_bit_exact(data_root, tmp_path, monkeypatch):
    """A compiled run cut after its checkpoint and resumed ends with the uninterrupted compiled run's weights,
    stochastic depth (drawn inside the compiled graph) included."""
    recipe = {"steps": 8, "optimizer": "adamw", "drop_path": 0.1}
    fit(tiny(data_root, tmp_path / "whole", recipe, checkpoint_every=4, compile=True))
    real, calls = loop.train_step, []

    def preempted_at_step_6(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", preempted_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny(data_root, tmp_path / "resumed", recipe, checkpoint_every=4, compile=True))
    monkeypatch.setattr(loop, "train_step", real)
    fit(make_config(out=str(tmp_path / "resumed"), resume=True, progress=False))
    a, b = weights(tmp_path / "whole" / "model.safetensors"), weights(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
