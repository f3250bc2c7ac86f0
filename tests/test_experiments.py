"""Tests of the main job's experiments (gradcore_jax.compare: line_fit, digits, presets, sweep,
claims, report, plots) against NumPy replays, live torch and hand-made trials.

Everything runs small (100 points, 1-2 epochs, 2-3 learning rates): the suite shares 2 cores.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from _torch_reference import precision

import gradcore_jax as gcj
from gradcore_jax import experiments
from gradcore_jax.compare import claims
from gradcore_jax.compare import digits
from gradcore_jax.compare import line_fit
from gradcore_jax.compare import plots
from gradcore_jax.compare import presets
from gradcore_jax.compare import report
from gradcore_jax.compare import sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL_LINE = dataclasses.replace(line_fit.REGRESSION, num_points=100)


@pytest.fixture(scope="module")
def digits_split() -> digits.Split:
  return digits.digits_data(seed=0)


# --------------------------------------------------------------------------------------
# The line fit.


def _replay_sgd_line_fit(setup: line_fit.LineFitSetup, lr: float) -> tuple[float, float, np.ndarray]:
  """Plain SGD on the masked mean squared error of each batch, in float64, in the scan's order."""
  x, y = line_fit.line_data(setup)
  batches = line_fit.line_batches(x, y, setup)
  m = b = 0.0
  batch_losses = []
  for bx, by, mask in zip(batches.x, batches.y, batches.mask, strict=True):
    bx, by = bx[mask].astype(np.float64), by[mask].astype(np.float64)
    error = m * bx + b - by
    batch_losses.append(np.mean(error**2))
    m, b = m - lr * np.mean(2 * error * bx), b - lr * np.mean(2 * error)
  return m, b, np.array(batch_losses)


@pytest.mark.parametrize("batch_size", [1, 7])  # 7: every epoch ends with a short, masked batch
def test_fit_line_with_sgd_matches_a_numpy_replay(batch_size):
  setup = line_fit.LineFitSetup(num_points=60, epochs=2, batch_size=batch_size, seed=1)
  x, y = line_fit.line_data(setup)
  result = line_fit.fit_line("sgd", 0.1, x, y, setup)
  m, b, batch_losses = _replay_sgd_line_fit(setup, 0.1)
  assert result.m == pytest.approx(m, rel=1e-4)
  assert result.b == pytest.approx(b, rel=1e-4)
  np.testing.assert_allclose(result.batch_losses, batch_losses, rtol=1e-4)
  assert result.batch_losses.shape == (setup.updates,)
  assert result.path.shape == (setup.updates + 1, 2)
  np.testing.assert_array_equal(result.path[0], [0, 0])
  np.testing.assert_array_equal(result.path[-1], np.float32([result.m, result.b]))
  assert result.final_loss == pytest.approx(np.mean((result.m * x + result.b - y) ** 2), rel=1e-5)


def test_line_data_follows_the_setup_and_the_seed():
  setup = line_fit.LineFitSetup(num_points=2000, noise=0.0, seed=5)
  x, y = line_fit.line_data(setup)
  assert x.dtype == y.dtype == np.float32
  assert np.all(np.abs(x) <= setup.x_range)
  np.testing.assert_allclose(y, 30 * x + 2, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(x, line_fit.line_data(setup)[0])
  assert not np.array_equal(x, line_fit.line_data(line_fit.LineFitSetup(num_points=2000, seed=6))[0])
  # The spreadsheet: y = 2x + 30 exactly, x in [0, 100].
  x, y = line_fit.line_data(line_fit.SPREADSHEET)
  assert x.shape == (30,) and 0 <= x.min() and x.max() <= 100
  np.testing.assert_allclose(y, 2 * x + 30, rtol=1e-6)


def test_the_slow_parameter_is_the_one_with_the_small_curvature():
  assert line_fit.REGRESSION.slow_parameter == "m" and line_fit.REGRESSION.slow_target == 30
  assert line_fit.SPREADSHEET.slow_parameter == "b" and line_fit.SPREADSHEET.slow_target == 30
  assert line_fit.REGRESSION.updates == 1000 and line_fit.SPREADSHEET.updates == 60
  assert "x uniform in [0, 100]" in line_fit.SPREADSHEET.describe()


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"epochs": 0}, "epochs must be >= 1, got 0"),
    ({"batch_size": 1.5}, "batch_size must be an integer, got 1.5"),
    ({"seed": -1}, "seed must be >= 0, got -1"),
    ({"x_range": 0.0}, "x_range must be a positive finite number"),
    ({"noise": -1.0}, "noise must be a finite number >= 0"),
    ({"loss_threshold": math.nan}, "loss_threshold must be a positive finite number"),
    ({"smoothing": 0}, "smoothing must be >= 1"),
    ({"x_offset": math.inf}, "x_offset must be a finite number"),
  ],
)
def test_line_fit_setup_rejects_bad_values(kwargs, message):
  with pytest.raises(ValueError, match=message):
    line_fit.LineFitSetup(**kwargs)


@pytest.mark.parametrize(
  "rates, message",
  [({}, "learning_rates is empty"), ({"sgd": -0.1}, "learning rate of sgd"), ({"nope": 0.1}, "Unknown optimizer")],
)
def test_comparisons_reject_bad_learning_rates(rates, message):
  with pytest.raises(ValueError, match=message):
    line_fit.compare_line_fit(rates)


def test_loss_surface_is_the_mean_squared_error_at_every_point():
  x, y = line_fit.line_data(SMALL_LINE)
  m, b = np.meshgrid(np.linspace(-5, 40, 7), np.linspace(-3, 6, 5))
  direct = np.mean((m[..., None] * x.astype(np.float64) + b[..., None] - y.astype(np.float64)) ** 2, axis=-1)
  np.testing.assert_allclose(line_fit.loss_surface(x, y, m, b), direct, rtol=1e-10)


# --------------------------------------------------------------------------------------
# Presets.


def test_presets_set_every_coefficient_the_same_way_and_nothing_else():
  for name in gcj.optimizers.names():
    keys = presets.coefficient_names(name)  # raises if the presets disagree on the keys
    for preset in presets.PRESET_NAMES:
      assert sorted(presets.coefficients(preset, name)) == list(keys)
  assert presets.coefficients("article", "adam") == {"b1": 0.9, "b2": 0.9}
  assert presets.coefficients("article", "rmsprop") == {"alpha": 0.9}
  assert presets.coefficients("article", "sgd_ema") == {"beta": 0.9}
  assert presets.coefficients("torch", "adam") == {"b1": 0.9, "b2": 0.999}
  assert presets.coefficients("torch", "rmsprop") == {"alpha": 0.99}
  assert presets.coefficients("torch", "sgd") == presets.coefficients("article", "sgd") == {}
  assert presets.get_preset("article").article_sgd == "sgd_ema" and presets.get_preset("torch").article_sgd == "sgd"
  with pytest.raises(ValueError, match="Unknown preset 'keras'; choose one of: torch, article"):
    presets.coefficients("keras", "adam")


@pytest.mark.parametrize(
  "name, preset, torch_optimizer",
  [
    ("adam", "torch", lambda p, lr: torch.optim.Adam(p, lr=lr)),
    ("adam", "article", lambda p, lr: torch.optim.Adam(p, lr=lr, betas=(0.9, 0.9))),
    ("rmsprop", "torch", lambda p, lr: torch.optim.RMSprop(p, lr=lr)),
    ("rmsprop", "article", lambda p, lr: torch.optim.RMSprop(p, lr=lr, alpha=0.9)),
    ("sgd", "article", lambda p, lr: torch.optim.SGD(p, lr=lr)),
  ],
)
def test_presets_run_what_they_say_against_live_torch(name, preset, torch_optimizer):
  """The reference is live PyTorch 2.13 with the preset's stated coefficients: 30 float32 steps of the
  preset's optimizer, plain and as the injected-hyperparameter version the sweep vmaps, equal to torch's."""
  rng = np.random.default_rng(0)
  start = rng.standard_normal(5).astype(np.float32)
  grads = rng.standard_normal((30, 5)).astype(np.float32)
  lr = 0.01
  with precision(np.float32):
    param = torch.nn.Parameter(torch.tensor(start))
    optimizer = torch_optimizer([param], lr)
    expected = []
    for g in grads:
      param.grad = torch.tensor(g)
      optimizer.step()
      expected.append(param.detach().numpy().copy())
  coefficients = presets.coefficients(preset, name)
  for tx in (
    presets.make_optimizer(name, lr, preset),
    presets.injected_optimizer(name)(
      learning_rate=np.float32(lr), **{k: np.float32(v) for k, v in coefficients.items()}
    ),
  ):
    params = np.array(start)
    state = tx.init(params)
    for g, want in zip(grads, expected, strict=True):
      updates, state = tx.update(g, state, params)
      params = params + np.asarray(updates)
      np.testing.assert_allclose(params, want, rtol=1e-5, atol=1e-6)


def test_sgd_ema_of_both_presets_is_the_articles_zero_start_average():
  """The reference is the article's rule in NumPy: step = 0.9*step + 0.1*grad from step = 0."""
  grads = np.random.default_rng(1).standard_normal((20, 3))
  for preset in presets.PRESET_NAMES:
    tx = presets.make_optimizer("sgd_ema", 0.5, preset)
    params, state, step, replay = np.zeros(3), None, np.zeros(3), np.zeros(3)
    state = tx.init(params)
    for g in grads:
      updates, state = tx.update(g.astype(np.float32), state, params)
      params = params + np.asarray(updates)
      step = 0.9 * step + 0.1 * g
      replay = replay - 0.5 * step
      np.testing.assert_allclose(params, replay, rtol=1e-5, atol=1e-6)


def test_default_learning_rates_cover_every_task_and_optimizer():
  for task in presets.TASKS:
    rates = presets.learning_rates(task, gcj.optimizers.names())
    assert list(rates) == list(gcj.optimizers.names())
    assert all(lr > 0 for lr in rates.values())
  assert presets.default_learning_rate("spreadsheet", "sgd") == 1e-4
  assert presets.default_learning_rate("digits", "adam") == 1e-3
  assert presets.learning_rates("digits", ["adam"], {"adam": 0.5}) == {"adam": 0.5}
  with pytest.raises(ValueError, match="Unknown task 'vision'"):
    presets.default_learning_rate("vision", "sgd")
  with pytest.raises(ValueError, match="Unknown optimizer"):
    presets.default_learning_rate("digits", "nope")


def test_only_muon_is_refused_for_the_experiments_parameters():
  refused = {name: presets.unsupported_reason(name) for name in gcj.optimizers.names()}
  assert [name for name, reason in refused.items() if reason] == ["muon"]
  assert "2-D" in refused["muon"]


# --------------------------------------------------------------------------------------
# Many rows at once: vmap over learning rates and presets.


def _rows(name: str, rates: list[float], preset: str) -> dict[str, np.ndarray]:
  rows = {"learning_rate": np.array(rates)}
  for key, value in presets.coefficients(preset, name).items():
    rows[key] = np.full(len(rates), value)
  return rows


@pytest.mark.parametrize("name, preset", [("adam", "article"), ("rmsprop", "torch")])
def test_vmap_over_learning_rates_equals_a_loop_over_them(name, preset):
  """One vmapped run over 3 rates equals 3 runs of the same program, bit for bit, and equals the
  plain (non-injected) optimizer's `fit_line` to float32 rounding."""
  x, y = line_fit.line_data(SMALL_LINE)
  rates = [0.01, 0.1, 0.3]
  hyperparams = _rows(name, rates, preset)
  together = line_fit.line_fit_rows(name, hyperparams, x, y, SMALL_LINE)
  assert together.batch_losses.shape == (3, SMALL_LINE.updates)
  assert together.path.shape == (3, SMALL_LINE.updates + 1, 2)
  for i, lr in enumerate(rates):
    alone = line_fit.line_fit_rows(name, {k: v[i : i + 1] for k, v in hyperparams.items()}, x, y, SMALL_LINE)
    np.testing.assert_array_equal(together.path[i], alone.path[0])
    np.testing.assert_array_equal(together.batch_losses[i], alone.batch_losses[0])
    plain = line_fit.fit_line(name, lr, x, y, SMALL_LINE, preset)
    scale = np.abs(plain.path).max()
    np.testing.assert_allclose(together.path[i], plain.path, rtol=1e-5, atol=1e-5 * scale)
    assert together.final_loss[i] == pytest.approx(plain.final_loss, rel=1e-4)


def test_vmapped_digits_rows_equal_fit_per_rate(digits_split):
  """The reference is `train_digits`, i.e. `gcj.fit` with a DataLoader, one rate at a time."""
  setup = digits.DigitsSetup(epochs=2, loss_threshold=0.08)
  rates = [1e-3, 1e-2]
  rows = digits.digits_rows("adam", _rows("adam", rates, "torch"), digits_split, setup)
  assert rows.batch_losses.shape == (2, 46)
  for i, lr in enumerate(rates):
    fitted = digits.train_digits("adam", lr, digits_split, setup)
    np.testing.assert_allclose(rows.batch_losses[i], fitted.batch_losses, rtol=1e-5)
    assert rows.final_loss[i] == pytest.approx(fitted.final_loss, rel=1e-5)
    assert rows.test_accuracy[i] == pytest.approx(fitted.test_accuracy, abs=1 / 360)
    assert rows.updates_to_threshold[i] == fitted.updates_to_threshold


def test_learning_rate_grid():
  grid = sweep.learning_rate_grid()
  assert len(grid) == 19 and grid[0] == 1e-5 and grid[-1] == 10
  for power in range(-5, 2):
    assert 10.0**power in grid
  assert sweep.learning_rate_grid(0.01, 1, 3) == (0.01, 0.1, 1.0)
  assert sweep.learning_rate_grid(0.5, 0.5, 1) == (0.5,)
  with pytest.raises(ValueError, match="low <= high"):
    sweep.learning_rate_grid(1, 0.1, 3)
  with pytest.raises(ValueError, match="low must be a positive finite number"):
    sweep.learning_rate_grid(0, 1, 3)


# --------------------------------------------------------------------------------------
# The rule that picks the best rate.


def _trial(lr, *, updates=None, final=0.1, reached=None, diverged=False, name="adam", preset="torch", initial=1.0):
  reached = (updates is not None and final <= 0.04) if reached is None else reached
  return sweep.Trial(name, preset, lr, np.zeros(3), final, initial, updates, reached, diverged)


@pytest.mark.parametrize(
  "trials, best_lr",
  [
    # fewest updates to the threshold among rates that end below it
    ([_trial(0.1, updates=50, final=0.03), _trial(1.0, updates=20, final=0.035), _trial(0.01, final=0.02)], 1.0),
    # reached the threshold but ended above it: does not count as converged
    ([_trial(0.1, updates=50, final=0.03), _trial(1.0, updates=20, final=0.5, reached=False)], 0.1),
    # ties in updates go to the lower final loss
    ([_trial(0.1, updates=20, final=0.03), _trial(1.0, updates=20, final=0.02)], 1.0),
    # nobody converged: the lowest final loss
    ([_trial(0.1, final=0.3), _trial(1.0, final=0.2), _trial(10.0, final=0.5)], 1.0),
    # a diverged run never wins, whatever its numbers
    ([_trial(0.1, final=0.9), _trial(1.0, updates=5, final=0.01, diverged=True)], 0.1),
    # all equal: the smaller rate
    ([_trial(1.0, final=0.2), _trial(0.1, final=0.2)], 0.1),
  ],
)
def test_pick_best_follows_the_stated_rule(trials, best_lr):
  assert sweep.pick_best(trials).learning_rate == best_lr


def test_run_task_sweeps_runs_the_defaults_and_picks_the_documented_best():
  grid = (0.01, 0.1, 1.0)
  run = sweep.run_task(
    "regression",
    SMALL_LINE,
    ["sgd", "adam"],
    ["torch", "article"],
    {"sgd": 0.3, "adam": 0.1},
    grid=grid,
    fixed=["sgd"],
  )
  assert run.swept and run.presets == ("torch", "article") and run.optimizers == ("sgd", "adam")
  for preset in run.presets:
    assert [t.learning_rate for t in run.trials[(preset, "adam")]] == list(grid)  # 0.1 is on the grid
    assert [t.learning_rate for t in run.trials[(preset, "sgd")]] == [0.3]  # fixed: not swept
    assert run.default[(preset, "adam")].learning_rate == 0.1
    for name in run.optimizers:
      trials = run.trials[(preset, name)]
      assert run.best[(preset, name)] is sweep.pick_best(trials)
      assert all(t.preset == preset and t.optimizer == name for t in trials)
  # The presets change Adam's b2 (0.999 -> 0.9), so its runs differ; plain SGD's do not.
  assert run.trials[("torch", "adam")][0].m != run.trials[("article", "adam")][0].m
  assert run.trials[("torch", "sgd")][0].m == run.trials[("article", "sgd")][0].m
  assert run.chosen() is run.best
  unswept = sweep.run_task("regression", SMALL_LINE, ["adam"], ["torch"], {"adam": 0.1})
  assert not unswept.swept and unswept.chosen() is unswept.default
  with pytest.raises(ValueError, match="rates has no learning rate for adam"):
    sweep.run_task("regression", SMALL_LINE, ["adam"], ["torch"], {})
  with pytest.raises(ValueError, match="Unknown preset"):
    sweep.run_task("regression", SMALL_LINE, ["adam"], ["keras"], {"adam": 0.1})


def test_a_diverging_rate_is_marked_and_never_best():
  run = sweep.run_task("spreadsheet", line_fit.SPREADSHEET, ["sgd"], ["torch"], {"sgd": 1e-4}, grid=(1e-4, 1e-2))
  blown = run.trials[("torch", "sgd")][-1]
  assert blown.learning_rate == 1e-2 and blown.diverged and not blown.reached
  assert run.best[("torch", "sgd")].learning_rate == 1e-4


# --------------------------------------------------------------------------------------
# The claims.


def _line_run(task: str, finals: dict[str, tuple[float, float]], setup=None) -> sweep.TaskRun:
  """A line-fit TaskRun (preset torch) whose optimizers end at the given (m, b)."""
  setup = setup or line_fit.LINE_FIT_SETUPS[task]
  trials = {}
  for name, (m, b) in finals.items():
    path = np.array([[0.0, 0.0], [m, b]])
    trials[("torch", name)] = [sweep.Trial(name, "torch", 0.1, np.ones(1), 1.0, 2.0, None, False, False, path)]
  chosen = {key: ts[0] for key, ts in trials.items()}
  return sweep.TaskRun(task, setup, 1, (), trials, chosen, chosen)


def _digits_run(counts: dict[str, int | None], curves=None, preset="torch") -> sweep.TaskRun:
  setup = digits.DigitsSetup(smoothing=1)
  trials = {}
  for name, count in counts.items():
    losses = np.asarray(curves[name]) if curves else np.ones(100)
    trial = sweep.Trial(name, preset, 0.1, losses, 0.03, 0.15, count, count is not None, False, test_accuracy=0.9)
    trials[(preset, name)] = [trial]
  chosen = {key: ts[0] for key, ts in trials.items()}
  return sweep.TaskRun("digits", setup, 100, (), trials, chosen, chosen)


def _verdicts(run: sweep.TaskRun) -> dict[str, bool | None]:
  return {c.claim.key: c.at_default.holds for c in claims.check_claims([run])}


def test_the_line_fit_claims_decide_as_their_rules_say():
  # The article's own spreadsheet figures: b = 1.5 (SGD), 4.72 (RMSprop), 29.25 (Adam); momentum like SGD.
  line_claims = ["sgd_crawls", "momentum_no_better", "rmsprop_partway", "adam_close"]
  finals = {"sgd": (2.3, 1.5), "sgd_ema": (2.3, 1.4), "rmsprop": (2.2, 4.72), "adam": (2.1, 29.25)}
  assert _verdicts(_line_run("spreadsheet", finals)) == dict.fromkeys(line_claims, True)
  # The opposite at every rule's boundary: SGD a quarter of the way, momentum 11 % closer, RMSprop within
  # 10 % of 30, Adam 6 % short. On the regression task the slow parameter is m.
  other = _line_run("regression", {"sgd": (7.5, 2), "sgd_ema": (10.3, 2), "rmsprop": (27.1, 2), "adam": (28.2, 2)})
  assert _verdicts(other) == dict.fromkeys(line_claims, False)
  checks = claims.check_claims([other])
  assert checks[0].at_default.figures == "sgd m = 7.50 (lr 0.1): 25 % of the way"
  assert all(c.at_best is None for c in checks)  # nothing swept


def test_claims_are_undecided_without_their_optimizers_or_when_one_diverged():
  run = _line_run("spreadsheet", {"adam": (2, 29)})
  verdicts = {c.claim.key: c.at_default for c in claims.check_claims([run])}
  assert verdicts["adam_close"].holds is True
  assert verdicts["sgd_crawls"].holds is None and "needs sgd" in verdicts["sgd_crawls"].figures
  blown = dataclasses.replace(run.default[("torch", "adam")], diverged=True)
  run = dataclasses.replace(run, default={("torch", "adam"): blown}, best={("torch", "adam"): blown})
  assert claims.check_claims([run])[3].at_default.holds is None


def test_the_digits_claims_decide_as_their_rules_say():
  # The article: SGD ~800, RMSprop and Adam ~250, Adam lower on the way down.
  steeper = {"sgd": np.ones(100), "rmsprop": np.linspace(1, 0.1, 100), "adam": np.linspace(0.9, 0.09, 100)}
  run = _digits_run({"sgd": 80, "rmsprop": 25, "adam": 24}, steeper)
  assert _verdicts(run) == {"sgd_3x_slower": True, "adaptive_same_time": True, "adam_steeper": True}
  # Today's torch defaults: SGD 462, RMSprop 77, Adam 269 (scaled to 100 updates): all three fail.
  flatter = {"sgd": np.ones(100), "rmsprop": np.linspace(0.5, 0.05, 100), "adam": np.linspace(1, 0.1, 100)}
  run = _digits_run({"sgd": 46, "rmsprop": 8, "adam": 27}, flatter)
  assert _verdicts(run) == {"sgd_3x_slower": False, "adaptive_same_time": False, "adam_steeper": False}
  # SGD never reaching the threshold counts as slower than everything; neither adaptive one: undecided.
  assert _verdicts(_digits_run({"sgd": None, "rmsprop": 40, "adam": 45}))["sgd_3x_slower"] is True
  assert _verdicts(_digits_run({"sgd": None, "rmsprop": None, "adam": None}))["adaptive_same_time"] is None


def test_the_article_preset_plays_sgd_with_the_ema():
  run = _digits_run({"sgd": 20, "sgd_ema": 90, "rmsprop": 30, "adam": 30}, preset="article")
  check = next(c for c in claims.check_claims([run]) if c.claim.key == "sgd_3x_slower")
  assert check.at_default.holds is True and "sgd_ema 90" in check.at_default.figures


def test_reports_and_summary_of_a_small_sweep():
  run = sweep.run_task("regression", SMALL_LINE, ["sgd", "adam"], ["torch", "article"], {"sgd": 0.1, "adam": 0.1},
                       grid=(0.01, 0.1, 10.0))
  table = report.sweep_table(run)
  assert "preset torch" in table.splitlines()[0] and "preset article" in table.splitlines()[0]
  assert table.count("*") == 4  # one best per (preset, optimizer)
  assert "x" in table.splitlines()[-1]  # sgd diverges at lr 10
  text = report.task_report(run)
  assert "At each optimizer's best rate:" in text and "(true)" in text
  checks = claims.check_claims([run])
  assert len(checks) == 4 * 2  # four line-fit claims, two presets
  summary = report.summary([run], checks)
  json.dumps(summary, allow_nan=False)  # diverged numbers are null
  entry = summary["tasks"]["regression"]["torch"]["sgd"]
  assert set(entry) == {"lr", "updates_to_threshold", "final_loss", "diverged", "m", "b", "sweep"}
  assert [row["lr"] for row in entry["sweep"]] == [0.01, 0.1, 10.0]
  assert entry["sweep"][-1] == {"lr": 10.0, "final_loss": None, "updates_to_threshold": None, "diverged": True}
  assert summary["rule"] == sweep.BEST_RULE
  assert {c["claim"] for c in summary["claims"]} == {c.key for c in claims.CLAIMS if "regression" in c.tasks}
  claims_text = report.claims_report(checks)
  assert "needs sgd_ema" in claims_text and "Claims that hold (of those decided)" in claims_text


def test_line_fit_notes_follow_the_optimizers_that_ran():
  only_adam = "\n".join(report.line_fit_notes(line_fit.REGRESSION, ["adam"]))
  assert "adam divide" in only_adam and "lr x gradient" not in only_adam
  only_sgd = "\n".join(report.line_fit_notes(line_fit.SPREADSHEET, ["sgd"]))
  assert "the intercept b crawls" in only_sgd and "running scale" not in only_sgd


# --------------------------------------------------------------------------------------
# Plots.


def test_overlap_notes_say_when_curves_coincide():
  base = np.linspace(1, 0.1, 50)
  notes = plots.overlap_notes({"sgd": base, "sgd_ema": base.copy(), "rmsprop": base * 1.01, "adam": base * 3})
  assert notes == {"sgd_ema": "identical to sgd", "rmsprop": "overlaps sgd"}
  # Where one curve diverges at the end, the rest still overlaps.
  blown = base.copy()
  blown[-5:] = np.nan
  assert plots.overlap_notes({"sgd": blown, "sgd_ema": base}) == {"sgd_ema": "overlaps sgd"}
  assert plots.optimizer_style("sgd") != plots.optimizer_style("sgd_ema")
  assert plots.optimizer_style("nadam") == plots.optimizer_style("nadam")


def test_plots_are_written_for_every_task_and_the_sweep(tmp_path, digits_split):
  del digits_split  # loaded once per module
  runs = [
    sweep.run_task("spreadsheet", line_fit.SPREADSHEET, ["sgd", "adam"], ["torch", "article"],
                   {"sgd": 1e-4, "adam": 1.0}, grid=(1e-4, 1e-2, 1.0)),
    sweep.run_task("digits", digits.DigitsSetup(epochs=1), ["sgd", "adam"], ["torch", "article"],
                   {"sgd": 0.1, "adam": 1e-3}, grid=(1e-3, 0.1)),
  ]
  written = plots.save_plots(tmp_path, runs)
  assert [p.name for p in written] == plots.plot_files(["spreadsheet", "digits"], swept=True)
  for path in written:
    assert path.read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------------------
# Helpers, data, and the fit-based digits run.


def test_trailing_mean_and_updates_to_threshold():
  values = np.array([4.0, 2.0, 6.0, 1.0, 1.0])
  np.testing.assert_allclose(experiments.trailing_mean(values, 2), [4, 3, 4, 3.5, 1])
  np.testing.assert_allclose(experiments.trailing_mean(values, 1), values)
  np.testing.assert_allclose(experiments.trailing_mean(values, 10), np.cumsum(values) / np.arange(1, 6))
  assert experiments.updates_to_threshold(values, 3.0, window=2) == 2  # mean of [4, 2]
  assert experiments.updates_to_threshold(values, 1.0, window=2) == 5
  assert experiments.updates_to_threshold(values, 0.5, window=2) is None
  # Only full windows count: a lucky first value is not convergence.
  assert experiments.updates_to_threshold(np.array([0.0, 9.0, 9.0, 0.0, 0.0]), 1.0, window=2) == 5
  assert experiments.updates_to_threshold(np.array([0.5, 0.5]), 1.0, window=10) == 2  # shorter than the window
  # An infinite loss spoils only the windows that hold it.
  means = experiments.trailing_mean(np.array([1.0, np.inf, 1.0, 1.0]), 2)
  assert means[1] == means[2] == np.inf and means[3] == 1.0
  with pytest.raises(ValueError, match="window must be >= 1"):
    experiments.trailing_mean(values, 0)


def test_init_mlp_and_mlp():
  params = experiments.init_mlp(np.random.default_rng(0), (5, 4, 3))
  assert [(p["w"].shape, p["b"].shape) for p in params] == [((5, 4), (4,)), ((4, 3), (3,))]
  assert np.all(np.abs(params[0]["w"]) <= 1 / np.sqrt(5)) and np.all(np.abs(params[1]["w"]) <= 1 / np.sqrt(4))
  x = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
  hidden = np.maximum(x @ params[0]["w"] + params[0]["b"], 0)
  np.testing.assert_allclose(experiments.mlp(params, x), hidden @ params[1]["w"] + params[1]["b"], rtol=1e-5)
  with pytest.raises(ValueError, match="at least two positive layer widths"):
    experiments.init_mlp(np.random.default_rng(0), (5,))


def test_one_hot_mse_is_the_mse_against_one_hot_rows():
  y_pred = np.array([[0.2, 0.9, 0.0], [1.0, 0.0, 0.5]], np.float32)
  labels = np.array([1, 0])
  expected = np.mean((y_pred - np.eye(3)[labels]) ** 2, axis=1)
  np.testing.assert_allclose(experiments.one_hot_mse(y_pred, labels, reduction="none"), expected, rtol=1e-6)
  assert float(experiments.one_hot_mse(y_pred, labels)) == pytest.approx(expected.mean(), rel=1e-6)


def test_digits_and_diabetes_data(digits_split):
  assert digits_split.x_train.shape == (1437, 64) and digits_split.x_test.shape == (360, 64)
  assert digits_split.x_train.dtype == np.float32 and 0 <= digits_split.x_train.min() <= digits_split.x_train.max() <= 1
  assert np.bincount(digits_split.y_test).min() >= 35  # stratified: about 36 of each digit
  again = experiments.digits_data(seed=0)
  np.testing.assert_array_equal(digits_split.y_test, again.y_test)
  again.x_train[0, 0] = 99  # callers get copies: the cached split stays intact
  assert experiments.digits_data(seed=0).x_train[0, 0] != 99
  assert not np.array_equal(digits_split.y_test, experiments.digits_data(seed=1).y_test)
  diabetes = experiments.diabetes_data(seed=0)
  assert diabetes.x_train.shape == (353, 10)
  assert diabetes.y_train.mean() == pytest.approx(0, abs=1e-5) and diabetes.y_train.std() == pytest.approx(1, rel=1e-5)


def test_train_digits_reports_consistent_figures(digits_split):
  setup = experiments.DigitsSetup(epochs=2, loss_threshold=0.08)
  result = experiments.train_digits("adam", 1e-2, digits_split, setup)
  assert result.batch_losses.shape == (2 * 23,)  # ceil(1437 / 64) = 23 updates per epoch
  assert result.updates_to_threshold == experiments.updates_to_threshold(result.batch_losses, 0.08, setup.smoothing)
  assert result.updates_to_threshold is not None
  assert 0 < result.final_loss < result.batch_losses[0]
  assert 0.7 < result.test_accuracy <= 1
  assert result.diverged_at is None


def test_train_digits_reports_divergence(digits_split):
  result = experiments.train_digits("sgd", 1e6, digits_split, experiments.DigitsSetup(epochs=1))
  assert result.diverged_at is not None and result.updates_to_threshold is None
  assert np.isnan(result.final_loss) and np.isnan(result.test_accuracy)


def test_the_old_module_names_are_the_new_objects():
  from gradcore_jax import cli  # pylint: disable=g-import-not-at-top
  from gradcore_jax import plotting  # pylint: disable=g-import-not-at-top
  from gradcore_jax.compare import cli as compare_cli  # pylint: disable=g-import-not-at-top

  assert experiments.compare_line_fit is line_fit.compare_line_fit
  assert experiments.train_digits is digits.train_digits
  assert cli.main is compare_cli.main and cli.format_table is report.format_table
  assert plotting.save_plots is plots.save_plots
