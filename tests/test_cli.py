"""Tests of `gradcore-jax` (gradcore_jax.cli): options, exit codes, the JSON schema, plots."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from typing import Any

import pytest

from gradcore_jax import cli
from gradcore_jax import experiments
from gradcore_jax import optimizers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
  code = cli.main(list(argv))
  out, err = capsys.readouterr()
  return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[dict[str, Any], str]:
  """Runs with --json --no-plot; stdout must be exactly one JSON document."""
  code, out, err = run(capsys, "compare", "--json", "--no-plot", *argv)
  assert code == 0, err
  return json.loads(out), err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "--optimizers", "sgd,nope"], "Unknown optimizer 'nope'; choose one of: sgd, sgd_ema"),
        (["compare", "--optimizers", ""], "Unknown optimizer ''"),
        (["compare", "--optimizers", "adam,adam"], "optimizer listed twice: adam"),
        (["compare", "--lr", "adam"], "expected NAME=VALUE"),
        (["compare", "--lr", "=0.1"], "expected NAME=VALUE"),
        (["compare", "--lr", "adam=fast"], "is not a number"),
        (["compare", "--lr", "adam=-1"], "must be a positive finite number"),
        (["compare", "--lr", "adam=nan"], "must be a positive finite number"),
        (["compare", "--lr", "adam=0"], "must be a positive finite number"),
        (["compare", "--lr", "nope=0.1"], "Unknown optimizer 'nope'"),
        (["compare", "--lr", "adamw=0.1"], "--lr names adamw, which --optimizers does not include"),
        (["compare", "--lr", "adam=0.1", "--lr", "adam=0.2"], "learning rate given twice for adam"),
        (["compare", "--task", "vision"], "invalid choice: 'vision'"),
        (["compare", "--epochs", "0"], "must be >= 1, got 0"),
        (["compare", "--batch-size", "x"], "expected an integer, got 'x'"),
        (["compare", "--seed", "-1"], "must be >= 0, got -1"),
        (["compare", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(capsys, argv, message):
  code, out, err = run(capsys, *argv)
  assert code == 2
  assert message in err
  assert out == ""


def test_help_explains_every_option_and_the_default_learning_rates(capsys):
  code, out, _ = run(capsys, "compare", "--help")
  assert code == 0
  for option in ("--task", "--optimizers", "--epochs", "--batch-size", "--lr", "--seed", "--out", "--json",
                 "--no-plot"):
    assert option in out
  for name in optimizers.names():
    assert name in out
  assert "default learning rates" in out


def test_every_optimizer_has_a_positive_default_learning_rate_for_both_tasks():
  for task in experiments.TASKS:
    rates = experiments.learning_rates(task, optimizers.names())
    assert list(rates) == list(optimizers.names())
    assert all(lr > 0 for lr in rates.values())
  with pytest.raises(ValueError, match="Unknown task 'vision'"):
    experiments.default_learning_rate("vision", "sgd")
  with pytest.raises(ValueError, match="Unknown optimizer"):
    experiments.default_learning_rate("digits", "nope")


def test_regression_json_tells_the_articles_story(capsys):
  summary, err = run_json(capsys, "--task", "regression")
  results = summary["tasks"]["regression"]
  assert list(summary["tasks"]) == ["regression"]
  assert list(results) == list(experiments.DEFAULT_OPTIMIZERS)
  for figures in results.values():
    assert set(figures) == {"m", "b", "final_loss"}
    assert all(isinstance(v, float) for v in figures.values())
  # After 2 epochs SGD (and its EMA momentum) is far from m = 30; RMSprop and Adam are close.
  assert results["sgd"]["m"] < 20 and results["sgd_ema"]["m"] < 20
  for name in ("rmsprop", "adam"):
    assert abs(results[name]["m"] - 30) < 1.5 and abs(results[name]["b"] - 2) < 0.5
    assert results[name]["final_loss"] < results["sgd"]["final_loss"] / 5
  # The human-readable report went to stderr, with the learning rates used.
  assert "Line fit" in err and "lr" in err and "0.1" in err


def test_digits_json_schema_and_numbers(capsys):
  summary, err = run_json(capsys, "--task", "digits", "--epochs", "2", "--optimizers", "sgd,adam")
  results = summary["tasks"]["digits"]
  assert list(results) == ["sgd", "adam"]
  for figures in results.values():
    assert set(figures) == {"updates_to_threshold", "final_loss", "test_accuracy"}
    threshold = figures["updates_to_threshold"]
    assert threshold is None or (isinstance(threshold, int) and 1 <= threshold <= 46)
    assert 0 < figures["final_loss"] < 0.2
    assert 0.2 < figures["test_accuracy"] <= 1  # 10 % is chance; two epochs learn much more
  assert "updates to loss <= 0.04" in err


def test_lr_option_and_seed_reach_the_experiment(capsys):
  summary, err = run_json(capsys, "--task", "regression", "--optimizers", "sgd", "--lr", "sgd=0.3", "--seed", "3")
  expected = experiments.compare_line_fit({"sgd": 0.3}, experiments.LineFitSetup(seed=3)).results["sgd"]
  assert summary["tasks"]["regression"]["sgd"]["m"] == pytest.approx(expected.m)
  assert "sgd        0.3" in err


def test_epochs_and_batch_size_reach_the_experiment(capsys):
  code, out, _ = run(capsys, "compare", "--task", "regression", "--no-plot", "--epochs", "3", "--batch-size", "7",
                     "--optimizers", "adam")
  assert code == 0
  assert "3 epochs of batches of 7 = 216 updates per optimizer" in out  # 3 * ceil(500 / 7)


def test_a_diverging_run_is_reported_and_the_json_stays_valid(capsys):
  summary, err = run_json(capsys, "--optimizers", "sgd", "--lr", "sgd=1e6", "--epochs", "1")
  regression, digits = summary["tasks"]["regression"]["sgd"], summary["tasks"]["digits"]["sgd"]
  assert regression["final_loss"] is None  # not NaN, which JSON cannot hold
  assert digits == {"updates_to_threshold": None, "final_loss": None, "test_accuracy": None}
  assert "diverged" in err


def test_plots_are_written_where_it_says(capsys, tmp_path):
  out_dir = tmp_path / "plots"
  code, out, _ = run(capsys, "compare", "--epochs", "1", "--optimizers", "sgd,adam", "--out", str(out_dir))
  assert code == 0
  for name in ("compare_regression.png", "compare_digits.png"):
    path = out_dir / name
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert str(path) in out


def test_without_matplotlib_it_says_so_before_running_and_no_plot_needs_none(capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # importing it now raises ImportError
  code, out, err = run(capsys, "compare", "--task", "regression", "--optimizers", "adam", "--epochs", "1")
  assert code == 1
  assert "Plots need matplotlib: pip install 'gradcore-jax[examples]' (or pass --no-plot)" in err
  assert out == ""  # nothing ran
  code, out, _ = run(capsys, "compare", "--task", "regression", "--optimizers", "adam", "--epochs", "1", "--no-plot")
  assert code == 0 and "Line fit" in out and "Plots" not in out


def test_format_table_aligns_columns():
  table = cli.format_table(["name", "value"], [["a", "1.5"], ["long name", "10"]])
  assert table.splitlines() == ["name       value", "---------  -----", "a            1.5", "long name     10"]


def test_python_dash_m_runs_the_command():
  result = subprocess.run([sys.executable, "-m", "gradcore_jax", "compare", "--optimizers", "nope"],
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 2
  assert "Unknown optimizer 'nope'" in result.stderr


@pytest.mark.skipif(shutil.which("gradcore-jax") is None, reason="the console script is not installed")
def test_console_script_is_installed():
  result = subprocess.run(["gradcore-jax", "compare", "--help"], capture_output=True, text=True, timeout=120,
                          check=False)
  assert result.returncode == 0
  assert "--optimizers" in result.stdout


def test_summary_turns_non_finite_numbers_into_null():
  result = experiments.DigitsResult("sgd", 1.0, batch_losses=[], updates_to_threshold=None,
                                    final_loss=math.inf, test_accuracy=math.nan)
  comparison = experiments.DigitsComparison(experiments.DigitsSetup(), 10, {"sgd": result})
  summary = experiments.summary(digits=comparison)
  assert summary == {"tasks": {"digits": {"sgd": {"updates_to_threshold": None, "final_loss": None,
                                                  "test_accuracy": None}}}}
  json.dumps(summary, allow_nan=False)


# --------------------------------------------------------------------------------------
# Output paths are checked before any experiment runs; results survive a failed write.


@pytest.mark.parametrize(
    "kind, message",
    [
        ("a file", "exists and is not a folder"),
        ("under a file", "is a file, so"),
        ("a plot name taken by a folder", "compare_regression.png is a folder, where a plot is to be written"),
    ],
)
def test_an_unusable_out_exits_2_before_running_anything(capsys, tmp_path, monkeypatch, kind, message):
  monkeypatch.setattr(experiments, "compare_line_fit", lambda *a, **k: pytest.fail("ran before checking --out"))
  (tmp_path / "file").write_text("x")
  (tmp_path / "plots" / "compare_regression.png").mkdir(parents=True)
  out = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "plots",
         "a plot name taken by a folder": tmp_path / "plots"}[kind]
  code, stdout, err = run(capsys, "compare", "--json", "--task", "regression", "--out", str(out))
  assert code == 2 and stdout == ""
  assert "--out: " in err and message in err and "(or pass --no-plot)" in err


def test_results_are_printed_even_when_the_plots_cannot_be_written(capsys, tmp_path, monkeypatch):
  from gradcore_jax import plotting  # pylint: disable=g-import-not-at-top

  def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(plotting, "save_comparison_plots", full_disk)
  code, stdout, err = run(capsys, "compare", "--json", "--task", "regression", "--optimizers", "adam", "--epochs", "1",
                          "--out", str(tmp_path))
  assert code == 1 and "the plots could not be written" in err and "No space left" in err
  assert list(json.loads(stdout)["tasks"]["regression"]) == ["adam"]
