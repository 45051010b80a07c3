"""Shared fixtures: every test starts from the same random state, so failures reproduce."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def fashion_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """A vit_fashion_patch4_28 with random weights plus noise on every tensor (so that no two classes tie),
    saved as `vitkit train` saves it: with the Fashion-MNIST class names and the dataset's name."""
    import json

    from torchvision.datasets import FashionMNIST

    from vitkit import create_model, save
    from vitkit.checkpoints.metadata import CLASSES_KEY, DATASET_KEY

    torch.manual_seed(0)
    model = create_model("vit_fashion_patch4_28").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path_factory.mktemp("serve") / "fashion.safetensors"
    save(model, path, {CLASSES_KEY: json.dumps(FashionMNIST.classes), DATASET_KEY: "fashion_mnist"})
    return path


@pytest.fixture(scope="session")
def fashion_pngs(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """The first 64 Fashion-MNIST test images as PNG files' bytes (needs the dataset, as `make test` installs it)."""
    import io

    from vitkit.data import load_data

    test = load_data("fashion_mnist", tmp_path_factory.mktemp("data")).test
    pngs = []
    for i in range(64):
        buffer = io.BytesIO()
        test[i][0].save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


@pytest.fixture
def preempt(monkeypatch: pytest.MonkeyPatch):
    """preempt(module, name, at): module.name raises KeyboardInterrupt at its `at`-th call (a run preempted
    mid-way); undo(): put the real one back, to resume."""

    def patch(module, name: str, at: int):
        real, calls = getattr(module, name), []

        def preempted(*args, **kwargs):
            calls.append(1)
            if len(calls) == at:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, preempted)
        return lambda: monkeypatch.setattr(module, name, real)

    return patch
