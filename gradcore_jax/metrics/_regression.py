"""The weighted mean of per-example values, and the regression metrics built on it (Keras' rules)."""

from __future__ import annotations

import functools
from typing import Any
from typing import Callable

import jax.numpy as jnp
import optax

from gradcore_jax._typing import Array
from gradcore_jax.metrics._core import DTYPE
from gradcore_jax.metrics._core import Metric
from gradcore_jax.metrics._core import as_array
from gradcore_jax.metrics._core import mean_metric

_MEAN_ARITY_HINT = (
  " mean() takes one array of per-example values, not (y_true, y_pred): for an error between "
  "y_true and y_pred use mean_squared_error(), mean_absolute_error() or root_mean_squared_error(), "
  "or pass per-example losses, e.g. mean().update(state, losses.mse(y_pred, y_true, reduction='none'))."
)


def _values(values: Any) -> Array:
  values = as_array("values", values)
  if jnp.issubdtype(values.dtype, jnp.complexfloating):
    raise TypeError(f"values must be real numbers, got dtype {values.dtype}.")
  return values


def _as_float(name: str, x: Any) -> Array:
  x = as_array(name, x)
  return x.astype(jnp.promote_types(x.dtype, DTYPE))


def _regression_values(error: Callable[[Array, Array], Array], y_true: Any, y_pred: Any) -> Array:
  """`error(y_pred, y_true)` element-wise, averaged over the last axis when ndim >= 2 (Keras)."""
  y_true, y_pred = _as_float("y_true", y_true), _as_float("y_pred", y_pred)
  if y_true.shape != y_pred.shape:
    raise ValueError(f"y_true and y_pred must have the same shape, got {y_true.shape} and {y_pred.shape}.")
  values = error(y_pred, y_true)
  return jnp.mean(values, axis=-1) if values.ndim >= 2 else values


def _absolute_error(y_pred: Array, y_true: Array) -> Array:
  return jnp.abs(y_pred - y_true)


def mean() -> Metric:
  """Weighted mean of per-example values: `Σ w·v / Σ w` (Keras `metrics.Mean`).

  `update(state, values)`: `values` of shape (batch, ...). A 0-d value (a batch mean) needs
  `sample_weight=batch_size`; without it `update` raises ValueError. Given two inputs (e.g.
  `(y_true, y_pred)`) it raises a ValueError pointing to the error metrics.
  """
  return mean_metric("mean()", _values, names=("values",), arity_hint=_MEAN_ARITY_HINT)


def mean_squared_error() -> Metric:
  """`Σ w·l / Σ w` with `l = mean((y_pred - y_true)**2, axis=-1)` (Keras `MeanSquaredError`).

  `update(state, y_true, y_pred)`. For (batch,) inputs each element is one example.
  """
  return mean_metric("mean_squared_error()", functools.partial(_regression_values, optax.losses.squared_error))


def mean_absolute_error() -> Metric:
  """`Σ w·l / Σ w` with `l = mean(|y_pred - y_true|, axis=-1)` (Keras `MeanAbsoluteError`)."""
  return mean_metric("mean_absolute_error()", functools.partial(_regression_values, _absolute_error))


def root_mean_squared_error() -> Metric:
  """`sqrt` of `mean_squared_error`'s value (Keras `RootMeanSquaredError`); the state holds sums."""
  return mean_metric(
    "root_mean_squared_error()",
    functools.partial(_regression_values, optax.losses.squared_error),
    finish=jnp.sqrt,
  )
