"""Averaged SGD (torch's ASGD): a decaying step size and a running (Polyak) average of the parameters."""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradcore_jax import _checks
from gradcore_jax._typing import Array
from gradcore_jax._typing import PyTree
from gradcore_jax._typing import Scalar
from gradcore_jax._typing import ScalarOrSchedule
from gradcore_jax.transforms._formulas import as_float
from gradcore_jax.transforms._formulas import increment
from gradcore_jax.transforms._formulas import map_state
from gradcore_jax.transforms._formulas import map_updates
from gradcore_jax.transforms._formulas import value_at
from gradcore_jax.transforms._formulas import zero_count
from gradcore_jax.transforms._formulas import zeros_like

GradientTransformation = optax.GradientTransformationExtraArgs


class ScaleByAsgdState(NamedTuple):
  """Torch's ASGD state, shared by all leaves.

  `eta` and `mu` are the step size and the averaging weight of the *next* update (torch
  computes them at the end of each step); they are scalars of the default float dtype
  (float64 under x64), as torch keeps them in its default dtype. `ax` is the running
  average of the parameters, shaped like them: read it with `asgd_average(state)`.

  Attributes:
    count: the number of updates taken (torch's `step`), an int32 scalar.
    eta: the step size of the next update (torch's `eta`), a float scalar; `lr` at first.
    mu: the averaging weight of the next update (torch's `mu`), a float scalar; 1 at first.
    ax: the running average of the params (torch's `ax`), like the params; 0 at first.
  """

  count: Array  # pyright: ignore[reportIncompatibleMethodOverride]  (optax's field name, shadows tuple.count)
  eta: Array
  mu: Array
  ax: PyTree


def scale_by_asgd(
  learning_rate: ScalarOrSchedule = 1e-2, lambd: Scalar = 1e-4, alpha: Scalar = 0.75, t0: Scalar = 1e6
) -> GradientTransformation:
  """Torch's ASGD step (Polyak & Juditsky, 1992), with its step-size decay and parameter average.

  Update `t` (1-based) uses the step size `eta` and averaging weight `mu` of the state:
  `p_new = p * (1 - lambd*eta) - eta*g`, then `ax <- p_new` while `mu == 1`, else
  `ax <- ax + (p_new - ax) * mu`; afterwards `eta <- lr / (1 + lambd*lr*t)**alpha` and
  `mu <- 1 / max(1, t - t0)`. `eta` starts at `lr`, `mu` at 1, `ax` at 0.

  The output is the descent direction `p - p_new` (equal to `eta * (g + lambd*p)`,
  computed from torch's `p_new` so that `p - output` lands on it): chain it with a scale
  of -1 (the learning rate is inside `eta`), and pass the params to `update`.

  Args:
    learning_rate: torch's `lr`: the first step size, and the base of the decay. A
      schedule is evaluated at the number of updates already taken, as torch reads
      `lr` when it computes the next `eta`.
    lambd: the decay term, both in the step size and as `p * (1 - lambd*eta)`.
    alpha: the power of the step-size decay.
    t0: when averaging starts: `ax` is a plain copy of the params up to update `t0 + 2`,
      a running average (`mu < 1`) from the first update after that.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is a `ScaleByAsgdState`.
  """
  _checks.check_learning_rate(learning_rate)
  _checks.check_non_negative("lambd", lambd)
  _checks.check_non_negative("alpha", alpha)
  _checks.check_non_negative("t0", t0)

  def init_fn(params):
    dtype = jnp.result_type(float)
    return ScaleByAsgdState(
      count=zero_count(),
      eta=jnp.asarray(value_at(learning_rate, zero_count())).astype(dtype),
      mu=jnp.ones([], dtype),
      ax=zeros_like(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _checks.check_tree_matches(updates, state.ax, what="the ASGD average")
    _checks.require_params(params, "scale_by_asgd")
    eta, mu = state.eta, state.mu
    new_params = map_updates(lambda g, p: p * (1 - lambd * eta) - eta * g, updates, params)
    ax = map_state(lambda q, a: jnp.where(mu == 1, q, a + (q - a) * mu), new_params, state.ax)
    direction = map_updates(lambda q, p: p - q, new_params, params)
    count = increment(state.count)
    step = as_float(count)
    lr = value_at(learning_rate, state.count)
    next_eta = lr / (1 + lambd * lr * step) ** alpha
    next_mu = 1 / jnp.maximum(1, step - t0)
    return direction, ScaleByAsgdState(
      count=count, eta=jnp.asarray(next_eta).astype(eta.dtype), mu=jnp.asarray(next_mu).astype(mu.dtype), ax=ax
    )

  return GradientTransformation(init_fn, update_fn)


def asgd_average(state: Any) -> PyTree:
  """The averaged parameters (torch's `ax`) held by an ASGD state, shaped like the params.

  Finds the one `ScaleByAsgdState` in `state`, whatever wraps it: `gcj.asgd`'s own state,
  `optax.inject_hyperparams`, `optax.MultiSteps`, `optax.partition` (one ASGD partition;
  its other leaves are `optax.MaskedNode`). Under `gcj.multi_tensor` the average is held
  in the packed layout of the wrapped state, not in the params' tree.

  Args:
    state: an optimizer state containing exactly one `ScaleByAsgdState`.

  Returns:
    The `ax` pytree: the params themselves up to update `t0 + 2`, then their running average.

  Raises:
    ValueError: if `state` holds no ASGD state, or more than one.
  """
  found = [
    node
    for node in jax.tree.leaves(state, is_leaf=lambda node: isinstance(node, ScaleByAsgdState))
    if isinstance(node, ScaleByAsgdState)
  ]
  if len(found) != 1:
    raise ValueError(
      f"asgd_average needs a state holding exactly one ScaleByAsgdState (from gcj.asgd or "
      f"gcj.transforms.scale_by_asgd), found {len(found)}."
    )
  return found[0].ax
