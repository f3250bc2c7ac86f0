"""The article's classifier: one linear layer trained with the MSE loss on one-hot targets.

The article trains 784→10 on MNIST; here scikit-learn's 8×8 digits (64 features scaled to
[0, 1], the embedded stand-in: nothing is downloaded) train 64→10. Per optimizer: the updates
needed to bring the loss under a threshold, the final loss and the test accuracy.

`train_digits` runs one optimizer through `gradcore_jax.training.fit`; `digits_rows` runs one
optimizer over many (learning rate, coefficients) rows in one `jax.vmap`-ed scan over the same
batches. scikit-learn is imported only by the functions that load its data sets.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any
from typing import Mapping
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradcore_jax import losses
from gradcore_jax._typing import Array
from gradcore_jax._typing import ArrayLike
from gradcore_jax._typing import PyTree
from gradcore_jax.compare import presets
from gradcore_jax.compare._common import check_counts
from gradcore_jax.compare._common import check_learning_rates
from gradcore_jax.compare._common import check_positive_number
from gradcore_jax.compare._common import init_mlp
from gradcore_jax.compare._common import mlp
from gradcore_jax.compare._common import updates_to_threshold
from gradcore_jax.data import DataLoader
from gradcore_jax.training import NonFiniteLossError
from gradcore_jax.training import fit


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


@functools.lru_cache(maxsize=8)
def _digits_split(seed: int, test_fraction: float) -> Split:
  data = _require_sklearn().datasets.load_digits()
  x = (data.data / 16.0).astype(np.float32)
  return _split(x, data.target.astype(np.int32), seed=seed, test_fraction=test_fraction, stratify=True)


def digits_data(seed: int = 0, test_fraction: float = 0.2) -> Split:
  """scikit-learn's 1,797 8×8 digits: pixels scaled from 0..16 to [0, 1], int32 labels.

  The stratified train/test split is fixed by `seed`. Each call returns fresh copies.

  Args:
    seed: the split's random state.
    test_fraction: the share held out for testing, in (0, 1).
  """
  return Split(*(part.copy() for part in _digits_split(seed, test_fraction)))


def diabetes_data(seed: int = 0, test_fraction: float = 0.2) -> Split:
  """scikit-learn's diabetes regression set (442 patients, 10 standardized features).

  The target (disease progression, 25..346) is standardized with the training split's
  mean and standard deviation, so losses are in units of one standard deviation.

  Args:
    seed: the split's random state.
    test_fraction: the share held out for testing, in (0, 1).
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

  Args:
    y_pred: `(..., classes)` outputs.
    y_true: `(...)` integer labels.
    reduction: "mean" (default), "sum" or "none", over the examples.
    mask: optional booleans shaped like `y_true`; False examples are left out.
  """
  return losses.mse(y_pred, jax.nn.one_hot(y_true, y_pred.shape[-1]), reduction=reduction, mask=mask)


@dataclasses.dataclass(frozen=True)
class DigitsSetup:
  """The digits run: `epochs` of `batch_size` examples, shuffled by `seed`, which also fixes
  the split and the initial weights (the same for every optimizer).

  `loss_threshold` and `smoothing`: an optimizer has reached the threshold when the mean loss
  of its last `smoothing` batches is at or below it (see `updates_to_threshold`).

  Defaults: 40 epochs of 64, 20 % held out, threshold 0.04 over the last 10 batches.
  """

  epochs: int = 40
  batch_size: int = 64
  seed: int = 0
  test_fraction: float = 0.2
  loss_threshold: float = 0.04
  smoothing: int = 10

  def __post_init__(self) -> None:
    check_counts(self, ("epochs", "batch_size", "smoothing"))
    check_positive_number("loss_threshold", self.loss_threshold)
    if not (isinstance(self.test_fraction, float) and 0 < self.test_fraction < 1):
      raise ValueError(f"test_fraction must be a float in (0, 1), got {self.test_fraction!r}.")

  def updates(self, num_train: int) -> int:
    """Optimizer updates per run on `num_train` training examples.

    Args:
      num_train: the number of training examples.
    """
    return self.epochs * math.ceil(num_train / self.batch_size)


@dataclasses.dataclass(frozen=True)
class DigitsResult:
  """One optimizer's digits run.

  Attributes:
    optimizer: the optimizer's name.
    learning_rate: its learning rate.
    batch_losses: the loss of every update's batch (`TrainingStats.batch_losses`).
    updates_to_threshold: see `DigitsSetup`; None if never reached.
    final_loss: MSE over the whole training set with the final weights (NaN if diverged).
    test_accuracy: fraction of test digits classified right (NaN if diverged).
    diverged_at: the index (from 0) of the first batch whose loss was NaN or infinite, or None.
    preset: the coefficients' preset ("torch" or "article").
  """

  optimizer: str
  learning_rate: float
  batch_losses: np.ndarray
  updates_to_threshold: Optional[int]
  final_loss: float
  test_accuracy: float
  diverged_at: Optional[int] = None
  preset: str = "torch"


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


def initial_params(data: Split, setup: DigitsSetup) -> list[dict[str, np.ndarray]]:
  """The 64→10 layer's starting weights, drawn with `setup.seed` (the same for every optimizer).

  Args:
    data: the split (its feature count sets the layer's input width).
    setup: the run (its seed).
  """
  return init_mlp(np.random.default_rng(setup.seed), (data.x_train.shape[1], 10))


def train_digits(
  name: str, learning_rate: float, data: Split, setup: DigitsSetup, preset: str = "torch"
) -> DigitsResult:
  """Trains the 64→10 linear layer on `data` with optimizer `name` through `fit`.

  Args:
    name: an optimizer name.
    learning_rate: its learning rate.
    data: the split (`digits_data`).
    setup: epochs, batch size, seed, threshold.
    preset: the optimizer's coefficients, "torch" (default) or "article".
  """
  loader = DataLoader((data.x_train, data.y_train), batch_size=setup.batch_size, shuffle=True, seed=setup.seed)
  try:
    params, stats = fit(
      mlp,
      presets.make_optimizer(name, learning_rate, preset),
      params=initial_params(data, setup),
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
      preset=preset,
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
    preset=preset,
  )


def compare_digits(
  rates: Mapping[str, float], setup: DigitsSetup = DigitsSetup(), preset: str = "torch"
) -> DigitsComparison:
  """Runs `train_digits` for every `{optimizer name: learning rate}` of `rates` on one split.

  Args:
    rates: `{optimizer name: learning rate}`.
    setup: epochs, batch size, seed, threshold.
    preset: the optimizers' coefficients, "torch" (default) or "article".
  """
  check_learning_rates(rates)
  presets.get_preset(preset)
  data = digits_data(setup.seed, setup.test_fraction)
  results = {name: train_digits(name, lr, data, setup, preset) for name, lr in rates.items()}
  return DigitsComparison(setup, setup.updates(len(data.x_train)), results)


# ---------------------------------------------------------------------------------------
# Many rows at once.


class Rows(NamedTuple):
  """What `digits_rows` returns, one entry per row (leading axis `R`).

  Attributes:
    batch_losses: `(R, updates)`.
    final_loss: `(R,)`: MSE over the whole training set at the end.
    test_accuracy: `(R,)`.
    initial_loss: the training-set loss of the initial weights (the same for every row).
    updates_to_threshold: per row, see `DigitsSetup`; None where never reached.
  """

  batch_losses: np.ndarray
  final_loss: np.ndarray
  test_accuracy: np.ndarray
  initial_loss: float
  updates_to_threshold: list[Optional[int]]


class _Batches(NamedTuple):
  rows: np.ndarray  # (updates, batch_size) rows of the training set
  mask: np.ndarray  # (updates, batch_size)


def _batches(data: Split, setup: DigitsSetup) -> _Batches:
  """The rows of every batch of every epoch in `fit`'s order (`DataLoader(shuffle=True, seed)`)."""
  rows = np.arange(len(data.x_train), dtype=np.int32)
  loader = DataLoader((rows,), batch_size=setup.batch_size, shuffle=True, seed=setup.seed)
  epochs = [loader.stacked(epoch) for epoch in range(setup.epochs)]
  return _Batches(np.concatenate([e.data[0] for e in epochs]), np.concatenate([e.mask for e in epochs]))


@functools.partial(jax.jit, static_argnums=0)
def _vmapped_digits(
  name: str, hyperparams: Mapping[str, Array], params: PyTree, data: Split, batches: _Batches
) -> tuple[Array, Array, Array]:
  """Training for every row of `hyperparams`, vectorised with `jax.vmap` (one compilation)."""

  def loss_fn(params: PyTree, rows: Array, mask: Array) -> Array:
    return one_hot_mse(mlp(params, data.x_train[rows]), data.y_train[rows], mask=mask)

  def one_row(row: Mapping[str, Array]) -> tuple[Array, Array, Array]:
    optimizer = presets.injected_optimizer(name)(**row)

    def step(carry: tuple[PyTree, PyTree], batch: _Batches) -> tuple[tuple[PyTree, PyTree], Array]:
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params, batch.rows, batch.mask)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (final, _), batch_losses = jax.lax.scan(step, (params, optimizer.init(params)), batches)
    final_loss, accuracy = _final_figures(final, data)
    return batch_losses, final_loss, accuracy

  return jax.vmap(one_row)(hyperparams)


def digits_rows(name: str, hyperparams: Mapping[str, np.ndarray], data: Split, setup: DigitsSetup) -> Rows:
  """Trains the layer once per row of `hyperparams` with optimizer `name`, all rows in one vmapped scan.

  Every row starts from `initial_params` and sees `fit`'s batches in `fit`'s order; row `r`
  runs `presets.injected_optimizer(name)(**{k: v[r] for k, v in hyperparams.items()})`. The
  batch losses equal `train_digits`'s to float32 rounding. A run that diverges keeps going
  (NaN losses), where `train_digits` stops.

  Args:
    name: an optimizer name.
    hyperparams: `{"learning_rate": (R,), **{coefficient: (R,)}}` for `presets.coefficient_names(name)`.
    data: the split (`digits_data`).
    setup: epochs, batch size, seed, threshold.
  """
  rows = {k: jnp.asarray(v, jnp.float32) for k, v in hyperparams.items()}
  params = initial_params(data, setup)
  batch_losses, final_loss, accuracy = jax.device_get(_vmapped_digits(name, rows, params, data, _batches(data, setup)))
  initial_loss, _ = _final_figures(params, data)
  return Rows(
    batch_losses=np.asarray(batch_losses),
    final_loss=np.asarray(final_loss, np.float64),
    test_accuracy=np.asarray(accuracy, np.float64),
    initial_loss=float(initial_loss),
    updates_to_threshold=[updates_to_threshold(row, setup.loss_threshold, setup.smoothing) for row in batch_losses],
  )
