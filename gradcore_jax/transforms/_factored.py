"""Factored second moments: torch's Adafactor, with row/column statistics for matrices and a relative step."""

from __future__ import annotations

import math
from typing import Any
from typing import NamedTuple
from typing import Optional

import jax
import jax.core
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from gradcore_jax import _checks
from gradcore_jax._typing import Array
from gradcore_jax._typing import PyTree
from gradcore_jax._typing import Scalar
from gradcore_jax._typing import ScalarOrSchedule
from gradcore_jax.transforms._formulas import as_float
from gradcore_jax.transforms._formulas import increment
from gradcore_jax.transforms._formulas import is_none
from gradcore_jax.transforms._formulas import lerp
from gradcore_jax.transforms._formulas import value_at
from gradcore_jax.transforms._formulas import zero_count

GradientTransformation = optax.GradientTransformationExtraArgs


class ScaleByAdafactorState(NamedTuple):
  """Torch's Adafactor state, with torch's names.

  For a leaf with two or more dimensions `(..., m, n)`, `row_var` holds its row statistics
  `(..., m, 1)` and `col_var` its column statistics `(..., 1, n)`, and `variance` holds
  `None`; for a 0-/1-D leaf, `variance` holds its full second moment and the other two
  `None`. So a `(1024, 1024)` matrix keeps 2048 numbers instead of Adam's 2 x 1048576.

  Attributes:
    count: the number of updates taken (torch's `step`), an int32 scalar.
    row_var: per leaf of two or more dimensions, the moving average of `g**2` averaged over
      the last axis, `(..., m, 1)` (torch's `row_var`); `None` for 0-/1-D leaves.
    col_var: per leaf of two or more dimensions, the moving average of `g**2` averaged over
      the second-to-last axis, `(..., 1, n)` (torch's `col_var`); `None` for 0-/1-D leaves.
    variance: per 0-/1-D leaf, the moving average of `g**2`, shaped like the leaf (torch's
      `variance`); `None` for leaves of two or more dimensions.
  """

  count: Array  # pyright: ignore[reportIncompatibleMethodOverride]
  row_var: PyTree
  col_var: PyTree
  variance: PyTree


def check_adafactor_hyperparameters(beta2_decay: Scalar, eps1: Optional[Scalar], eps2: Scalar, d: Scalar) -> None:
  """Torch's constructor checks: `beta2_decay <= 0`, `eps1 >= 0` (or None), `eps2 >= 0`, `d >= 1`."""
  decay = _checks.concrete_value("beta2_decay", beta2_decay)
  if decay is not None and not decay <= 0:
    raise ValueError(f"beta2_decay must be <= 0, got {beta2_decay!r}.")
  if eps1 is not None:
    _checks.check_non_negative("eps[0] (eps1)", eps1)
  _checks.check_non_negative("eps[1] (eps2)", eps2)
  threshold = _checks.concrete_value("d", d)
  if threshold is not None and not threshold >= 1:
    raise ValueError(f"d (the update clipping threshold) must be >= 1, got {d!r}.")


def scale_by_adafactor(
  learning_rate: ScalarOrSchedule = 1e-2,
  beta2_decay: Scalar = -0.8,
  eps1: Optional[Scalar] = None,
  eps2: Scalar = 1e-3,
  d: Scalar = 1.0,
) -> GradientTransformation:
  """Torch's Adafactor direction (Shazeer & Stern, 2018) divided by the learning rate.

  Update `t` (1-based), per leaf `p` with gradient `g`: `w = t**beta2_decay` (that is
  `1 - beta2_t`) and, for a leaf with two or more dimensions (statistics over its last two),
  `R <- lerp(R, mean(g**2, -1), w)`, `C <- lerp(C, mean(g**2, -2), w)`,
  `V = R C / max(mean(R, -2), eps1)`; for a 0-/1-D leaf `V <- lerp(V, g**2, w)`. Then
  `U = g / sqrt(max(V, eps1**2))`, `U_hat = U / max(1, RMS(U) / d)` and torch's step is
  `max(eps2, RMS(p)) * min(lr, 1/sqrt(t)) * U_hat` (a relative step, no first moment).

  The output is that step divided by `lr`, i.e. with `min(1, 1/(lr sqrt(t)))` in place of
  `min(lr, 1/sqrt(t))`, so that the chain's last block (`-lr`) gives torch's step and a
  decoupled weight decay before it gives torch's `p <- p (1 - lr wd)`. `update` needs the
  params. (Not `optax.scale_by_factored_rms`, which factors the two *largest* axes, only when
  both have >= 128 entries, and adds eps 1e-30 to `g**2` instead of flooring the estimate.)

  Args:
    learning_rate: torch's `lr` (a number, a jax scalar or a schedule evaluated at the
      number of updates already taken): it caps the relative step `min(lr, 1/sqrt(t))`.
    beta2_decay: the exponent of the second-moment decay, `beta2_t = 1 - t**beta2_decay`; <= 0.
    eps1: floor of the second moment (squared) and of the row-mean; `None` means the
      machine epsilon of each leaf's dtype (torch takes the first param's dtype for all).
    eps2: floor of the parameter RMS in the relative step.
    d: the update clipping threshold on `RMS(U)`, >= 1.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is a `ScaleByAdafactorState`.
  """
  _checks.check_learning_rate(learning_rate)
  check_adafactor_hyperparameters(beta2_decay, eps1, eps2, d)

  def init_fn(params):
    return ScaleByAdafactorState(
      count=zero_count(),
      row_var=jax.tree.map(lambda p: _factored_zeros(p, -1), params),
      col_var=jax.tree.map(lambda p: _factored_zeros(p, -2), params),
      variance=jax.tree.map(lambda p: jnp.zeros_like(p) if jnp.ndim(p) < 2 else None, params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _checks.check_tree_matches(updates, _leaf_shapes(state), what="the Adafactor state")
    _checks.require_params(params, "scale_by_adafactor")
    count = increment(state.count)
    step = as_float(count)
    weight = step**beta2_decay
    lr = value_at(learning_rate, state.count)
    relative_step = jnp.minimum(1, 1 / (lr * jnp.sqrt(step)))

    def leaf(g, p, row, col, variance):
      if g is None:
        return None, row, col, variance
      _check_factored_shapes(g, row, col)
      floor = jnp.finfo(p.dtype).eps if eps1 is None else eps1
      if g.ndim > 1:
        row = lerp(row, _squared_norm(g, -1) / g.shape[-1], weight)
        col = lerp(col, _squared_norm(g, -2) / g.shape[-2], weight)
        estimate = row * col / jnp.maximum(jnp.mean(row, axis=-2, keepdims=True), floor)
      else:
        variance = lerp(variance, g * g, weight)
        estimate = variance
      direction = g / jnp.sqrt(jnp.maximum(estimate, floor * floor))
      clip = jnp.maximum(1, _rms(direction) / d)
      scale = jnp.maximum(eps2, _rms(p)) * relative_step / clip
      return (scale * direction).astype(g.dtype), row, col, variance

    grads, treedef = jax.tree.flatten(updates, is_leaf=is_none)
    results = [
      leaf(*leaves)
      for leaves in zip(
        grads,
        treedef.flatten_up_to(params),
        treedef.flatten_up_to(state.row_var),
        treedef.flatten_up_to(state.col_var),
        treedef.flatten_up_to(state.variance),
        strict=True,
      )
    ]
    updates, row_var, col_var, variance = (
      jax.tree.unflatten(treedef, [result[i] for result in results]) for i in range(4)
    )
    return updates, ScaleByAdafactorState(count=count, row_var=row_var, col_var=col_var, variance=variance)

  return GradientTransformation(init_fn, update_fn)


def _factored_zeros(p: Any, axis: int) -> Optional[Array]:
  """Zeros for the statistic of `p` averaged over `axis` (kept as a size-1 axis); None below 2-D.

  The statistic keeps `p`'s sharding over the axes it keeps, and is replicated along `axis`:
  the row statistic `(..., m, 1)` of a matrix sharded by rows is sharded by rows too, its
  column statistic `(..., 1, n)` replicated. (`jnp.zeros` alone would replicate both, and under
  `jax.sharding.AxisType.Explicit` a state whose sharding changes at the first update cannot
  be carried through `lax.scan` or `lax.cond`.) Works on arrays, tracers and `ShapeDtypeStruct`s.
  """
  if jnp.ndim(p) < 2:
    return None
  shape = list(jnp.shape(p))
  shape[axis] = 1
  return jax.lax.full(shape, 0, p.dtype, sharding=_kept_axes_sharding(p, axis))


def _kept_axes_sharding(p: Any, axis: int) -> Optional[NamedSharding]:
  """`p`'s `NamedSharding` with `axis` unsharded, or None (the default placement) when it has none."""
  sharding = jax.typeof(p).sharding if isinstance(p, jax.core.Tracer) else getattr(p, "sharding", None)
  if not isinstance(sharding, NamedSharding):
    return None
  spec = [*sharding.spec, *([None] * (jnp.ndim(p) - len(sharding.spec)))]
  spec[axis] = None
  return NamedSharding(sharding.mesh, PartitionSpec(*spec))


def _leaf_shapes(state: ScaleByAdafactorState) -> PyTree:
  """The shape of each leaf the state was built for: `variance`'s, or rows x columns of `row_var`/`col_var`."""

  def shape(variance, row, col):
    if variance is not None:
      return jax.ShapeDtypeStruct(variance.shape, variance.dtype)
    return jax.ShapeDtypeStruct((*row.shape[:-1], col.shape[-1]), row.dtype)

  return jax.tree.map(shape, state.variance, state.row_var, state.col_var, is_leaf=is_none)


def _check_factored_shapes(g: Array, row: Optional[Array], col: Optional[Array]) -> None:
  """A gradient whose last two axes disagree with the row/column statistics would broadcast silently."""
  if g.ndim < 2:
    return
  want_row = (*g.shape[:-1], 1)
  want_col = (*g.shape[:-2], 1, g.shape[-1])
  if row is None or col is None or tuple(row.shape) != want_row or tuple(col.shape) != want_col:
    raise ValueError(
      f"The gradient of shape {tuple(g.shape)} does not match the Adafactor state "
      f"(row_var {None if row is None else tuple(row.shape)}, col_var {None if col is None else tuple(col.shape)})."
    )


def _accumulation_dtype(dtype) -> jnp.dtype:
  return jnp.promote_types(dtype, jnp.float32)


def _squared_norm(g: Array, axis: int) -> Array:
  """`norm(g, axis)**2`, torch's way to a row/column mean square (rounded to `g`'s dtype as the norm is)."""
  norm = jnp.linalg.norm(g.astype(_accumulation_dtype(g.dtype)), axis=axis, keepdims=True).astype(g.dtype)
  return norm * norm


def _rms(x: Array) -> Array:
  """`norm(x) / sqrt(x.size)` over the whole leaf, the norm rounded to `x`'s dtype as torch's is."""
  # Over all axes at once, not over a raveled copy: a reshape of a sharded array needs its output sharding spelled out.
  norm = jnp.linalg.norm(x.astype(_accumulation_dtype(x.dtype))).astype(x.dtype)
  return norm / math.sqrt(max(x.size, 1))
