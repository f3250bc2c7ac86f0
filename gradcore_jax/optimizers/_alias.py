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

from typing import Any
from typing import Callable
from typing import Optional
from typing import Sequence
from typing import TypeVar
from typing import Union

import jax
import numpy as np
import optax

from gradcore_jax import _checks
from gradcore_jax import transforms
from gradcore_jax._typing import PyTree
from gradcore_jax._typing import Scalar
from gradcore_jax._typing import ScalarOrSchedule
from gradcore_jax.transforms._decay import check_mask

Mask = Optional[Union[PyTree, Callable[[PyTree], PyTree]]]
_T = TypeVar("_T")


def _torch_chain(
  name: str,
  preconditioner: Sequence[optax.GradientTransformation],
  learning_rate: ScalarOrSchedule,
  weight_decay: Scalar,
  maximize: bool,
  *,
  decoupled: bool = False,
  mask: Mask = None,
) -> optax.GradientTransformationExtraArgs:
  """Wraps `preconditioner` with the steps every torch optimizer shares, in torch's order.

  `name` is how errors name the optimizer (e.g. "adam(amsgrad=True)").
  """
  _checks.check_learning_rate(learning_rate)
  _checks.check_non_negative("weight_decay", weight_decay)
  _checks.check_flag("maximize", maximize)
  _checks.check_flag("decoupled_weight_decay", decoupled)
  if mask is not None:  # checked even when there is no decay to mask, so that a bad mask never passes unseen
    check_mask(mask)
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
  return _checked(optax.chain(*blocks), name)


def _checked(tx: optax.GradientTransformation, name: str) -> optax.GradientTransformationExtraArgs:
  """`tx` that first checks its inputs: real floating-point params and gradients, matching trees, its own state.

  The state is `tx`'s own, so wrapping changes nothing but the errors: a bad input raises
  before any block runs (and, under `jit`, at trace time, before buffers are donated). The
  state's tree structure is compared with what `init` gives for the params (for the
  gradients when no params are given); `name` names the optimizer in that error. The
  expected structure is computed once per params structure and shapes (`jax.eval_shape`
  of `init`, no computation) and remembered.
  """
  structures: dict[Any, Any] = {}

  def init_fn(params):
    _checks.check_real_floating(params, what="param")
    return tx.init(params)

  def expected_structure(reference):
    """The structure `init` gives for `reference`; None when `init` refuses it (the blocks then raise)."""
    leaves, treedef = jax.tree.flatten(reference)
    key = (treedef, tuple((np.shape(leaf), str(getattr(leaf, "dtype", type(leaf)))) for leaf in leaves))
    if key not in structures:
      try:
        structure = jax.tree.structure(jax.eval_shape(tx.init, reference))
      except (TypeError, ValueError):  # e.g. Muon's init refuses a non-2-D leaf: update says the same, better
        return None
      if len(structures) >= _REMEMBERED_STRUCTURES:
        structures.clear()
      structures[key] = structure
    return structures[key]

  def update_fn(updates, state, params=None, **extra_args):
    _checks.check_real_floating(updates, what="gradient")
    if params is not None:
      _checks.check_tree_matches(updates, params, what="the params")
    # Without params the expected state is built from the gradients (unless one is None: no shape to build from).
    from_gradients = params is None
    if not (from_gradients and any(leaf is None for leaf in jax.tree.leaves(updates, is_leaf=_is_none))):
      expected = expected_structure(updates if from_gradients else params)
      if expected is not None:
        _checks.check_state_matches(state, expected, optimizer=name, from_gradients=from_gradients)
    return tx.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


_REMEMBERED_STRUCTURES = 16  # expected state structures kept per optimizer (one per params structure seen)


def _is_none(x: Any) -> bool:
  return x is None


def sgd(
  learning_rate: ScalarOrSchedule = 1e-3,
  momentum: ScalarOrSchedule = 0.0,
  dampening: Scalar = 0.0,
  nesterov: bool = False,
  weight_decay: Scalar = 0.0,
  maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
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
  return _torch_chain("sgd", preconditioner, learning_rate, weight_decay, maximize)


def sgd_ema(
  learning_rate: ScalarOrSchedule = 1e-3,
  beta: Scalar = 0.9,
  weight_decay: Scalar = 0.0,
  maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
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
  return _torch_chain("sgd_ema", [transforms.ema_momentum(beta)], learning_rate, weight_decay, maximize)


def rmsprop(
  learning_rate: ScalarOrSchedule = 1e-2,
  alpha: Scalar = 0.99,
  eps: Scalar = 1e-8,
  weight_decay: Scalar = 0.0,
  momentum: ScalarOrSchedule = 0.0,
  centered: bool = False,
  maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
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
  return _torch_chain("rmsprop", preconditioner, learning_rate, weight_decay, maximize)


def adam(
  learning_rate: ScalarOrSchedule = 1e-3,
  b1: ScalarOrSchedule = 0.9,
  b2: Scalar = 0.999,
  eps: Scalar = 1e-8,
  weight_decay: Scalar = 0.0,
  amsgrad: bool = False,
  maximize: bool = False,
  decoupled_weight_decay: bool = False,
) -> optax.GradientTransformationExtraArgs:
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
    "adam(amsgrad=True)" if amsgrad else "adam",
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
) -> optax.GradientTransformationExtraArgs:
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
    "adamw(amsgrad=True)" if amsgrad else "adamw",
    [transforms.scale_by_adam(b1, b2, eps, amsgrad)],
    learning_rate,
    weight_decay,
    maximize,
    decoupled=True,
    mask=mask,
  )


def adagrad(
  learning_rate: ScalarOrSchedule = 1e-2,
  lr_decay: Scalar = 0.0,
  weight_decay: Scalar = 0.0,
  initial_accumulator_value: Scalar = 0.0,
  eps: Scalar = 1e-10,
  maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
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
  return _torch_chain(
    "adagrad", [transforms.scale_by_adagrad(initial_accumulator_value, eps)], learning_rate, weight_decay, maximize
  )


def adadelta(
  learning_rate: ScalarOrSchedule = 1.0,
  rho: Scalar = 0.9,
  eps: Scalar = 1e-6,
  weight_decay: Scalar = 0.0,
  maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
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
  return _torch_chain("adadelta", [transforms.scale_by_adadelta(rho, eps)], learning_rate, weight_decay, maximize)


def adamax(
  learning_rate: ScalarOrSchedule = 2e-3,
  b1: ScalarOrSchedule = 0.9,
  b2: Scalar = 0.999,
  eps: Scalar = 1e-8,
  weight_decay: Scalar = 0.0,
  maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
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
  return _torch_chain("adamax", [transforms.scale_by_adamax(b1, b2, eps)], learning_rate, weight_decay, maximize)


def nadam(
  learning_rate: ScalarOrSchedule = 2e-3,
  b1: ScalarOrSchedule = 0.9,
  b2: Scalar = 0.999,
  eps: Scalar = 1e-8,
  weight_decay: Scalar = 0.0,
  momentum_decay: Scalar = 4e-3,
  maximize: bool = False,
  decoupled_weight_decay: bool = False,
) -> optax.GradientTransformationExtraArgs:
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
    "nadam",
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
) -> optax.GradientTransformationExtraArgs:
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
    "radam",
    [transforms.scale_by_radam(b1, b2, eps)],
    learning_rate,
    weight_decay,
    maximize,
    decoupled=decoupled_weight_decay,
  )


def _pair(name: str, value: Sequence[_T]) -> tuple[_T, _T]:
  """Unpacks torch's tuple arguments (`etas`, `step_sizes`, `eps`), naming the argument when it is not a pair."""
  try:
    first, second = value
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a pair (two values), got {value!r}.") from None
  return first, second


def rprop(
  learning_rate: Scalar = 1e-2,
  etas: Sequence[Scalar] = (0.5, 1.2),
  step_sizes: Sequence[Scalar] = (1e-6, 50),
  maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Rprop as `torch.optim.Rprop` (resilient backpropagation): per-element step sizes, sign-only steps.

  With `s = sign(g * prev)`: `step_size <- clip(step_size * f, *step_sizes)`, `f = etas[1]`
  where `s > 0`, `etas[0]` where `s < 0`, 1 where `s == 0`; `g <- 0` where `s < 0`;
  `p <- p - step_size * sign(g)`; `prev <- g`. The step sizes start at `learning_rate`.

  Defaults: lr 1e-2, etas (0.5, 1.2), step_sizes (1e-6, 50) (torch's). As in torch, the
  learning rate is only the *initial* step size: changing it later (through
  `optax.inject_hyperparams`; in torch, a scheduler) does nothing, and a schedule is refused. To inject
  the pairs, wrap them: `optax.inject_hyperparams(lambda learning_rate, eta_minus, eta_plus:
  gcj.rprop(learning_rate, etas=(eta_minus, eta_plus)))(1e-2, 0.5, 1.2)`.
  (`optax.rprop` skips the clip where `s == 0`; torch and this function clip every step.)

  Args:
    learning_rate: the initial step size of every element (torch's `lr`), >= 0.
    etas: `(eta_minus, eta_plus)`, the factors applied to the step size after a sign
      change and after a kept sign: `0 < eta_minus < 1 < eta_plus`.
    step_sizes: `(min, max)` bounds of the step size, `0 <= min <= max`.
    maximize: ascend the objective instead (torch's `maximize=True`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Raises:
    TypeError: if `learning_rate` is a schedule.
    ValueError: for etas or step sizes out of range, or not pairs.
  """
  if callable(learning_rate):
    raise TypeError(
      "rprop's learning_rate is the initial step size (torch's lr is read once, when the state is created), "
      "so a schedule would have no effect; pass a number."
    )
  eta_minus, eta_plus = _pair("etas", etas)
  min_step_size, max_step_size = _pair("step_sizes", step_sizes)
  block = transforms.scale_by_rprop(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size)
  # The block's output already holds the step sizes: the last block only flips its sign.
  return _torch_chain("rprop", [block], 1.0, 0.0, maximize)


def asgd(
  learning_rate: ScalarOrSchedule = 1e-2,
  lambd: Scalar = 1e-4,
  alpha: Scalar = 0.75,
  t0: Scalar = 1e6,
  weight_decay: Scalar = 0.0,
  maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Averaged SGD as `torch.optim.ASGD` (single-tensor path), keeping the parameter average.

  `g <- g + wd*p`; `p <- p*(1 - lambd*eta) - eta*g`; `ax <- p` while `mu == 1`, else
  `ax <- ax + mu*(p - ax)`; then, for update `t`, `eta <- lr / (1 + lambd*lr*t)**alpha`
  and `mu <- 1/max(1, t - t0)`. `eta` starts at `lr`, `mu` at 1.

  The averaged parameters (torch's `state["ax"]`) are `gcj.transforms.asgd_average(state)`
  (it finds the ASGD state inside `inject_hyperparams`, `MultiSteps`, `partition`).
  Defaults: lr 1e-2, lambd 1e-4, alpha 0.75, t0 1e6, weight_decay 0 (torch's). Optax has
  no ASGD.

  Args:
    learning_rate: torch's `lr`: the first step size and the base of the decay; a schedule
      is read as torch reads `lr` after a scheduler step (when the next `eta` is computed).
    lambd: the decay term, in the step size and as `p*(1 - lambd*eta)`, >= 0.
    alpha: the power of the step-size decay, >= 0.
    t0: when averaging starts (`ax` copies the params up to update `t0 + 2`), >= 0.
    weight_decay: coupled L2 penalty added to the gradient, `g <- g + weight_decay * p`.
    maximize: ascend the objective instead (torch's `maximize=True`).

  Returns:
    An `optax.GradientTransformationExtraArgs`; `update` needs the params.
  """
  # The block's output already holds eta (the learning rate): the last block only flips its sign.
  return _torch_chain("asgd", [transforms.scale_by_asgd(learning_rate, lambd, alpha, t0)], 1.0, weight_decay, maximize)


def adafactor(
  learning_rate: ScalarOrSchedule = 1e-2,
  beta2_decay: Scalar = -0.8,
  eps: Sequence[Optional[Scalar]] = (None, 1e-3),
  d: Scalar = 1.0,
  weight_decay: Scalar = 0.0,
  maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Adafactor as `torch.optim.Adafactor`: factored second moments, a relative step, no first moment.

  Update `t`: `beta2_t = 1 - t**beta2_decay`; for a leaf with >= 2 dims, row and column
  mean squares over its last two axes, `R <- beta2_t R + (1-beta2_t) mean(g**2, -1)`,
  `C <- ... mean(g**2, -2)`, `V = R C / max(mean(R), eps1)`; else `V <- beta2_t V + (1-beta2_t) g**2`.
  `U = g / sqrt(max(V, eps1**2))`, `U <- U / max(1, RMS(U)/d)`,
  `p <- p*(1 - lr*wd) - max(eps2, RMS(p)) * min(lr, 1/sqrt(t)) * U`.

  Defaults: lr 1e-2, beta2_decay -0.8, eps (None, 1e-3) (None: the machine epsilon of the
  param's dtype), d 1.0, weight_decay 0 (decoupled, scaled by lr, as torch's). State: a
  `(m, n)` matrix keeps `m + n` numbers, a vector its own size. To inject `eps`, wrap it
  as for `rprop`. (Not `optax.adafactor`: Optax factors the two *largest* axes and only when
  both have >= 128 entries, adds eps 1e-30 to `g**2` instead of flooring, and has its own
  step-size rule and weight decay.)

  Args:
    learning_rate: torch's `lr` (number, jax scalar or schedule): caps the relative step
      `min(lr, 1/sqrt(t))` and scales the weight decay.
    beta2_decay: exponent of the second-moment decay, <= 0.
    eps: `(eps1, eps2)`: eps1 floors the second moment (as `eps1**2`) and the row mean
      (`None`: each leaf's dtype epsilon; torch uses the first param's dtype for all);
      eps2 floors the parameter RMS in the step size.
    d: the update clipping threshold, >= 1.
    weight_decay: decoupled decay rate, `p <- p*(1 - lr*weight_decay)`.
    maximize: ascend the objective instead (torch's `maximize=True`).

  Returns:
    An `optax.GradientTransformationExtraArgs`; `update` needs the params.
  """
  eps1, eps2 = _pair("eps", eps)
  if eps2 is None:  # only eps1 has a dtype-dependent default (torch's check raises a TypeError too)
    raise TypeError("eps[1] (eps2) must be a number, got None; only eps[0] may be None.")
  return _torch_chain(
    "adafactor",
    [transforms.scale_by_adafactor(learning_rate, beta2_decay, eps1, eps2, d)],
    learning_rate,
    weight_decay,
    maximize,
    decoupled=True,
  )


def muon(
  learning_rate: ScalarOrSchedule = 1e-3,
  weight_decay: Scalar = 0.1,
  momentum: Scalar = 0.95,
  nesterov: bool = True,
  ns_coefficients: Sequence[Scalar] = (3.4445, -4.775, 2.0315),
  eps: Scalar = 1e-7,
  ns_steps: int = 5,
  adjust_lr_fn: Optional[str] = None,
) -> optax.GradientTransformationExtraArgs:
  """Muon as `torch.optim.Muon`: orthogonalised momentum for 2-D parameters.

  `buf <- momentum*buf + (1-momentum)*g`; `u = g + momentum*(buf - g)` (nesterov) or `buf`;
  `O = NS(u)`, `ns_steps` bfloat16 Newton-Schulz iterations (`X <- aX + (bA + cA^2)X`,
  `A = XX^T`, on `u/max(||u||, eps)`, as torch); `p <- p*(1 - lr*wd) - lr*ratio*O` with
  `ratio = sqrt(max(1, rows/cols))` ("original", also for None) or
  `0.2*sqrt(max(rows, cols))` ("match_rms_adamw").

  Every leaf must be 2-D (a ValueError names the first one that is not). Give the other
  leaves AdamW, as torch's docs do:

      tx = optax.partition({"muon": gcj.muon(0.02), "adamw": gcj.adamw(3e-4)},
                           lambda params: jax.tree.map(lambda p: "muon" if p.ndim == 2 else "adamw", params))

  (or `gcj.param_groups` with the same labels function). Defaults: torch's (lr 1e-3,
  weight_decay 0.1, momentum 0.95, nesterov, coefficients (3.4445, -4.775, 2.0315),
  eps 1e-7, 5 steps). `gcj.multi_tensor` refuses it: packing leaves would change the matrices.
  (`optax.contrib.muon`: bias-corrected momentum, the iteration in the params' dtype,
  eps 1e-8 added to the norm, weight_decay 0, `sqrt(max(1, fan_out/fan_in))`, AdamW
  built in for non-2-D leaves.)

  Args:
    learning_rate: the step size: a number, a jax scalar or a schedule `count -> lr`.
    weight_decay: decoupled decay rate, `p <- p*(1 - lr*weight_decay)`.
    momentum: the momentum factor, >= 0.
    nesterov: orthogonalise the Nesterov look-ahead instead of the buffer.
    ns_coefficients: the Newton-Schulz quintic's `(a, b, c)`.
    eps: floor of the Frobenius norm the input of the iteration is divided by.
    ns_steps: number of Newton-Schulz iterations, in [0, 100).
    adjust_lr_fn: `None`/"original" or "match_rms_adamw": the per-matrix learning-rate ratio.
      Rows and columns are the array's own: torch's `Linear` weights are `(out, in)`,
      Flax kernels `(in, out)`.

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  block = transforms.scale_by_muon(momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn)
  return _torch_chain("muon", [block], learning_rate, weight_decay, False, decoupled=True)
