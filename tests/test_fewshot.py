"""Few-shot linear regression (paper section 4.1, big_vision's fewshot_lsr) and the logistic linear probe,
checked against plain least squares, scikit-learn, and on data whose answer is known."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import vitkit
from vitkit.analysis.cli import add_fewshot_parser
from vitkit.evaluate.fewshot import (
    BIAS_FEATURE, class_permutations, extract_features, fewshot, linear_probe, logistic_readout, ridge_readout,
    support_pool,
)  # fmt: skip


def standardised_with_bias(x: np.ndarray) -> np.ndarray:
    """big_vision's design matrix, written plainly: (x - mean) / (std + 1e-5), then a column of 100."""
    z = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-5)
    return np.hstack([z, np.full((len(x), 1), BIAS_FEATURE)])


def targets(y: np.ndarray, K: int) -> np.ndarray:
    return 2.0 * np.eye(K)[y] - 1.0


def clusters(
    n_per_class: int, K: int = 4, dim: int = 16, spread: float = 0.3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """n_per_class points around each of K fixed random centres, noise drawn from `seed`: x (n·K, dim), y (n·K,)."""
    centres = 3 * torch.randn(K, dim, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(K).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


@pytest.mark.parametrize("n, d", [(60, 8), (6, 20)], ids=["XtX-more-points", "XXt-more-features"])
@pytest.mark.parametrize("l2", [2.0**10, 0.5])
def test_ridge_solution_equals_lstsq_of_the_augmented_system(n, d, l2):
    x, y = torch.randn(n, d), torch.arange(n) % 3
    readout = ridge_readout(x, y, 3, l2)
    z = standardised_with_bias(x.double().numpy())
    # ridge as ordinary least squares: [Z; √λ I] w = [T; 0]
    A = np.vstack([z, np.sqrt(l2) * np.eye(d + 1)])
    B = np.vstack([targets(y.numpy(), 3), np.zeros((d + 1, 3))])
    w = np.linalg.lstsq(A, B, rcond=None)[0]
    np.testing.assert_allclose(readout.weight.numpy(), w[:-1], rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(readout.bias.numpy(), BIAS_FEATURE * w[-1], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("n, d", [(60, 8), (6, 20)], ids=["XtX-more-points", "XXt-more-features"])
def test_ridge_solution_equals_sklearn_ridge(n, d):
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = torch.randn(n, d), torch.arange(n) % 3
    readout = ridge_readout(x, y, 3, 2.0**10)
    z = standardised_with_bias(x.double().numpy())
    reference = sklearn.Ridge(alpha=2.0**10, fit_intercept=False, solver="cholesky").fit(z, targets(y.numpy(), 3))
    np.testing.assert_allclose(readout.weight.numpy(), reference.coef_.T[:-1], rtol=1e-6, atol=1e-10)
    scores = z @ reference.coef_.T
    np.testing.assert_allclose(readout.scores(x).numpy(), scores, rtol=1e-6, atol=1e-9)


def test_support_sets_hold_k_examples_of_each_class_nested_across_k():
    y = torch.arange(5).repeat(30)[torch.randperm(150)]
    per_class = class_permutations(y, 5, seed=1)
    for c, idx in enumerate(per_class):
        assert sorted(idx.tolist()) == (y == c).nonzero().flatten().tolist()
        assert (y[idx[:10]] == c).all()
    assert all(torch.equal(a, b) for a, b in zip(per_class, class_permutations(y, 5, seed=1)))
    assert any(not torch.equal(a, b) for a, b in zip(per_class, class_permutations(y, 5, seed=2)))


def test_fewshot_accuracy_is_the_readout_accuracy_on_each_seeds_support_set():
    train_x, train_y = clusters(30, spread=2.0)
    test_x, test_y = clusters(20, spread=2.0, seed=1)
    result = fewshot(train_x, train_y, test_x, test_y, shots=(1, 5), seeds=2)
    assert result.accuracy.shape == (2, 2)
    for seed in range(2):
        per_class = class_permutations(train_y, 4, seed)
        for i, k in enumerate((1, 5)):
            support = torch.cat([idx[:k] for idx in per_class])
            z = standardised_with_bias(train_x[support].double().numpy())
            w = np.linalg.solve(z.T @ z + 2.0**10 * np.eye(z.shape[1]), z.T @ targets(train_y[support].numpy(), 4))
            predicted = standardised_test(train_x[support], test_x) @ w
            assert result.accuracy[i, seed] == pytest.approx((predicted.argmax(1) == test_y.numpy()).mean())
    assert result.mean == pytest.approx(result.accuracy.mean(dim=1).tolist())
    assert result.std == pytest.approx(np.std(result.accuracy.numpy(), axis=1).tolist())


def standardised_test(support: torch.Tensor, test: torch.Tensor) -> np.ndarray:
    """Test features standardised with the support set's statistics, bias column appended."""
    s, t = support.double().numpy(), test.double().numpy()
    z = (t - s.mean(axis=0)) / (s.std(axis=0) + 1e-5)
    return np.hstack([z, np.full((len(t), 1), BIAS_FEATURE)])


def test_well_separated_classes_are_solved_from_five_shots():
    train_x, train_y = clusters(30)
    test_x, test_y = clusters(20, seed=1)
    result = fewshot(train_x, train_y, test_x, test_y, shots=(5, 25), seeds=3)
    assert result.mean == [1.0, 1.0] and result.std == [0.0, 0.0]
    report = result.to_dict()
    assert report["shots"]["25"]["per_seed"] == [1.0, 1.0, 1.0] and report["l2"] == 2.0**10


def test_fewshot_refuses_more_shots_than_a_class_has():
    x, y = clusters(4)
    with pytest.raises(ValueError, match="class 0 has 4"):
        fewshot(x, y, x, y, shots=(1, 5))


def test_logistic_probe_matches_sklearn_logistic_regression():
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = clusters(25, spread=3.0, dim=6)
    l2 = 1e-2
    readout = logistic_readout(x, y, 4, l2, max_iter=2000, tol=1e-10)
    z = standardised_with_bias(x.double().numpy())[:, :-1]
    reference = sklearn.LogisticRegression(C=1 / (len(y) * l2), tol=1e-10, max_iter=10_000).fit(z, y.numpy())
    probabilities = readout.scores(x).softmax(dim=1).numpy()
    np.testing.assert_allclose(probabilities, reference.predict_proba(z), atol=1e-5)


def test_linear_probe_separates_clusters():
    train_x, train_y = clusters(30)
    test_x, test_y = clusters(20, seed=1)
    assert linear_probe(train_x, train_y, test_x, test_y) == 1.0


def test_extracted_features_are_the_frozen_pre_logits_representation():
    model = vitkit.create_model("vit_test_patch4_16", representation_size=24).train()
    images, labels = torch.randn(10, 3, 16, 16), torch.arange(10)
    features, got_labels = extract_features(model, DataLoader(TensorDataset(images, labels), batch_size=4))
    assert model.training, "the model's mode is restored"
    model.eval()
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(images), pre_logits=True)
    assert features.shape == (10, 24) and torch.equal(got_labels, labels)
    torch.testing.assert_close(features, expected)


def test_fewshot_command_prints_json_with_shots_and_probe(tmp_path, capsys):
    model = vitkit.create_model("vit_test_patch4_16", in_chans=1, mean=(0.5,), std=(0.5,))
    vitkit.save(model, tmp_path / "model.safetensors")
    parser = argparse.ArgumentParser()
    add_fewshot_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["fewshot", "--checkpoint", str(tmp_path / "model.safetensors"), "--data", "digits",
                              "--shots", "1,5", "--seeds", "2", "--probe", "logistic", "--probe-l2", "1", "--json",
                              "--device", "cpu"])  # fmt: skip
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["shots"]) == {"1", "5"} and len(report["shots"]["5"]["per_seed"]) == 2
    assert report["n_test"] == 360 and report["feature_dim"] == 32
    assert 0.0 <= report["linear_probe"]["top1"] <= 1.0


def test_fewshot_on_the_support_pool_alone_equals_fewshot_on_every_training_example():
    train_x, train_y = clusters(40, spread=2.0)
    test_x, test_y = clusters(10, spread=2.0, seed=1)
    pool = support_pool(train_y, [1, 5], 3, 4)
    assert len(pool) <= 3 * 5 * 4 < len(train_y)
    whole = fewshot(train_x, train_y, test_x, test_y, [1, 5], seeds=3)
    pooled = fewshot(train_x[pool], train_y, test_x, test_y, [1, 5], seeds=3, pool=pool)
    assert torch.equal(pooled.accuracy, whole.accuracy)


def fewshot_args(checkpoint: str, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_fewshot_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["fewshot", "--checkpoint", checkpoint, "--data", "digits", "--shots", "5,10",
                              "--seeds", "2", "--json", "--device", "cpu", *extra])  # fmt: skip


def test_fewshot_command_extracts_only_the_support_pool_and_the_test_split(tmp_path, capsys, monkeypatch):
    import vitkit.evaluate.fewshot as fewshot_module
    from vitkit.data import load_data
    from vitkit.evaluate import eval_loader

    model = vitkit.create_model("vit_test_patch4_16", in_chans=1, mean=(0.5,), std=(0.5,))
    vitkit.save(model, tmp_path / "model.safetensors")
    extracted = []

    def spy(model, loader):
        features, labels = extract_features(model, loader)
        extracted.append(len(labels))
        return features, labels

    monkeypatch.setattr(fewshot_module, "extract_features", spy)  # the command imports it when it runs
    args = fewshot_args(str(tmp_path / "model.safetensors"))
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    # the accuracies of the old path: features of all 1,437 training images
    data, loaded = load_data("digits"), vitkit.load(tmp_path / "model.safetensors").eval()
    features = [extract_features(loaded, eval_loader(data.split(s), loaded.config.data_config, 1))
                for s in ("train", "test")]  # fmt: skip
    whole = fewshot(*features[0], *features[1], [5, 10], seeds=2, num_classes=10)
    assert [report["shots"][k]["per_seed"] for k in ("5", "10")] == whole.accuracy.tolist()
    assert extracted[1] == 360 and extracted[0] <= 2 * 10 * 10, extracted  # not the 1,437 training images
    assert report["n_train"] == 1437
