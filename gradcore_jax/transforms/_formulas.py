"""Shared formulas: each rule of the update (a bias correction, a denominator, a moving
average, the leaf maps that keep dtypes and `None` gradients) written once, used by every block."""

from __future__ import annotations

import math
from typing import Any
from typing import Callable
from typing import Optional
from typing import Union

import jax
import jax.numpy as jnp
import optax

from gradcore_jax import _checks
from gradcore_jax._typing import Array
from gradcore_jax._typing import PyTree
from gradcore_jax._typing import Scalar

GradientTransformation = optax.GradientTransformationExtraArgs


def bias_correction(decay: Scalar, count: Array) -> Array:
  """Adam's bias correction `1 - decay**t` for the 1-based step `t = count`.

  Evaluated as `-expm1(t * log(decay))`, which stays accurate to float32 rounding where
  the direct form loses digits to cancellation (`1 - 0.999**t` for small `t`).

  Args:
    decay: the moment's decay `b1` or `b2` in [0, 1): a number or a traced scalar.
    count: the 1-based step `t` (an int32 array, the state's count after incrementing).

  Returns:
    `1 - decay**count`, a floating-point array.
  """
  return -jnp.expm1(as_float(count) * host_log(decay))


def power(base: Scalar, exponent: Array) -> Array:
  """`base**exponent`, accurate for bases close to 1 (see `host_log`)."""
  return jnp.exp(as_float(exponent) * host_log(base))


def host_log(value: Scalar) -> Union[float, Array]:
  """`log(value)`, taken in double precision on the host when `value` is a Python number.

  Torch evaluates its scalar coefficients (bias corrections, NAdam's momentum schedule,
  RAdam's rectifier) in Python doubles. Rounding `b2 = 0.999` to float32 first would
  already shift `1 - b2` by 1.3e-5 relative; its double-precision log does not.
  """
  if _checks.is_number(value):
    return math.log(value) if value > 0 else -math.inf
  return jnp.log(value)


def rms_denominator(second_moment: Array, eps: Scalar, bias_correction: Optional[Array] = None) -> Array:
  """The RMS denominator with eps **outside** the root, as torch writes it.

  `d = sqrt(v) + eps`, or `d = sqrt(v) / sqrt(bc) + eps` with a bias correction `bc`.
  (Optax's `rmsprop` puts eps inside the root by default: `sqrt(v + eps)`.)

  Args:
    second_moment: the running average `v` of the squared gradients, one leaf.
    eps: added after the square root.
    bias_correction: `bc = 1 - b2**t` to divide `v` by (None: no correction, as RMSprop).

  Returns:
    `d`, shaped and typed like `second_moment`.
  """
  root = jnp.sqrt(second_moment)
  if bias_correction is not None:
    root = root / jnp.sqrt(bias_correction)
  return root + eps


def ema(moment: Array, value: Array, decay: Scalar) -> Array:
  """Exponential moving average `decay * moment + (1 - decay) * value`, in the moment's dtype."""
  return (decay * moment + (1 - decay) * value).astype(moment.dtype)


def lerp(start: Array, end: Array, weight: Scalar) -> Array:
  """Torch's `start.lerp(end, weight)`: `start + weight * (end - start)`, in `start`'s dtype.

  Like torch, it switches to `end - (end - start) * (1 - weight)` once `|weight| >= 0.5`,
  so that a weight of 1 returns `end` exactly; the weight is rounded to `start`'s dtype
  first, as torch rounds a Python scalar to the tensor's. (This is the same average as
  `ema(start, end, 1 - weight)` in exact arithmetic; Adafactor's moments and Muon's
  momentum buffer are written with it in torch, and it rounds differently.)

  Args:
    start: the array to move from (its dtype is the result's).
    end: the array to move towards, shaped like `start`.
    weight: how far to move, a number or a scalar array (1: `end`).

  Returns:
    The interpolated array, in `start`'s dtype.
  """
  weight = jnp.asarray(weight).astype(start.dtype)
  difference = end - start
  small = jnp.abs(weight) < 0.5
  return jnp.where(small, start + weight * difference, end - difference * (1 - weight)).astype(start.dtype)


def value_at(hyperparameter: Any, count: Array) -> Any:
  """A hyperparameter's value at update `count` (0 on the first update): a schedule is called.

  Lets `momentum` and `b1` follow a schedule (torch's `OneCycleLR` and `CyclicLR` change
  them every step) with the same convention as the learning rate.
  """
  return hyperparameter(count) if callable(hyperparameter) else hyperparameter


def as_float(count: Array) -> Array:
  """A step counter as a float of the default precision (float64 under x64)."""
  return jnp.asarray(count, dtype=jnp.result_type(float))


def zeros_like(params: PyTree) -> PyTree:
  """Zeros shaped, typed and sharded like `params` (works on `jax.ShapeDtypeStruct`s)."""
  return jax.tree.map(jnp.zeros_like, params)


def map_updates(fn: Callable[..., Array], updates: PyTree, *trees: PyTree) -> PyTree:
  """Maps `fn(g, *others)` over gradient leaves; a `None` gradient stays `None`.

  The result is cast back to the gradient's dtype so that float32 hyperparameters
  never promote bf16/f16 updates.
  """
  return jax.tree.map(
    lambda g, *rest: None if g is None else fn(g, *rest).astype(g.dtype),
    updates,
    *trees,
    is_leaf=is_none,
  )


def map_state(fn: Callable[..., Array], updates: PyTree, state: PyTree, *trees: PyTree) -> PyTree:
  """Maps `fn(g, s, *others)` to a new state leaf; a `None` gradient keeps the old leaf."""
  return jax.tree.map(
    lambda g, s, *rest: s if g is None else fn(g, s, *rest).astype(s.dtype),
    updates,
    state,
    *trees,
    is_leaf=is_none,
  )


def is_none(x: Any) -> bool:
  return x is None


def increment(count: Array) -> Array:
  return jnp.asarray(optax.safe_increment(count))  # optax annotates it as ArrayLike


def zero_count() -> Array:
  return jnp.zeros([], jnp.int32)
