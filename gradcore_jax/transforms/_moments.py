"""Adaptive preconditioners: RMSprop, Adam, Adamax, NAdam, RAdam, Adagrad, Adadelta, as torch writes them."""

from __future__ import annotations

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
from gradcore_jax.transforms._formulas import bias_correction
from gradcore_jax.transforms._formulas import ema
from gradcore_jax.transforms._formulas import host_log
from gradcore_jax.transforms._formulas import increment
from gradcore_jax.transforms._formulas import map_state
from gradcore_jax.transforms._formulas import map_updates
from gradcore_jax.transforms._formulas import power
from gradcore_jax.transforms._formulas import rms_denominator
from gradcore_jax.transforms._formulas import value_at
from gradcore_jax.transforms._formulas import zero_count
from gradcore_jax.transforms._formulas import zeros_like

GradientTransformation = optax.GradientTransformationExtraArgs


class ScaleByRmsState(NamedTuple):
  """`grad_avg` is `None` unless the block is centered.

  Attributes:
    square_avg: the moving average of squared gradients (torch's `square_avg`), like the params.
    grad_avg: the moving average of gradients (torch's `grad_avg`), like the params; `None`
      unless `centered`.
  """

  square_avg: PyTree
  grad_avg: PyTree  # None (an empty pytree) unless centered


def scale_by_rms(alpha: Scalar = 0.99, eps: Scalar = 1e-8, centered: bool = False) -> GradientTransformation:
  """Torch's RMSprop preconditioner (Hinton, 2012), without bias correction.

  `v <- alpha * v + (1 - alpha) * g**2` (v starts at 0); centered also tracks
  `gbar <- alpha * gbar + (1 - alpha) * g` and uses `v - gbar**2`; the output is
  `g / (sqrt(v) + eps)` with eps outside the root.

  Args:
    alpha: the decay of the squared-gradient average, in [0, 1) (torch's `alpha`, default 0.99).
    eps: added to the root (default 1e-8).
    centered: also track the mean gradient and divide by the variance's root (default False).

  Returns:
    An `optax.GradientTransformation`; state `ScaleByRmsState`.
  """
  _checks.check_unit_interval("alpha", alpha)
  _checks.check_non_negative("eps", eps)
  _checks.check_flag("centered", centered)

  def init_fn(params):
    return ScaleByRmsState(square_avg=zeros_like(params), grad_avg=zeros_like(params) if centered else None)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.square_avg, what="the RMSprop state")
    square_avg = map_state(lambda g, v: ema(v, g * g, alpha), updates, state.square_avg)
    if centered:
      grad_avg = map_state(lambda g, m: ema(m, g, alpha), updates, state.grad_avg)
      updates = map_updates(lambda g, v, m: g / rms_denominator(_variance(v, m), eps), updates, square_avg, grad_avg)
    else:
      grad_avg = None
      updates = map_updates(lambda g, v: g / rms_denominator(v, eps), updates, square_avg)
    return updates, ScaleByRmsState(square_avg=square_avg, grad_avg=grad_avg)

  return GradientTransformation(init_fn, update_fn)


def _variance(square_avg: Array, grad_avg: Array) -> Array:
  """`v - gbar**2`, clamped at 0.

  Non-negative in exact arithmetic, but where the gradient barely varies (a constant
  gradient, or `alpha = 0`) the two terms agree to the last bit and rounding can leave a
  tiny negative number, whose root is NaN. XLA contracts `v - m * m` into a fused
  multiply-add, so a jitted update hit this where an eager one gave 0.
  """
  return jnp.maximum(square_avg - grad_avg * grad_avg, 0)


class ScaleByAdamState(NamedTuple):
  """`nu_max` is `None` unless `amsgrad`.

  Attributes:
    count: the number of updates taken (torch's `step`), an int32 scalar.
    mu: the first moment, the moving average of gradients (torch's `exp_avg`), like the params.
    nu: the second moment, the moving average of squared gradients (torch's `exp_avg_sq`),
      like the params.
    nu_max: the running maximum of `nu` (torch's `max_exp_avg_sq`), like the params; `None`
      unless `amsgrad`.
  """

  count: Array  # pyright: ignore[reportIncompatibleMethodOverride]  (optax's field name, shadows tuple.count)
  mu: PyTree
  nu: PyTree
  nu_max: PyTree  # None (an empty pytree) unless amsgrad


def _check_betas(b1: ScalarOrSchedule, b2: Scalar, eps: Scalar) -> None:
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_non_negative("eps", eps)


def _first_and_second_moments(updates: PyTree, mu: PyTree, nu: PyTree, b1: Scalar, b2: Scalar):
  """The Adam-family moment updates `m <- ema(m, g, b1)`, `v <- ema(v, g**2, b2)`."""
  mu = map_state(lambda g, m: ema(m, g, b1), updates, mu)
  nu = map_state(lambda g, v: ema(v, g * g, b2), updates, nu)
  return mu, nu


def scale_by_adam(
  b1: ScalarOrSchedule = 0.9, b2: Scalar = 0.999, eps: Scalar = 1e-8, amsgrad: bool = False
) -> GradientTransformation:
  """Torch's Adam direction (Kingma & Ba, 2015).

  `m <- b1*m + (1-b1)*g`, `v <- b2*v + (1-b2)*g**2`, output
  `(m / bc1) / (sqrt(v) / sqrt(bc2) + eps)` with `bc_i = 1 - b_i**t`. With `amsgrad`,
  `vmax <- max(vmax, v)` on the raw `v` and `vmax` replaces `v` in the denominator
  (torch's rule; `optax.amsgrad` takes the max of a different quantity).

  Args:
    b1: the first moment's decay in [0, 1), or a schedule `count -> b1` (default 0.9).
    b2: the second moment's decay in [0, 1) (default 0.999).
    eps: added to the bias-corrected root (default 1e-8).
    amsgrad: keep the running maximum of `v` and divide by it (default False).

  Returns:
    An `optax.GradientTransformation`; state `ScaleByAdamState`.
  """
  _check_betas(b1, b2, eps)
  _checks.check_flag("amsgrad", amsgrad)

  def init_fn(params):
    return ScaleByAdamState(
      count=zero_count(),
      mu=zeros_like(params),
      nu=zeros_like(params),
      nu_max=zeros_like(params) if amsgrad else None,
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.mu, what="the Adam state")
    b1_t = value_at(b1, state.count)
    count = increment(state.count)
    mu, nu = _first_and_second_moments(updates, state.mu, state.nu, b1_t, b2)
    nu_max = map_state(lambda g, vmax, v: jnp.maximum(vmax, v), updates, state.nu_max, nu) if amsgrad else None
    bc1, bc2 = bias_correction(b1_t, count), bias_correction(b2, count)
    updates = map_updates(
      lambda g, m, v: (m / bc1) / rms_denominator(v, eps, bc2), updates, mu, nu_max if amsgrad else nu
    )
    return updates, ScaleByAdamState(count=count, mu=mu, nu=nu, nu_max=nu_max)

  return GradientTransformation(init_fn, update_fn)


class ScaleByAdamaxState(NamedTuple):
  """Adamax's state: the step count, the first moment `mu` and the infinity norm `inf_norm`.

  Attributes:
    count: the number of updates taken (torch's `step`), an int32 scalar.
    mu: the first moment, the moving average of gradients (torch's `exp_avg`), like the params.
    inf_norm: the decayed maximum `max(b2 * u, |g| + eps)` (torch's `exp_inf`), like the params.
  """

  count: Array  # pyright: ignore[reportIncompatibleMethodOverride]  (optax's field name, shadows tuple.count)
  mu: PyTree
  inf_norm: PyTree


def scale_by_adamax(b1: ScalarOrSchedule = 0.9, b2: Scalar = 0.999, eps: Scalar = 1e-8) -> GradientTransformation:
  """Torch's Adamax direction (Kingma & Ba, 2015, §7).

  `m <- b1*m + (1-b1)*g`, `u <- max(b2*u, |g| + eps)`, output `(m / bc1) / u`.

  Args:
    b1: the first moment's decay in [0, 1), or a schedule `count -> b1` (default 0.9).
    b2: the infinity norm's decay in [0, 1) (default 0.999).
    eps: added to `|g|` inside the maximum (default 1e-8).

  Returns:
    An `optax.GradientTransformation`; state `ScaleByAdamaxState`.
  """
  _check_betas(b1, b2, eps)

  def init_fn(params):
    return ScaleByAdamaxState(count=zero_count(), mu=zeros_like(params), inf_norm=zeros_like(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.mu, what="the Adamax state")
    b1_t = value_at(b1, state.count)
    count = increment(state.count)
    mu = map_state(lambda g, m: ema(m, g, b1_t), updates, state.mu)
    inf_norm = map_state(lambda g, u: jnp.maximum(b2 * u, jnp.abs(g) + eps), updates, state.inf_norm)
    bc1 = bias_correction(b1_t, count)
    updates = map_updates(lambda g, m, u: (m / bc1) / u, updates, mu, inf_norm)
    return updates, ScaleByAdamaxState(count=count, mu=mu, inf_norm=inf_norm)

  return GradientTransformation(init_fn, update_fn)


class ScaleByNadamState(NamedTuple):
  """`mu_product` is the running product of the momentum schedule, `prod_{i<=t} mu_i`.

  Attributes:
    count: the number of updates taken (torch's `step`), an int32 scalar.
    mu_product: `prod_{i<=t} mu_i` (torch's `mu_product`), a scalar of the default float
      dtype (float64 under x64), 1 before the first update.
    mu: the first moment, the moving average of gradients (torch's `exp_avg`), like the params.
    nu: the second moment, the moving average of squared gradients (torch's `exp_avg_sq`),
      like the params.
  """

  count: Array  # pyright: ignore[reportIncompatibleMethodOverride]  (optax's field name, shadows tuple.count)
  mu_product: Array
  mu: PyTree
  nu: PyTree


def scale_by_nadam(
  b1: ScalarOrSchedule = 0.9, b2: Scalar = 0.999, eps: Scalar = 1e-8, momentum_decay: Scalar = 4e-3
) -> GradientTransformation:
  """Torch's NAdam direction (Dozat, 2016), with its momentum-decay schedule.

  `mu_t = b1 * (1 - 0.5 * 0.96**(t * momentum_decay))`, `P_t = prod_{i<=t} mu_i`,
  `d = sqrt(v) / sqrt(bc2) + eps`; output
  `(1 - mu_t) / (1 - P_t) * g / d + mu_{t+1} / (1 - P_t * mu_{t+1}) * m / d`.
  (`optax.nadam` is Adam with a Nesterov term and no momentum decay: a different rule.)

  Args:
    b1: the base momentum `b1` of `mu_t` in [0, 1), or a schedule `count -> b1` (default 0.9).
    b2: the second moment's decay in [0, 1) (default 0.999).
    eps: added to the bias-corrected root (default 1e-8).
    momentum_decay: torch's `momentum_decay` (>= 0, default 4e-3).

  Returns:
    An `optax.GradientTransformation`; state `ScaleByNadamState`.
  """
  _check_betas(b1, b2, eps)
  _checks.check_non_negative("momentum_decay", momentum_decay)

  def momentum_at(beta1: Scalar, step: Array) -> Array:
    return beta1 * (1 - 0.5 * power(0.96, step * momentum_decay))

  def init_fn(params):
    return ScaleByNadamState(
      count=zero_count(),
      mu_product=jnp.ones([], jnp.asarray(1.0).dtype),
      mu=zeros_like(params),
      nu=zeros_like(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.mu, what="the NAdam state")
    b1_t = value_at(b1, state.count)
    count = increment(state.count)
    step = as_float(count)
    mu_t, mu_next = momentum_at(b1_t, step), momentum_at(b1_t, step + 1)
    mu_product = (state.mu_product * mu_t).astype(state.mu_product.dtype)
    grad_coef = (1 - mu_t) / (1 - mu_product)
    momentum_coef = mu_next / (1 - mu_product * mu_next)
    mu, nu = _first_and_second_moments(updates, state.mu, state.nu, b1_t, b2)
    bc2 = bias_correction(b2, count)

    def direction(g, m, v):
      denom = rms_denominator(v, eps, bc2)
      return grad_coef * g / denom + momentum_coef * m / denom

    updates = map_updates(direction, updates, mu, nu)
    return updates, ScaleByNadamState(count=count, mu_product=mu_product, mu=mu, nu=nu)

  return GradientTransformation(init_fn, update_fn)


class ScaleByRadamState(NamedTuple):
  """RAdam's state: the step count and the first and second moments `mu`, `nu`.

  Attributes:
    count: the number of updates taken (torch's `step`), an int32 scalar.
    mu: the first moment, the moving average of gradients (torch's `exp_avg`), like the params.
    nu: the second moment, the moving average of squared gradients (torch's `exp_avg_sq`),
      like the params.
  """

  count: Array  # pyright: ignore[reportIncompatibleMethodOverride]  (optax's field name, shadows tuple.count)
  mu: PyTree
  nu: PyTree


def scale_by_radam(b1: ScalarOrSchedule = 0.9, b2: Scalar = 0.999, eps: Scalar = 1e-8) -> GradientTransformation:
  """Torch's RAdam direction (Liu et al., 2020).

  `rho_inf = 2/(1-b2) - 1`, `rho_t = rho_inf - 2 t b2**t / bc2`, `m_hat = m / bc1`.
  When `rho_t > 5` the output is `m_hat * r_t * sqrt(bc2) / (sqrt(v) + eps)` with the
  rectifier `r_t = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))`,
  otherwise plain momentum `m_hat`. (`optax.radam` places eps differently and tests
  `rho_t >= 5`.)

  Args:
    b1: the first moment's decay in [0, 1), or a schedule `count -> b1` (default 0.9).
    b2: the second moment's decay in [0, 1) (default 0.999).
    eps: added to the root of `v` (default 1e-8).

  Returns:
    An `optax.GradientTransformation`; state `ScaleByRadamState`.
  """
  _check_betas(b1, b2, eps)

  def init_fn(params):
    return ScaleByRadamState(count=zero_count(), mu=zeros_like(params), nu=zeros_like(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.mu, what="the RAdam state")
    b1_t = value_at(b1, state.count)
    count = increment(state.count)
    mu, nu = _first_and_second_moments(updates, state.mu, state.nu, b1_t, b2)
    bc1, bc2 = bias_correction(b1_t, count), bias_correction(b2, count)
    rho_inf = 2 / (1 - b2) - 1
    rho_t = _radam_rho(b2, count)
    rectify = rho_t > 5
    # Clamped so the unused branch of the `where` below never takes a root of a negative.
    radicand = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
    rectifier = jnp.sqrt(jnp.where(rectify, radicand, 1.0)) * jnp.sqrt(bc2)

    def direction(g, m, v):
      m_hat = m / bc1
      return jnp.where(rectify, m_hat * rectifier / rms_denominator(v, eps), m_hat)

    updates = map_updates(direction, updates, mu, nu)
    return updates, ScaleByRadamState(count=count, mu=mu, nu=nu)

  return GradientTransformation(init_fn, update_fn)


def _radam_rho(b2: Scalar, count: Array) -> Array:
  """RAdam's `rho_t = rho_inf - 2 t b2**t / (1 - b2**t)` without catastrophic cancellation.

  Written directly, `rho_t` (about 6 at step 6) is the difference of two numbers near
  `rho_inf` (1999 for b2 = 0.999), which costs float32 four digits exactly where the
  rectifier is most sensitive. With `c = -log(b2)` and `y = t c` the same quantity is
  `(2/(1-b2) - 2/c - 1) + (2/c) (1 - y / (e**y - 1))`: the first term is a host-side
  double when b2 is a Python number, and `1 - y/(e**y - 1)` is summed from its
  Bernoulli series for small `y`.
  """
  c = -host_log(b2)
  y = as_float(count) * c
  series = y / 2 - y**2 / 12 + y**4 / 720 - y**6 / 30240 + y**8 / 1209600
  h = jnp.where(y < 0.5, series, 1 - y / jnp.expm1(jnp.maximum(y, 0.5)))
  return (2 / (1 - b2) - 2 / c - 1) + (2 / c) * h


class ScaleByAdagradState(NamedTuple):
  """Adagrad's state: the running sum of squared gradients (torch's `sum`).

  Attributes:
    sum_of_squares: the sum of squared gradients so far, started at
      `initial_accumulator_value` (torch's `sum`), like the params.
  """

  sum_of_squares: PyTree


def scale_by_adagrad(initial_accumulator_value: Scalar = 0.0, eps: Scalar = 1e-10) -> GradientTransformation:
  """Torch's Adagrad direction (Duchi et al., 2011).

  `s <- s + g**2` (s starts at `initial_accumulator_value`), output `g / (sqrt(s) + eps)`.
  (`optax.adagrad` starts at 0.1 and puts eps inside the root.)

  Args:
    initial_accumulator_value: the starting value of the sum of squares (>= 0, default 0).
    eps: added to the root (default 1e-10).

  Returns:
    An `optax.GradientTransformation`; state `ScaleByAdagradState`.
  """
  _checks.check_non_negative("initial_accumulator_value", initial_accumulator_value)
  _checks.check_non_negative("eps", eps)

  def init_fn(params):
    return ScaleByAdagradState(
      sum_of_squares=jax.tree.map(lambda p: jnp.full_like(p, initial_accumulator_value), params)
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.sum_of_squares, what="the Adagrad state")
    sum_of_squares = map_state(lambda g, s: s + g * g, updates, state.sum_of_squares)
    updates = map_updates(lambda g, s: g / rms_denominator(s, eps), updates, sum_of_squares)
    return updates, ScaleByAdagradState(sum_of_squares=sum_of_squares)

  return GradientTransformation(init_fn, update_fn)


class ScaleByAdadeltaState(NamedTuple):
  """Adadelta's state: the averages of squared gradients and of squared updates (torch's `square_avg`, `acc_delta`).

  Attributes:
    square_avg: the moving average of squared gradients (torch's `square_avg`), like the params.
    acc_delta: the moving average of squared outputs `delta**2` (torch's `acc_delta`), like
      the params.
  """

  square_avg: PyTree
  acc_delta: PyTree


def scale_by_adadelta(rho: Scalar = 0.9, eps: Scalar = 1e-6) -> GradientTransformation:
  """Torch's Adadelta direction (Zeiler, 2012).

  `v <- rho*v + (1-rho)*g**2`, `delta = sqrt(u + eps) / sqrt(v + eps) * g`,
  `u <- rho*u + (1-rho)*delta**2`; output `delta`. Here eps sits *inside* both roots,
  as in the paper and torch. (`optax.adadelta` with its default `learning_rate=None`
  ascends; this block is a descent direction once the learning rate is applied.)

  Args:
    rho: the decay of both averages, in [0, 1) (default 0.9).
    eps: added inside both roots (default 1e-6).

  Returns:
    An `optax.GradientTransformation`; state `ScaleByAdadeltaState`.
  """
  _checks.check_unit_interval("rho", rho)
  _checks.check_non_negative("eps", eps)

  def init_fn(params):
    return ScaleByAdadeltaState(square_avg=zeros_like(params), acc_delta=zeros_like(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.square_avg, what="the Adadelta state")
    square_avg = map_state(lambda g, v: ema(v, g * g, rho), updates, state.square_avg)
    deltas = map_updates(
      lambda g, v, u: jnp.sqrt(u + eps) / jnp.sqrt(v + eps) * g, updates, square_avg, state.acc_delta
    )
    acc_delta = map_state(lambda d, u: ema(u, d * d, rho), deltas, state.acc_delta)
    return deltas, ScaleByAdadeltaState(square_avg=square_avg, acc_delta=acc_delta)

  return GradientTransformation(init_fn, update_fn)
