"""Momentum traces: torch's SGD buffer and the article's zero-start EMA."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import optax

from gradcore_jax import _checks
from gradcore_jax._typing import Array
from gradcore_jax._typing import PyTree
from gradcore_jax._typing import Scalar
from gradcore_jax._typing import ScalarOrSchedule
from gradcore_jax.transforms._formulas import ema
from gradcore_jax.transforms._formulas import increment
from gradcore_jax.transforms._formulas import map_state
from gradcore_jax.transforms._formulas import map_updates
from gradcore_jax.transforms._formulas import value_at
from gradcore_jax.transforms._formulas import zero_count
from gradcore_jax.transforms._formulas import zeros_like

GradientTransformation = optax.GradientTransformationExtraArgs


class TorchMomentumState(NamedTuple):
  """`count` distinguishes torch's first step, where the buffer is set to the gradient.

  Attributes:
    count: the number of updates taken, an int32 scalar; 0 marks the first step.
    momentum_buffer: the momentum trace `buf` (torch's `momentum_buffer`), like the params;
      it holds no learning rate.
  """

  count: Array  # pyright: ignore[reportIncompatibleMethodOverride]  (optax's field name, shadows tuple.count)
  momentum_buffer: PyTree


def torch_momentum(
  momentum: ScalarOrSchedule, dampening: Scalar = 0.0, nesterov: bool = False
) -> GradientTransformation:
  """Torch's SGD momentum trace.

  `buf <- g` on the first step, then `buf <- momentum * buf + (1 - dampening) * g`;
  the output is `g + momentum * buf` with `nesterov`, else `buf`. The buffer holds no
  learning rate. Nesterov requires `momentum > 0` and `dampening == 0` (as in torch).

  Args:
    momentum: the momentum factor, or a schedule `count -> momentum` evaluated at the
      number of updates already taken (as torch's `OneCycleLR`/`CyclicLR` change it).
    dampening: dampening of the gradient's contribution after the first step.
    nesterov: output the Nesterov look-ahead `g + momentum * buf`.
  """
  _checks.check_non_negative("momentum", momentum)
  _checks.check_non_negative("dampening", dampening)
  _checks.check_flag("nesterov", nesterov)
  if nesterov and (_checks.is_static_zero(momentum) or (_checks.is_number(dampening) and dampening != 0)):
    raise ValueError(
      f"nesterov=True requires momentum > 0 and dampening == 0, got momentum={momentum!r}, dampening={dampening!r}."
    )

  def init_fn(params):
    return TorchMomentumState(count=zero_count(), momentum_buffer=zeros_like(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.momentum_buffer, what="the momentum buffer")
    first_step = state.count == 0
    momentum_t = value_at(momentum, state.count)
    buffer = map_state(
      lambda g, b: jnp.where(first_step, g, momentum_t * b + (1 - dampening) * g),
      updates,
      state.momentum_buffer,
    )
    if nesterov:
      updates = map_updates(lambda g, b: g + momentum_t * b, updates, buffer)
    else:
      updates = map_updates(lambda g, b: b, updates, buffer)
    return updates, TorchMomentumState(count=increment(state.count), momentum_buffer=buffer)

  return GradientTransformation(init_fn, update_fn)


class EmaMomentumState(NamedTuple):
  """The zero-start moving average of the gradients (`sgd_ema`'s `step`).

  Attributes:
    momentum_buffer: the moving average `beta * step + (1 - beta) * g`, like the params,
      starting at 0.
  """

  momentum_buffer: PyTree


def ema_momentum(beta: Scalar = 0.9) -> GradientTransformation:
  """The article's momentum: `step <- beta * step + (1 - beta) * g`, starting at **zero**.

  Unlike torch's trace, the first step is `(1 - beta) * g` (no bias correction), so early
  steps are small. This is `optax.ema(beta, debias=False)` with dtype-stable state.

  Args:
    beta: the decay of the average, in [0, 1) (default 0.9).

  Returns:
    An `optax.GradientTransformation`; state `EmaMomentumState`.
  """
  _checks.check_unit_interval("beta", beta)

  def init_fn(params):
    return EmaMomentumState(momentum_buffer=zeros_like(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.momentum_buffer, what="the momentum buffer")
    buffer = map_state(lambda g, b: ema(b, g, beta), updates, state.momentum_buffer)
    return map_updates(lambda g, b: b, updates, buffer), EmaMomentumState(momentum_buffer=buffer)

  return GradientTransformation(init_fn, update_fn)
