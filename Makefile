# vitkit: set-up, the main job, the tests and the benchmarks. Needs python3 (>= 3.10, with venv) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1: the pair the project is tested with
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup data browser run test test-avx2 bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# Fashion-MNIST from Debian's package dataset-fashion-mnist, where apt is available.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	else echo "no apt-get: vitkit will download Fashion-MNIST with torchvision"; fi

# Chromium for the page's browser test (Playwright drives the system browser; it downloads none).
browser:
	@if command -v chromium >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; \
	else echo "no apt-get: install Chromium yourself for tests/test_serve_process.py"; fi

# The main job: a small ViT trained from scratch on Fashion-MNIST (3-4 minutes of training on 2 CPU cores),
# evaluated on the test set; it prints where the checkpoint, metrics and plots are.
run: setup data
	$(BIN)/vitkit train --data fashion_mnist --out runs/quickstart
	$(BIN)/vitkit eval --checkpoint runs/quickstart/model.safetensors --data fashion_mnist

bench: setup data
	$(BIN)/python benchmarks/fashion_mnist.py
	$(BIN)/python benchmarks/bench_table.py

test: setup data browser
	$(BIN)/python -m pytest

# The tests whose paths depend on CPU features (int8, precision, Muon), again as an AVX2-only x86-64 runs them:
# PyTorch, oneDNN and MKL capped at AVX2 (vitkit.hardware.AVX2_ENV). About a minute; .ci/run runs it after `make test`.
AVX2_TESTS := tests/test_hardware.py tests/test_int8.py tests/test_inference.py tests/test_train.py::test_muon_steps_each_hidden_matrix_by_the_polar_factor_of_its_gradient_and_adamw_the_rest "tests/test_train.py::test_resumed_run_ends_with_exactly_the_weights_of_an_uninterrupted_one[muon]" tests/test_serve.py::test_int8_serving_is_calibrated_on_the_checkpoints_data_and_follows_fp32
test-avx2: setup data
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(BIN)/python -m pytest -q $(AVX2_TESTS)

clean:
	rm -rf $(VENV) runs
