"""Tests of gradcore_jax.training: exact figures against a NumPy replay, the three model kinds on
scikit-learn's digits, compilation, non-finite losses and bad input."""

from __future__ import annotations

import json
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training.train_state import TrainState
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from gradcore_jax import losses
from gradcore_jax import transforms
from gradcore_jax import metrics
from gradcore_jax.data import DataLoader
from gradcore_jax.training import FitResult
from gradcore_jax.training import NonFiniteLossError
from gradcore_jax.training import TrainingStats
from gradcore_jax.training import evaluate
from gradcore_jax.training import fit
from gradcore_jax.training._models import adapt
from gradcore_jax.training._steps import Carry
from gradcore_jax.training._steps import build_steps

LR = 0.05
RTOL = 2e-5  # float32 training against a float64 NumPy replay, a few epochs


# --------------------------------------------------------------------------------------
# A linear model trained with plain SGD, which NumPy replays exactly.


def linear(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  return x @ params["w"] + params["b"]


def _regression(n: int = 100, features: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
  """The source note's data: uniform x and y, one linear output; small random initial weights."""
  rng = np.random.default_rng(seed)
  x = rng.random((n, features), dtype=np.float32)
  y = rng.random(n, dtype=np.float32)
  params = {"w": (0.1 * rng.standard_normal(features)).astype(np.float32), "b": np.float32(0.0)}
  return x, y, params


def _replay(
    params: dict, x: np.ndarray, y: np.ndarray, *, batch_size: int, epochs: int, seed: int = 0, skip_row: int = -1
) -> dict:
  """What `fit` must report, computed in float64: SGD on the mean squared error, shuffled by (seed, epoch).

  A batch holding `skip_row` is skipped (`on_nonfinite="skip"`): no update, no count.
  """
  w, b = params["w"].astype(np.float64), float(params["b"])
  out: dict[str, list[float]] = {"batch": [], "running": [], "epoch": []}
  for epoch in range(epochs):
    order = np.random.default_rng((seed, epoch)).permutation(len(x))
    total, seen = 0.0, 0
    for start in range(0, len(x), batch_size):
      rows = order[start : start + batch_size]
      residual = x[rows] @ w + b - y[rows]
      out["batch"].append(np.mean(residual**2))
      if skip_row in rows:
        out["running"].append(total / seen if seen else np.nan)
        continue
      total, seen = total + np.sum(residual**2), seen + len(rows)
      out["running"].append(total / seen)
      w = w - LR * 2 * x[rows].T @ residual / len(rows)
      b = b - LR * 2 * np.mean(residual)
    out["epoch"].append(total / seen)
  out["eval"] = float(np.mean((x @ w + b - y) ** 2))
  return out


def _fit_linear(x: np.ndarray, y: np.ndarray, params: dict, *, batch_size: int, epochs: int, **kwargs: Any) -> FitResult:
  return fit(
      linear,
      optax.sgd(LR),
      params=params,
      loss=losses.mse,
      train_loader=DataLoader((x, y), batch_size=batch_size, shuffle=True, seed=0),
      epochs=epochs,
      **{"progress": False, **kwargs},
  )


def test_scenario_1_batch_loss_and_running_loss_are_different_exact_figures() -> None:
  x, y, params = _regression()
  _, stats = _fit_linear(x, y, params, batch_size=10, epochs=2)
  want = _replay(params, x, y, batch_size=10, epochs=2)
  np.testing.assert_allclose(stats.batch_losses, want["batch"], rtol=RTOL)
  np.testing.assert_allclose(stats.running_losses, want["running"], rtol=RTOL)
  # After the first step of an epoch the two figures part: one batch vs all batches so far.
  assert stats.running_losses[0] == stats.batch_losses[0]
  assert not np.allclose(stats.running_losses[1:10], stats.batch_losses[1:10], rtol=1e-3)
  # The epoch loss is the running loss after the epoch's last step.
  assert stats.epoch_losses == [stats.running_losses[9], stats.running_losses[19]]


def test_scenario_2_batch_size_changes_the_epoch_figure() -> None:
  x, y, params = _regression()
  figures = {}
  for batch_size in (10, 20):
    _, stats = _fit_linear(x, y, params, batch_size=batch_size, epochs=1)
    want = _replay(params, x, y, batch_size=batch_size, epochs=1)
    np.testing.assert_allclose(stats.epoch_losses, want["epoch"], rtol=RTOL)
    figures[batch_size] = stats.epoch_losses[0]
  assert abs(figures[10] - figures[20]) > 1e-3 * figures[10]


def test_scenario_3_running_epoch_loss_differs_from_a_whole_dataset_evaluation() -> None:
  x, y, params = _regression()
  everything = DataLoader((x, y), batch_size=32)
  trained, stats = _fit_linear(x, y, params, batch_size=10, epochs=3, eval_loader=everything)
  want = _replay(params, x, y, batch_size=10, epochs=3)
  np.testing.assert_allclose(stats.epoch_losses, want["epoch"], rtol=RTOL)
  np.testing.assert_allclose(stats.eval_metrics[-1]["loss"], want["eval"], rtol=RTOL)
  np.testing.assert_allclose(evaluate(linear, everything, loss=losses.mse, params=trained)["loss"], want["eval"], rtol=RTOL)
  assert abs(stats.epoch_losses[-1] - stats.eval_metrics[-1]["loss"]) > 1e-3 * want["eval"]


def test_ragged_last_batch_counts_by_its_examples_not_as_a_whole_batch() -> None:
  x, y, params = _regression(n=50, features=3, seed=1)  # batches of 16, 16, 16 and 2
  _, stats = _fit_linear(x, y, params, batch_size=16, epochs=2)
  want = _replay(params, x, y, batch_size=16, epochs=2)
  np.testing.assert_allclose(stats.batch_losses, want["batch"], rtol=RTOL)
  np.testing.assert_allclose(stats.epoch_losses, want["epoch"], rtol=RTOL)
  mean_of_batch_means = np.mean(stats.batch_losses[:4])
  assert abs(stats.epoch_losses[0] - mean_of_batch_means) > 1e-2 * stats.epoch_losses[0]
  assert stats.examples_seen == 100 and stats.total_steps == 8


def test_evaluation_does_not_depend_on_the_batch_size() -> None:
  x, y, params = _regression(n=53)
  figures = [
      evaluate(linear, DataLoader((x, y), batch_size=size), loss=losses.mse, params=params, metrics={"mae": metrics.mean_absolute_error()})
      for size in (7, 53, 64)
  ]
  for other in figures[1:]:
    np.testing.assert_allclose(list(other.values()), list(figures[0].values()), rtol=1e-6)
  np.testing.assert_allclose(figures[0]["loss"], np.mean((x @ params["w"] - y) ** 2), rtol=1e-6)


def test_nan_in_padded_rows_reaches_neither_loss_nor_metrics_nor_params() -> None:
  x, y, params = _regression(n=3, features=4)
  adapted = adapt(linear, optax.sgd(LR), params=params)
  steps = build_steps(adapted, losses.mse, {"mse": metrics.mean_squared_error()})

  def one_step(xs: np.ndarray, ys: np.ndarray, mask: np.ndarray) -> tuple:
    """Params after one training step, its batch loss and metrics, and an evaluation's figures."""
    carry = Carry(jax.tree.map(jnp.asarray, params), adapted.opt_state, None, steps.new_metrics())
    evaluation = steps.tally_values(steps.evaluate(steps.new_tally(), carry.params, None, ((xs, ys), mask)))
    carry, batch_loss = steps.train(carry, ((xs, ys), mask))
    return carry.params, (batch_loss, steps.metric_values(carry.metrics), evaluation)

  def assert_same(got: Any, want: Any) -> None:
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=1e-6)

  mask = np.arange(8) < 3
  nan_x = np.concatenate([x, np.full((5, 4), np.nan, np.float32)])
  nan_y = np.concatenate([y, np.full(5, np.nan, np.float32)])
  want = one_step(x, y, np.ones(3, bool))
  # Padding as the loader makes it (copies of real inputs), even with NaN targets: all exact.
  assert_same(one_step(np.resize(x, (8, 4)), nan_y, mask), want)
  # NaN inputs in padding: the loss and metric figures still exclude them exactly (the
  # gradient cannot: a model's derivative at NaN inputs is NaN, hence real-row padding).
  assert_same(one_step(nan_x, nan_y, mask)[1], want[1])


def _traces(**kwargs: Any) -> list[tuple[int, ...]]:
  """The prediction shapes the loss is traced with in a 3-epoch `fit` (12 steps, the last ragged)."""
  traces = []

  def counting_mse(y_pred: jax.Array, y_true: jax.Array, **kwargs: Any) -> jax.Array:
    traces.append(y_pred.shape)
    return losses.mse(y_pred, y_true, **kwargs)

  x, y, params = _regression(n=50)
  fit(linear, optax.sgd(LR), params=params, loss=counting_mse, train_loader=DataLoader((x, y), batch_size=16), epochs=3, progress=False, **kwargs)
  return traces


def test_one_compilation_of_the_train_step_for_a_whole_run() -> None:
  # The shape check before training and the 12 steps (a ragged one included) share one trace.
  assert _traces() == [(16,)]


def test_continuing_a_run_equals_one_longer_run() -> None:
  x, y, params = _regression()
  whole = _fit_linear(x, y, params, batch_size=10, epochs=2)
  first = _fit_linear(x, y, params, batch_size=10, epochs=1)
  second = _fit_linear(x, y, first.model, batch_size=10, epochs=1, start_epoch=1, opt_state=first.opt_state)
  assert first.stats.batch_losses + second.stats.batch_losses == whole.stats.batch_losses
  jax.tree.map(np.testing.assert_array_equal, second.model, whole.model)


def test_stats_round_trip_through_json() -> None:
  x, y, params = _regression()
  _, stats = _fit_linear(
      x, y, params, batch_size=16, epochs=2, eval_loader=DataLoader((x, y), batch_size=50), metrics={"rmse": metrics.root_mean_squared_error()}
  )
  record = json.loads(stats.to_json())
  assert record["final_loss"] == stats.epoch_losses[-1] == stats.final_loss
  assert TrainingStats.from_dict(record) == stats
  assert set(stats.train_metrics[0]) == {"rmse"} and set(stats.eval_metrics[0]) == {"loss", "rmse"}
  assert len(stats.batch_losses) == stats.total_steps == 14 and stats.epochs_trained == 2
  assert len(stats.epoch_times) == len(stats.steps_per_second) == 2


def test_fit_leaves_the_callers_arrays_intact() -> None:
  x, y, params = _regression()
  device_params = jax.tree.map(jnp.asarray, params)
  before = jax.tree.map(np.array, device_params)
  trained, _ = _fit_linear(x, y, device_params, batch_size=10, epochs=1)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, device_params), before)
  assert not np.array_equal(trained["w"], before["w"])


def test_non_finite_loss_is_reported_with_its_step() -> None:
  x, y, params = _regression(n=100)
  bad = 57
  y = y.copy()
  y[bad] = np.inf
  position = int(np.flatnonzero(DataLoader((x, y), batch_size=10, shuffle=True, seed=0).order(0) == bad)[0])
  with pytest.raises(NonFiniteLossError, match=f"at step {position // 10} ") as error:
    _fit_linear(x, y, params, batch_size=10, epochs=2, log_interval=4)
  assert (error.value.step, error.value.epoch, error.value.batch) == (position // 10, 0, position // 10)


def test_progress_header_and_bar(capsys: pytest.CaptureFixture) -> None:
  x, y, params = _regression(n=50)
  _fit_linear(x, y, params, batch_size=16, epochs=1, progress=True)
  err = capsys.readouterr().err
  assert "50 samples, batch size 16, 4 batches per epoch (last one 2 real + 14 masked rows)" in err
  assert "11 parameters, optimizer state 0 bytes" in err and "epoch 1/1" in err
  _fit_linear(x, y, params, batch_size=16, epochs=1, progress=False)
  assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------
# Bad input.


def _bad_fit(**overrides: Any) -> None:
  x, y, params = _regression(n=20, features=3)
  kwargs = dict(
      model=linear,
      optimizer=optax.sgd(LR),
      params=params,
      loss=losses.mse,
      train_loader=DataLoader((x, y), batch_size=8),
      epochs=1,
      progress=False,
  )
  kwargs.update(overrides)
  fit(**kwargs)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"epochs": -1}, "epochs must be >= 0"),
        ({"log_interval": 0}, "log_interval must be >= 1"),
        ({"optimizer": None}, "optimizer is required"),
        ({"optimizer": "adam"}, "optimizer must be an Optax GradientTransformation"),
        ({"params": None}, "params is required"),
        ({"train_loader": [(1, 2)]}, "train_loader batch 0: every array needs the same number"),  # scalars
        ({"metrics": {"loss": metrics.mean_squared_error()}}, "name 'loss'"),
        ({"metrics": {"mse": "mse"}}, "metrics must be a dict"),
        ({"model": 3}, "model must be an apply function"),
        ({"params": {"w": np.zeros(4, np.float32), "b": np.float32(0)}}, r"train_loader.*float32\[8, 3\]"),
        ({"train_loader": DataLoader(np.zeros((8, 3), np.float32), batch_size=8)}, r"\(inputs, targets\) pair"),
        ({"loss": lambda p, t, reduction: (p - t) ** 2 * jnp.ones((1, 1))}, "one value per example"),
        (
            {"eval_loader": DataLoader((np.zeros((4, 5), np.float32), np.zeros(4, np.float32)), batch_size=2)},
            "eval_loader",
        ),
    ],
)
def test_bad_arguments_raise_before_training(overrides: dict, match: str) -> None:
  with pytest.raises(ValueError, match=match):
    _bad_fit(**overrides)


def test_train_state_refuses_a_second_optimizer() -> None:
  state = TrainState.create(apply_fn=lambda v, x: x, params={"w": jnp.zeros(1)}, tx=optax.sgd(1.0))
  with pytest.raises(ValueError, match="optimizer must not be given"):
    fit(state, optax.adam(1e-3), loss=losses.mse, train_loader=DataLoader((np.zeros(2), np.zeros(2)), batch_size=2), epochs=1)


# --------------------------------------------------------------------------------------
# Scikit-learn's digits, with each kind of model: an MLP 64 -> 64 -> 10 trained with Adam.

HIDDEN, DIGITS_LR, DIGITS_EPOCHS, DIGITS_BATCH = 64, 1e-2, 12, 32
DIGITS_METRICS = {"accuracy": metrics.accuracy()}


@pytest.fixture(scope="module")
def digits() -> dict[str, DataLoader]:
  x, y = load_digits(return_X_y=True)
  x_train, x_test, y_train, y_test = train_test_split((x / 16).astype(np.float32), y.astype(np.int32), test_size=0.25, random_state=0)
  return {
      "train": DataLoader((x_train, y_train), batch_size=DIGITS_BATCH, shuffle=True, seed=0),
      "test": DataLoader((x_test, y_test), batch_size=128),
      "x_test": x_test,
      "y_test": y_test,
  }


def _mlp_params(key: jax.Array) -> list[dict[str, jax.Array]]:
  keys = jax.random.split(key)
  sizes = [(64, HIDDEN), (HIDDEN, 10)]
  return [
      {"w": jax.random.normal(k, shape) * jnp.sqrt(2.0 / shape[0]), "b": jnp.zeros(shape[1])} for k, shape in zip(keys, sizes)
  ]


def _mlp(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
  hidden = jax.nn.relu(x @ params[0]["w"] + params[0]["b"])
  return hidden @ params[1]["w"] + params[1]["b"]


class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(10)(nn.relu(nn.Dense(HIDDEN)(x)))


class NnxMLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs) -> None:
    self.hidden = nnx.Linear(64, HIDDEN, rngs=rngs)
    self.out = nnx.Linear(HIDDEN, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(nnx.relu(self.hidden(x)))


def _plain_run() -> dict[str, Any]:
  return {"model": _mlp, "optimizer": optax.adam(DIGITS_LR), "params": _mlp_params(jax.random.key(0))}


def _linen_state_run() -> dict[str, Any]:
  module = LinenMLP()
  params = module.init(jax.random.key(0), jnp.zeros((1, 64)))["params"]
  return {"model": TrainState.create(apply_fn=module.apply, params=params, tx=optax.adam(DIGITS_LR))}


def _linen_module_run() -> dict[str, Any]:
  module = LinenMLP()
  return {"model": module, "optimizer": optax.adam(DIGITS_LR), "params": module.init(jax.random.key(0), jnp.zeros((1, 64)))}


def _nnx_run() -> dict[str, Any]:
  model = NnxMLP(nnx.Rngs(0))
  return {"model": model, "optimizer": nnx.Optimizer(model, optax.adam(DIGITS_LR), wrt=nnx.Param)}


RUNS: dict[str, Callable[[], dict[str, Any]]] = {
    "plain": _plain_run,
    "linen_state": _linen_state_run,
    "linen_module": _linen_module_run,
    "nnx": _nnx_run,
}


def _fit_digits(run: dict[str, Any], digits: dict) -> FitResult:
  return fit(
      **run,
      loss=losses.cross_entropy,
      train_loader=digits["train"],
      epochs=DIGITS_EPOCHS,
      eval_loader=digits["test"],
      metrics=DIGITS_METRICS,
      log_interval=10,
      progress=False,
  )


def _figures(stats: TrainingStats) -> dict[str, Any]:
  """Everything in the stats but wall-clock times."""
  record = stats.to_dict()
  del record["epoch_times"], record["steps_per_second"]
  return record


def _check_plain(result: FitResult, run: dict[str, Any], digits: dict) -> None:
  predicted = np.argmax(np.asarray(_mlp(result.model, digits["x_test"])), axis=-1)
  assert result.stats.eval_metrics[-1]["accuracy"] == pytest.approx(np.mean(predicted == digits["y_test"]), abs=1e-6)
  assert int(result.opt_state[0].count) == result.stats.total_steps


def _check_train_state(result: FitResult, run: dict[str, Any], digits: dict) -> None:
  assert isinstance(result.model, TrainState)
  assert int(result.model.step) == int(result.model.opt_state[0].count) == result.stats.total_steps


def _check_nnx(result: FitResult, run: dict[str, Any], digits: dict) -> None:
  assert result.model is run["model"], "the NNX module is trained in place and returned"
  assert int(run["optimizer"].step[...]) == int(run["optimizer"].opt_state[0].count[...]) == result.stats.total_steps


CHECKS = {"plain": _check_plain, "linen_state": _check_train_state, "linen_module": _check_train_state, "nnx": _check_nnx}


@pytest.mark.parametrize("kind", RUNS)
def test_digits_each_model_kind_learns_and_repeats_exactly(kind: str, digits: dict) -> None:
  run = RUNS[kind]()
  result = _fit_digits(run, digits)
  assert result.stats.eval_metrics[-1]["accuracy"] >= 0.95, result.stats.eval_metrics
  assert result.stats.epoch_losses[-1] < result.stats.epoch_losses[0]
  CHECKS[kind](result, run, digits)
  # The returned model is the trained one: evaluating it reproduces the last evaluation.
  evaluation = evaluate(**_trained(kind, result), loader=digits["test"], loss=losses.cross_entropy, metrics=DIGITS_METRICS)
  np.testing.assert_allclose(list(evaluation.values()), list(result.stats.eval_metrics[-1].values()), rtol=1e-6)
  again = _fit_digits(RUNS[kind](), digits)
  assert _figures(again.stats) == _figures(result.stats)


def _trained(kind: str, result: FitResult) -> dict[str, Any]:
  """The `model` (and `params`) arguments that evaluate the trained model of `result`."""
  return {"model": _mlp, "params": result.model} if kind == "plain" else {"model": result.model}


# --------------------------------------------------------------------------------------
# Non-finite values and clipping.


def _poisoned(row: int = 57) -> tuple[np.ndarray, np.ndarray, dict, list[int]]:
  """The regression data with an infinite target at `row`, and the steps whose batch holds it (2 epochs of 10)."""
  x, y, params = _regression()
  y[row] = np.inf
  loader = DataLoader((x, y), batch_size=10, shuffle=True, seed=0)
  steps = [10 * epoch + int(np.flatnonzero(loader.order(epoch) == row)[0]) // 10 for epoch in (0, 1)]
  return x, y, params, steps


def _record(result: FitResult) -> str:
  """The stats without wall-clock times, as JSON (NaN and Inf compare equal), and the params' bytes."""
  record = result.stats.to_dict()
  del record["epoch_times"], record["steps_per_second"]
  return json.dumps(record) + repr([np.asarray(leaf).tobytes() for leaf in jax.tree.leaves(result.model)])


@pytest.mark.parametrize("compiled_epoch", [False, True], ids=["per-step", "compiled-epoch"])
def test_skip_leaves_params_untouched_on_a_non_finite_step_and_counts_it(compiled_epoch: bool) -> None:
  x, y, params, bad_steps = _poisoned()
  result = _fit_linear(x, y, params, batch_size=10, epochs=2, on_nonfinite="skip", log_interval=4, compiled_epoch=compiled_epoch)
  want = _replay(params, x, y, batch_size=10, epochs=2, skip_row=57)
  stats = result.stats
  assert stats.skipped_steps == bad_steps and stats.num_skipped_steps == 2
  np.testing.assert_allclose(stats.batch_losses, want["batch"], rtol=RTOL)  # inf where skipped
  np.testing.assert_allclose(stats.running_losses, want["running"], rtol=RTOL)
  np.testing.assert_allclose(stats.epoch_losses, want["epoch"], rtol=RTOL)
  assert stats.total_steps == 20 and stats.examples_seen == 180  # the skipped batches' rows not seen
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(result.model))


def test_skip_keeps_the_optimizer_state_and_equals_raise_when_all_is_finite() -> None:
  x, y, params, bad_steps = _poisoned()
  result = fit(linear, optax.adam(LR), params=params, loss=losses.mse, train_loader=DataLoader((x, y), batch_size=10, shuffle=True), epochs=2, on_nonfinite="skip", progress=False)
  assert int(result.opt_state[0].count) == result.stats.total_steps - len(bad_steps) == 18
  x, y, params = _regression()
  assert _record(_fit_linear(x, y, params, batch_size=10, epochs=2, on_nonfinite="skip")) == _record(_fit_linear(x, y, params, batch_size=10, epochs=2))


def _non_finite_gradient(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  """A finite prediction whose gradient is NaN at b = 0: d|b|/db computed as b / sqrt(b**2)."""
  return x @ params["w"] + jnp.sqrt(params["b"] ** 2)


def test_non_finite_gradients_with_a_finite_loss_raise_or_skip() -> None:
  x, y, params = _regression(n=30)
  with pytest.raises(NonFiniteLossError, match=r"Non-finite gradients at step 0 \(epoch 0, batch 0; counted from 0\); the batch loss was") as error:
    fit(_non_finite_gradient, optax.sgd(LR), params=params, loss=losses.mse, train_loader=DataLoader((x, y), batch_size=10), epochs=1, progress=False)
  assert error.value.in_gradients and np.isfinite(error.value.loss)
  result = fit(_non_finite_gradient, optax.sgd(LR), params=params, loss=losses.mse, train_loader=DataLoader((x, y), batch_size=10), epochs=1, on_nonfinite="skip", progress=False)
  assert result.stats.skipped_steps == [0, 1, 2] and np.isnan(result.stats.epoch_losses[0])
  jax.tree.map(np.testing.assert_array_equal, result.model, params)


def test_clip_global_norm_is_torch_clipping_and_keeps_the_state_structure() -> None:
  """fit's clipping is torch's `clip_grad_norm_` rule (`max_norm / (norm + 1e-6)`), not Optax's."""
  x, y, params = _regression()
  loader = DataLoader((x, y), batch_size=10, shuffle=True)
  ours = fit(linear, optax.adam(LR), params=params, loss=losses.mse, train_loader=loader, epochs=2, clip_global_norm=0.05, progress=False)
  chained = optax.chain(transforms.clip_grad_norm(0.05), optax.adam(LR))
  theirs = fit(linear, chained, params=params, loss=losses.mse, train_loader=loader, epochs=2, progress=False)
  jax.tree.map(np.testing.assert_array_equal, ours.model, theirs.model)
  optax_clipped = optax.chain(optax.clip_by_global_norm(0.05), optax.adam(LR))
  optax_run = fit(linear, optax_clipped, params=params, loss=losses.mse, train_loader=loader, epochs=2, progress=False)
  assert not np.array_equal(optax_run.model["w"], ours.model["w"])  # the +1e-6 changes the numbers
  assert ours.stats.batch_losses == theirs.stats.batch_losses
  assert jax.tree.structure(ours.opt_state) == jax.tree.structure(optax.adam(LR).init(params))
  unclipped = fit(linear, optax.adam(LR), params=params, loss=losses.mse, train_loader=loader, epochs=2, progress=False)
  assert not np.allclose(unclipped.model["w"], ours.model["w"])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"clip_global_norm": 0}, "clip_global_norm must be a positive finite number"),
        ({"clip_global_norm": float("inf")}, "clip_global_norm must be a positive finite number"),
        ({"clip_global_norm": "1"}, "clip_global_norm must be a positive finite number"),
        ({"on_nonfinite": "ignore"}, r"on_nonfinite must be one of \('raise', 'skip'\)"),
        ({"compiled_epoch": "yes"}, "compiled_epoch must be True or False"),
        ({"mesh": "cpu"}, "mesh must be a jax.sharding.Mesh"),
        ({"param_sharding": jax.sharding.PartitionSpec()}, "param_sharding needs a mesh"),
        ({"data_axis": "data"}, "data_axis needs a mesh"),
        ({"mesh": jax.make_mesh((1,), ("data",)), "data_axis": "batch"}, r"data_axis must name axes of the mesh \('data',\)"),
        ({"mesh": jax.make_mesh((1,), ("data",)), "param_sharding": "rows"}, "param_sharding must give a PartitionSpec"),
        ({"mesh": jax.make_mesh((1,), ("data",)), "param_sharding": {"w": jax.sharding.PartitionSpec()}}, "param_sharding must be"),
    ],
)
def test_bad_non_finite_compiled_and_mesh_arguments_raise_before_training(overrides: dict, match: str) -> None:
  with pytest.raises(ValueError, match=match):
    _bad_fit(**overrides)


# --------------------------------------------------------------------------------------
# Compiled epochs.


def test_a_compiled_epoch_traces_the_step_once_for_a_whole_run() -> None:
  assert _traces(compiled_epoch=True) == [(16,), (16,)]  # the shape check, then the scan's body


def test_a_compiled_epoch_equals_the_per_step_loop_bit_for_bit_on_digits(digits: dict) -> None:
  """The scan's body is the same step, compiled by XLA into the same CPU code: identical
  params and `TrainingStats` (on other backends fusion may differ: float rounding)."""
  runs = [
      fit(**_plain_run(), loss=losses.cross_entropy, train_loader=digits["train"], epochs=3, eval_loader=digits["test"],
          metrics=DIGITS_METRICS, progress=False, compiled_epoch=compiled)
      for compiled in (False, True)
  ]
  assert _record(runs[0]) == _record(runs[1])
  assert runs[1].stats.eval_metrics[-1]["accuracy"] > 0.9
