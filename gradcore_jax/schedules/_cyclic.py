"""Schedulers that cycle the lr and, inversely, the momentum: CyclicLR and OneCycleLR.

Both set the lr from closed forms every step (they are not chainable in torch), and both
can also set the optimizer's `momentum` (`betas[0]` for the Adam family); the schedule's
`.momentum` gives those values.
"""

from __future__ import annotations

import math
from typing import Any
from typing import Callable
from typing import Optional

import jax.numpy as jnp

from gradcore_jax._typing import ArrayLike
from gradcore_jax.schedules import _core
from gradcore_jax.schedules._core import Array
from gradcore_jax.schedules._core import TorchSchedule
from gradcore_jax.schedules._core import as_float
from gradcore_jax.schedules._core import div

_MODES = ("triangular", "triangular2", "exp_range")


class _CyclicLR(_core.Scheduler):
  kind = _core.ABSOLUTE
  name = "CyclicLR"
  shares_initial_lr = False  # torch replaces its base_lrs by its own base_lr

  def __init__(
    self,
    base_lr,
    max_lr,
    step_size_up,
    step_size_down,
    mode,
    gamma,
    scale_fn,
    scale_mode,
    cycle_momentum,
    base_momentum,
    max_momentum,
  ):
    self.base_lr, self.max_lr = base_lr, max_lr
    self.total_size = step_size_up + step_size_down
    self.step_ratio = step_size_up / self.total_size
    self.mode, self.gamma, self.scale_fn = mode, gamma, scale_fn
    if scale_fn is None:  # torch ignores scale_mode for its built-in modes
      scale_mode = "cycle" if mode in ("triangular", "triangular2") else "iterations"
    self.scale_mode = scale_mode
    self.has_momentum = cycle_momentum
    self.base_momentum, self.max_momentum = base_momentum, max_momentum

  def _shape(self, k: ArrayLike) -> tuple[Array, ArrayLike]:
    """Torch's `scale_factor` (the triangle, 0 -> 1 -> 0 over a cycle) and `scale_fn(...)` at step k."""
    k = jnp.asarray(k, jnp.int32)
    position = div(as_float(k), self.total_size)
    cycle = jnp.floor(1 + position)
    x = 1.0 + position - cycle
    factor = jnp.where(x <= self.step_ratio, div(x, self.step_ratio), div(x - 1, self.step_ratio - 1))
    if self.scale_fn is not None:
      scale = self.scale_fn(_core.as_int(cycle) if self.scale_mode == "cycle" else _core.as_int(k))
    elif self.mode == "triangular":
      scale = 1.0
    elif self.mode == "triangular2":
      scale = 1 / jnp.power(2.0, cycle - 1)
    else:
      scale = jnp.power(as_float(self.gamma), as_float(k))
    return factor, scale

  def _value(self, k: ArrayLike, base_lr: float) -> Array:
    factor, scale = self._shape(k)
    return base_lr + (self.max_lr - base_lr) * factor * scale

  def install(self, initial_lr: Optional[float]) -> float:
    # Torch sets the group's lr to base_lr before `setdefault("initial_lr", lr)`.
    return self.base_lr if initial_lr is None else initial_lr

  def constructed(self, lr: Array, initial_lr: float) -> Array:
    # The constructor's step runs before CyclicLR replaces base_lrs by its own base_lr.
    return self._value(0, initial_lr)

  def first(self, lr: Array) -> Array:
    return self._value(0, self.base_lr)

  def step(self, k: Array, lr: Array) -> Array:
    return self._value(k, self.base_lr)

  def reset(self, lr: Array) -> Array:
    return self._value(0, self.base_lr)

  def run(self, k: Array, lr: Array) -> Array:
    return jnp.where(k == 0, as_float(lr), self._value(k, self.base_lr))

  def momentum(self, k: Array) -> Array:
    factor, scale = self._shape(k)
    return self.max_momentum - (self.max_momentum - self.base_momentum) * factor * scale


def cyclic_lr(
  base_lr: float,
  max_lr: float,
  step_size_up: float = 2000,
  step_size_down: Optional[float] = None,
  mode: str = "triangular",
  gamma: float = 1.0,
  scale_fn: Optional[Callable[[Array], Any]] = None,
  scale_mode: str = "cycle",
  cycle_momentum: bool = True,
  base_momentum: float = 0.8,
  max_momentum: float = 0.9,
) -> TorchSchedule:
  """`torch.optim.lr_scheduler.CyclicLR`: the lr moves between `base_lr` and `max_lr` in triangles.

  With `C = step_size_up + step_size_down`, `cycle = floor(1 + t/C)`, `x = 1 + t/C - cycle` and
  the triangle `f = x / r` if `x <= r` else `(x - 1) / (r - 1)` (`r = step_size_up / C`):
  `lr_t = base_lr + (max_lr - base_lr) * f * s` and, if `cycle_momentum`,
  `momentum_t = max_momentum - (max_momentum - base_momentum) * f * s`, where the amplitude
  scale `s` is 1 ("triangular"), `1 / 2**(cycle - 1)` ("triangular2"), `gamma**t`
  ("exp_range"), or `scale_fn(cycle)` / `scale_fn(t)` per `scale_mode`.

  Here `base_lr` is CyclicLR's own `base_lr` argument (torch sets the optimizer's lr to it).

  Args:
    base_lr: lower lr boundary, a number >= 0.
    max_lr: upper lr boundary, a number >= 0.
    step_size_up: steps in the increasing half of a cycle, > 0. Default 2000.
    step_size_down: steps in the decreasing half, >= 0; None means `step_size_up`. Default None.
    mode: "triangular", "triangular2" or "exp_range" (ignored when `scale_fn` is given).
    gamma: base of "exp_range"'s scale `gamma**t`. Default 1.
    scale_fn: custom amplitude scale, a function of an integer array (the cycle number or the
      step, per `scale_mode`; int64 under x64; traced: write it with `jnp`). Default None.
    scale_mode: "cycle" or "iterations", used with `scale_fn`. Default "cycle".
    cycle_momentum: also give the momentum schedule `.momentum`. Default True.
    base_momentum: momentum at the lr's peak. Default 0.8.
    max_momentum: momentum at the lr's trough. Default 0.9.

  Returns:
    A `TorchSchedule`; `.momentum` is the momentum schedule when `cycle_momentum`.

  Raises:
    ValueError: an invalid `mode` without `scale_fn` (torch's check), or invalid
      sizes, lrs, momenta or `scale_mode`.
  """
  base_lr = _core.check_lr("base_lr", base_lr)
  max_lr = _core.check_lr("max_lr", max_lr)
  if not _core.is_number(step_size_up) or not 0 < step_size_up < math.inf:
    raise ValueError(f"step_size_up must be a number > 0 (torch divides by it), got {step_size_up!r}.")
  if step_size_down is None:
    step_size_down = step_size_up
  elif not _core.is_number(step_size_down) or not 0 <= step_size_down < math.inf:
    raise ValueError(f"step_size_down must be None or a number >= 0, got {step_size_down!r}.")
  if scale_fn is None and mode not in _MODES:
    raise ValueError(f"mode is invalid and scale_fn is None: mode must be one of {_MODES}, got {mode!r}.")
  gamma = _core.check_number("gamma", gamma)
  if scale_fn is not None:
    _core.check_callable("scale_fn", scale_fn)
  _core.check_choice("scale_mode", scale_mode, ("cycle", "iterations"))
  base_momentum = _core.check_number("base_momentum", base_momentum)
  max_momentum = _core.check_number("max_momentum", max_momentum)
  scheduler = _CyclicLR(
    base_lr,
    max_lr,
    float(step_size_up),
    float(step_size_down),
    mode,
    gamma,
    scale_fn,
    scale_mode,
    bool(cycle_momentum),
    base_momentum,
    max_momentum,
  )
  return _core.from_scheduler(scheduler)


class _OneCycleLR(_core.Scheduler):
  kind = _core.ABSOLUTE
  name = "OneCycleLR"
  shares_initial_lr = False

  def __init__(
    self,
    max_lr,
    total_steps,
    pct_start,
    anneal_strategy,
    cycle_momentum,
    base_momentum,
    max_momentum,
    div_factor,
    final_div_factor,
    three_phase,
  ):
    self.total_steps, self.anneal_strategy = total_steps, anneal_strategy
    self.initial_lr = max_lr / div_factor
    self.min_lr = self.initial_lr / final_div_factor
    self.base_lr = self.initial_lr
    self.has_momentum = cycle_momentum
    up_end = float(pct_start * total_steps) - 1
    lr = {"initial": self.initial_lr, "max": max_lr, "min": self.min_lr}
    m = {"max": max_momentum, "base": base_momentum}
    # (end_step, start_lr, end_lr, start_momentum, end_momentum), as torch's _schedule_phases.
    if three_phase:
      self.phases = [
        (up_end, lr["initial"], lr["max"], m["max"], m["base"]),
        (float(2 * pct_start * total_steps) - 2, lr["max"], lr["initial"], m["base"], m["max"]),
        (total_steps - 1, lr["initial"], lr["min"], m["max"], m["max"]),
      ]
    else:
      self.phases = [
        (up_end, lr["initial"], lr["max"], m["max"], m["base"]),
        (total_steps - 1, lr["max"], lr["min"], m["base"], m["max"]),
      ]

  def _anneal(self, start: float, end: float, pct: Array) -> Array:
    if self.anneal_strategy == "cos":
      return end + (start - end) / 2.0 * (jnp.cos(math.pi * pct) + 1)
    return (end - start) * pct + start

  def _phase(self, k: int) -> tuple[float, float]:
    """(start_step, end_step) of the phase torch picks at step k."""
    start = 0.0
    for i, phase in enumerate(self.phases):
      if k <= phase[0] or i == len(self.phases) - 1:
        return start, phase[0]
      start = phase[0]
    raise AssertionError("unreachable")

  def _values(self, k: ArrayLike, column: int) -> Array:
    """Torch's phase choice and annealing at step k; NaN where torch raises."""
    k = jnp.asarray(k, jnp.int32)
    step = as_float(k)
    out, chosen, start = jnp.full_like(step, jnp.nan), jnp.zeros(step.shape, bool), 0.0
    for i, phase in enumerate(self.phases):
      end = phase[0]
      take = ~chosen if i == len(self.phases) - 1 else (step <= end) & ~chosen
      if end != start:  # a phase of zero length divides by zero in torch: left NaN
        value = self._anneal(phase[column], phase[column + 1], div(step - start, end - start))
        out = jnp.where(take, value, out)
      chosen, start = chosen | take, end
    return jnp.where(k > self.total_steps, jnp.nan, out)

  def install(self, initial_lr: Optional[float]) -> float:
    return self.initial_lr  # torch overwrites the group's initial_lr with max_lr / div_factor

  def first(self, lr: Array) -> Array:
    return self._values(0, 1)

  def step(self, k: Array, lr: Array) -> Array:
    return self._values(k, 1)

  def reset(self, lr: Array) -> Array:
    return self._values(0, 1)

  def run(self, k: Array, lr: Array) -> Array:
    return jnp.where(k == 0, as_float(lr), self._values(k, 1))

  def momentum(self, k: Array) -> Array:
    return self._values(k, 3)

  def check(self, k: int) -> None:
    if k > self.total_steps:
      raise ValueError(
        f"Tried to step {k} times. The specified number of total steps is {self.total_steps} "
        "(one_cycle_lr is defined for counts 0..total_steps; under jit a later count gives NaN)."
      )
    start, end = self._phase(k)
    if end == start:
      raise ValueError(
        f"one_cycle_lr: at step {k} torch's phase from step {start} to {end} has zero length and torch raises "
        f"ZeroDivisionError; choose another pct_start or total_steps (pct_start * total_steps = "
        f"{self.phases[0][0] + 1})."
      )


def one_cycle_lr(
  max_lr: float,
  total_steps: Optional[int] = None,
  epochs: Optional[int] = None,
  steps_per_epoch: Optional[int] = None,
  pct_start: float = 0.3,
  anneal_strategy: str = "cos",
  cycle_momentum: bool = True,
  base_momentum: float = 0.85,
  max_momentum: float = 0.95,
  div_factor: float = 25.0,
  final_div_factor: float = 1e4,
  three_phase: bool = False,
) -> TorchSchedule:
  """`torch.optim.lr_scheduler.OneCycleLR`: warm up to `max_lr`, then anneal far below the start.

  The lr starts at `initial = max_lr / div_factor`, rises to `max_lr` until step
  `pct_start * total_steps - 1`, then falls to `initial / final_div_factor` at step
  `total_steps - 1` (with `three_phase`, it first falls back to `initial` at step
  `2 * pct_start * total_steps - 2`). Each phase anneals `end + (start - end) * (1 + cos(pi p))
  / 2` ("cos") or `start + (end - start) * p` ("linear") over its fraction `p`; the momentum
  moves inversely between `max_momentum` and `base_momentum`.

  Torch allows `total_steps` scheduler steps, so the schedule is defined for counts
  0..total_steps. A concrete larger count raises torch's ValueError; under `jit` it gives NaN.
  A phase of zero length (e.g. `pct_start * total_steps == 1`) raises where torch raises
  ZeroDivisionError (NaN under `jit`).

  Args:
    max_lr: the peak lr, a number >= 0 (the optimizer's own lr is not used, as in torch).
    total_steps: total number of steps, a positive integer; or give `epochs` and `steps_per_epoch`.
    epochs: with `steps_per_epoch`, `total_steps = epochs * steps_per_epoch` (if `total_steps` is None).
    steps_per_epoch: see `epochs`.
    pct_start: fraction of the steps spent rising, a float in [0, 1]. Default 0.3.
    anneal_strategy: "cos" or "linear". Default "cos".
    cycle_momentum: also give the momentum schedule `.momentum`. Default True.
    base_momentum: momentum at the lr's peak. Default 0.85.
    max_momentum: momentum at the start and the end. Default 0.95.
    div_factor: `initial = max_lr / div_factor`. Default 25.
    final_div_factor: `min_lr = initial / final_div_factor`. Default 1e4.
    three_phase: use the paper's three phases instead of fastai's two. Default False.

  Returns:
    A `TorchSchedule`; `.momentum` is the momentum schedule when `cycle_momentum`.

  Raises:
    ValueError: torch's checks of `total_steps` / `epochs` / `steps_per_epoch`, `pct_start`
      and `anneal_strategy`, and a zero `div_factor` or `final_div_factor`.
  """
  if total_steps is not None:
    if not _core.is_int(total_steps) or total_steps <= 0:
      raise ValueError(f"total_steps: Expected positive integer total_steps, but got {total_steps!r}.")
  elif epochs is not None and steps_per_epoch is not None:
    if not _core.is_int(epochs) or epochs <= 0:
      raise ValueError(f"epochs: Expected positive integer epochs, but got {epochs!r}.")
    if not _core.is_int(steps_per_epoch) or steps_per_epoch <= 0:
      raise ValueError(f"steps_per_epoch: Expected positive integer steps_per_epoch, but got {steps_per_epoch!r}.")
    total_steps = epochs * steps_per_epoch
  else:
    raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch).")
  if not isinstance(pct_start, float) or not 0 <= pct_start <= 1:
    raise ValueError(f"pct_start: Expected float between 0 and 1 pct_start, but got {pct_start!r}.")
  _core.check_choice("anneal_strategy", anneal_strategy, ("cos", "linear"))
  max_lr = _core.check_lr("max_lr", max_lr)
  base_momentum = _core.check_number("base_momentum", base_momentum)
  max_momentum = _core.check_number("max_momentum", max_momentum)
  for name, value in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
    if _core.check_number(name, value) == 0:
      raise ValueError(f"{name} must be non-zero (torch divides by it), got {value!r}.")
  scheduler = _OneCycleLR(
    max_lr,
    int(total_steps),
    pct_start,
    anneal_strategy,
    bool(cycle_momentum),
    base_momentum,
    max_momentum,
    float(div_factor),
    float(final_div_factor),
    bool(three_phase),
  )
  return _core.from_scheduler(scheduler)


__all__ = ["cyclic_lr", "one_cycle_lr"]
