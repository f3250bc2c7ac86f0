"""The optimizers: PyTorch's `torch.optim` update rules as short chains of building blocks.

Every optimizer returns an `optax.GradientTransformationExtraArgs` built by `_torch_chain`,
which places the shared steps in torch's order around the optimizer's own preconditioner:

    maximize -> coupled weight decay -> preconditioner -> decoupled weight decay -> -lr

Argument names follow the gradcore_jax issue tracker (Optax's `b1`/`b2`, torch's others);
defaults are PyTorch's (and gradientcore's). The learning rate may be a float, a jax
scalar or an Optax schedule; every numeric hyperparameter may be a traced scalar, so all
optimizers work under `optax.inject_hyperparams`.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import optax

from gradcore_jax import _checks
from gradcore_jax import transforms
from gradcore_jax._typing import PyTree, Scalar, ScalarOrSchedule

GradientTransformation = optax.GradientTransformationExtraArgs
Mask = Optional[Union[PyTree, Callable[[PyTree], PyTree]]]


def _torch_chain(
    preconditioner: Sequence[optax.GradientTransformation],
    learning_rate: ScalarOrSchedule,
    weight_decay: Scalar,
    maximize: bool,
    *,
    decoupled: bool = False,
    mask: Mask = None,
) -> GradientTransformation:
  """Wraps `preconditioner` with the steps every torch optimizer shares, in torch's order."""
  _checks.check_learning_rate(learning_rate)
  _checks.check_non_negative("weight_decay", weight_decay)
  decays = not _checks.is_static_zero(weight_decay)
  blocks: list[optax.GradientTransformation] = []
  if maximize:
    blocks.append(transforms.maximize())
  if decays and not decoupled:
    blocks.append(transforms.coupled_weight_decay(weight_decay))
  blocks.extend(preconditioner)
  if decays and decoupled:
    blocks.append(transforms.decoupled_weight_decay(weight_decay, mask))
  blocks.append(transforms.scale_by_learning_rate(learning_rate))
  return _checked(optax.chain(*blocks))


def _checked(tx: optax.GradientTransformation) -> GradientTransformation:
  """`tx` that first checks its inputs: real floating-point params and gradients, matching trees.

  The state is `tx`'s own, so wrapping changes nothing but the errors: a bad input raises
  before any block runs (and, under `jit`, at trace time, before buffers are donated).
  """

  def init_fn(params):
    _checks.check_real_floating(params, what="param")
    return tx.init(params)

  def update_fn(updates, state, params=None, **extra_args):
    _checks.check_real_floating(updates, what="gradient")
    if params is not None:
      _checks.check_tree_matches(updates, params, what="the params")
    return tx.update(updates, state, params, **extra_args)

  return GradientTransformation(init_fn, update_fn)


def sgd(
    learning_rate: ScalarOrSchedule = 1e-3,
    momentum: ScalarOrSchedule = 0.0,
    dampening: Scalar = 0.0,
    nesterov: bool = False,
    weight_decay: Scalar = 0.0,
    maximize: bool = False,
) -> GradientTransformation:
  """Stochastic gradient descent with torch's momentum (`torch.optim.SGD`).

  `g <- g + wd*p`; with momentum `buf <- g` on step 1, then
  `buf <- momentum*buf + (1-dampening)*g`, and `g <- g + momentum*buf` (nesterov) or
  `g <- buf`; finally `p <- p - lr*g`.

  Defaults: lr 1e-3 (torch requires it), momentum 0, dampening 0, nesterov False,
  weight_decay 0. A concrete `momentum=0` keeps no buffer (0 bytes of state).

  Args:
    learning_rate: the step size: a number, a jax scalar or a schedule `count -> lr`
      (`count` = updates already taken; e.g. `gcj.schedules.one_cycle_lr(...)`).
    momentum: momentum factor (0: no buffer), or a schedule `count -> momentum` (what
      torch's `OneCycleLR`/`CyclicLR` with `cycle_momentum=True` change every step).
    dampening: dampening for momentum, `buf <- momentum*buf + (1-dampening)*g`.
    nesterov: use Nesterov momentum (requires momentum > 0 and dampening 0).
    weight_decay: coupled L2 penalty added to the gradient, `g <- g + weight_decay * p`.
    maximize: ascend the objective instead (torch's `maximize=True`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  preconditioner = []
  if not _checks.is_static_zero(momentum) or nesterov:
    preconditioner.append(transforms.torch_momentum(momentum, dampening, nesterov))
  else:
    _checks.check_non_negative("dampening", dampening)
  return _torch_chain(preconditioner, learning_rate, weight_decay, maximize)


def sgd_ema(
    learning_rate: ScalarOrSchedule = 1e-3,
    beta: Scalar = 0.9,
    weight_decay: Scalar = 0.0,
    maximize: bool = False,
) -> GradientTransformation:
  """SGD with the article's exponential-moving-average momentum.

  `step <- beta*step + (1-beta)*g` with `step` starting at **zero**, `p <- p - lr*step`.
  Equivalent to torch's SGD with `momentum=dampening=beta` except on the first step,
  where torch sets the buffer to `g` and this rule takes `(1-beta)*g`.

  Defaults: lr 1e-3, beta 0.9, weight_decay 0 (coupled).

  Args:
    learning_rate: the step size: a number, a jax scalar or a schedule `count -> lr`
      (`count` = updates already taken; e.g. `gcj.schedules.one_cycle_lr(...)`).
    beta: decay of the zero-start moving average of the gradients, in [0, 1).
    weight_decay: coupled L2 penalty added to the gradient, `g <- g + weight_decay * p`.
    maximize: ascend the objective instead (torch's `maximize=True`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  return _torch_chain([transforms.ema_momentum(beta)], learning_rate, weight_decay, maximize)


def rmsprop(
    learning_rate: ScalarOrSchedule = 1e-2,
    alpha: Scalar = 0.99,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    momentum: ScalarOrSchedule = 0.0,
    centered: bool = False,
    maximize: bool = False,
) -> GradientTransformation:
  """RMSprop as `torch.optim.RMSprop` and gradientcore's `optim::RMSprop`.

  `v <- alpha*v + (1-alpha)*g**2`, `d = sqrt(v) + eps` (centered: `sqrt(v - gbar**2) + eps`);
  with momentum `buf <- momentum*buf + g/d`, `p <- p - lr*buf`, else `p <- p - lr*g/d`.

  Defaults: lr 1e-2, alpha 0.99, eps 1e-8 (outside the root), weight_decay 0, momentum 0.
  (`optax.rmsprop` defaults to decay 0.9, eps inside the root, and applies momentum
  after the learning rate.)

  Args:
    learning_rate: the step size: a number, a jax scalar or a schedule `count -> lr`
      (`count` = updates already taken; e.g. `gcj.schedules.one_cycle_lr(...)`).
    alpha: smoothing constant of the squared-gradient average, in [0, 1).
    eps: added to the root of the average (outside the square root).
    weight_decay: coupled L2 penalty added to the gradient, `g <- g + weight_decay * p`.
    momentum: momentum factor (0: none), or a schedule `count -> momentum`.
    centered: normalise by the estimated variance `v - gbar**2` instead of `v`.
    maximize: ascend the objective instead (torch's `maximize=True`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  preconditioner = [transforms.scale_by_rms(alpha, eps, centered)]
  if not _checks.is_static_zero(momentum):
    preconditioner.append(transforms.torch_momentum(momentum))
  else:
    _checks.check_non_negative("momentum", momentum)
  return _torch_chain(preconditioner, learning_rate, weight_decay, maximize)


def adam(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: ScalarOrSchedule = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
) -> GradientTransformation:
  """Adam as `torch.optim.Adam`: weight decay is *coupled* (added to the gradient).

  `m <- b1*m + (1-b1)*g`, `v <- b2*v + (1-b2)*g**2`,
  `p <- p - lr * (m/bc1) / (sqrt(v)/sqrt(bc2) + eps)`, `bc_i = 1 - b_i**t`; amsgrad keeps
  `vmax = max(vmax, v)` and uses it for `v`.

  Defaults: lr 1e-3, b1 0.9, b2 0.999, eps 1e-8, weight_decay 0, amsgrad False.

  Args:
    learning_rate: the step size: a number, a jax scalar or a schedule `count -> lr`
      (`count` = updates already taken; e.g. `gcj.schedules.one_cycle_lr(...)`).
    b1: decay of the first moment (torch's `betas[0]`), or a schedule `count -> b1`;
      the bias correction uses the current `b1`, as torch's does when a scheduler changes it.
    b2: decay of the second moment (torch's `betas[1]`).
    eps: added to the bias-corrected root of the second moment.
    weight_decay: L2 penalty: coupled (added to the gradient) unless `decoupled_weight_decay`.
    amsgrad: use the running maximum of the second moment (Reddi et al., 2018).
    maximize: ascend the objective instead (torch's `maximize=True`).
    decoupled_weight_decay: apply the decay as AdamW does, `p <- p*(1 - lr*wd)`
      (torch 2.x's flag; `adam(decoupled_weight_decay=True)` equals `adamw`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  return _torch_chain(
      [transforms.scale_by_adam(b1, b2, eps, amsgrad)],
      learning_rate,
      weight_decay,
      maximize,
      decoupled=decoupled_weight_decay,
  )


def adamw(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: ScalarOrSchedule = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 1e-2,
    amsgrad: bool = False,
    maximize: bool = False,
    mask: Mask = None,
) -> GradientTransformation:
  """AdamW as `torch.optim.AdamW`: weight decay is *decoupled*.

  `p <- p * (1 - lr*wd)` then the Adam step (see `adam`). `mask` (bool pytree or callable;
  True = decay) limits the decay to some leaves, as in `optax.adamw`.

  Defaults: lr 1e-3, b1 0.9, b2 0.999, eps 1e-8, weight_decay 1e-2 (Optax's is 1e-4).

  Args:
    learning_rate: the step size: a number, a jax scalar or a schedule `count -> lr`
      (`count` = updates already taken; e.g. `gcj.schedules.one_cycle_lr(...)`).
    b1: decay of the first moment (torch's `betas[0]`), or a schedule `count -> b1`.
    b2: decay of the second moment (torch's `betas[1]`).
    eps: added to the bias-corrected root of the second moment.
    weight_decay: decoupled decay rate, `p <- p*(1 - lr*weight_decay)`.
    amsgrad: use the running maximum of the second moment.
    maximize: ascend the objective instead (torch's `maximize=True`).
    mask: a bool pytree like the params, or a callable `params -> bool pytree`; True =
      decay this leaf (None: decay every leaf). See also `gcj.param_groups`.

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  return _torch_chain(
      [transforms.scale_by_adam(b1, b2, eps, amsgrad)], learning_rate, weight_decay, maximize, decoupled=True, mask=mask
  )


def adagrad(
    learning_rate: ScalarOrSchedule = 1e-2,
    lr_decay: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    initial_accumulator_value: Scalar = 0.0,
    eps: Scalar = 1e-10,
    maximize: bool = False,
) -> GradientTransformation:
  """Adagrad as `torch.optim.Adagrad`.

  `clr = lr / (1 + (t-1)*lr_decay)`, `s <- s + g**2`, `p <- p - clr * g / (sqrt(s) + eps)`.

  Defaults: lr 1e-2, lr_decay 0, weight_decay 0, initial_accumulator_value 0, eps 1e-10.
  (`optax.adagrad` starts the accumulator at 0.1 and puts eps inside the root.)

  Args:
    learning_rate: the step size: a number, a jax scalar or a schedule `count -> lr`
      (`count` = updates already taken; e.g. `gcj.schedules.one_cycle_lr(...)`).
    lr_decay: the learning rate at update t is `lr / (1 + t*lr_decay)`.
    weight_decay: coupled L2 penalty added to the gradient, `g <- g + weight_decay * p`.
    initial_accumulator_value: starting value of the sum of squared gradients.
    eps: added to the root of the sum (outside the square root).
    maximize: ascend the objective instead (torch's `maximize=True`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  if not _checks.is_static_zero(lr_decay):
    _checks.check_learning_rate(learning_rate)
    learning_rate = transforms.inverse_time_decay(learning_rate, lr_decay)
  else:
    _checks.check_non_negative("lr_decay", lr_decay)
  return _torch_chain([transforms.scale_by_adagrad(initial_accumulator_value, eps)], learning_rate, weight_decay, maximize)


def adadelta(
    learning_rate: ScalarOrSchedule = 1.0,
    rho: Scalar = 0.9,
    eps: Scalar = 1e-6,
    weight_decay: Scalar = 0.0,
    maximize: bool = False,
) -> GradientTransformation:
  """Adadelta as `torch.optim.Adadelta`.

  `v <- rho*v + (1-rho)*g**2`, `delta = sqrt(u+eps)/sqrt(v+eps)*g`,
  `u <- rho*u + (1-rho)*delta**2`, `p <- p - lr*delta`.

  Defaults: lr 1.0, rho 0.9, eps 1e-6, weight_decay 0.

  Args:
    learning_rate: the step size: a number, a jax scalar or a schedule `count -> lr`
      (`count` = updates already taken; e.g. `gcj.schedules.one_cycle_lr(...)`).
    rho: decay of the squared-gradient and squared-update averages, in [0, 1).
    eps: added inside both square roots.
    weight_decay: coupled L2 penalty added to the gradient, `g <- g + weight_decay * p`.
    maximize: ascend the objective instead (torch's `maximize=True`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  return _torch_chain([transforms.scale_by_adadelta(rho, eps)], learning_rate, weight_decay, maximize)


def adamax(
    learning_rate: ScalarOrSchedule = 2e-3,
    b1: ScalarOrSchedule = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    maximize: bool = False,
) -> GradientTransformation:
  """Adamax as `torch.optim.Adamax`.

  `m <- b1*m + (1-b1)*g`, `u <- max(b2*u, |g| + eps)`, `p <- p - (lr/bc1) * m/u`.

  Defaults: lr 2e-3, b1 0.9, b2 0.999, eps 1e-8, weight_decay 0.

  Args:
    learning_rate: the step size: a number, a jax scalar or a schedule `count -> lr`
      (`count` = updates already taken; e.g. `gcj.schedules.one_cycle_lr(...)`).
    b1: decay of the first moment, or a schedule `count -> b1`.
    b2: decay of the infinity norm.
    eps: added to `|g|` in the infinity norm.
    weight_decay: coupled L2 penalty added to the gradient, `g <- g + weight_decay * p`.
    maximize: ascend the objective instead (torch's `maximize=True`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  return _torch_chain([transforms.scale_by_adamax(b1, b2, eps)], learning_rate, weight_decay, maximize)


def nadam(
    learning_rate: ScalarOrSchedule = 2e-3,
    b1: ScalarOrSchedule = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    momentum_decay: Scalar = 4e-3,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
) -> GradientTransformation:
  """NAdam as `torch.optim.NAdam` (with its momentum-decay schedule).

  `mu_t = b1*(1 - 0.5*0.96**(t*momentum_decay))`, `P_t = prod mu_i`, `d = sqrt(v/bc2) + eps`,
  `p <- p - lr*(1-mu_t)/(1-P_t) * g/d - lr*mu_{t+1}/(1-P_t*mu_{t+1}) * m/d`.

  Defaults: lr 2e-3, b1 0.9, b2 0.999, eps 1e-8, weight_decay 0, momentum_decay 4e-3.

  Args:
    learning_rate: the step size: a number, a jax scalar or a schedule `count -> lr`
      (`count` = updates already taken; e.g. `gcj.schedules.one_cycle_lr(...)`).
    b1: base momentum of the decaying schedule `mu_t`, or a schedule `count -> b1`.
    b2: decay of the second moment.
    eps: added to the bias-corrected root of the second moment.
    weight_decay: L2 penalty: coupled unless `decoupled_weight_decay` (torch's NAdamW).
    momentum_decay: the rate `psi` of the momentum schedule.
    maximize: ascend the objective instead (torch's `maximize=True`).
    decoupled_weight_decay: apply the decay as AdamW does, `p <- p*(1 - lr*wd)`.

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  return _torch_chain(
      [transforms.scale_by_nadam(b1, b2, eps, momentum_decay)],
      learning_rate,
      weight_decay,
      maximize,
      decoupled=decoupled_weight_decay,
  )


def radam(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: ScalarOrSchedule = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
) -> GradientTransformation:
  """RAdam as `torch.optim.RAdam`.

  Adam's moments; while the variance rectification term `rho_t <= 5` the step is plain
  momentum `p <- p - lr*m_hat`, afterwards
  `p <- p - lr * m_hat * r_t * sqrt(bc2) / (sqrt(v) + eps)` (see `transforms.scale_by_radam`).

  Defaults: lr 1e-3, b1 0.9, b2 0.999, eps 1e-8, weight_decay 0.

  Args:
    learning_rate: the step size: a number, a jax scalar or a schedule `count -> lr`
      (`count` = updates already taken; e.g. `gcj.schedules.one_cycle_lr(...)`).
    b1: decay of the first moment, or a schedule `count -> b1`.
    b2: decay of the second moment.
    eps: added to the root of the second moment.
    weight_decay: L2 penalty: coupled unless `decoupled_weight_decay` (torch's RAdamW).
    maximize: ascend the objective instead (torch's `maximize=True`).
    decoupled_weight_decay: apply the decay as AdamW does, `p <- p*(1 - lr*wd)`.

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  return _torch_chain(
      [transforms.scale_by_radam(b1, b2, eps)], learning_rate, weight_decay, maximize, decoupled=decoupled_weight_decay
  )
