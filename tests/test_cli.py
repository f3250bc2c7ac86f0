"""Tests of `gradcore-jax compare` (gradcore_jax.compare.cli): options, exit codes, the JSON schema,
the report's sections, plots.

Every run is small (one task, two optimizers, 1-2 epochs, 2-3 rates): the suite shares 2 cores.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

import pytest

from gradcore_jax import optimizers
from gradcore_jax.compare import cli
from gradcore_jax.compare import line_fit
from gradcore_jax.compare import presets
from gradcore_jax.compare import report
from gradcore_jax.compare import sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = ("--epochs", "1", "--lr-grid", "0.01:1:3")  # a 3-rate sweep of one epoch


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
    (["compare", "--optimizers", "muon"], "muon cannot train the experiments' scalar and vector parameters"),
    (["compare", "--lr", "adam"], "expected NAME=VALUE"),
    (["compare", "--lr", "=0.1"], "expected NAME=VALUE"),
    (["compare", "--lr", "adam=fast"], "is not a number"),
    (["compare", "--lr", "adam=-1"], "must be a positive finite number"),
    (["compare", "--lr", "adam=nan"], "must be a positive finite number"),
    (["compare", "--lr", "adam=inf"], "must be a positive finite number"),
    (["compare", "--lr", "adam=0"], "must be a positive finite number"),
    (["compare", "--lr", "nope=0.1"], "Unknown optimizer 'nope'"),
    (["compare", "--lr", "adamw=0.1"], "--lr names adamw, which --optimizers does not include"),
    (["compare", "--lr", "sgd=0.1", "--optimizers", "adam"], "--lr names sgd, which --optimizers does not include"),
    (["compare", "--lr", "adam=0.1", "--lr", "adam=0.2"], "learning rate given twice for adam"),
    (["compare", "--lr-grid", "1e-3:1"], "expected LOW:HIGH:POINTS"),
    (["compare", "--lr-grid", "1:1e-3:3"], "Expected low <= high"),
    (["compare", "--lr-grid", "0:1:3"], "must be a positive finite number"),
    (["compare", "--lr-grid", "1e-3:1:0"], "must be >= 1, got 0"),
    (["compare", "--task", "vision"], "invalid choice: 'vision'"),
    (["compare", "--preset", "keras"], "invalid choice: 'keras'"),
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


def test_cross_checked_options_print_compares_usage_not_the_top_levels(capsys):
  code, _, err = run(capsys, "compare", "--lr", "sgd=0.1", "--optimizers", "adam")
  assert code == 2
  assert err.startswith("usage: gradcore-jax compare ") and "gradcore-jax compare: error: --lr names sgd" in err


def test_help_explains_every_option_the_presets_the_rule_and_the_runtime(capsys):
  code, out, _ = run(capsys, "compare", "--help")
  assert code == 0
  for option in ("--task", "--optimizers", "--preset", "--sweep", "--no-sweep", "--lr-grid", "--epochs",
                 "--batch-size", "--lr", "--seed", "--out", "--json", "--no-plot"):
    assert option in out
  for name in optimizers.names():
    if name != "muon":
      assert name in out
  assert "default learning rates" in out and "best rate rule" in out
  for preset in presets.PRESETS.values():
    assert preset.description in " ".join(out.split())
  assert f"about {cli.TYPICAL_SECONDS} s on 2 CPU cores; {cli.TYPICAL_SECONDS_NO_SWEEP} s with --no-sweep" in out


def test_regression_without_a_sweep_tells_the_articles_story(capsys):
  summary, err = run_json(capsys, "--task", "regression", "--no-sweep", "--preset", "torch")
  results = summary["tasks"]["regression"]["torch"]
  assert list(summary["tasks"]) == ["regression"] and summary["rule"] is None
  assert list(results) == list(presets.DEFAULT_OPTIMIZERS)
  for figures in results.values():
    assert set(figures) == {"lr", "updates_to_threshold", "final_loss", "diverged", "m", "b"}
    assert figures["lr"] == 0.1 and figures["diverged"] is False
  # After 2 epochs SGD (and its EMA momentum) is far from m = 30; RMSprop and Adam are close.
  assert results["sgd"]["m"] < 20 and results["sgd_ema"]["m"] < 20
  for name in ("rmsprop", "adam"):
    assert abs(results[name]["m"] - 30) < 1.5 and abs(results[name]["b"] - 2) < 0.5
    assert results[name]["final_loss"] < results["sgd"]["final_loss"] / 5
  # The human-readable report went to stderr: the table at the default rates, and the claims.
  assert "At the default learning rates" in err and "Sweep:" not in err
  assert "[1] regression: \"SGD barely moves the slow parameter" in err
  assert [c["preset"] for c in summary["claims"]] == ["torch"] * 4
  assert all(c["at_best"] is None for c in summary["claims"])


def test_a_small_sweep_of_digits_under_both_presets(capsys):
  summary, err = run_json(capsys, "--task", "digits", "--optimizers", "sgd,adam", *SMALL)
  tasks = summary["tasks"]["digits"]
  assert list(tasks) == ["torch", "article"] and summary["rule"] == sweep.BEST_RULE
  for preset in tasks.values():
    for figures in preset.values():
      assert set(figures) == {"lr", "updates_to_threshold", "final_loss", "diverged", "test_accuracy", "sweep"}
      rates = [row["lr"] for row in figures["sweep"]]
      assert {0.01, 0.1, 1.0} <= set(rates) and figures["lr"] in rates  # the grid and the default rate
  assert "Sweep: final loss at each learning rate (3 rates from 0.01 to 1" in err
  assert "preset torch" in err and "preset article" in err and "At each optimizer's best rate:" in err
  # Without rmsprop the digits claims cannot be decided, and the report says why.
  assert "needs rmsprop (add it to --optimizers)" in err
  assert {c["at_best"]["holds"] for c in summary["claims"]} == {None}


def test_lr_option_fixes_a_rate_and_the_seed_reaches_the_experiment(capsys):
  summary, err = run_json(capsys, "--task", "regression", "--optimizers", "sgd,adam", "--lr", "sgd=0.3", "--seed", "3",
                          "--preset", "torch", *SMALL)
  sgd = summary["tasks"]["regression"]["torch"]["sgd"]
  assert sgd["lr"] == 0.3 and [row["lr"] for row in sgd["sweep"]] == [0.3]  # not swept
  setup = line_fit.LineFitSetup(seed=3, epochs=1)
  expected = line_fit.compare_line_fit({"sgd": 0.3}, setup).results["sgd"]
  assert sgd["m"] == pytest.approx(expected.m, rel=1e-5)
  assert "0.3 (--lr)" in err and "except sgd=0.3 (--lr)" in err


def test_epochs_and_batch_size_reach_the_experiment(capsys):
  code, out, _ = run(capsys, "compare", "--task", "regression", "--no-plot", "--no-sweep", "--epochs", "3",
                     "--batch-size", "7", "--optimizers", "adam", "--preset", "torch")
  assert code == 0
  assert "3 epochs of batches of 7 = 216 updates per run" in out  # 3 * ceil(500 / 7)


def test_the_explanations_follow_the_optimizers_that_ran(capsys):
  code, out, _ = run(capsys, "compare", "--task", "spreadsheet", "--no-plot", "--no-sweep", "--optimizers", "adam",
                     "--preset", "article")
  assert code == 0
  assert "- adam divide each parameter's gradient" in out
  assert "lr x gradient" not in out and "sgd" not in out.split("The article's claims")[0]


def test_a_diverging_run_is_reported_and_the_json_stays_valid(capsys):
  summary, err = run_json(capsys, "--task", "spreadsheet", "--optimizers", "sgd", "--lr", "sgd=0.1", "--no-sweep",
                          "--preset", "torch")
  sgd = summary["tasks"]["spreadsheet"]["torch"]["sgd"]
  assert sgd["diverged"] is True and sgd["final_loss"] is None and sgd["m"] is None  # not NaN, which JSON cannot hold
  assert "diverged" in err


def test_plots_are_written_where_it_says(capsys, tmp_path):
  out_dir = tmp_path / "plots"
  code, out, _ = run(capsys, "compare", "--task", "regression", "--optimizers", "sgd,sgd_ema", "--out", str(out_dir),
                     *SMALL)
  assert code == 0
  for name in ("compare_regression.png", "compare_sweep.png"):
    path = out_dir / name
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert str(path) in out
  assert "Finished in" in out and f"about {cli.TYPICAL_SECONDS} s on 2 CPU cores" in out


def test_without_matplotlib_it_says_so_before_running_and_no_plot_needs_none(capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # importing it now raises ImportError
  args = ("compare", "--task", "regression", "--optimizers", "adam", "--no-sweep", "--epochs", "1", "--preset", "torch")
  code, out, err = run(capsys, *args)
  assert code == 1
  assert "Plots need matplotlib: pip install 'gradcore-jax[examples]' (or pass --no-plot)" in err
  assert out == ""  # nothing ran
  code, out, _ = run(capsys, *args, "--no-plot")
  assert code == 0 and "Line fit" in out and "Plots" not in out


def test_format_table_aligns_columns():
  table = report.format_table(["name", "value"], [["a", "1.5"], ["long name", "10"]])
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
  if "No module named 'gradcore_jax'" in result.stderr:
    pytest.skip("the console script belongs to an installation of another checkout")
  assert result.returncode == 0
  assert "--optimizers" in result.stdout


# --------------------------------------------------------------------------------------
# Output paths are checked before any experiment runs; results survive a failed write.


@pytest.mark.parametrize(
  "kind, message",
  [
    ("a file", "exists and is not a folder"),
    ("under a file", "is a file, so"),
    ("a plot name taken by a folder", "compare_regression.png is a folder, where a plot is to be written"),
    ("the sweep plot taken by a folder", "compare_sweep.png is a folder, where a plot is to be written"),
  ],
)
def test_an_unusable_out_exits_2_before_running_anything(capsys, tmp_path, monkeypatch, kind, message):
  monkeypatch.setattr(sweep, "run_task", lambda *a, **k: pytest.fail("ran before checking --out"))
  (tmp_path / "file").write_text("x")
  (tmp_path / "plots" / "compare_regression.png").mkdir(parents=True)
  (tmp_path / "swept" / "compare_sweep.png").mkdir(parents=True)
  out = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "plots",
         "a plot name taken by a folder": tmp_path / "plots",
         "the sweep plot taken by a folder": tmp_path / "swept"}[kind]
  code, stdout, err = run(capsys, "compare", "--json", "--task", "regression", "--out", str(out))
  assert code == 2 and stdout == ""
  assert err.startswith("usage: gradcore-jax compare ")
  assert "--out: " in err and message in err and "(or pass --no-plot)" in err


def test_results_are_printed_even_when_the_plots_cannot_be_written(capsys, tmp_path, monkeypatch):
  from gradcore_jax.compare import plots  # pylint: disable=g-import-not-at-top

  def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(plots, "save_plots", full_disk)
  code, stdout, err = run(capsys, "compare", "--json", "--task", "regression", "--optimizers", "adam", "--epochs", "1",
                          "--no-sweep", "--preset", "torch", "--out", str(tmp_path))
  assert code == 1 and "the plots could not be written" in err and "No space left" in err
  assert list(json.loads(stdout)["tasks"]["regression"]["torch"]) == ["adam"]
