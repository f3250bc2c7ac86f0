"""Gradient clipping as `torch.nn.utils` does it: `clip_grad_norm_` and `clip_grad_value_`.

Torch's norm clipping differs from `optax.clip_by_global_norm` in three ways that change
numbers: the scale is `max_norm / (total_norm + 1e-6)` (Optax: `max_norm / total_norm`),
it multiplies every step (by a coefficient clamped at 1) rather than only when the norm is
too large, and the norm may be any `norm_type`, computed as the norm of the per-tensor
norms.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import optax

from gradcore_jax import _checks
from gradcore_jax._typing import Array
from gradcore_jax._typing import PyTree
from gradcore_jax._typing import Scalar
from gradcore_jax.transforms._formulas import map_updates

GradientTransformation = optax.GradientTransformationExtraArgs

# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing.
CLIP_NORM_EPS = 1e-6


def _check_norm_type(norm_type: float) -> float:
  if not _checks.is_number(norm_type) or math.isnan(norm_type):
    raise ValueError(f"norm_type must be a number (a p-norm order, inf or -inf), got {norm_type!r}.")
  return float(norm_type)


def total_norm(grads: PyTree, norm_type: float = 2.0) -> Array:
  """The `norm_type`-norm of all gradient leaves together, as torch computes it.

  Torch first takes each tensor's vector norm and then the same norm of those norms,
  which equals the norm of all elements concatenated (and rounds the same way as torch).
  `None` leaves are skipped; an empty tree has norm 0.

  Args:
    grads: a pytree of gradient arrays.
    norm_type: the order `p` of the norm: any real `p` (`0` counts non-zeros), `inf` (the
      largest magnitude) or `-inf` (the smallest).

  Returns:
    A scalar in the gradients' common dtype.
  """
  norm_type = _check_norm_type(norm_type)
  leaves = [g for g in jax.tree.leaves(grads) if g is not None]
  if not leaves:
    return jnp.zeros([], jnp.result_type(float))
  dtype = jnp.result_type(*leaves)
  per_leaf = jnp.stack([jnp.linalg.norm(jnp.ravel(g).astype(dtype), ord=norm_type) for g in leaves])
  return jnp.linalg.norm(per_leaf, ord=norm_type)


def clip_by_torch_norm(grads: PyTree, max_norm: Scalar, norm_type: float = 2.0) -> tuple[PyTree, Array]:
  """Torch's `clip_grad_norm_` as a pure function: returns `(clipped grads, total norm)`.

  `coef = min(1, max_norm / (total_norm + 1e-6))` and every leaf is multiplied by `coef`
  (also when `coef == 1`, as torch does). A non-finite total norm gives torch's numbers: an
  infinite norm scales finite gradients to 0, a NaN norm makes every gradient NaN.

  Args:
    grads: a pytree of gradient arrays (`None` leaves pass through).
    max_norm: the largest allowed total norm (a number or a jax scalar).
    norm_type: the order of the norm, as in `total_norm`.
  """
  norm = total_norm(grads, norm_type)
  coef = jnp.minimum(max_norm / (norm + CLIP_NORM_EPS), 1.0)
  return map_updates(lambda g: g * coef.astype(g.dtype), grads), norm


class ClipGradNormState(NamedTuple):
  """`total_norm` is the norm of the last gradients before clipping (what torch returns).

  Attributes:
    total_norm: the `norm_type`-norm of the last gradients before clipping, a scalar in the
      params' common dtype; 0 before the first update.
  """

  total_norm: Array


def clip_grad_norm(
  max_norm: Scalar, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> GradientTransformation:
  """`torch.nn.utils.clip_grad_norm_` as a block to chain in front of an optimizer.

  `coef = min(1, max_norm / (total_norm + 1e-6))`, `g <- coef * g`, where `total_norm` is
  the `norm_type`-norm of all gradients (see `total_norm`). The norm before clipping is kept
  in the state (`state.total_norm`) for logging, as torch returns it.

  `error_if_nonfinite=True` raises a `FloatingPointError` when the norm is NaN or infinite
  and the gradients are concrete (an eager call). Under `jit` nothing can be raised from
  inside the step: the updates are then made NaN, so the failure cannot pass unnoticed
  (`fit(on_nonfinite=...)` and `optax.apply_if_finite` catch it).

  Args:
    max_norm: the largest allowed total norm; > 0.
    norm_type: the order of the norm: a real `p`, `inf` or `-inf`. Default 2.
    error_if_nonfinite: raise (eager) or poison the update (jit) on a non-finite norm,
      instead of torch's default behaviour of scaling by the non-finite coefficient.
  """
  _checks.check_positive("max_norm", max_norm)
  norm_type = _check_norm_type(norm_type)

  def init_fn(params):
    leaves = [p for p in jax.tree.leaves(params) if p is not None]
    dtype = jnp.result_type(*leaves) if leaves else jnp.result_type(float)
    return ClipGradNormState(total_norm=jnp.zeros([], dtype))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    clipped, norm = clip_by_torch_norm(updates, max_norm, norm_type)
    if error_if_nonfinite:
      finite = jnp.isfinite(norm)
      if not isinstance(norm, jax.core.Tracer):
        if not bool(finite):
          raise FloatingPointError(
            f"The total norm of order {norm_type} of the gradients is {float(norm)}; clip_grad_norm was "
            "built with error_if_nonfinite=True."
          )
      else:
        clipped = map_updates(lambda g: jnp.where(finite, g, jnp.nan), clipped)
    return clipped, ClipGradNormState(total_norm=norm.astype(state.total_norm.dtype))

  return GradientTransformation(init_fn, update_fn)


def clip_grad_value(clip_value: Scalar) -> GradientTransformation:
  """`torch.nn.utils.clip_grad_value_`: `g <- clamp(g, -clip_value, clip_value)`, leaf by leaf.

  Equal to `optax.clip(clip_value)`; given here so a torch recipe maps name for name.

  Args:
    clip_value: the largest allowed magnitude of a gradient entry; >= 0.
  """
  _checks.check_non_negative("clip_value", clip_value)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    return map_updates(lambda g: jnp.clip(g, -clip_value, clip_value), updates), state

  return GradientTransformation(optax.init_empty_state, update_fn)
