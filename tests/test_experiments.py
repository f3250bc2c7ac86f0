"""Tests of gradcore_jax.experiments against NumPy replays, and of its helpers and checks."""

from __future__ import annotations

import numpy as np
import pytest

from gradcore_jax import experiments


def _replay_sgd_line_fit(setup: experiments.LineFitSetup, lr: float) -> tuple[float, float, np.ndarray]:
  """Plain SGD on the masked mean squared error of each batch, in float64, in the scan's order."""
  x, y = experiments.line_data(setup)
  batches = experiments.line_batches(x, y, setup)
  m = b = 0.0
  batch_losses = []
  for bx, by, mask in zip(batches.x, batches.y, batches.mask):
    bx, by = bx[mask].astype(np.float64), by[mask].astype(np.float64)
    error = m * bx + b - by
    batch_losses.append(np.mean(error**2))
    m, b = m - lr * np.mean(2 * error * bx), b - lr * np.mean(2 * error)
  return m, b, np.array(batch_losses)


@pytest.mark.parametrize("batch_size", [1, 7])  # 7: every epoch ends with a short, masked batch
def test_fit_line_with_sgd_matches_a_numpy_replay(batch_size):
  setup = experiments.LineFitSetup(num_points=60, epochs=2, batch_size=batch_size, seed=1)
  x, y = experiments.line_data(setup)
  result = experiments.fit_line("sgd", 0.1, x, y, setup)
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
  setup = experiments.LineFitSetup(num_points=2000, noise=0.0, seed=5)
  x, y = experiments.line_data(setup)
  assert x.dtype == y.dtype == np.float32
  assert np.all(np.abs(x) <= setup.x_range)
  np.testing.assert_allclose(y, 30 * x + 2, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(x, experiments.line_data(setup)[0])
  assert not np.array_equal(x, experiments.line_data(experiments.LineFitSetup(num_points=2000, seed=6))[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "epochs must be >= 1, got 0"),
        ({"batch_size": 1.5}, "batch_size must be an integer, got 1.5"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
        ({"x_range": 0.0}, "x_range must be > 0"),
    ],
)
def test_line_fit_setup_rejects_bad_values(kwargs, message):
  with pytest.raises(ValueError, match=message):
    experiments.LineFitSetup(**kwargs)


@pytest.mark.parametrize(
    "rates, message",
    [({}, "learning_rates is empty"), ({"sgd": -0.1}, "learning rate of sgd"), ({"nope": 0.1}, "Unknown optimizer")],
)
def test_comparisons_reject_bad_learning_rates(rates, message):
  with pytest.raises(ValueError, match=message):
    experiments.compare_line_fit(rates)


def test_trailing_mean_and_updates_to_threshold():
  values = np.array([4.0, 2.0, 6.0, 1.0, 1.0])
  np.testing.assert_allclose(experiments.trailing_mean(values, 2), [4, 3, 4, 3.5, 1])
  np.testing.assert_allclose(experiments.trailing_mean(values, 1), values)
  np.testing.assert_allclose(experiments.trailing_mean(values, 10), np.cumsum(values) / np.arange(1, 6))
  assert experiments.updates_to_threshold(values, 3.0, window=2) == 2  # mean of [4, 2]
  assert experiments.updates_to_threshold(values, 1.0, window=2) == 5
  assert experiments.updates_to_threshold(values, 0.5, window=2) is None
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


def test_digits_and_diabetes_data():
  digits = experiments.digits_data(seed=0)
  assert digits.x_train.shape == (1437, 64) and digits.x_test.shape == (360, 64)
  assert digits.x_train.dtype == np.float32 and 0 <= digits.x_train.min() and digits.x_train.max() <= 1
  assert np.bincount(digits.y_test).min() >= 35  # stratified: about 36 of each digit
  np.testing.assert_array_equal(digits.y_test, experiments.digits_data(seed=0).y_test)
  assert not np.array_equal(digits.y_test, experiments.digits_data(seed=1).y_test)
  diabetes = experiments.diabetes_data(seed=0)
  assert diabetes.x_train.shape == (353, 10)
  assert diabetes.y_train.mean() == pytest.approx(0, abs=1e-5) and diabetes.y_train.std() == pytest.approx(1, rel=1e-5)


def test_train_digits_reports_consistent_figures():
  data = experiments.digits_data(seed=0)
  setup = experiments.DigitsSetup(epochs=2, loss_threshold=0.08)
  result = experiments.train_digits("adam", 1e-2, data, setup)
  assert result.batch_losses.shape == (2 * 23,)  # ceil(1437 / 64) = 23 updates per epoch
  assert result.updates_to_threshold == experiments.updates_to_threshold(result.batch_losses, 0.08, setup.smoothing)
  assert result.updates_to_threshold is not None
  assert 0 < result.final_loss < result.batch_losses[0]
  assert 0.7 < result.test_accuracy <= 1
  assert result.diverged_at is None


def test_train_digits_reports_divergence():
  result = experiments.train_digits("sgd", 1e6, experiments.digits_data(seed=0), experiments.DigitsSetup(epochs=1))
  assert result.diverged_at is not None and result.updates_to_threshold is None
  assert np.isnan(result.final_loss) and np.isnan(result.test_accuracy)
