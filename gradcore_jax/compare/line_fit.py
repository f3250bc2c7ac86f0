"""The article's line fit, `y = m·x + b`, as pure functions that return plain results.

Two settings of one lesson: one parameter's gradient is tiny, so with a learning rate that is
safe for the other, SGD moves it slowly, while RMSprop and Adam divide each parameter's
gradient by its own running RMS and move both at about `lr` per update.

- `REGRESSION`: the article's text, `y = 30·x + 2 + noise` with `x` uniform in [-0.1, 0.1].
  The slope's gradient `2·x·error` is small where `x` is: the **slope** is slow.
- `SPREADSHEET`: the fast.ai gradient-descent spreadsheet behind the article's figures
  (SGD 1.5, RMSprop 4.72, Adam 29.25 after 2 epochs), `y = 2·x + 30` with large `x` (here
  uniform in [0, 100], 30 points, no noise: our stand-in for the sheet's data). The slope's
  curvature `2·x²` caps the learning rate, and the **intercept** is slow (the article calls
  it the slope: it swaps the names).

Every run fits from `m = b = 0` by per-example updates (batch 1) for 2 epochs, one `lax.scan`
over all updates. `fit_line` runs one optimizer; `line_fit_rows` runs one optimizer over many
(learning rate, coefficients) rows at once, `jax.vmap`-ed over the rows.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Mapping
from typing import NamedTuple
from typing import Optional
from typing import cast

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
from gradcore_jax.compare._common import updates_to_threshold
from gradcore_jax.data import DataLoader


@dataclasses.dataclass(frozen=True)
class LineFitSetup:
  """A line-fit problem: `y = slope·x + intercept + N(0, noise²)`, `x ~ U(x_offset ± x_range)`.

  `epochs` passes of `batch_size`-example updates (batch 1: per-example updates, as in the
  article), starting from `m = b = 0`, examples shuffled each epoch with `seed`. A run has
  reached the loss threshold when the mean loss of its last `smoothing` batches is at or below
  `loss_threshold` (see `updates_to_threshold`).

  Defaults: the article's text, `y = 30x + 2`, 500 points, x in [-0.1, 0.1], noise sd 0.3,
  2 epochs of batch 1, threshold 0.15 (the noise alone gives 0.09) over the last 50 updates.
  """

  slope: float = 30.0
  intercept: float = 2.0
  num_points: int = 500
  x_range: float = 0.1
  noise: float = 0.3
  epochs: int = 2
  batch_size: int = 1
  seed: int = 0
  x_offset: float = 0.0
  loss_threshold: float = 0.15
  smoothing: int = 50

  def __post_init__(self) -> None:
    check_counts(self, ("num_points", "epochs", "batch_size", "smoothing"))
    check_positive_number("x_range", self.x_range)
    check_positive_number("loss_threshold", self.loss_threshold)
    if not (isinstance(self.noise, (int, float)) and math.isfinite(self.noise) and self.noise >= 0):
      raise ValueError(f"noise must be a finite number >= 0, got {self.noise!r}.")
    for name in ("slope", "intercept", "x_offset"):
      value = getattr(self, name)
      if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")

  @property
  def updates(self) -> int:
    """Optimizer updates per run."""
    return self.epochs * math.ceil(self.num_points / self.batch_size)

  @property
  def slow_parameter(self) -> str:
    """ "m" or "b": the parameter with the smaller curvature, `2·E[x²]` for m against 2 for b."""
    mean_square = self.x_offset**2 + self.x_range**2 / 3  # E[x²] for x uniform in x_offset ± x_range
    return "m" if mean_square < 1 else "b"

  @property
  def slow_target(self) -> float:
    """The true value of the slow parameter."""
    return self.slope if self.slow_parameter == "m" else self.intercept

  def describe(self) -> str:
    """One line: the equation, the points and the start."""
    noise = f" + noise (sd {self.noise:g})" if self.noise else " (no noise)"
    low, high = self.x_offset - self.x_range, self.x_offset + self.x_range
    return (
      f"y = {self.slope:g}*x + {self.intercept:g}{noise}, {self.num_points} points, "
      f"x uniform in [{low:g}, {high:g}]; start m = b = 0"
    )


REGRESSION = LineFitSetup()
SPREADSHEET = LineFitSetup(
  slope=2.0,
  intercept=30.0,
  num_points=30,
  x_range=50.0,
  x_offset=50.0,
  noise=0.0,
  loss_threshold=1.0,
  smoothing=10,
)
LINE_FIT_SETUPS: Mapping[str, LineFitSetup] = {"regression": REGRESSION, "spreadsheet": SPREADSHEET}


@dataclasses.dataclass(frozen=True)
class LineFitResult:
  """One optimizer's line fit.

  Attributes:
    optimizer: the optimizer's name.
    learning_rate: its learning rate.
    m: the recovered slope.
    b: the recovered intercept.
    final_loss: the mean squared error over all points with the final `m, b`.
    batch_losses: the loss of each update's batch, before that update (`(updates,)`).
    path: `(updates + 1, 2)`: `(m, b)` at the start and after every update.
    preset: the coefficients' preset ("torch" or "article").
  """

  optimizer: str
  learning_rate: float
  m: float
  b: float
  final_loss: float
  batch_losses: np.ndarray
  path: np.ndarray
  preset: str = "torch"


@dataclasses.dataclass(frozen=True)
class LineFitComparison:
  """The data and every optimizer's `LineFitResult`, keyed by optimizer name."""

  setup: LineFitSetup
  x: np.ndarray
  y: np.ndarray
  results: dict[str, LineFitResult]


def line_data(setup: LineFitSetup) -> tuple[np.ndarray, np.ndarray]:
  """The points `(x, y)` of `setup`, float32, drawn from `numpy.random.default_rng(setup.seed)`.

  Args:
    setup: the problem.
  """
  rng = np.random.default_rng(setup.seed)
  x = setup.x_offset + rng.uniform(-setup.x_range, setup.x_range, setup.num_points)
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

  Args:
    x: the inputs, `(num_points,)`.
    y: the targets, `(num_points,)`.
    setup: the problem (epochs, batch size, seed).
  """
  loader = DataLoader((x, y), batch_size=setup.batch_size, shuffle=True, seed=setup.seed)
  epochs = [loader.stacked(epoch) for epoch in range(setup.epochs)]
  return LineBatches(
    np.concatenate([e.data[0] for e in epochs]),
    np.concatenate([e.data[1] for e in epochs]),
    np.concatenate([e.mask for e in epochs]),
  )


def _line(params: Mapping[str, Array], x: ArrayLike) -> Array:
  return params["m"] * x + params["b"]


def line_loss(params: Mapping[str, Array], x: ArrayLike, y: ArrayLike, mask: Optional[Array] = None) -> Array:
  """The mean squared error of `y ≈ m·x + b` over the examples `mask` keeps (all by default).

  Args:
    params: `{"m": slope, "b": intercept}`.
    x: inputs.
    y: targets, shaped like `x`.
    mask: optional booleans shaped like `x`; False examples are left out.
  """
  return losses.mse(_line(params, x), y, mask=mask)


def loss_surface(x: np.ndarray, y: np.ndarray, m: np.ndarray, b: np.ndarray) -> np.ndarray:
  """The mean squared error over all points at every `(m[i], b[i])`, broadcast, in float64.

  Uses `mean((m·x + b − y)²) = m²·E[x²] + 2mb·E[x] + b² − 2m·E[xy] − 2b·E[y] + E[y²]`, so a
  contour grid costs no pass over the data.

  Args:
    x: the inputs.
    y: the targets.
    m: slopes (any shape that broadcasts with `b`).
    b: intercepts.
  """
  x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
  m, b = np.asarray(m, np.float64), np.asarray(b, np.float64)
  moments = [np.mean(v) for v in (x64 * x64, x64, x64 * y64, y64, y64 * y64)]
  xx, x1, xy, y1, yy = moments
  return m * m * xx + 2 * m * b * x1 + b * b - 2 * m * xy - 2 * b * y1 + yy


def _trajectory(optimizer: optax.GradientTransformation, batches: LineBatches) -> tuple[Array, Array]:
  """All updates from `m = b = 0` in one `lax.scan`: the batch losses and `(m, b)` after each update."""
  params = {"m": jnp.zeros((), jnp.float32), "b": jnp.zeros((), jnp.float32)}

  def step(carry: tuple[PyTree, PyTree], batch: LineBatches) -> tuple[tuple[PyTree, PyTree], tuple[Array, Array]]:
    params, opt_state = carry
    loss, grads = jax.value_and_grad(line_loss)(params, batch.x, batch.y, batch.mask)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = cast(dict[str, Array], optax.apply_updates(params, updates))  # optax types it as any ArrayTree
    return (params, opt_state), (loss, jnp.stack([params["m"], params["b"]]))

  _, (batch_losses, path) = jax.lax.scan(step, (params, optimizer.init(params)), batches)
  return batch_losses, path


_scan_line_fit = jax.jit(_trajectory, static_argnums=0)


def fit_line(
  name: str, learning_rate: float, x: np.ndarray, y: np.ndarray, setup: LineFitSetup, preset: str = "torch"
) -> LineFitResult:
  """Fits `y ≈ m·x + b` from `m = b = 0` with optimizer `name` as `setup` says.

  Args:
    name: an optimizer name.
    learning_rate: its learning rate.
    x: the inputs (`line_data`).
    y: the targets.
    setup: the problem (epochs, batch size, seed).
    preset: the optimizer's coefficients, "torch" (default) or "article".
  """
  optimizer = presets.make_optimizer(name, learning_rate, preset)
  batch_losses, path = jax.device_get(_scan_line_fit(optimizer, line_batches(x, y, setup)))
  m, b = (float(v) for v in path[-1])
  final = {"m": jnp.float32(m), "b": jnp.float32(b)}
  return LineFitResult(
    optimizer=name,
    learning_rate=learning_rate,
    m=m,
    b=b,
    final_loss=float(line_loss(final, x, y)),
    batch_losses=np.asarray(batch_losses),
    path=np.concatenate([np.zeros((1, 2), np.float32), path]),
    preset=preset,
  )


def compare_line_fit(
  rates: Mapping[str, float], setup: LineFitSetup = REGRESSION, preset: str = "torch"
) -> LineFitComparison:
  """Runs `fit_line` for every `{optimizer name: learning rate}` of `rates` on one data set.

  Args:
    rates: `{optimizer name: learning rate}`.
    setup: the problem (default: the article's `y = 30x + 2`).
    preset: the optimizers' coefficients, "torch" (default) or "article".
  """
  check_learning_rates(rates)
  presets.get_preset(preset)
  x, y = line_data(setup)
  results = {name: fit_line(name, lr, x, y, setup, preset) for name, lr in rates.items()}
  return LineFitComparison(setup, x, y, results)


# ---------------------------------------------------------------------------------------
# Many rows at once.


class Rows(NamedTuple):
  """What `line_fit_rows` returns, one entry per row (leading axis `R`).

  Attributes:
    batch_losses: `(R, updates)`.
    path: `(R, updates + 1, 2)`: `(m, b)` at the start and after every update.
    final_loss: `(R,)`: the loss over all points at the end.
    initial_loss: the loss over all points at `m = b = 0` (the same for every row).
    updates_to_threshold: per row, see `LineFitSetup`; None where never reached.
  """

  batch_losses: np.ndarray
  path: np.ndarray
  final_loss: np.ndarray
  initial_loss: float
  updates_to_threshold: list[Optional[int]]


@functools.partial(jax.jit, static_argnums=0)
def _vmapped_line_fit(
  name: str, hyperparams: Mapping[str, Array], batches: LineBatches, x: Array, y: Array
) -> tuple[Array, Array, Array]:
  """`_trajectory` for every row of `hyperparams`, vectorised with `jax.vmap` (one compilation)."""

  def one_row(row: Mapping[str, Array]) -> tuple[Array, Array, Array]:
    batch_losses, path = _trajectory(presets.injected_optimizer(name)(**row), batches)
    final = {"m": path[-1, 0], "b": path[-1, 1]}
    return batch_losses, path, line_loss(final, x, y)

  return jax.vmap(one_row)(hyperparams)


def line_fit_rows(
  name: str, hyperparams: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, setup: LineFitSetup
) -> Rows:
  """Fits the line once per row of `hyperparams` with optimizer `name`, all rows in one vmapped scan.

  Row `r` runs `presets.injected_optimizer(name)(**{k: v[r] for k, v in hyperparams.items()})`:
  the same updates as `fit_line` with those values, to float32 rounding (`jax.vmap` may order
  a reduction differently from the unbatched program).

  Args:
    name: an optimizer name.
    hyperparams: `{"learning_rate": (R,), **{coefficient: (R,)}}` for `presets.coefficient_names(name)`.
    x: the inputs (`line_data`).
    y: the targets.
    setup: the problem.
  """
  rows = {k: jnp.asarray(v, jnp.float32) for k, v in hyperparams.items()}
  batch_losses, path, final_loss = jax.device_get(_vmapped_line_fit(name, rows, line_batches(x, y, setup), x, y))
  start = np.zeros((path.shape[0], 1, 2), np.float32)
  zero = {"m": jnp.float32(0), "b": jnp.float32(0)}
  return Rows(
    batch_losses=np.asarray(batch_losses),
    path=np.concatenate([start, path], axis=1),
    final_loss=np.asarray(final_loss, np.float64),
    initial_loss=float(line_loss(zero, x, y)),
    updates_to_threshold=[updates_to_threshold(row, setup.loss_threshold, setup.smoothing) for row in batch_losses],
  )
