"""Weight decay, coupled (torch's L2 in the gradient) and decoupled (AdamW), and Adagrad's lr decay."""

from __future__ import annotations

from typing import Any
from typing import Callable
from typing import Optional
from typing import Union

import jax
import numpy as np
import optax

from gradcore_jax import _checks
from gradcore_jax._typing import Array
from gradcore_jax._typing import PyTree
from gradcore_jax._typing import Scalar
from gradcore_jax._typing import ScalarOrSchedule
from gradcore_jax.transforms._formulas import as_float
from gradcore_jax.transforms._formulas import map_updates

GradientTransformation = optax.GradientTransformationExtraArgs


def _add_scaled_params(weight_decay: Scalar, block: str) -> GradientTransformation:
  _checks.check_non_negative("weight_decay", weight_decay)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _checks.require_params(params, block)
    _checks.check_tree_matches(updates, params, what="the params")
    return map_updates(lambda g, p: g + weight_decay * p, updates, params), state

  return GradientTransformation(optax.init_empty_state, update_fn)


def coupled_weight_decay(weight_decay: Scalar) -> GradientTransformation:
  """Coupled L2 weight decay, `g <- g + weight_decay * p`, applied *before* preconditioning.

  This is torch's `weight_decay` for SGD, RMSprop, Adam, Adagrad, Adadelta, Adamax,
  NAdam and RAdam: the decay term is then rescaled by the adaptive denominator.

  Args:
    weight_decay: the L2 factor (>= 0; a number or a traced scalar).

  Returns:
    An `optax.GradientTransformation` whose `update` needs the params.
  """
  return _add_scaled_params(weight_decay, "coupled_weight_decay")


def decoupled_weight_decay(
  weight_decay: Scalar, mask: Optional[Union[PyTree, Callable[[PyTree], PyTree]]] = None
) -> GradientTransformation:
  """Decoupled weight decay (AdamW), `u <- u + weight_decay * p`, applied *after* preconditioning.

  Chained before `scale_by_learning_rate(lr)` this gives `p <- p - lr * (u + wd * p)`,
  i.e. torch's `p <- p * (1 - lr * wd)` followed by the preconditioned step (Loshchilov &
  Hutter, 2019). `mask` (a bool pytree or a callable returning one; True = decay) limits
  the decay to some leaves, as in `optax.adamw`.

  Args:
    weight_decay: the decay rate, >= 0.
    mask: None (decay every leaf), a pytree of booleans with the params' structure or a
      prefix of it, or a callable `params -> such a pytree`. Anything else (a string, a
      number, a tree that does not fit the params) raises naming `mask`: a pytree is
      checked here and against the params in `init` and `update`, a callable's result
      there.
  """
  inner = _add_scaled_params(weight_decay, "decoupled_weight_decay")
  if mask is None:
    return inner
  check_mask(mask)
  masked = optax.masked(inner, mask)

  def init_fn(params):
    check_mask(mask, params)
    return masked.init(params)

  def update_fn(updates, state, params=None, **extra_args):
    check_mask(mask, updates)
    return masked.update(updates, state, params, **extra_args)

  return GradientTransformation(init_fn, update_fn)


def check_mask(mask: Any, params: Optional[PyTree] = None, *, name: str = "mask") -> None:
  """Raises naming `name` unless `mask` is a pytree of booleans fitting `params` (or a callable giving one).

  Without `params`, a callable passes and a pytree's leaves are checked; with `params`, a
  callable is called on them and the tree must have the params' structure or a prefix of it.
  """
  if isinstance(mask, (str, bytes)):
    raise TypeError(
      f"{name} must be a pytree of booleans like the params (or a prefix of it), or a callable returning one; "
      f"got the string {mask!r}."
    )
  if callable(mask):
    if params is None:
      return
    mask = mask(params)
  for path, leaf in jax.tree_util.tree_flatten_with_path(mask)[0]:
    if not _is_boolean(leaf):
      where = f" at {jax.tree_util.keystr(path)}" if path else ""
      raise TypeError(
        f"{name} must be a pytree of booleans (True = apply to this leaf) like the params or a prefix of it; "
        f"got {type(leaf).__name__} {leaf!r}{where}."
      )
  if params is not None:
    try:
      jax.tree.structure(mask).flatten_up_to(params)
    except (TypeError, ValueError) as err:
      raise ValueError(
        f"{name} does not fit the params: it must have their tree structure or a prefix of it ({err})."
      ) from None


def _is_boolean(leaf: Any) -> bool:
  if isinstance(leaf, (bool, np.bool_)):
    return True
  return isinstance(leaf, (np.ndarray, jax.Array)) and leaf.dtype == np.bool_ and np.ndim(leaf) == 0


def inverse_time_decay(learning_rate: ScalarOrSchedule, lr_decay: Scalar) -> Callable[[Array], Array]:
  """Adagrad's learning-rate decay as a schedule: `lr_t = lr(t) / (1 + t * lr_decay)`.

  `t` is the number of steps already taken (0 on the first step), which is torch's
  `clr = lr / (1 + (step - 1) * lr_decay)` with its 1-based `step`.

  Args:
    learning_rate: the base rate: a number, a jax scalar or a schedule `count -> lr`.
    lr_decay: torch's `lr_decay` (>= 0).

  Returns:
    A schedule `count -> lr_t`.
  """
  _checks.check_non_negative("lr_decay", lr_decay)

  def schedule(count: Array) -> Array:
    base = learning_rate(count) if callable(learning_rate) else learning_rate
    return base / (1 + as_float(count) * lr_decay)

  return schedule
