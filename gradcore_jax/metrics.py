"""Exact streaming metrics as pure functions, in the shape of an Optax transformation.

A `Metric` is a NamedTuple of four pure functions:

    state = metric.init()
    state = metric.update(state, *inputs, sample_weight=None, mask=None)   # jit/scan friendly
    state = metric.merge(state_a, state_b)                                  # associative
    value = metric.compute(state)

The state holds sufficient statistics, never ratios (`MeanState`): the weighted sum
`Σ w·v` and the weight sum `Σ w`, each a compensated float32 pair (`CompensatedSum`, exact
to about float64 precision over any number of updates), and the int32 count of unmasked
values. `compute` divides at the end: `Σ w·v / Σ w`, and returns 0 for an empty state (Keras'
`divide_no_nan`). Shapes and dtypes are fixed, so `update` never retraces under `jit` and
the state is a valid `lax.scan` carry.

Rules shared by every metric:

* Values are per example. A 0-d value (e.g. a batch-mean loss) is accepted only with
  `sample_weight` = the number of examples it stands for; it is never counted as 1.
* `sample_weight` and `mask` broadcast to the value shape from the leading (batch) axis, as
  in Keras: a `(batch,)` weight applies to every element of a `(batch, k)` value.
* Masked slots are removed with `jnp.where`, so NaN in padding cannot reach the state.
* Across devices, statistics are summed, never averaged: `psum(state, axis_name)` inside
  `pmap`/`shard_map`, or `merge` on the host. A global `jit` over sharded inputs needs
  nothing: its sums are already global.

Metric inputs are `(y_true, y_pred)` in Keras order (the losses in `gradcore_jax.losses`
take `(y_pred, y_true)`, as PyTorch and Optax do).
"""

from __future__ import annotations

import functools
from typing import Any
from typing import Callable
from typing import Mapping
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax

from gradcore_jax._typing import Array

__all__ = [
  "CompensatedSum",
  "MeanState",
  "Metric",
  "accuracy",
  "collection",
  "mean",
  "mean_absolute_error",
  "mean_squared_error",
  "psum",
  "root_mean_squared_error",
]

ArrayLike = jax.typing.ArrayLike
_DTYPE = jnp.float32
_COUNT_DTYPE = jnp.int32


class CompensatedSum(NamedTuple):
  """A float32 running sum carried as `value + compensation` (Neumaier/Knuth two-sum).

  `value` is the rounded sum; `compensation` collects the rounding error of every addition,
  so `value + compensation` stays exact to about float64 precision where a plain float32
  total drifts by ~1e-6 relative after 10⁴–10⁶ additions.
  """

  value: Array
  compensation: Array


class MeanState(NamedTuple):
  """Sufficient statistics of a weighted mean: `total / weight`, computed only at the end."""

  total: CompensatedSum  # Σ w·v over unmasked slots
  weight: CompensatedSum  # Σ w over unmasked slots
  # int32: number of unmasked values (exact beyond 2**24; wraps past 2**31); shadows tuple.count, as optax's states do
  count: Array  # pyright: ignore[reportIncompatibleMethodOverride]


class Metric(NamedTuple):
  """A streaming metric: `init`, `update`, `merge`, `compute`, all pure."""

  init: Callable[[], Any]
  update: Callable[..., Any]
  merge: Callable[[Any, Any], Any]
  compute: Callable[[Any], Any]


# ---------------------------------------------------------------------------------------
# The compensated sum: the only place where float32 totals are added.


def _add(a: CompensatedSum, b: CompensatedSum) -> CompensatedSum:
  """Adds two compensated sums; Knuth's two-sum recovers the rounding error of `a + b` exactly."""
  s = a.value + b.value
  b_virtual = s - a.value
  error = (a.value - (s - b_virtual)) + (b.value - b_virtual)
  return CompensatedSum(s, a.compensation + b.compensation + error)


def _compensated_total(x: Array) -> CompensatedSum:
  """Sum of all elements of a float32 array, itself compensated (a tree of `_add`)."""
  zero = jnp.zeros((), _DTYPE)
  return lax.reduce(CompensatedSum(x, jnp.zeros_like(x)), CompensatedSum(zero, zero), _add, tuple(range(x.ndim)))


def _resolve(s: CompensatedSum) -> Array:
  return s.value + s.compensation


# ---------------------------------------------------------------------------------------
# The weighted mean: init / accumulate / merge / ratio.


def _init_mean() -> MeanState:
  zero = jnp.zeros((), _DTYPE)
  return MeanState(CompensatedSum(zero, zero), CompensatedSum(zero, zero), jnp.zeros((), _COUNT_DTYPE))


def _merge_mean(a: MeanState, b: MeanState) -> MeanState:
  return MeanState(_add(a.total, b.total), _add(a.weight, b.weight), a.count + b.count)


def _ratio(state: MeanState) -> Array:
  """`Σ w·v / Σ w`, or 0 when no weight has been seen (Keras' `divide_no_nan`)."""
  weight = _resolve(state.weight)
  empty = weight == 0
  return jnp.where(empty, 0, _resolve(state.total) / jnp.where(empty, 1, weight))


def _broadcast_from_batch(name: str, x: ArrayLike, shape: tuple[int, ...]) -> Array:
  """Broadcasts `x` to `shape`, aligning leading axes (Keras' rule for sample weights)."""
  x = jnp.asarray(x)
  fits = x.ndim <= len(shape) and all(
    d in (1, s) for d, s in zip(x.shape, shape, strict=False)
  )  # x may have fewer axes
  if not fits:
    raise ValueError(
      f"{name} of shape {x.shape} does not broadcast to the value shape {shape} "
      "(it is aligned with the leading, batch axis)."
    )
  return jnp.broadcast_to(x.reshape(x.shape + (1,) * (len(shape) - x.ndim)), shape)


def _accumulate(
  state: MeanState,
  values: Array,
  sample_weight: Optional[ArrayLike],
  mask: Optional[ArrayLike],
) -> MeanState:
  """Adds per-example `values` with their weights to `state`; masked slots add nothing."""
  if values.ndim == 0 and sample_weight is None:
    raise ValueError(
      "A 0-d value is a batch mean: pass sample_weight=<number of examples in the batch> "
      "so that it counts for the examples it stands for (or pass the per-example values)."
    )
  values = values.astype(_DTYPE)
  weight = jnp.ones(values.shape, _DTYPE)
  if sample_weight is not None:
    weight = _broadcast_from_batch("sample_weight", sample_weight, values.shape).astype(_DTYPE)
  keep = jnp.ones(values.shape, bool) if mask is None else _broadcast_from_batch("mask", mask, values.shape)
  keep = keep.astype(bool)
  weight = jnp.where(keep, weight, 0)
  weighted = jnp.where(keep, weight * values, 0)
  batch = MeanState(_compensated_total(weighted), _compensated_total(weight), jnp.sum(keep, dtype=_COUNT_DTYPE))
  return _merge_mean(state, batch)


def _mean_metric(values_of: Callable[..., Array], finish: Callable[[Array], Array] = jnp.asarray) -> Metric:
  """A weighted-mean metric over the per-example values `values_of(*inputs)`."""

  def update(
    state: MeanState,
    *inputs: ArrayLike,
    sample_weight: Optional[ArrayLike] = None,
    mask: Optional[ArrayLike] = None,
  ) -> MeanState:
    return _accumulate(state, values_of(*inputs), sample_weight, mask)

  def compute(state: MeanState) -> Array:
    return finish(_ratio(state))

  return Metric(_init_mean, update, _merge_mean, compute)


# ---------------------------------------------------------------------------------------
# Per-example values.


def _as_float(x: ArrayLike) -> Array:
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, _DTYPE))


def _regression_values(error: Callable[[Array, Array], Array], y_true: ArrayLike, y_pred: ArrayLike) -> Array:
  """`error(y_pred, y_true)` element-wise, averaged over the last axis when ndim >= 2 (Keras)."""
  y_true, y_pred = _as_float(y_true), _as_float(y_pred)
  if y_true.shape != y_pred.shape:
    raise ValueError(f"y_true and y_pred must have the same shape, got {y_true.shape} and {y_pred.shape}.")
  values = error(y_pred, y_true)
  return jnp.mean(values, axis=-1) if values.ndim >= 2 else values


def _absolute_error(y_pred: Array, y_true: Array) -> Array:
  return jnp.abs(y_pred - y_true)


def _correct(y_true: ArrayLike, y_pred: ArrayLike) -> Array:
  """1.0 where the predicted class equals the label, else 0.0; one value per example."""
  y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred)
  if not (jnp.issubdtype(y_true.dtype, jnp.integer) or y_true.dtype == bool):
    raise ValueError(f"accuracy needs integer class labels in y_true, got dtype {y_true.dtype}.")
  if y_pred.shape == y_true.shape + (1,):
    y_pred = y_pred[..., 0]
  if y_pred.shape == y_true.shape:
    predicted = (y_pred > 0.5).astype(_COUNT_DTYPE)
  elif y_pred.shape[:-1] == y_true.shape:
    predicted = jnp.argmax(y_pred, axis=-1)
  else:
    raise ValueError(
      "accuracy needs y_pred of shape y_true.shape + (classes,) (logits or probabilities) or "
      f"y_true.shape / y_true.shape + (1,) (binary probabilities); got y_true {y_true.shape} "
      f"and y_pred {y_pred.shape}."
    )
  return (predicted == y_true).astype(_DTYPE)


# ---------------------------------------------------------------------------------------
# Public metrics.


def mean() -> Metric:
  """Weighted mean of per-example values: `Σ w·v / Σ w` (Keras `metrics.Mean`).

  `update(state, values)`: `values` of shape (batch, ...). A 0-d value (a batch mean) needs
  `sample_weight=batch_size`; without it `update` raises ValueError.
  """
  return _mean_metric(jnp.asarray)


def mean_squared_error() -> Metric:
  """`Σ w·l / Σ w` with `l = mean((y_pred - y_true)**2, axis=-1)` (Keras `MeanSquaredError`).

  `update(state, y_true, y_pred)`. For (batch,) inputs each element is one example.
  """
  return _mean_metric(functools.partial(_regression_values, optax.losses.squared_error))


def mean_absolute_error() -> Metric:
  """`Σ w·l / Σ w` with `l = mean(|y_pred - y_true|, axis=-1)` (Keras `MeanAbsoluteError`)."""
  return _mean_metric(functools.partial(_regression_values, _absolute_error))


def root_mean_squared_error() -> Metric:
  """`sqrt` of `mean_squared_error`'s value (Keras `RootMeanSquaredError`); the state holds sums."""
  return _mean_metric(functools.partial(_regression_values, optax.losses.squared_error), jnp.sqrt)


def accuracy() -> Metric:
  """Weighted fraction of correct predictions; `update(state, y_true, y_pred)`.

  `y_true`: integer labels of shape (batch, ...). `y_pred`:
  * shape `y_true.shape + (classes,)`, classes >= 2: logits or probabilities, the prediction
    is the argmax over the last axis (Keras `SparseCategoricalAccuracy`);
  * shape `y_true.shape` or `y_true.shape + (1,)`: the probability of class 1, thresholded
    at 0.5 (Keras `BinaryAccuracy`). For binary logits pass `jax.nn.sigmoid(logits)`.
  """
  return _mean_metric(_correct)


def collection(metrics: Mapping[str, Metric]) -> Metric:
  """Runs several metrics on the same inputs; states and values are dicts keyed like `metrics`.

  Every member receives the same `*inputs`, `sample_weight` and `mask`, so members must take
  the same inputs (e.g. all `(y_true, y_pred)`).
  """
  metrics = dict(metrics)

  def init() -> dict[str, Any]:
    return {name: m.init() for name, m in metrics.items()}

  def update(
    state: Mapping[str, Any],
    *inputs: ArrayLike,
    sample_weight: Optional[ArrayLike] = None,
    mask: Optional[ArrayLike] = None,
  ) -> dict[str, Any]:
    return {name: m.update(state[name], *inputs, sample_weight=sample_weight, mask=mask) for name, m in metrics.items()}

  def merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    return {name: m.merge(a[name], b[name]) for name, m in metrics.items()}

  def compute(state: Mapping[str, Any]) -> dict[str, Array]:
    return {name: m.compute(state[name]) for name, m in metrics.items()}

  return Metric(init, update, merge, compute)


def psum(state: Any, axis_name: Any) -> Any:
  """Sums every statistic of a metric state (or a collection's dict of states) over `axis_name`.

  Use inside `pmap`/`shard_map`/`vmap` with a named axis. The result is the state of all
  devices' data; sums are combined, never averaged (`pmean` would be wrong).
  """
  return jax.tree.map(functools.partial(lax.psum, axis_name=axis_name), state)
