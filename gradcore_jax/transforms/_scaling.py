"""Stateless sign and scale blocks: `maximize`, the learning rate (last block of every chain)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import optax

from gradcore_jax import _checks
from gradcore_jax._typing import Array
from gradcore_jax._typing import ScalarOrSchedule
from gradcore_jax.transforms._formulas import increment
from gradcore_jax.transforms._formulas import map_updates
from gradcore_jax.transforms._formulas import zero_count

GradientTransformation = optax.GradientTransformationExtraArgs


def maximize() -> GradientTransformation:
  """Negates the gradient, `g <- -g`, so the chain ascends (torch's `maximize=True`)."""

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    return map_updates(jnp.negative, updates), state

  return GradientTransformation(optax.init_empty_state, update_fn)


class ScaleByLearningRateState(NamedTuple):
  """Step counter fed to a learning-rate schedule.

  Attributes:
    count: the number of updates taken, an int32 scalar: the schedule is called with it
      (0 on the first update).
  """

  count: Array  # pyright: ignore[reportIncompatibleMethodOverride]  (optax's field name, shadows tuple.count)


def scale_by_learning_rate(learning_rate: ScalarOrSchedule) -> GradientTransformation:
  """The last block of every optimizer: `u <- -lr_t * u`.

  `learning_rate` is a float, a jax scalar, or a schedule `count -> lr` evaluated at the
  number of steps already taken (0 on the first step, as `optax.scale_by_schedule`).
  The update keeps the gradient's dtype.

  Args:
    learning_rate: a number, a jax scalar or a schedule `count -> lr` (>= 0).

  Returns:
    An `optax.GradientTransformation`; its state is empty for a constant rate and a step
    count for a schedule.
  """
  _checks.check_learning_rate(learning_rate)

  if not callable(learning_rate):

    def update_constant(updates, state, params=None, **extra_args):
      del params, extra_args
      return map_updates(lambda u: -learning_rate * u, updates), state

    return GradientTransformation(optax.init_empty_state, update_constant)

  def init_fn(params):
    del params
    return ScaleByLearningRateState(count=zero_count())

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    step_size = learning_rate(state.count)
    updates = map_updates(lambda u: -step_size * u, updates)
    return updates, ScaleByLearningRateState(count=increment(state.count))

  return GradientTransformation(init_fn, update_fn)
