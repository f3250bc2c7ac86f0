"""Building blocks: small `GradientTransformation`s that every optimizer is chained from.

Each block does one thing of PyTorch's `torch.optim` update, in the order torch applies
it, so that an optimizer is a short `optax.chain`:

    maximize -> coupled weight decay -> preconditioner / momentum
             -> decoupled weight decay -> learning rate

Conventions shared by every block:

* State is a NamedTuple of arrays; leaves shaped like the params keep the params' dtype
  and sharding, scalar counters are int32. Dtypes never change across an update, so
  blocks work under `lax.cond`, `optax.MultiSteps` and `optax.inject_hyperparams`.
* Updates keep the gradient's dtype (bf16 gradients give bf16 updates) even when a
  hyperparameter is an injected float32 array.
* A `None` gradient leaf gets a `None` update and leaves its state untouched; masked
  leaves (`optax.MaskedNode`) are empty subtrees and pass through.
* Momentum buffers never contain the learning rate; the learning rate is applied last,
  exactly as torch does, so trajectories match torch under any schedule.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from gradcore_jax import _checks
from gradcore_jax._typing import Array, PyTree, Scalar, ScalarOrSchedule

GradientTransformation = optax.GradientTransformationExtraArgs

__all__ = [
    "bias_correction",
    "coupled_weight_decay",
    "decoupled_weight_decay",
    "ema_momentum",
    "inverse_time_decay",
    "maximize",
    "rms_denominator",
    "scale_by_adadelta",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_learning_rate",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rms",
    "torch_momentum",
]


# --------------------------------------------------------------------------------------
# Shared formulas: each rule is written once here and reused by every block.
# --------------------------------------------------------------------------------------


def bias_correction(decay: Scalar, count: Array) -> Array:
  """Adam's bias correction `1 - decay**t` for the 1-based step `t = count`.

  Evaluated as `-expm1(t * log(decay))`, which stays accurate to float32 rounding where
  the direct form loses digits to cancellation (`1 - 0.999**t` for small `t`).
  """
  return -jnp.expm1(_as_float(count) * _log(decay))


def _power(base: Scalar, exponent: Array) -> Array:
  """`base**exponent`, accurate for bases close to 1 (see `_log`)."""
  return jnp.exp(_as_float(exponent) * _log(base))


def _log(value: Scalar) -> Array:
  """`log(value)`, taken in double precision on the host when `value` is a Python number.

  Torch evaluates its scalar coefficients (bias corrections, NAdam's momentum schedule,
  RAdam's rectifier) in Python doubles. Rounding `b2 = 0.999` to float32 first would
  already shift `1 - b2` by 1.3e-5 relative; its double-precision log does not.
  """
  if _checks.is_number(value):
    return math.log(value) if value > 0 else -math.inf
  return jnp.log(value)


def rms_denominator(second_moment: Array, eps: Scalar, bias_correction: Optional[Array] = None) -> Array:
  """The RMS denominator with eps **outside** the root, as torch writes it.

  `d = sqrt(v) + eps`, or `d = sqrt(v) / sqrt(bc) + eps` with a bias correction `bc`.
  (Optax's `rmsprop` puts eps inside the root by default: `sqrt(v + eps)`.)
  """
  root = jnp.sqrt(second_moment)
  if bias_correction is not None:
    root = root / jnp.sqrt(bias_correction)
  return root + eps


def _ema(moment: Array, value: Array, decay: Scalar) -> Array:
  """Exponential moving average `decay * moment + (1 - decay) * value`, in the moment's dtype."""
  return (decay * moment + (1 - decay) * value).astype(moment.dtype)


def _as_float(count: Array) -> Array:
  """A step counter as a float of the default precision (float64 under x64)."""
  return jnp.asarray(count, dtype=jnp.result_type(float))


def _zeros_like(params: PyTree) -> PyTree:
  """Zeros shaped, typed and sharded like `params` (works on `jax.ShapeDtypeStruct`s)."""
  return jax.tree.map(jnp.zeros_like, params)


def _map_updates(fn: Callable[..., Array], updates: PyTree, *trees: PyTree) -> PyTree:
  """Maps `fn(g, *others)` over gradient leaves; a `None` gradient stays `None`.

  The result is cast back to the gradient's dtype so that float32 hyperparameters
  never promote bf16/f16 updates.
  """
  return jax.tree.map(
      lambda g, *rest: None if g is None else fn(g, *rest).astype(g.dtype),
      updates,
      *trees,
      is_leaf=_is_none,
  )


def _map_state(fn: Callable[..., Array], updates: PyTree, state: PyTree, *trees: PyTree) -> PyTree:
  """Maps `fn(g, s, *others)` to a new state leaf; a `None` gradient keeps the old leaf."""
  return jax.tree.map(
      lambda g, s, *rest: s if g is None else fn(g, s, *rest).astype(s.dtype),
      updates,
      state,
      *trees,
      is_leaf=_is_none,
  )


def _is_none(x: Any) -> bool:
  return x is None


def _increment(count: Array) -> Array:
  return optax.safe_increment(count)


def _zero_count() -> Array:
  return jnp.zeros([], jnp.int32)


# --------------------------------------------------------------------------------------
# Stateless blocks.
# --------------------------------------------------------------------------------------


def maximize() -> GradientTransformation:
  """Negates the gradient, `g <- -g`, so the chain ascends (torch's `maximize=True`)."""

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    return _map_updates(jnp.negative, updates), state

  return GradientTransformation(optax.init_empty_state, update_fn)


def _add_scaled_params(weight_decay: Scalar, block: str) -> GradientTransformation:
  _checks.check_non_negative("weight_decay", weight_decay)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _checks.require_params(params, block)
    _checks.check_tree_matches(updates, params, what="the params")
    return _map_updates(lambda g, p: g + weight_decay * p, updates, params), state

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
    return base / (1 + _as_float(count) * lr_decay)

  return schedule


class ScaleByLearningRateState(NamedTuple):
  """Step counter fed to a learning-rate schedule."""

  count: Array


def scale_by_learning_rate(learning_rate: ScalarOrSchedule) -> GradientTransformation:
  """The last block of every optimizer: `u <- -lr_t * u`.

  `learning_rate` is a float, a jax scalar, or a schedule `count -> lr` evaluated at the
  number of steps already taken (0 on the first step, as `optax.scale_by_schedule`).
  The update keeps the gradient's dtype.
  """
  _checks.check_learning_rate(learning_rate)

  if not callable(learning_rate):

    def update_constant(updates, state, params=None, **extra_args):
      del params, extra_args
      return _map_updates(lambda u: -learning_rate * u, updates), state

    return GradientTransformation(optax.init_empty_state, update_constant)

  def init_fn(params):
    del params
    return ScaleByLearningRateState(count=_zero_count())

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    step_size = learning_rate(state.count)
    updates = _map_updates(lambda u: -step_size * u, updates)
    return updates, ScaleByLearningRateState(count=_increment(state.count))

  return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------------------
# Momentum.
# --------------------------------------------------------------------------------------


class TorchMomentumState(NamedTuple):
  """`count` distinguishes torch's first step, where the buffer is set to the gradient."""

  count: Array
  momentum_buffer: PyTree


def torch_momentum(momentum: Scalar, dampening: Scalar = 0.0, nesterov: bool = False) -> GradientTransformation:
  """Torch's SGD momentum trace.

  `buf <- g` on the first step, then `buf <- momentum * buf + (1 - dampening) * g`;
  the output is `g + momentum * buf` with `nesterov`, else `buf`. The buffer holds no
  learning rate. Nesterov requires `momentum > 0` and `dampening == 0` (as in torch).
  """
  _checks.check_non_negative("momentum", momentum)
  _checks.check_non_negative("dampening", dampening)
  if nesterov and (_checks.is_static_zero(momentum) or (_checks.is_number(dampening) and dampening != 0)):
    raise ValueError(
        f"nesterov=True requires momentum > 0 and dampening == 0, got momentum={momentum!r}, "
        f"dampening={dampening!r}."
    )

  def init_fn(params):
    return TorchMomentumState(count=_zero_count(), momentum_buffer=_zeros_like(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.momentum_buffer, what="the momentum buffer")
    first_step = state.count == 0
    buffer = _map_state(
        lambda g, b: jnp.where(first_step, g, momentum * b + (1 - dampening) * g),
        updates,
        state.momentum_buffer,
    )
    if nesterov:
      updates = _map_updates(lambda g, b: g + momentum * b, updates, buffer)
    else:
      updates = _map_updates(lambda g, b: b, updates, buffer)
    return updates, TorchMomentumState(count=_increment(state.count), momentum_buffer=buffer)

  return GradientTransformation(init_fn, update_fn)


class EmaMomentumState(NamedTuple):
  momentum_buffer: PyTree


def ema_momentum(beta: Scalar = 0.9) -> GradientTransformation:
  """The article's momentum: `step <- beta * step + (1 - beta) * g`, starting at **zero**.

  Unlike torch's trace, the first step is `(1 - beta) * g` (no bias correction), so early
  steps are small. This is `optax.ema(beta, debias=False)` with dtype-stable state.
  """
  _checks.check_unit_interval("beta", beta)

  def init_fn(params):
    return EmaMomentumState(momentum_buffer=_zeros_like(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.momentum_buffer, what="the momentum buffer")
    buffer = _map_state(lambda g, b: _ema(b, g, beta), updates, state.momentum_buffer)
    return _map_updates(lambda g, b: b, updates, buffer), EmaMomentumState(momentum_buffer=buffer)

  return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------------------
# Preconditioners.
# --------------------------------------------------------------------------------------


class ScaleByRmsState(NamedTuple):
  """`grad_avg` is `None` unless the block is centered."""

  square_avg: PyTree
  grad_avg: Optional[PyTree]


def scale_by_rms(alpha: Scalar = 0.99, eps: Scalar = 1e-8, centered: bool = False) -> GradientTransformation:
  """Torch's RMSprop preconditioner (Hinton, 2012), without bias correction.

  `v <- alpha * v + (1 - alpha) * g**2` (v starts at 0); centered also tracks
  `gbar <- alpha * gbar + (1 - alpha) * g` and uses `v - gbar**2`; the output is
  `g / (sqrt(v) + eps)` with eps outside the root.
  """
  _checks.check_unit_interval("alpha", alpha)
  _checks.check_non_negative("eps", eps)

  def init_fn(params):
    return ScaleByRmsState(square_avg=_zeros_like(params), grad_avg=_zeros_like(params) if centered else None)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.square_avg, what="the RMSprop state")
    square_avg = _map_state(lambda g, v: _ema(v, g * g, alpha), updates, state.square_avg)
    if centered:
      grad_avg = _map_state(lambda g, m: _ema(m, g, alpha), updates, state.grad_avg)
      updates = _map_updates(lambda g, v, m: g / rms_denominator(_variance(v, m), eps), updates, square_avg, grad_avg)
    else:
      grad_avg = None
      updates = _map_updates(lambda g, v: g / rms_denominator(v, eps), updates, square_avg)
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
  """`nu_max` is `None` unless `amsgrad`."""

  count: Array
  mu: PyTree
  nu: PyTree
  nu_max: Optional[PyTree]


def _check_betas(b1: Scalar, b2: Scalar, eps: Scalar) -> None:
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_non_negative("eps", eps)


def _first_and_second_moments(updates: PyTree, mu: PyTree, nu: PyTree, b1: Scalar, b2: Scalar):
  """The Adam-family moment updates `m <- ema(m, g, b1)`, `v <- ema(v, g**2, b2)`."""
  mu = _map_state(lambda g, m: _ema(m, g, b1), updates, mu)
  nu = _map_state(lambda g, v: _ema(v, g * g, b2), updates, nu)
  return mu, nu


def scale_by_adam(
    b1: Scalar = 0.9, b2: Scalar = 0.999, eps: Scalar = 1e-8, amsgrad: bool = False
) -> GradientTransformation:
  """Torch's Adam direction (Kingma & Ba, 2015).

  `m <- b1*m + (1-b1)*g`, `v <- b2*v + (1-b2)*g**2`, output
  `(m / bc1) / (sqrt(v) / sqrt(bc2) + eps)` with `bc_i = 1 - b_i**t`. With `amsgrad`,
  `vmax <- max(vmax, v)` on the raw `v` and `vmax` replaces `v` in the denominator
  (torch's rule; `optax.amsgrad` takes the max of a different quantity).
  """
  _check_betas(b1, b2, eps)

  def init_fn(params):
    return ScaleByAdamState(
        count=_zero_count(),
        mu=_zeros_like(params),
        nu=_zeros_like(params),
        nu_max=_zeros_like(params) if amsgrad else None,
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.mu, what="the Adam state")
    count = _increment(state.count)
    mu, nu = _first_and_second_moments(updates, state.mu, state.nu, b1, b2)
    nu_max = _map_state(lambda g, vmax, v: jnp.maximum(vmax, v), updates, state.nu_max, nu) if amsgrad else None
    bc1, bc2 = bias_correction(b1, count), bias_correction(b2, count)
    updates = _map_updates(
        lambda g, m, v: (m / bc1) / rms_denominator(v, eps, bc2), updates, mu, nu_max if amsgrad else nu
    )
    return updates, ScaleByAdamState(count=count, mu=mu, nu=nu, nu_max=nu_max)

  return GradientTransformation(init_fn, update_fn)


class ScaleByAdamaxState(NamedTuple):
  count: Array
  mu: PyTree
  inf_norm: PyTree


def scale_by_adamax(b1: Scalar = 0.9, b2: Scalar = 0.999, eps: Scalar = 1e-8) -> GradientTransformation:
  """Torch's Adamax direction (Kingma & Ba, 2015, §7).

  `m <- b1*m + (1-b1)*g`, `u <- max(b2*u, |g| + eps)`, output `(m / bc1) / u`.
  """
  _check_betas(b1, b2, eps)

  def init_fn(params):
    return ScaleByAdamaxState(count=_zero_count(), mu=_zeros_like(params), inf_norm=_zeros_like(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.mu, what="the Adamax state")
    count = _increment(state.count)
    mu = _map_state(lambda g, m: _ema(m, g, b1), updates, state.mu)
    inf_norm = _map_state(lambda g, u: jnp.maximum(b2 * u, jnp.abs(g) + eps), updates, state.inf_norm)
    bc1 = bias_correction(b1, count)
    updates = _map_updates(lambda g, m, u: (m / bc1) / u, updates, mu, inf_norm)
    return updates, ScaleByAdamaxState(count=count, mu=mu, inf_norm=inf_norm)

  return GradientTransformation(init_fn, update_fn)


class ScaleByNadamState(NamedTuple):
  """`mu_product` is the running product of the momentum schedule, `prod_{i<=t} mu_i`."""

  count: Array
  mu_product: Array
  mu: PyTree
  nu: PyTree


def scale_by_nadam(
    b1: Scalar = 0.9, b2: Scalar = 0.999, eps: Scalar = 1e-8, momentum_decay: Scalar = 4e-3
) -> GradientTransformation:
  """Torch's NAdam direction (Dozat, 2016), with its momentum-decay schedule.

  `mu_t = b1 * (1 - 0.5 * 0.96**(t * momentum_decay))`, `P_t = prod_{i<=t} mu_i`,
  `d = sqrt(v) / sqrt(bc2) + eps`; output
  `(1 - mu_t) / (1 - P_t) * g / d + mu_{t+1} / (1 - P_t * mu_{t+1}) * m / d`.
  (`optax.nadam` is Adam with a Nesterov term and no momentum decay: a different rule.)
  """
  _check_betas(b1, b2, eps)
  _checks.check_non_negative("momentum_decay", momentum_decay)

  def momentum_at(step: Array) -> Array:
    return b1 * (1 - 0.5 * _power(0.96, step * momentum_decay))

  def init_fn(params):
    return ScaleByNadamState(
        count=_zero_count(),
        mu_product=jnp.ones([], jnp.asarray(1.0).dtype),
        mu=_zeros_like(params),
        nu=_zeros_like(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.mu, what="the NAdam state")
    count = _increment(state.count)
    step = _as_float(count)
    mu_t, mu_next = momentum_at(step), momentum_at(step + 1)
    mu_product = (state.mu_product * mu_t).astype(state.mu_product.dtype)
    grad_coef = (1 - mu_t) / (1 - mu_product)
    momentum_coef = mu_next / (1 - mu_product * mu_next)
    mu, nu = _first_and_second_moments(updates, state.mu, state.nu, b1, b2)
    bc2 = bias_correction(b2, count)

    def direction(g, m, v):
      denom = rms_denominator(v, eps, bc2)
      return grad_coef * g / denom + momentum_coef * m / denom

    updates = _map_updates(direction, updates, mu, nu)
    return updates, ScaleByNadamState(count=count, mu_product=mu_product, mu=mu, nu=nu)

  return GradientTransformation(init_fn, update_fn)


class ScaleByRadamState(NamedTuple):
  count: Array
  mu: PyTree
  nu: PyTree


def scale_by_radam(b1: Scalar = 0.9, b2: Scalar = 0.999, eps: Scalar = 1e-8) -> GradientTransformation:
  """Torch's RAdam direction (Liu et al., 2020).

  `rho_inf = 2/(1-b2) - 1`, `rho_t = rho_inf - 2 t b2**t / bc2`, `m_hat = m / bc1`.
  When `rho_t > 5` the output is `m_hat * r_t * sqrt(bc2) / (sqrt(v) + eps)` with the
  rectifier `r_t = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))`,
  otherwise plain momentum `m_hat`. (`optax.radam` places eps differently and tests
  `rho_t >= 5`.)
  """
  _check_betas(b1, b2, eps)

  def init_fn(params):
    return ScaleByRadamState(count=_zero_count(), mu=_zeros_like(params), nu=_zeros_like(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.mu, what="the RAdam state")
    count = _increment(state.count)
    mu, nu = _first_and_second_moments(updates, state.mu, state.nu, b1, b2)
    bc1, bc2 = bias_correction(b1, count), bias_correction(b2, count)
    rho_inf = 2 / (1 - b2) - 1
    rho_t = _radam_rho(b2, count)
    rectify = rho_t > 5
    # Clamped so the unused branch of the `where` below never takes a root of a negative.
    radicand = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
    rectifier = jnp.sqrt(jnp.where(rectify, radicand, 1.0)) * jnp.sqrt(bc2)

    def direction(g, m, v):
      m_hat = m / bc1
      return jnp.where(rectify, m_hat * rectifier / rms_denominator(v, eps), m_hat)

    updates = _map_updates(direction, updates, mu, nu)
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
  c = -_log(b2)
  y = _as_float(count) * c
  series = y / 2 - y**2 / 12 + y**4 / 720 - y**6 / 30240 + y**8 / 1209600
  h = jnp.where(y < 0.5, series, 1 - y / jnp.expm1(jnp.maximum(y, 0.5)))
  return (2 / (1 - b2) - 2 / c - 1) + (2 / c) * h


class ScaleByAdagradState(NamedTuple):
  sum_of_squares: PyTree


def scale_by_adagrad(initial_accumulator_value: Scalar = 0.0, eps: Scalar = 1e-10) -> GradientTransformation:
  """Torch's Adagrad direction (Duchi et al., 2011).

  `s <- s + g**2` (s starts at `initial_accumulator_value`), output `g / (sqrt(s) + eps)`.
  (`optax.adagrad` starts at 0.1 and puts eps inside the root.)
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
    sum_of_squares = _map_state(lambda g, s: s + g * g, updates, state.sum_of_squares)
    updates = _map_updates(lambda g, s: g / rms_denominator(s, eps), updates, sum_of_squares)
    return updates, ScaleByAdagradState(sum_of_squares=sum_of_squares)

  return GradientTransformation(init_fn, update_fn)


class ScaleByAdadeltaState(NamedTuple):
  square_avg: PyTree
  acc_delta: PyTree


def scale_by_adadelta(rho: Scalar = 0.9, eps: Scalar = 1e-6) -> GradientTransformation:
  """Torch's Adadelta direction (Zeiler, 2012).

  `v <- rho*v + (1-rho)*g**2`, `delta = sqrt(u + eps) / sqrt(v + eps) * g`,
  `u <- rho*u + (1-rho)*delta**2`; output `delta`. Here eps sits *inside* both roots,
  as in the paper and torch. (`optax.adadelta` with its default `learning_rate=None`
  ascends; this block is a descent direction once the learning rate is applied.)
  """
  _checks.check_unit_interval("rho", rho)
  _checks.check_non_negative("eps", eps)

  def init_fn(params):
    return ScaleByAdadeltaState(square_avg=_zeros_like(params), acc_delta=_zeros_like(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.square_avg, what="the Adadelta state")
    square_avg = _map_state(lambda g, v: _ema(v, g * g, rho), updates, state.square_avg)
    deltas = _map_updates(
        lambda g, v, u: jnp.sqrt(u + eps) / jnp.sqrt(v + eps) * g, updates, square_avg, state.acc_delta
    )
    acc_delta = _map_state(lambda d, u: _ema(u, d * d, rho), deltas, state.acc_delta)
    return deltas, ScaleByAdadeltaState(square_avg=square_avg, acc_delta=acc_delta)

  return GradientTransformation(init_fn, update_fn)
