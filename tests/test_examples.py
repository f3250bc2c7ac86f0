"""Smoke tests: every example runs with its `--quick` budget and prints what it promises.

The examples run as scripts in subprocesses, two at a time (most of each run is importing
and compiling, one core each), once per module; each test then checks one run.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from gradcore_jax import idx

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run_example(name: str, *args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                        timeout=300, env=env, check=False)


def _write_fake_mnist(directory: pathlib.Path) -> None:
  """80 training and 20 test images of random pixels, in both spellings and with a gzipped file."""
  rng = np.random.default_rng(0)
  for split, n in (("train", 80), ("t10k", 20)):
    idx.write_idx(directory / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    idx.write_idx(directory / f"{split}-labels.idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
  made = {name: tmp_path_factory.mktemp(name) for name in ("plots", "mnist", "empty")}
  _write_fake_mnist(made["mnist"])
  return made


@pytest.fixture(scope="module")
def runs(paths: dict[str, pathlib.Path]) -> dict[str, subprocess.CompletedProcess]:
  commands = {
      "loss_vs_metric": ["loss_vs_metric.py", "--quick"],
      "huber_rmsprop": ["huber_rmsprop.py", "--quick"],
      "flax_linen": ["flax_linen.py", "--quick"],
      "flax_nnx": ["flax_nnx.py", "--quick"],
      "linear_regression": ["linear_regression.py", "--quick", "--out", str(paths["plots"])],
      "digits": ["digits_optimizers.py", "--quick", "--optimizers", "sgd,adam", "--out", str(paths["plots"])],
      "mnist": ["mnist_idx.py", "--quick", "--data-dir", str(paths["mnist"])],
      "mnist_missing": ["mnist_idx.py", "--quick", "--data-dir", str(paths["empty"])],
      "port": ["port_pytorch_recipe.py", "--quick", "--out", str(paths["plots"])],
  }
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    futures = {key: pool.submit(_run_example, *command) for key, command in commands.items()}
    return {key: future.result() for key, future in futures.items()}


def _stdout(runs: dict[str, subprocess.CompletedProcess], key: str) -> str:
  result = runs[key]
  assert result.returncode == 0, result.stderr
  return result.stdout


@pytest.mark.parametrize(
    "key, expected",
    [
        ("loss_vs_metric", ["1. Batch loss vs running metric", "2. The same epoch", "3. The training loop"]),
        ("huber_rmsprop", ["RMSprop state", "1.00x the parameters", "TrainingStats: epochs_trained=3"]),
        ("flax_linen", ["TrainingStats: epochs_trained=3", "TrainState.step = 36 updates"]),
        ("flax_nnx", ["TrainingStats: epochs_trained=3", "nnx.Optimizer.step = 36 updates"]),
    ],
)
def test_example_prints_its_figures(runs, key, expected):
  stdout = _stdout(runs, key)
  for text in expected:
    assert text in stdout


def test_loss_vs_metric_numbers_agree_where_they_must(runs):
  stdout = _stdout(runs, "loss_vs_metric")
  rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", stdout, flags=re.MULTILINE)
  assert len(rows) == 10 and rows[0][1] == rows[0][2]  # batch 1: its loss is the running figure
  evaluations = re.findall(r"MSE of the final weights, all 100 examples\s+([\d.]+)\n.*batches of 7\s+([\d.]+)", stdout)
  assert evaluations and evaluations[0][0] == evaluations[0][1]


def test_linear_regression_works_the_first_step_out_by_hand(runs, paths):
  stdout = _stdout(runs, "linear_regression")
  rows = [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines() if "lr*" in line]
  assert [row[0] for row in rows] == ["sgd", "sgd_ema", "rmsprop", "adam"]
  for _, _, by_hand, library in rows:
    assert by_hand == library
  assert (paths["plots"] / "linear_regression.png").read_bytes()[:8] == PNG_MAGIC


def test_digits_example_prints_the_table_and_plots(runs, paths):
  stdout = _stdout(runs, "digits")
  assert "updates to loss <= 0.04" in stdout and "2.00x" in stdout
  assert (paths["plots"] / "compare_digits.png").read_bytes()[:8] == PNG_MAGIC


def test_mnist_example_trains_on_idx_files(runs):
  stdout = _stdout(runs, "mnist")
  assert "80 training and 20 test images of 784 pixels" in stdout
  assert re.search(r"^\s+1\s+[\d.]+\s+[\d.]+\s+[\d.]+ %$", stdout, flags=re.MULTILINE)


def test_mnist_example_says_what_is_missing(runs):
  result = runs["mnist_missing"]
  assert result.returncode == 1
  assert "No train-images-idx3-ubyte in" in result.stderr


def test_ported_pytorch_recipe_matches_live_torch_in_float64(runs, paths):
  """The reference is live PyTorch: AdamW groups, OneCycleLR cycling beta1, clip_grad_norm_, and a
  state_dict handed over half-way in both directions; every batch loss within 1e-9."""
  stdout = _stdout(runs, "port")
  differences = [float(d) for d in re.findall(r"largest batch-loss difference ([\d.e+-]+)", stdout)]
  assert len(differences) == 3 and max(differences) <= 1e-9, stdout
  assert "within the 1e-09 float64 budget" in stdout
  assert (paths["plots"] / "port_pytorch_recipe.png").read_bytes()[:8] == PNG_MAGIC
