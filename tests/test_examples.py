"""Smoke tests: every example runs with its `--quick` budget and prints what it promises.

Each example runs once, as a script in a subprocess, inside the one test that checks it: under
pytest-xdist the examples spread over the workers and none runs twice (a module-scoped fixture
would run every example once per worker).
"""

from __future__ import annotations

import csv
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from gradcore_jax import idx

# End-to-end runs of every example: `pytest -m slow` (left out of the default run, see pyproject.toml).
pytestmark = pytest.mark.slow

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run_example(name: str, *args: str) -> subprocess.CompletedProcess:
  # The examples import gradcore_jax from this checkout even where it is not pip-installed.
  root = str(EXAMPLES.parent)
  path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
  return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                        timeout=300, env=env, check=False)


def _stdout(name: str, *args: str) -> str:
  result = _run_example(name, *args)
  assert result.returncode == 0, result.stderr
  return result.stdout


def _write_fake_mnist(directory: pathlib.Path) -> None:
  """80 training and 20 test images of random pixels, in both spellings and with a gzipped file."""
  rng = np.random.default_rng(0)
  for split, n in (("train", 80), ("t10k", 20)):
    idx.write_idx(directory / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    idx.write_idx(directory / f"{split}-labels.idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))


@pytest.mark.parametrize(
    "script, expected",
    [
        ("huber_rmsprop.py", ["RMSprop state", "1.00x the parameters", "TrainingStats: epochs_trained=3"]),
        ("flax_linen.py", ["TrainingStats: epochs_trained=3", "TrainState.step = 36 updates"]),
        ("flax_nnx.py", ["TrainingStats: epochs_trained=3", "nnx.Optimizer.step = 36 updates"]),
    ],
)
def test_example_prints_its_figures(script, expected):
  stdout = _stdout(script, "--quick")
  for text in expected:
    assert text in stdout


def test_loss_vs_metric_prints_its_three_parts_and_the_numbers_agree_where_they_must():
  stdout = _stdout("loss_vs_metric.py", "--quick")
  for text in ("1. Batch loss vs running metric", "2. The same epoch", "3. The training loop"):
    assert text in stdout
  rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", stdout, flags=re.MULTILINE)
  assert len(rows) == 10 and rows[0][1] == rows[0][2]  # batch 1: its loss is the running figure
  evaluations = re.findall(r"MSE of the final weights, all 100 examples\s+([\d.]+)\n.*batches of 7\s+([\d.]+)", stdout)
  assert evaluations and evaluations[0][0] == evaluations[0][1]


def test_linear_regression_works_the_first_step_out_by_hand(tmp_path):
  stdout = _stdout("linear_regression.py", "--quick", "--out", str(tmp_path))
  rows = [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines() if "lr*" in line]
  assert [row[0] for row in rows] == ["sgd", "sgd_ema", "rmsprop", "adam"]
  for _, _, by_hand, library in rows:
    assert by_hand == library
  assert (tmp_path / "linear_regression_regression.png").read_bytes()[:8] == PNG_MAGIC


def test_digits_example_prints_the_table_and_plots(tmp_path):
  stdout = _stdout("digits_optimizers.py", "--quick", "--optimizers", "sgd,adam", "--preset", "article",
                   "--out", str(tmp_path))
  assert "updates to loss <= 0.04" in stdout and "2.00x" in stdout
  assert "preset article: the article's coefficients" in stdout
  assert (tmp_path / "compare_digits.png").read_bytes()[:8] == PNG_MAGIC


def test_each_example_writes_plots_to_a_folder_of_its_own(monkeypatch):
  """Not `gradcore-compare/` (the main job's), and not each other's."""
  monkeypatch.syspath_prepend(str(EXAMPLES))
  import _shared  # pylint: disable=g-import-not-at-top

  defaults = {}
  for script in ("linear_regression", "digits_optimizers", "port_pytorch_recipe", "cnn_batchnorm_dropout"):
    source = (EXAMPLES / f"{script}.py").read_text()
    assert f'plots="{script}"' in source
    defaults[script] = _shared.parser("", plots=script).parse_args([]).out
  assert len(set(defaults.values())) == 4
  assert all(str(out).startswith("gradcore-examples") for out in defaults.values())


def test_mnist_example_trains_on_idx_files_and_says_what_is_missing(tmp_path):
  data, empty = tmp_path / "mnist", tmp_path / "empty"
  data.mkdir()
  empty.mkdir()
  _write_fake_mnist(data)
  stdout = _stdout("mnist_idx.py", "--quick", "--data-dir", str(data))
  assert "80 training and 20 test images of 784 pixels" in stdout
  assert re.search(r"^\s+1\s+[\d.]+\s+[\d.]+\s+[\d.]+ %$", stdout, flags=re.MULTILINE)
  result = _run_example("mnist_idx.py", "--quick", "--data-dir", str(empty))
  assert result.returncode == 1
  assert "No train-images-idx3-ubyte in" in result.stderr


def test_ported_pytorch_recipe_matches_live_torch_in_float64(tmp_path):
  """The reference is live PyTorch: AdamW groups, OneCycleLR cycling beta1, clip_grad_norm_, and a
  state_dict handed over half-way in both directions; every batch loss within 1e-9."""
  stdout = _stdout("port_pytorch_recipe.py", "--quick", "--out", str(tmp_path))
  differences = [float(d) for d in re.findall(r"largest batch-loss difference ([\d.e+-]+)", stdout)]
  assert len(differences) == 3 and max(differences) <= 1e-9, stdout
  assert "within the 1e-09 float64 budget" in stdout
  assert (tmp_path / "port_pytorch_recipe.png").read_bytes()[:8] == PNG_MAGIC


def test_cnn_example_logs_every_epoch_restores_the_best_and_scores_both_modes(tmp_path):
  """BatchNorm + Dropout CNN: the CSVLogger file has one row per epoch, EarlyStopping's best epoch is the
  lowest eval_loss, and `evaluate` of the returned model (restore_best) equals that epoch's eval figures."""
  stdout = _stdout("cnn_batchnorm_dropout.py", "--quick", "--out", str(tmp_path))
  with open(tmp_path / "training.csv", newline="") as file:
    rows = list(csv.DictReader(file))
  assert [row["epoch"] for row in rows] == ["0", "1", "2"]
  assert {"loss", "accuracy", "f1_macro", "eval_loss", "eval_accuracy", "eval_f1_macro"} <= set(rows[0])
  best = int(re.search(r"best epoch (\d+) \(test loss", stdout)[1])
  assert best == int(np.argmin([float(row["eval_loss"]) for row in rows]))  # patience 6 > 3 epochs: no stop
  assert "ran all epochs" in stdout and f"matches stats.eval_metrics[{best}]" in stdout
  shown = re.search(r"eval mode, gcj.evaluate:  accuracy ([\d.]+) %", stdout)[1]
  assert shown == f"{100 * float(rows[best]['eval_accuracy']):.2f}"
  assert re.search(r"train mode, batches of 32 \(dropout on, batch statistics\): accuracy [\d.]+ %", stdout)
  assert "TrainingStats: epochs_trained=3, total_steps=135" in stdout
  assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC
