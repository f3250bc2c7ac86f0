"""Optimizer state in a wider dtype than the params: float32 moments for bfloat16/float16 models.

    >>> import jax.numpy as jnp
    >>> import gradcore_jax as gcj
    >>> tx = gcj.with_state_dtype(gcj.adam(1e-3), jnp.float32)
    >>> params = {"w": jnp.ones(3, jnp.bfloat16)}
    >>> updates, state = tx.update({"w": jnp.full(3, 1e-3, jnp.bfloat16)}, tx.init(params), params)
    >>> updates["w"].dtype, state[0].nu["w"].dtype  # updates in the params' dtype, moments in float32
    (dtype(bfloat16), dtype('float32'))

Every block of the package stores its state in the dtype of the params it is initialised
with and computes in the gradient's dtype. Float16 state underflows (Adam's `g**2` is 0 for
`|g| < 2.4e-4`, and `eps = 1e-8` rounds to 0 in float16, so `m / (sqrt(v) + eps)` becomes
`inf` or `NaN`); bfloat16 state keeps 8 bits, so `0.999 * v` rounds back to `v`. The wrapper
runs the optimizer on float32 copies of the gradients and params and casts the updates back.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradcore_jax._typing import PyTree

GradientTransformation = optax.GradientTransformationExtraArgs


def with_state_dtype(tx: optax.GradientTransformation, dtype: Any = jnp.float32) -> GradientTransformation:
  """`tx` with its state, and its arithmetic, in `dtype` for params of a narrower float dtype.

  The contract: for params `p` and gradients `g`,
  `update(g, state, p) == cast(tx.update(up(g), state, up(p)), dtype of p)` with
  `up(x) = x.astype(dtype)` for every floating leaf narrower than `dtype` (other leaves are
  passed unchanged, so float32/float64 params see exactly `tx`), and `init(p) == tx.init(up(p))`.
  Every state leaf that the blocks derive from the params is therefore `dtype`, and stays so
  across steps, under `jit`, `optax.MultiSteps` and `lax.cond`. The updates come back in each
  param's dtype (the gradient's, when `params` is not given), so `optax.apply_updates` keeps
  the params' dtype. The params themselves stay low-precision: this is float32 *state*, not
  float32 master weights.

  Defaults: `dtype=jnp.float32`.

  Args:
    tx: the optimizer, any Optax `GradientTransformation` (e.g. `gcj.adam(1e-3)`). Extra
      arguments of `update` (e.g. `value=` for `optax.contrib.reduce_on_plateau`) pass through.
    dtype: the floating dtype to keep the state and compute in (float32 or float64).

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is `tx`'s state (in `dtype`).

  Raises:
    TypeError: `tx` is not a `GradientTransformation`, or `dtype` is not a floating dtype.
  """
  if not isinstance(tx, optax.GradientTransformation) and not (
    callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))
  ):
    raise TypeError(f"tx must be an optax GradientTransformation (with init and update), got {type(tx).__name__}.")
  try:
    state_dtype = np.dtype(jnp.dtype(dtype))
  except TypeError:
    raise TypeError(f"dtype must be a floating dtype such as jnp.float32, got {dtype!r}.") from None
  if not jnp.issubdtype(state_dtype, jnp.floating):
    raise TypeError(f"dtype must be a floating dtype such as jnp.float32, got {dtype!r}.")

  def widen(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda leaf: _widen(leaf, state_dtype), tree, is_leaf=_is_none)

  def init_fn(params):
    return tx.init(widen(params))

  def update_fn(updates, state, params=None, **extra_args):
    wide_params = None if params is None else widen(params)
    new_updates, new_state = tx.update(widen(updates), state, wide_params, **extra_args)
    reference = updates if params is None else params
    new_updates = jax.tree.map(_narrow, new_updates, reference, is_leaf=_is_none)
    return new_updates, new_state

  return GradientTransformation(init_fn, update_fn)


def _widen(leaf: Any, dtype: np.dtype) -> Any:
  """`leaf` in `dtype` if it is a floating array narrower than `dtype`, else unchanged."""
  if leaf is None or not hasattr(leaf, "dtype"):
    return leaf
  if not (jnp.issubdtype(leaf.dtype, jnp.floating) and np.dtype(leaf.dtype).itemsize < dtype.itemsize):
    return leaf
  if isinstance(leaf, jax.ShapeDtypeStruct):  # `init` on abstract params, e.g. to size the state
    return jax.ShapeDtypeStruct(leaf.shape, dtype, sharding=leaf.sharding)
  return leaf.astype(dtype)


def _narrow(update: Any, reference: Any) -> Any:
  """`update` cast back to `reference`'s dtype (a `None` update stays `None`)."""
  if update is None or reference is None or not hasattr(reference, "dtype"):
    return update
  return update.astype(reference.dtype)


def _is_none(x: Any) -> bool:
  return x is None
