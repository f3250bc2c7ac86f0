"""The source article's two experiments, as pure functions that return plain results.

`gradcore-jax compare` and the examples call these; nothing here prints or plots.

1. **Line fit** (`compare_line_fit`): `y = 30·x + 2 + noise`, fitted by per-example updates
   for 2 epochs, one `lax.scan` over all updates per optimizer. The article's point is that
   SGD's step is `lr × gradient` while RMSprop and Adam divide each parameter's gradient by
   its own running RMS. `x` is small (uniform in [-0.1, 0.1]), so the slope's gradient
   `2·x·error` is at most a tenth of the intercept's `2·error`: with a learning rate that is
   safe for the intercept, SGD's slope crawls, and the adaptive optimizers do not care.
2. **Digits** (`compare_digits`): scikit-learn's 8×8 digits (64 features scaled to [0, 1],
   the embedded stand-in for MNIST), one linear layer 64→10 trained with the MSE loss on
   one-hot targets through `gradcore_jax.training.fit`; per optimizer, the updates needed
   to bring the loss under a threshold, the final loss and the test accuracy.

Learning rates: `default_learning_rate(task, name)`; the tables and their reasons are in
`LINE_FIT_LEARNING_RATES` and `DIGITS_LEARNING_RATES`. scikit-learn is imported only by the
functions that load its data sets.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import math
import numbers
from typing import Any
from typing import Mapping
from typing import NamedTuple
from typing import Optional
from typing import Sequence
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradcore_jax import losses
from gradcore_jax import optimizers
from gradcore_jax._typing import Array
from gradcore_jax._typing import ArrayLike
from gradcore_jax._typing import PyTree
from gradcore_jax.data import DataLoader
from gradcore_jax.data import _check_int
from gradcore_jax.training import NonFiniteLossError
from gradcore_jax.training import fit

TASKS = ("regression", "digits")
DEFAULT_OPTIMIZERS = ("sgd", "sgd_ema", "rmsprop", "adam")

# The line fit has 1,000 updates to move the slope from 0 to 30. The adaptive optimizers
# step by about `lr` per update whatever the gradient's size, and SGD's rate is capped by
# the intercept (per-example curvature 2, diverging at lr >= 1), so one learning rate, 0.1,
# serves every optimizer. Adadelta keeps its own 1.0: its lr multiplies a step that is
# already in the parameters' units.
LINE_FIT_LEARNING_RATES: Mapping[str, float] = {name: 0.1 for name in optimizers.names()} | {"adadelta": 1.0}


def _library_default(name: str) -> float:
  """The `learning_rate` default of optimizer `name` (PyTorch's, for all but SGD)."""
  return inspect.signature(optimizers.get(name)).parameters["learning_rate"].default


# Digits: each optimizer's library default, which is PyTorch's (RMSprop 1e-2, Adam 1e-3, ...),
# except SGD, for which PyTorch has no default (the library's 1e-3 is a placeholder): 0.1,
# the usual starting point for SGD on inputs scaled to [0, 1].
DIGITS_LEARNING_RATES: Mapping[str, float] = {name: _library_default(name) for name in optimizers.names()} | {
  "sgd": 0.1,
  "sgd_ema": 0.1,
}

_LEARNING_RATES = {"regression": LINE_FIT_LEARNING_RATES, "digits": DIGITS_LEARNING_RATES}


def default_learning_rate(task: str, name: str) -> float:
  """The learning rate `compare` uses for optimizer `name` on `task` ("regression" or "digits")."""
  if task not in _LEARNING_RATES:
    raise ValueError(f"Unknown task {task!r}; choose one of: {', '.join(TASKS)}.")
  optimizers.get(name)  # a clear ValueError for an unknown name
  return _LEARNING_RATES[task][name]


def learning_rates(
  task: str, names: Sequence[str], overrides: Optional[Mapping[str, float]] = None
) -> dict[str, float]:
  """`{name: lr}` for `names` on `task`: the defaults, replaced by `overrides` where given."""
  overrides = dict(overrides or {})
  return {name: overrides.get(name, default_learning_rate(task, name)) for name in names}


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
  """The library optimizer `name` with `learning_rate` and its other defaults."""
  return optimizers.get(name)(learning_rate)


def _check_counts(setup: Any, positive: Sequence[str]) -> None:
  """ValueError unless the fields `positive` of `setup` are integers >= 1 and its `seed` is >= 0."""
  for name in positive:
    _check_int(name, getattr(setup, name), minimum=1)
  _check_int("seed", setup.seed, minimum=0)


def _check_learning_rates(rates: Mapping[str, float]) -> None:
  """ValueError unless `rates` maps known optimizer names to positive finite numbers."""
  if not rates:
    raise ValueError("learning_rates is empty: name at least one optimizer, e.g. {'adam': 1e-3}.")
  for name, lr in rates.items():
    optimizers.get(name)
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
      raise ValueError(f"The learning rate of {name} must be a positive finite number, got {lr!r}.")


# ---------------------------------------------------------------------------------------
# Shared pieces: a dense network as a pure function, and the loss curve's smoothing.


def init_mlp(rng: np.random.Generator, sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
  """Parameters of a dense network with layer widths `sizes` (e.g. `(64, 10)`: one layer).

  Weights and biases are drawn from `rng` as in `torch.nn.Linear`: uniform in
  `±1/sqrt(fan_in)`, float32. (NumPy draws them: JAX's random bits would compile first.)
  """
  if len(sizes) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
    raise ValueError(f"sizes must list at least two positive layer widths, got {tuple(sizes)}.")
  layers = []
  for fan_in, fan_out in itertools.pairwise(sizes):
    bound = 1.0 / math.sqrt(fan_in)
    layers.append(
      {
        "w": rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32),
        "b": rng.uniform(-bound, bound, fan_out).astype(np.float32),
      }
    )
  return layers


def mlp(params: Sequence[Mapping[str, Array]], inputs: ArrayLike) -> Array:
  """The network of `init_mlp`: dense layers with ReLU between them (none after the last)."""
  hidden = jnp.asarray(inputs)
  for layer in params[:-1]:
    hidden = jax.nn.relu(hidden @ layer["w"] + layer["b"])
  return hidden @ params[-1]["w"] + params[-1]["b"]


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
  """`out[i]` = mean of `values[max(0, i - window + 1) : i + 1]` (a causal moving average)."""
  _check_int("window", window, minimum=1)
  values = np.asarray(values, np.float64)
  sums = np.cumsum(np.concatenate([[0.0], values]))
  ends = np.arange(1, values.size + 1)
  starts = np.maximum(ends - window, 0)
  return (sums[ends] - sums[starts]) / (ends - starts)


def updates_to_threshold(batch_losses: np.ndarray, threshold: float, window: int) -> Optional[int]:
  """How many batches (one update each) it took until the mean loss of the last `window` was <= `threshold`.

  `batch_losses[s]` is the loss of batch `s`. Returns the smallest `s + 1` with
  `mean(batch_losses[max(0, s - window + 1) : s + 1]) <= threshold`, or None if there is none.
  """
  hits = np.flatnonzero(trailing_mean(batch_losses, window) <= threshold)
  return int(hits[0]) + 1 if hits.size else None


# ---------------------------------------------------------------------------------------
# 1. The line fit.


@dataclasses.dataclass(frozen=True)
class LineFitSetup:
  """The line-fit problem: `y = slope·x + intercept + N(0, noise²)`, `x ~ U(-x_range, x_range)`.

  `epochs` passes of `batch_size`-example updates (batch 1: per-example updates, as in the
  article), starting from `m = b = 0`, examples shuffled each epoch with `seed`.
  """

  slope: float = 30.0
  intercept: float = 2.0
  num_points: int = 500
  x_range: float = 0.1
  noise: float = 0.3
  epochs: int = 2
  batch_size: int = 1
  seed: int = 0

  def __post_init__(self) -> None:
    _check_counts(self, ("num_points", "epochs", "batch_size"))
    if not self.x_range > 0 or not self.noise >= 0:
      raise ValueError(f"x_range must be > 0 and noise >= 0, got {self.x_range!r} and {self.noise!r}.")

  @property
  def updates(self) -> int:
    """Optimizer updates per run."""
    return self.epochs * math.ceil(self.num_points / self.batch_size)


@dataclasses.dataclass(frozen=True)
class LineFitResult:
  """One optimizer's line fit.

  Attributes:
    optimizer, learning_rate: what was run.
    m, b: the recovered slope and intercept.
    final_loss: the mean squared error over all points with the final `m, b`.
    batch_losses: the loss of each update's batch, before that update (`(updates,)`).
    path: `(updates + 1, 2)`: `(m, b)` at the start and after every update.
  """

  optimizer: str
  learning_rate: float
  m: float
  b: float
  final_loss: float
  batch_losses: np.ndarray
  path: np.ndarray


@dataclasses.dataclass(frozen=True)
class LineFitComparison:
  """The data and every optimizer's `LineFitResult`, keyed by optimizer name."""

  setup: LineFitSetup
  x: np.ndarray
  y: np.ndarray
  results: dict[str, LineFitResult]


def line_data(setup: LineFitSetup) -> tuple[np.ndarray, np.ndarray]:
  """The points `(x, y)` of `setup`, float32, drawn from `numpy.random.default_rng(setup.seed)`."""
  rng = np.random.default_rng(setup.seed)
  x = rng.uniform(-setup.x_range, setup.x_range, setup.num_points)
  y = setup.slope * x + setup.intercept + setup.noise * rng.standard_normal(setup.num_points)
  return x.astype(np.float32), y.astype(np.float32)


class LineBatches(NamedTuple):
  """Every batch of a line fit, in update order: `(updates, batch_size)` arrays."""

  x: np.ndarray  # (updates, batch_size)
  y: np.ndarray
  mask: np.ndarray


def line_batches(x: np.ndarray, y: np.ndarray, setup: LineFitSetup) -> LineBatches:
  """Every batch of every epoch of `setup`, stacked for one scan.

  The order is `DataLoader(shuffle=True, seed=setup.seed)`'s; a short last batch is padded
  and masked out (`mask` False).
  """
  loader = DataLoader((x, y), batch_size=setup.batch_size, shuffle=True, seed=setup.seed)
  epochs = [loader.stacked(epoch) for epoch in range(setup.epochs)]
  return LineBatches(
    np.concatenate([e.data[0] for e in epochs]),
    np.concatenate([e.data[1] for e in epochs]),
    np.concatenate([e.mask for e in epochs]),
  )


def _line(params: dict[str, Array], x: ArrayLike) -> Array:
  return params["m"] * x + params["b"]


def _line_loss(params: dict[str, Array], x: ArrayLike, y: ArrayLike, mask: Optional[Array] = None) -> Array:
  return losses.mse(_line(params, x), y, mask=mask)


@functools.partial(jax.jit, static_argnums=0)
def _scan_line_fit(optimizer: optax.GradientTransformation, batches: LineBatches) -> tuple[Array, Array]:
  """All updates in one `lax.scan`; returns the batch losses and the `(m, b)` after each update."""
  params = {"m": jnp.zeros((), jnp.float32), "b": jnp.zeros((), jnp.float32)}

  def step(carry: tuple[PyTree, PyTree], batch: LineBatches) -> tuple[tuple[PyTree, PyTree], tuple[Array, Array]]:
    params, opt_state = carry
    loss, grads = jax.value_and_grad(_line_loss)(params, batch.x, batch.y, batch.mask)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = cast(dict[str, Array], optax.apply_updates(params, updates))  # optax types it as any ArrayTree
    return (params, opt_state), (loss, jnp.stack([params["m"], params["b"]]))

  _, (batch_losses, path) = jax.lax.scan(step, (params, optimizer.init(params)), batches)
  return batch_losses, path


def fit_line(name: str, learning_rate: float, x: np.ndarray, y: np.ndarray, setup: LineFitSetup) -> LineFitResult:
  """Fits `y ≈ m·x + b` from `m = b = 0` with optimizer `name` as `setup` says."""
  batch_losses, path = jax.device_get(_scan_line_fit(make_optimizer(name, learning_rate), line_batches(x, y, setup)))
  m, b = (float(v) for v in path[-1])
  final = {"m": jnp.float32(m), "b": jnp.float32(b)}
  return LineFitResult(
    optimizer=name,
    learning_rate=learning_rate,
    m=m,
    b=b,
    final_loss=float(_line_loss(final, x, y)),
    batch_losses=np.asarray(batch_losses),
    path=np.concatenate([np.zeros((1, 2), np.float32), path]),
  )


def compare_line_fit(rates: Mapping[str, float], setup: LineFitSetup = LineFitSetup()) -> LineFitComparison:
  """Runs `fit_line` for every `{optimizer name: learning rate}` of `rates` on one data set."""
  _check_learning_rates(rates)
  x, y = line_data(setup)
  results = {name: fit_line(name, lr, x, y, setup) for name, lr in rates.items()}
  return LineFitComparison(setup, x, y, results)


# ---------------------------------------------------------------------------------------
# 2. Digits.


class Split(NamedTuple):
  """A train/test split of features `x` (float32) and targets `y`."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def _require_sklearn() -> Any:
  try:
    import sklearn.datasets  # pylint: disable=g-import-not-at-top
    import sklearn.model_selection  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as err:
    raise ImportError(
      "The experiments' data sets come from scikit-learn: pip install 'gradcore-jax[examples]'."
    ) from err
  return sklearn


def _split(x: np.ndarray, y: np.ndarray, *, seed: int, test_fraction: float, stratify: bool) -> Split:
  sklearn = _require_sklearn()
  parts = sklearn.model_selection.train_test_split(
    x, y, test_size=test_fraction, random_state=seed, stratify=y if stratify else None
  )
  return Split(*(parts[i] for i in (0, 2, 1, 3)))


def digits_data(seed: int = 0, test_fraction: float = 0.2) -> Split:
  """scikit-learn's 1,797 8×8 digits: pixels scaled from 0..16 to [0, 1], int32 labels.

  The stratified train/test split is fixed by `seed`.
  """
  data = _require_sklearn().datasets.load_digits()
  x = (data.data / 16.0).astype(np.float32)
  return _split(x, data.target.astype(np.int32), seed=seed, test_fraction=test_fraction, stratify=True)


def diabetes_data(seed: int = 0, test_fraction: float = 0.2) -> Split:
  """scikit-learn's diabetes regression set (442 patients, 10 standardized features).

  The target (disease progression, 25..346) is standardized with the training split's
  mean and standard deviation, so losses are in units of one standard deviation.
  """
  data = _require_sklearn().datasets.load_diabetes()
  split = _split(
    data.data.astype(np.float32), data.target.astype(np.float32), seed=seed, test_fraction=test_fraction, stratify=False
  )
  mean, std = split.y_train.mean(), split.y_train.std()
  return split._replace(y_train=(split.y_train - mean) / std, y_test=(split.y_test - mean) / std)


def one_hot_mse(
  y_pred: Array, y_true: ArrayLike, *, reduction: losses.Reduction = "mean", mask: Optional[Array] = None
) -> Array:
  """The article's classifier loss: MSE between the outputs and the one-hot encoding of integer labels.

  One value per example is the mean over the classes of `(y_pred - one_hot(y_true))**2`.
  """
  return losses.mse(y_pred, jax.nn.one_hot(y_true, y_pred.shape[-1]), reduction=reduction, mask=mask)


@dataclasses.dataclass(frozen=True)
class DigitsSetup:
  """The digits run: `epochs` of `batch_size` examples, shuffled by `seed`, which also fixes
  the split and the initial weights (the same for every optimizer).

  `loss_threshold` and `smoothing`: an optimizer has reached the threshold when the mean loss
  of its last `smoothing` batches is at or below it (see `updates_to_threshold`).
  """

  epochs: int = 40
  batch_size: int = 64
  seed: int = 0
  test_fraction: float = 0.2
  loss_threshold: float = 0.04
  smoothing: int = 10

  def __post_init__(self) -> None:
    _check_counts(self, ("epochs", "batch_size", "smoothing"))
    if not 0 < self.test_fraction < 1:
      raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}.")


@dataclasses.dataclass(frozen=True)
class DigitsResult:
  """One optimizer's digits run.

  Attributes:
    optimizer, learning_rate: what was run.
    batch_losses: the loss of every update's batch (`TrainingStats.batch_losses`).
    updates_to_threshold: see `DigitsSetup`; None if never reached.
    final_loss: MSE over the whole training set with the final weights (NaN if diverged).
    test_accuracy: fraction of test digits classified right (NaN if diverged).
    diverged_at: the index (from 0) of the first batch whose loss was NaN or infinite, or None.
  """

  optimizer: str
  learning_rate: float
  batch_losses: np.ndarray
  updates_to_threshold: Optional[int]
  final_loss: float
  test_accuracy: float
  diverged_at: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class DigitsComparison:
  """The setup, the number of updates per run and every optimizer's `DigitsResult`."""

  setup: DigitsSetup
  updates: int
  results: dict[str, DigitsResult]


@jax.jit
def _final_figures(params: PyTree, data: Split) -> tuple[Array, Array]:
  """The loss over the whole training set and the test accuracy, with `params` fixed."""
  loss = one_hot_mse(mlp(params, data.x_train), data.y_train)
  accuracy = jnp.mean(jnp.argmax(mlp(params, data.x_test), axis=-1) == data.y_test)
  return loss, accuracy


def train_digits(name: str, learning_rate: float, data: Split, setup: DigitsSetup) -> DigitsResult:
  """Trains the 64→10 linear layer on `data` with optimizer `name` through `fit`."""
  params = init_mlp(np.random.default_rng(setup.seed), (data.x_train.shape[1], 10))
  loader = DataLoader((data.x_train, data.y_train), batch_size=setup.batch_size, shuffle=True, seed=setup.seed)
  try:
    params, stats = fit(
      mlp,
      make_optimizer(name, learning_rate),
      params=params,
      loss=one_hot_mse,
      train_loader=loader,
      epochs=setup.epochs,
      progress=False,
    )
  except NonFiniteLossError as err:
    return DigitsResult(
      name,
      learning_rate,
      batch_losses=np.zeros(0),
      updates_to_threshold=None,
      final_loss=math.nan,
      test_accuracy=math.nan,
      diverged_at=err.step,
    )
  final_loss, test_accuracy = _final_figures(params, data)
  batch_losses = np.asarray(stats.batch_losses)
  return DigitsResult(
    optimizer=name,
    learning_rate=learning_rate,
    batch_losses=batch_losses,
    updates_to_threshold=updates_to_threshold(batch_losses, setup.loss_threshold, setup.smoothing),
    final_loss=float(final_loss),
    test_accuracy=float(test_accuracy),
  )


def compare_digits(rates: Mapping[str, float], setup: DigitsSetup = DigitsSetup()) -> DigitsComparison:
  """Runs `train_digits` for every `{optimizer name: learning rate}` of `rates` on one split."""
  _check_learning_rates(rates)
  data = digits_data(setup.seed, setup.test_fraction)
  updates = setup.epochs * math.ceil(len(data.x_train) / setup.batch_size)
  return DigitsComparison(setup, updates, {name: train_digits(name, lr, data, setup) for name, lr in rates.items()})


# ---------------------------------------------------------------------------------------
# The machine-readable summary.


def _number(value: float) -> Optional[float]:
  """`value` as a float, or None when it is NaN or infinite (which JSON cannot hold)."""
  return float(value) if math.isfinite(value) else None


def summary(line_fit: Optional[LineFitComparison] = None, digits: Optional[DigitsComparison] = None) -> dict[str, Any]:
  """The results as `{"tasks": {"regression": {...}, "digits": {...}}}` (the tasks that ran).

  regression: `{optimizer: {"m", "b", "final_loss"}}`; digits: `{optimizer:
  {"updates_to_threshold" (int or None), "final_loss", "test_accuracy"}}`. Non-finite
  numbers (a diverged run) are None, so the summary is always valid JSON.
  """
  tasks: dict[str, Any] = {}
  if line_fit is not None:
    tasks["regression"] = {
      name: {"m": _number(r.m), "b": _number(r.b), "final_loss": _number(r.final_loss)}
      for name, r in line_fit.results.items()
    }
  if digits is not None:
    tasks["digits"] = {
      name: {
        "updates_to_threshold": r.updates_to_threshold,
        "final_loss": _number(r.final_loss),
        "test_accuracy": _number(r.test_accuracy),
      }
      for name, r in digits.results.items()
    }
  return {"tasks": tasks}
