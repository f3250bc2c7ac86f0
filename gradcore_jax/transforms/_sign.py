"""Sign-based steps: torch's Rprop (resilient backpropagation), per-element step sizes driven by sign changes."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradcore_jax import _checks
from gradcore_jax._typing import Array
from gradcore_jax._typing import PyTree
from gradcore_jax._typing import Scalar
from gradcore_jax.transforms._formulas import map_state
from gradcore_jax.transforms._formulas import map_updates
from gradcore_jax.transforms._formulas import zeros_like

GradientTransformation = optax.GradientTransformationExtraArgs


class ScaleByRpropState(NamedTuple):
  """Torch's Rprop state: `prev` is the last gradient with its sign-flipped entries zeroed,
  `step_size` the current per-element step size (it starts at the learning rate).

  Attributes:
    prev: the last gradient, 0 where its sign flipped (torch's `prev`), like the params; 0 at
      first.
    step_size: the per-element step sizes (torch's `step_size`), like the params;
      `initial_step_size` at first.
  """

  prev: PyTree
  step_size: PyTree


def check_rprop_hyperparameters(
  initial_step_size: Scalar, eta_minus: Scalar, eta_plus: Scalar, min_step_size: Scalar, max_step_size: Scalar
) -> None:
  """Torch's Rprop check `0 < eta_minus < 1 < eta_plus`, and `0 <= min_step_size <= max_step_size`.

  Torch does not check the step-size bounds; bounds in the wrong order would clamp every
  step size to `max_step_size`, which is never what was meant.
  """
  _checks.check_learning_rate(initial_step_size)
  minus = _checks.concrete_value("etas[0] (eta_minus)", eta_minus)
  if minus is not None and not 0 < minus < 1:
    raise ValueError(f"etas[0] (eta_minus) must be in (0, 1), got {eta_minus!r}.")
  plus = _checks.concrete_value("etas[1] (eta_plus)", eta_plus)
  if plus is not None and not plus > 1:
    raise ValueError(f"etas[1] (eta_plus) must be > 1, got {eta_plus!r}.")
  _checks.check_non_negative("step_sizes[0] (the minimum step size)", min_step_size)
  _checks.check_non_negative("step_sizes[1] (the maximum step size)", max_step_size)
  low = _checks.concrete_value("step_sizes[0]", min_step_size)
  high = _checks.concrete_value("step_sizes[1]", max_step_size)
  if low is not None and high is not None and low > high:
    raise ValueError(f"step_sizes must be (min, max) with min <= max, got ({min_step_size!r}, {max_step_size!r}).")


def scale_by_rprop(
  initial_step_size: Scalar = 1e-2,
  eta_minus: Scalar = 0.5,
  eta_plus: Scalar = 1.2,
  min_step_size: Scalar = 1e-6,
  max_step_size: Scalar = 50.0,
) -> GradientTransformation:
  """Torch's Rprop direction (Riedmiller & Braun, 1993), as `torch.optim.Rprop` computes it.

  Per element, with `s = sign(g * prev)`: the step size becomes
  `clip(step_size * f, min_step_size, max_step_size)` with `f = eta_plus` where `s > 0`,
  `eta_minus` where `s < 0` and 1 where `s == 0`; where `s < 0` the gradient is zeroed
  (no move this step, and no sign to compare with next step); the output is
  `step_size * sign(g)` and `prev <- g`. The step sizes start at `initial_step_size`
  (torch's `lr`) and `prev` at 0.

  The output is a descent direction holding the step sizes: chain it with a scale of -1
  (not a learning rate). Unlike `optax.scale_by_rprop`, the step size is clipped on every
  step, also where `s == 0`, as torch does.

  Args:
    initial_step_size: every element's first step size (torch's `lr`); read only by `init`.
    eta_minus: factor applied to the step size when the gradient changes sign, in (0, 1).
    eta_plus: factor applied when it keeps its sign, > 1.
    min_step_size: the smallest step size (torch's `step_sizes[0]`).
    max_step_size: the largest step size (torch's `step_sizes[1]`).

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is a `ScaleByRpropState`.
  """
  check_rprop_hyperparameters(initial_step_size, eta_minus, eta_plus, min_step_size, max_step_size)

  def init_fn(params):
    return ScaleByRpropState(
      prev=zeros_like(params),
      step_size=jax.tree.map(lambda p: jnp.full_like(p, initial_step_size), params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.prev, what="the Rprop state")
    # s = sign(g * prev) per element; entries with s < 0 are dropped from this step and from `prev`.
    agreement = map_updates(lambda g, prev: jnp.sign(g * prev), updates, state.prev)

    def new_step_size(s, size):
      return jnp.clip(size * _rprop_factor(s, eta_minus, eta_plus, size.dtype), min_step_size, max_step_size)

    step_size = map_state(new_step_size, agreement, state.step_size)
    kept = map_updates(lambda g, s: jnp.where(s < 0, 0, g), updates, agreement)
    prev = map_state(lambda g, prev: g, kept, state.prev)
    updates = map_updates(lambda g, size: jnp.sign(g) * size, kept, step_size)
    return updates, ScaleByRpropState(prev=prev, step_size=step_size)

  return GradientTransformation(init_fn, update_fn)


def _rprop_factor(agreement: Array, eta_minus: Scalar, eta_plus: Scalar, dtype) -> Array:
  """`eta_plus` where the sign held, `eta_minus` where it flipped, 1 where either gradient was 0.

  The factors are rounded to the step size's dtype first, as torch writes them into a tensor of it.
  """
  eta_plus = jnp.asarray(eta_plus).astype(dtype)
  eta_minus = jnp.asarray(eta_minus).astype(dtype)
  return jnp.where(agreement > 0, eta_plus, jnp.where(agreement < 0, eta_minus, jnp.ones([], dtype)))
