"""Cosine-shaped schedulers: CosineAnnealingLR, CosineAnnealingWarmRestarts and `swa_utils.SWALR`."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from gradcore_jax._typing import ArrayLike
from gradcore_jax.schedules import _core
from gradcore_jax.schedules._core import Array
from gradcore_jax.schedules._core import TorchSchedule
from gradcore_jax.schedules._core import as_float
from gradcore_jax.schedules._core import div


class _CosineAnnealingLR(_core.Scheduler):
  kind = _core.AFFINE
  name = "CosineAnnealingLR"

  def __init__(self, base_lr: float, T_max: int, eta_min: float):
    self.base_lr, self.T_max, self.eta_min = base_lr, T_max, eta_min
    # What torch adds to the lr on the step after each minimum (t = T_max + 1, 3*T_max + 1, ...).
    self.restart = (base_lr - eta_min) * (1 - math.cos(math.pi / T_max)) / 2

  def _one_plus_cos(self, k: Array) -> Array:
    """Torch's `1 + cos(pi * k / T_max)`."""
    return 1 + jnp.cos(div(math.pi * as_float(k), self.T_max))

  def step(self, k: Array, lr: Array) -> Array:
    after_minimum = (k - 1 - self.T_max) % (2 * self.T_max) == 0
    ratio = self._one_plus_cos(k) / self._one_plus_cos(k - 1)
    return jnp.where(after_minimum, lr + self.restart, ratio * (lr - self.eta_min) + self.eta_min)

  def reset(self, lr: Array) -> Array:
    return as_float(self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * 0 / self.T_max)) / 2)

  def run(self, k: Array, lr: Array) -> Array:
    # Until T_max the ratios telescope: lr_k - eta = (lr_0 - eta) * (1 + cos(pi k/T)) / 2. At each
    # minimum 1 + cos = 0 wipes the past; torch then adds `restart`, and the ratios telescope
    # again from there: lr_k - eta = restart * (1 + cos(pi k/T)) / (1 + cos(pi s/T)), s the step
    # after the latest minimum. Past T_max the lr climbs back to base_lr, as torch's does.
    one_plus_cos = self._one_plus_cos(k)
    descent = self.eta_min + (lr - self.eta_min) * one_plus_cos / 2
    period = 2 * self.T_max
    after_minimum = self.T_max + 1 + period * ((k - self.T_max - 1) // period)
    later = self.eta_min + self.restart * one_plus_cos / self._one_plus_cos(after_minimum)
    return jnp.where(k <= self.T_max, descent, later)


def cosine_annealing_lr(base_lr: float, T_max: int, eta_min: float = 0.0) -> TorchSchedule:
  """`torch.optim.lr_scheduler.CosineAnnealingLR`: `eta_min + (base_lr - eta_min) * (1 + cos(pi t / T_max)) / 2`.

  Torch runs the recursive form `lr_t = eta_min + (lr_{t-1} - eta_min) * (1 + cos(pi t/T)) /
  (1 + cos(pi (t-1)/T))`, adding `(base_lr - eta_min) * (1 - cos(pi/T)) / 2` on the step
  after each minimum; the closed form here follows that recursion (also past `T_max`,
  where the lr rises back to `base_lr` and keeps oscillating with period `2 * T_max`).

  Past the first minimum with `eta_min > 0`, torch's recursion rounds the small
  `lr - eta_min` to the ulp of `eta_min` and then scales it up by up to `~4 T_max**2 / pi**2`,
  so its own values carry a relative rounding error of about `1e-16 * 4 T_max**2 / pi**2`
  (3e-13 at `T_max = 80`, 2e-12 at 400); the closed form here has none. Before `T_max` (the
  usual `T_max = total steps`) the two agree to ~1e-15.

  Args:
    base_lr: the optimizer's lr.
    T_max: half-period in steps, an integer >= 1 (torch divides by it).
    eta_min: minimum learning rate. Default 0.

  Returns:
    A `TorchSchedule` (`.momentum` None).

  Raises:
    ValueError: `base_lr`, `T_max` or `eta_min` invalid.
  """
  base_lr = _core.check_lr("base_lr", base_lr)
  T_max = _core.check_int("T_max", T_max, 1)
  eta_min = _core.check_number("eta_min", eta_min)
  return _core.from_scheduler(_CosineAnnealingLR(base_lr, T_max, eta_min))


class _CosineAnnealingWarmRestarts(_core.Scheduler):
  kind = _core.ABSOLUTE
  name = "CosineAnnealingWarmRestarts"

  def __init__(self, base_lr: float, T_0: int, T_mult: int, eta_min: float):
    self.base_lr, self.T_0, self.T_mult, self.eta_min = base_lr, T_0, T_mult, eta_min
    if T_mult > 1:  # cycle n starts at T_0 * (T_mult**n - 1) / (T_mult - 1) and lasts T_0 * T_mult**n
      starts, lengths = [0], [T_0]
      while starts[-1] + lengths[-1] <= _core.INT32_MAX:
        starts.append(starts[-1] + lengths[-1])
        lengths.append(lengths[-1] * T_mult)
      self.starts = np.asarray(starts, np.int32)
      self.lengths = np.asarray(lengths, np.float64)

  def _value(self, k: ArrayLike) -> Array:
    """`eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2` with torch's T_cur, T_i."""
    k = jnp.asarray(k, jnp.int32)
    if self.T_mult == 1:
      t_cur, t_i = k % self.T_0, as_float(self.T_0)
    else:
      cycle = jnp.sum(k >= self.starts[1:])
      t_cur, t_i = k - jnp.asarray(self.starts)[cycle], as_float(self.lengths)[cycle]
    return self.eta_min + (self.base_lr - self.eta_min) * (1 + jnp.cos(div(math.pi * as_float(t_cur), t_i))) / 2

  def first(self, lr: Array) -> Array:
    return self._value(0)

  def step(self, k: Array, lr: Array) -> Array:
    return self._value(k)

  def reset(self, lr: Array) -> Array:
    return self._value(0)

  def run(self, k: Array, lr: Array) -> Array:
    return jnp.where(k == 0, as_float(lr), self._value(k))


def cosine_annealing_warm_restarts(base_lr: float, T_0: int, T_mult: int = 1, eta_min: float = 0.0) -> TorchSchedule:
  """`torch.optim.lr_scheduler.CosineAnnealingWarmRestarts` (SGDR).

  `lr_t = eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2`, where `T_cur` counts
  steps since the last restart and the cycle length `T_i` starts at `T_0` and is multiplied
  by `T_mult` at each restart. A closed form, as torch's.

  Args:
    base_lr: the optimizer's lr.
    T_0: length of the first cycle, a positive integer.
    T_mult: growth factor of the cycle length, an integer >= 1. Default 1.
    eta_min: minimum learning rate (float or int). Default 0.

  Returns:
    A `TorchSchedule` (`.momentum` None).

  Raises:
    ValueError: torch's checks of `T_0`, `T_mult` and `eta_min`, or `base_lr` invalid.
  """
  base_lr = _core.check_lr("base_lr", base_lr)
  if not _core.is_int(T_0) or T_0 <= 0:
    raise ValueError(f"T_0: Expected positive integer T_0, but got {T_0!r}.")
  if not _core.is_int(T_mult) or T_mult < 1:
    raise ValueError(f"T_mult: Expected integer T_mult >= 1, but got {T_mult!r}.")
  if not _core.is_number(eta_min):
    raise ValueError(f"eta_min: Expected float or int eta_min, but got {eta_min!r} of type {type(eta_min).__name__}.")
  return _core.from_scheduler(_CosineAnnealingWarmRestarts(base_lr, int(T_0), int(T_mult), float(eta_min)))


class _SWALR(_core.Scheduler):
  kind = _core.AFFINE
  name = "SWALR"
  reads_lr_on_reset = True

  def __init__(self, base_lr: float, swa_lr: float, anneal_epochs: int, anneal_strategy: str):
    self.base_lr, self.swa_lr, self.anneal_epochs, self.strategy = base_lr, swa_lr, anneal_epochs, anneal_strategy

  def _alpha(self, step: Array) -> Array:
    """Torch's `anneal_func(max(0, min(1, step / max(1, anneal_epochs))))`."""
    t = jnp.clip(div(as_float(step), max(1, self.anneal_epochs)), 0.0, 1.0)
    return (1 - jnp.cos(math.pi * t)) / 2 if self.strategy == "cos" else t

  def _step_index(self, k: Array) -> Array:
    return jnp.maximum(k, 1) if self.anneal_epochs == 0 else jnp.asarray(k)

  def step(self, k: Array, lr: Array) -> Array:
    # Torch recovers the lr it started from by inverting the previous step's blend, then blends again.
    s = self._step_index(k)
    previous, alpha = self._alpha(s - 1), self._alpha(s)
    start = jnp.where(previous == 1, self.swa_lr, (lr - previous * self.swa_lr) / (1 - previous))
    return self.swa_lr * alpha + start * (1 - alpha)

  def first(self, lr: Array) -> Array:
    return self.step(jnp.zeros([], jnp.int32), lr)

  def reset(self, lr: Array) -> Array:
    return self.first(lr)

  def run(self, k: Array, lr: Array) -> Array:
    # `lr` is the lr torch starts blending from (step 0 leaves it unchanged unless anneal_epochs=0,
    # which sets swa_lr at once); every later step blends the same start with swa_lr.
    alpha = self._alpha(self._step_index(k))
    return jnp.where(k == 0, as_float(lr), self.swa_lr * alpha + lr * (1 - alpha))


def swa_lr(base_lr: float, swa_lr: float, anneal_epochs: int = 10, anneal_strategy: str = "cos") -> TorchSchedule:
  """`torch.optim.swa_utils.SWALR`: anneal from the current lr to `swa_lr` over `anneal_epochs` steps, then hold.

  `lr_t = swa_lr * a(t) + lr_0 * (1 - a(t))` with `a(t) = (1 - cos(pi * min(t/E, 1))) / 2`
  ("cos") or `min(t/E, 1)` ("linear"), `E = anneal_epochs`; `lr_0` is the lr when SWALR
  starts (`base_lr` standalone; the previous scheduler's last lr inside `sequential_lr`).
  `anneal_epochs=0` switches to `swa_lr` at once.

  Args:
    base_lr: the optimizer's lr.
    swa_lr: the lr to anneal to, a number >= 0.
    anneal_epochs: number of steps of the annealing, an integer >= 0. Default 10.
    anneal_strategy: "cos" or "linear". Default "cos".

  Returns:
    A `TorchSchedule` (`.momentum` None).

  Raises:
    ValueError: torch's checks of `anneal_strategy` and `anneal_epochs`, or a bad lr.
  """
  base_lr = _core.check_lr("base_lr", base_lr)
  swa_value = _core.check_lr("swa_lr", swa_lr)
  _core.check_choice("anneal_strategy", anneal_strategy, ("cos", "linear"))
  if not _core.is_int(anneal_epochs) or anneal_epochs < 0:
    raise ValueError(f"anneal_epochs must be equal or greater than 0, got {anneal_epochs!r}.")
  return _core.from_scheduler(_SWALR(base_lr, swa_value, int(anneal_epochs), anneal_strategy))


__all__ = ["cosine_annealing_lr", "cosine_annealing_warm_restarts", "swa_lr"]
