"""Torch's multiplicative schedulers: LambdaLR, MultiplicativeLR, StepLR, MultiStepLR, ConstantLR, LinearLR,
ExponentialLR and PolynomialLR.

All but LambdaLR are *chainable* in torch: each step multiplies the group's current lr by a
factor. Their closed forms multiply the lr by the product of those factors, which equals
torch's step-by-step products to rounding (one ulp per step).
"""

from __future__ import annotations

import bisect
import collections
import math
from typing import Any
from typing import Callable
from typing import Iterable

import jax.numpy as jnp
import numpy as np

from gradcore_jax.schedules import _core
from gradcore_jax.schedules._core import Array
from gradcore_jax.schedules._core import TorchSchedule
from gradcore_jax.schedules._core import as_float
from gradcore_jax.schedules._core import div


class _LambdaLR(_core.Scheduler):
  kind = _core.ABSOLUTE
  name = "LambdaLR"

  def __init__(self, base_lr: float, lr_lambda: Callable[[Array], Any]):
    self.base_lr, self.lr_lambda = base_lr, lr_lambda

  def _value(self, k: Array) -> Array:
    return as_float(self.base_lr) * self.lr_lambda(_core.as_int(k))

  def first(self, lr: Array) -> Array:
    return self._value(jnp.zeros([], jnp.int32))

  def step(self, k: Array, lr: Array) -> Array:
    return self._value(k)

  def reset(self, lr: Array) -> Array:
    return self._value(jnp.zeros([], jnp.int32))

  def run(self, k: Array, lr: Array) -> Array:
    return jnp.where(k == 0, as_float(lr), self._value(k))


def lambda_lr(base_lr: float, lr_lambda: Callable[[Array], Any]) -> TorchSchedule:
  """`torch.optim.lr_scheduler.LambdaLR`: `lr_t = base_lr * lr_lambda(t)`.

  Not chainable in torch: it sets the lr from `base_lr` every step.

  Args:
    base_lr: the optimizer's lr (torch's `initial_lr`).
    lr_lambda: a function of the step count `t` (an integer array, int64 under x64, traced under
      `jit`: write it with `jnp` operations, e.g. `lambda t: 0.95 ** t`, not Python `if`s on `t`).

  Returns:
    A `TorchSchedule` (`count -> lr`, `.momentum` None).

  Raises:
    ValueError: `base_lr` is not a number >= 0.
    TypeError: `lr_lambda` is not callable.
  """
  base_lr = _core.check_lr("base_lr", base_lr)
  _core.check_callable("lr_lambda", lr_lambda)
  return _core.from_scheduler(_LambdaLR(base_lr, lr_lambda))


class _MultiplicativeLR(_core.Scheduler):
  kind = _core.MULTIPLICATIVE
  name = "MultiplicativeLR"
  reads_lr_on_reset = True

  def __init__(self, base_lr: float, lr_lambda: Callable[[Array], Any]):
    self.base_lr, self.lr_lambda = base_lr, lr_lambda

  def step(self, k: Array, lr: Array) -> Array:
    return lr * self.lr_lambda(_core.as_int(k))

  def reset(self, lr: Array) -> Array:
    return self.step(jnp.zeros([], jnp.int32), lr)


def multiplicative_lr(base_lr: float, lr_lambda: Callable[[Array], Any]) -> TorchSchedule:
  """`torch.optim.lr_scheduler.MultiplicativeLR`: `lr_0 = base_lr`, `lr_t = lr_{t-1} * lr_lambda(t)`.

  Computed as torch does, one multiplication per step in a `lax.fori_loop`: evaluating the
  schedule at `count` costs O(count) calls of `lr_lambda` (an arbitrary lambda has no
  closed-form product). For a constant factor use `exponential_lr`, which is O(1).

  Args:
    base_lr: the optimizer's lr.
    lr_lambda: a function of the step `t >= 1` (an integer array, int64 under x64, traced: write it with `jnp`).

  Returns:
    A `TorchSchedule` (`.momentum` None).

  Raises:
    ValueError: `base_lr` is not a number >= 0.
    TypeError: `lr_lambda` is not callable (torch's `TypeError`).
  """
  base_lr = _core.check_lr("base_lr", base_lr)
  _core.check_callable("lr_lambda", lr_lambda)
  return _core.from_scheduler(_MultiplicativeLR(base_lr, lr_lambda))


class _StepLR(_core.Scheduler):
  kind = _core.MULTIPLICATIVE
  name = "StepLR"

  def __init__(self, base_lr: float, step_size: int, gamma: float):
    self.base_lr, self.step_size, self.gamma = base_lr, step_size, gamma

  def step(self, k: Array, lr: Array) -> Array:
    return jnp.where(k % self.step_size == 0, lr * self.gamma, lr)

  def reset(self, lr: Array) -> Array:
    return as_float(self.base_lr * self.gamma**0)

  def run(self, k: Array, lr: Array) -> Array:
    return lr * jnp.power(as_float(self.gamma), as_float(k // self.step_size))


def step_lr(base_lr: float, step_size: int, gamma: float = 0.1) -> TorchSchedule:
  """`torch.optim.lr_scheduler.StepLR`: `lr_t = base_lr * gamma ** (t // step_size)`.

  Torch multiplies the current lr by `gamma` at every multiple of `step_size`.

  Args:
    base_lr: the optimizer's lr.
    step_size: period of the decay, an integer >= 1 (torch divides by it: 0 fails at the first step).
    gamma: multiplicative factor of the decay. Default 0.1.

  Returns:
    A `TorchSchedule` (`.momentum` None).

  Raises:
    ValueError: `base_lr`, `step_size` or `gamma` invalid.
  """
  base_lr = _core.check_lr("base_lr", base_lr)
  step_size = _core.check_int("step_size", step_size, 1)
  gamma = _core.check_number("gamma", gamma)
  return _core.from_scheduler(_StepLR(base_lr, step_size, gamma))


class _MultiStepLR(_core.Scheduler):
  kind = _core.MULTIPLICATIVE
  name = "MultiStepLR"

  def __init__(self, base_lr: float, milestones: collections.Counter, gamma: float):
    self.base_lr, self.gamma = base_lr, gamma
    self.counts = milestones
    # Steps k >= 1 at which torch decays, with multiplicity (a milestone given twice decays by gamma**2).
    self.later = np.asarray([min(m, _core.INT32_MAX) for m in sorted(milestones.elements()) if m >= 1], np.int32)
    self.any_later = self.later.size > 0

  def first(self, lr: Array) -> Array:
    return lr * self.gamma ** self.counts[0] if 0 in self.counts else lr

  def step(self, k: Array, lr: Array) -> Array:
    hits = jnp.sum(self.later == k) if self.any_later else jnp.zeros([], jnp.int32)
    return jnp.where(hits > 0, lr * jnp.power(as_float(self.gamma), as_float(hits)), lr)

  def reset(self, lr: Array) -> Array:
    passed = bisect.bisect_right(sorted(self.counts.elements()), 0)
    return as_float(self.base_lr * self.gamma**passed)

  def run(self, k: Array, lr: Array) -> Array:
    if not self.any_later:
      return as_float(lr)
    passed = jnp.sum(self.later <= k)
    return lr * jnp.power(as_float(self.gamma), as_float(passed))


def multi_step_lr(base_lr: float, milestones: Iterable[int], gamma: float = 0.1) -> TorchSchedule:
  """`torch.optim.lr_scheduler.MultiStepLR`: `lr_t = base_lr * gamma ** (number of milestones <= t)`.

  Torch multiplies the lr by `gamma**n` at a step that appears `n` times in `milestones`;
  a milestone 0 decays at construction, as in torch.

  Args:
    base_lr: the optimizer's lr.
    milestones: step indices (integers; any order, repeats count, as torch's `Counter`).
    gamma: multiplicative factor of the decay. Default 0.1.

  Returns:
    A `TorchSchedule` (`.momentum` None).

  Raises:
    ValueError: `base_lr` or `gamma` invalid, or a milestone that is not an integer.
  """
  base_lr = _core.check_lr("base_lr", base_lr)
  try:
    milestones = list(milestones)
  except TypeError:
    raise TypeError(f"milestones must be an iterable of integers, got {milestones!r}.") from None
  for m in milestones:
    if not _core.is_int(m):
      raise ValueError(f"milestones must be integers, got {m!r}.")
  gamma = _core.check_number("gamma", gamma)
  return _core.from_scheduler(_MultiStepLR(base_lr, collections.Counter(int(m) for m in milestones), gamma))


class _ConstantLR(_core.Scheduler):
  kind = _core.MULTIPLICATIVE
  name = "ConstantLR"

  def __init__(self, base_lr: float, factor: float, total_iters: int):
    self.base_lr, self.factor, self.total_iters = base_lr, factor, total_iters
    self.inverse = 1.0 / factor if factor != 0 else math.nan  # torch: ZeroDivisionError at total_iters

  def first(self, lr: Array) -> Array:
    return lr * self.factor

  def step(self, k: Array, lr: Array) -> Array:
    return jnp.where(k == self.total_iters, lr * self.inverse, lr)

  def reset(self, lr: Array) -> Array:
    return as_float(self.base_lr * (self.factor + (0 >= self.total_iters) * (1 - self.factor)))

  def run(self, k: Array, lr: Array) -> Array:
    if self.total_iters == 0:  # torch undoes the factor at step 0 + total_iters, which never comes
      return as_float(lr)
    return jnp.where(k >= self.total_iters, lr * self.inverse, lr)

  def check(self, k: int) -> None:
    if self.factor == 0 and 1 <= self.total_iters <= k:
      raise ValueError(
        f"ConstantLR with factor=0 divides by the factor at step total_iters={self.total_iters} "
        "(torch raises ZeroDivisionError there); under jit the lr is NaN from there on."
      )


def constant_lr(base_lr: float, factor: float = 1.0 / 3, total_iters: int = 5) -> TorchSchedule:
  """`torch.optim.lr_scheduler.ConstantLR`: `lr_t = base_lr * factor` for `t < total_iters`, then `base_lr`.

  Torch multiplies by `factor` at construction and by `1/factor` at step `total_iters`
  (so the lr after is `base_lr * factor * (1/factor)`, rounded as torch rounds it).
  `total_iters=0` keeps the factor for ever, as in torch.

  Args:
    base_lr: the optimizer's lr.
    factor: the factor, in [0, 1]. Default 1/3. With 0, torch fails with ZeroDivisionError
      at step `total_iters`; here a concrete count raises and a traced one gives NaN.
    total_iters: number of steps with the factor, an integer >= 0. Default 5.

  Returns:
    A `TorchSchedule` (`.momentum` None).

  Raises:
    ValueError: `factor` outside [0, 1] (torch's check), `base_lr` or `total_iters` invalid.
  """
  base_lr = _core.check_lr("base_lr", base_lr)
  if not _core.is_number(factor) or not 0 <= factor <= 1.0:
    raise ValueError(f"factor: Constant multiplicative factor expected to be between 0 and 1, got {factor!r}.")
  total_iters = _core.check_int("total_iters", total_iters, 0)
  return _core.from_scheduler(_ConstantLR(base_lr, float(factor), total_iters))


class _LinearLR(_core.Scheduler):
  kind = _core.MULTIPLICATIVE
  name = "LinearLR"

  def __init__(self, base_lr: float, start_factor: float, end_factor: float, total_iters: int):
    self.base_lr, self.start, self.end, self.total_iters = base_lr, start_factor, end_factor, total_iters
    if total_iters == 0:
      self.reset_error = "LinearLR with total_iters=0 divides by total_iters (torch raises ZeroDivisionError)"

  def _factor(self, k: Array) -> Array:
    """Torch's factor of step k: `1 + (end - start) / (T*start + (k-1)*(end - start))`."""
    denominator = self.total_iters * self.start + (as_float(k) - 1) * (self.end - self.start)
    return 1.0 + (self.end - self.start) / denominator

  def first(self, lr: Array) -> Array:
    return lr * self.start

  def step(self, k: Array, lr: Array) -> Array:
    return jnp.where(k > self.total_iters, lr, lr * self._factor(k))

  def reset(self, lr: Array) -> Array:
    return as_float(self.base_lr * (self.start + (self.end - self.start) * min(self.total_iters, 0) / self.total_iters))

  def run(self, k: Array, lr: Array) -> Array:
    # The factors of steps 1..n telescope to (T*start + n*(end-start)) / (T*start). The last one is
    # applied as torch computes it, so that end_factor = 0 leaves torch's exact rounding residue.
    n = jnp.minimum(k, self.total_iters)
    before_last = div(
      self.total_iters * self.start + as_float(n - 1) * (self.end - self.start), self.total_iters * self.start
    )
    return jnp.where(n <= 0, as_float(lr), lr * before_last * self._factor(n))


def linear_lr(
  base_lr: float, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5
) -> TorchSchedule:
  """`torch.optim.lr_scheduler.LinearLR`: the factor moves linearly from `start_factor` to `end_factor`.

  `lr_t = base_lr * (start + (end - start) * min(t, total_iters) / total_iters)`; torch
  gets there by multiplying the lr by the ratio of consecutive factors each step.

  Args:
    base_lr: the optimizer's lr.
    start_factor: factor at step 0, in (0, 1]. Default 1/3.
    end_factor: factor from step `total_iters` on, in [0, 1]. Default 1.
    total_iters: number of steps of the ramp, an integer >= 0. Default 5.

  Returns:
    A `TorchSchedule` (`.momentum` None).

  Raises:
    ValueError: `start_factor` or `end_factor` outside their ranges (torch's checks), or
      `base_lr`/`total_iters` invalid.
  """
  base_lr = _core.check_lr("base_lr", base_lr)
  if not _core.is_number(start_factor) or not 0 < start_factor <= 1.0:
    raise ValueError(
      "start_factor: Starting multiplicative factor expected to be greater than 0 and less or equal to 1, "
      f"got {start_factor!r}."
    )
  if not _core.is_number(end_factor) or not 0 <= end_factor <= 1.0:
    raise ValueError(f"end_factor: Ending multiplicative factor expected to be between 0 and 1, got {end_factor!r}.")
  total_iters = _core.check_int("total_iters", total_iters, 0)
  return _core.from_scheduler(_LinearLR(base_lr, float(start_factor), float(end_factor), total_iters))


class _ExponentialLR(_core.Scheduler):
  kind = _core.MULTIPLICATIVE
  name = "ExponentialLR"

  def __init__(self, base_lr: float, gamma: float):
    self.base_lr, self.gamma = base_lr, gamma

  def step(self, k: Array, lr: Array) -> Array:
    return lr * self.gamma

  def reset(self, lr: Array) -> Array:
    return as_float(self.base_lr * self.gamma**0)

  def run(self, k: Array, lr: Array) -> Array:
    return lr * jnp.power(as_float(self.gamma), as_float(k))


def exponential_lr(base_lr: float, gamma: float) -> TorchSchedule:
  """`torch.optim.lr_scheduler.ExponentialLR`: `lr_t = base_lr * gamma**t`.

  Torch multiplies by `gamma` each step; the closed form differs from that product by at
  most one rounding per step (2e-14 relative after 100 steps).

  Args:
    base_lr: the optimizer's lr.
    gamma: multiplicative factor of the decay (required, as in torch).

  Returns:
    A `TorchSchedule` (`.momentum` None).

  Raises:
    ValueError: `base_lr` or `gamma` invalid.
  """
  base_lr = _core.check_lr("base_lr", base_lr)
  gamma = _core.check_number("gamma", gamma)
  return _core.from_scheduler(_ExponentialLR(base_lr, gamma))


class _PolynomialLR(_core.Scheduler):
  kind = _core.MULTIPLICATIVE
  name = "PolynomialLR"

  def __init__(self, base_lr: float, total_iters: int, power: float):
    self.base_lr, self.total_iters, self.power = base_lr, total_iters, power
    if total_iters == 0:
      self.reset_error = "PolynomialLR with total_iters=0 divides by total_iters (torch raises ZeroDivisionError)"

  def _remaining(self, k: Array) -> Array:
    """Torch's `1 - k / total_iters`."""
    return 1.0 - div(as_float(k), self.total_iters)

  def step(self, k: Array, lr: Array) -> Array:
    if self.total_iters == 0:
      return lr
    ratio = jnp.power(self._remaining(k) / self._remaining(k - 1), self.power)
    return jnp.where(k > self.total_iters, lr, lr * ratio)

  def reset(self, lr: Array) -> Array:
    return as_float(self.base_lr * (1.0 - min(self.total_iters, 0) / self.total_iters) ** self.power)

  def run(self, k: Array, lr: Array) -> Array:
    if self.total_iters == 0:
      return as_float(lr)
    # Each step's ratio shares its denominator with the previous step's numerator: the product
    # telescopes to (1 - min(k, T)/T) ** power, torch's own closed form.
    return lr * jnp.power(self._remaining(jnp.minimum(k, self.total_iters)), self.power)

  def check(self, k: int) -> None:
    if self.power < 0 and 1 <= self.total_iters <= k:
      raise ValueError(
        f"PolynomialLR with power={self.power} < 0 raises 0.0 to a negative power at step "
        f"total_iters={self.total_iters} (torch raises ZeroDivisionError there); under jit the lr is inf."
      )


def polynomial_lr(base_lr: float, total_iters: int = 5, power: float = 1.0) -> TorchSchedule:
  """`torch.optim.lr_scheduler.PolynomialLR`: `lr_t = base_lr * (1 - min(t, total_iters) / total_iters) ** power`.

  Zero from step `total_iters` on (for `power > 0`).

  Args:
    base_lr: the optimizer's lr.
    total_iters: number of steps of the decay, an integer >= 0. Default 5 (0: constant).
    power: power of the polynomial. Default 1.

  Returns:
    A `TorchSchedule` (`.momentum` None).

  Raises:
    ValueError: `base_lr`, `total_iters` or `power` invalid.
  """
  base_lr = _core.check_lr("base_lr", base_lr)
  total_iters = _core.check_int("total_iters", total_iters, 0)
  power = _core.check_number("power", power)
  return _core.from_scheduler(_PolynomialLR(base_lr, total_iters, power))


__all__ = [
  "constant_lr",
  "exponential_lr",
  "lambda_lr",
  "linear_lr",
  "multi_step_lr",
  "multiplicative_lr",
  "polynomial_lr",
  "step_lr",
]
