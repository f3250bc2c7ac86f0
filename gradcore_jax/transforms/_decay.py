"""Weight decay, coupled (torch's L2 in the gradient) and decoupled (AdamW), and Adagrad's lr decay."""

from __future__ import annotations

from typing import Callable
from typing import Optional
from typing import Union

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
  """
  inner = _add_scaled_params(weight_decay, "decoupled_weight_decay")
  if mask is None:
    return inner
  return optax.masked(inner, mask)


def inverse_time_decay(learning_rate: ScalarOrSchedule, lr_decay: Scalar) -> Callable[[Array], Array]:
  """Adagrad's learning-rate decay as a schedule: `lr_t = lr(t) / (1 + t * lr_decay)`.

  `t` is the number of steps already taken (0 on the first step), which is torch's
  `clr = lr / (1 + (step - 1) * lr_decay)` with its 1-based `step`.
  """
  _checks.check_non_negative("lr_decay", lr_decay)

  def schedule(count: Array) -> Array:
    base = learning_rate(count) if callable(learning_rate) else learning_rate
    return base / (1 + as_float(count) * lr_decay)

  return schedule
