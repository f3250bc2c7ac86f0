"""ReduceLROnPlateau: torch's decision rule as pure, jit-safe functions of an explicit state."""

from __future__ import annotations

import dataclasses
import math
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradcore_jax.schedules import _core
from gradcore_jax.schedules._core import Array
from gradcore_jax.schedules._core import as_float


class PlateauState(NamedTuple):
  """ReduceLROnPlateau's state (torch's attributes of the same names).

  Attributes:
    lr: the current learning rate.
    best: the best metric so far (+inf in "min" mode, -inf in "max" mode before the first).
    num_bad_epochs: epochs since the last improvement (int32).
    cooldown_counter: epochs of cooldown left (int32).
    last_epoch: number of `step` calls (int32).
  """

  lr: Array
  best: Array
  num_bad_epochs: Array
  cooldown_counter: Array
  last_epoch: Array


@dataclasses.dataclass(frozen=True)
class ReduceLROnPlateau:
  """torch's `ReduceLROnPlateau` as `init`/`step`/`lr` functions (see `reduce_lr_on_plateau`).

  Build it with `reduce_lr_on_plateau`, which checks the fields and holds their defaults.

  Attributes:
    base_lr: the learning rate `init` starts from.
    mode: "min" (lower metrics are better) or "max".
    factor: the reduction factor applied to the lr, < 1.
    patience: the bad epochs tolerated before a reduction, an int >= 0.
    threshold: the significance threshold of an improvement.
    threshold_mode: "rel" (threshold relative to `best`) or "abs".
    cooldown: the epochs after a reduction during which bad epochs are not counted, an int >= 0.
    min_lr: the lower bound of the lr.
    eps: the smallest change of the lr applied; a smaller reduction is skipped.
  """

  base_lr: float
  mode: str
  factor: float
  patience: int
  threshold: float
  threshold_mode: str
  cooldown: int
  min_lr: float
  eps: float

  def init(self) -> PlateauState:
    """The state of a freshly built torch scheduler: lr = base_lr, best = the worst value."""
    worse = math.inf if self.mode == "min" else -math.inf
    zero = jnp.zeros([], jnp.int32)
    return PlateauState(as_float(self.base_lr), as_float(worse), zero, zero, zero)

  def _is_better(self, current: Array, best: Array) -> Array:
    if self.mode == "min" and self.threshold_mode == "rel":
      return current < best * (1.0 - self.threshold)
    if self.mode == "min":
      return current < best - self.threshold
    if self.threshold_mode == "rel":
      return current > best * (self.threshold + 1.0)
    return current > best + self.threshold

  def step(self, state: PlateauState, metric: Any) -> PlateauState:
    """torch's `scheduler.step(metric)`: one epoch's metric in, the next state out.

    An improvement (beyond the threshold) resets the count of bad epochs; during cooldown
    bad epochs are not counted; once they *exceed* `patience`, `lr <- max(lr * factor,
    min_lr)` unless that changes the lr by `eps` or less, and the cooldown starts. A NaN
    metric is a bad epoch, as in torch. jit-safe: no Python branch on values.

    Args:
      state: the current state.
      metric: a scalar (Python number or 0-d array).

    Returns:
      The new state.
    """
    if jnp.ndim(metric) != 0:
      raise ValueError(f"metric must be a scalar, got shape {jnp.shape(metric)}.")
    return _jitted_step(self, state, as_float(metric))

  def _step(self, state: PlateauState, current: Array) -> PlateauState:
    better = self._is_better(current, state.best)
    best = jnp.where(better, current, state.best)
    bad = jnp.where(better, 0, state.num_bad_epochs + 1)
    in_cooldown = state.cooldown_counter > 0
    cooldown_counter = jnp.where(in_cooldown, state.cooldown_counter - 1, state.cooldown_counter)
    bad = jnp.where(in_cooldown, 0, bad)
    reduce = bad > self.patience
    new_lr = jnp.maximum(state.lr * self.factor, self.min_lr)
    lr = jnp.where(reduce & (state.lr - new_lr > self.eps), new_lr, state.lr)
    cooldown_counter = jnp.where(reduce, self.cooldown, cooldown_counter)
    bad = jnp.where(reduce, 0, bad)
    return PlateauState(
      lr.astype(state.lr.dtype),
      best.astype(state.best.dtype),
      bad.astype(jnp.int32),
      cooldown_counter.astype(jnp.int32),
      state.last_epoch + 1,
    )

  def lr(self, state: PlateauState) -> Array:
    """The current learning rate (torch's `get_last_lr()[0]`)."""
    return state.lr


# One compilation per configuration (the frozen dataclass is the static key): an eager loop
# that steps once per epoch costs one dispatch per step, and under an outer `jit` it inlines.
_jitted_step = jax.jit(ReduceLROnPlateau._step, static_argnums=0)


def reduce_lr_on_plateau(
  base_lr: float,
  mode: str = "min",
  factor: float = 0.1,
  patience: int = 10,
  threshold: float = 1e-4,
  threshold_mode: str = "rel",
  cooldown: int = 0,
  min_lr: float = 0,
  eps: float = 1e-8,
) -> ReduceLROnPlateau:
  """`torch.optim.lr_scheduler.ReduceLROnPlateau`, driven by one metric value per epoch.

  `state = plateau.init()`, then once per epoch `state = plateau.step(state, metric)`
  (torch's `scheduler.step(metric)`), and `plateau.lr(state)` is the lr to use next.
  A metric is better than `best` if below `best * (1 - threshold)` ("min", "rel"),
  `best - threshold` ("min", "abs"), above `best * (1 + threshold)` ("max", "rel") or
  `best + threshold` ("max", "abs"). More than `patience` bad epochs in a row (not counting
  cooldown epochs) set `lr <- max(lr * factor, min_lr)` (ignored if the change is `<= eps`)
  and start `cooldown` epochs of cooldown.

  Args:
    base_lr: the optimizer's lr.
    mode: "min" or "max". Default "min".
    factor: the reduction factor, < 1. Default 0.1.
    patience: bad epochs tolerated before a reduction, an integer >= 0. Default 10.
    threshold: the significance threshold. Default 1e-4.
    threshold_mode: "rel" or "abs". Default "rel".
    cooldown: epochs to wait after a reduction, an integer >= 0. Default 0.
    min_lr: lower bound of the lr. Default 0.
    eps: minimal change of the lr. Default 1e-8.

  Returns:
    A `ReduceLROnPlateau` with `init()`, `step(state, metric)` and `lr(state)`.

  Raises:
    ValueError: torch's checks (`factor >= 1`, unknown `mode` or `threshold_mode`) and
      invalid numbers.
  """
  base_lr = _core.check_lr("base_lr", base_lr)
  if not _core.is_number(factor) or not factor < 1.0:
    raise ValueError(f"factor: Factor should be < 1.0, got {factor!r}.")
  if mode not in ("min", "max"):
    raise ValueError(f"mode {mode!r} is unknown! (expected 'min' or 'max').")
  if threshold_mode not in ("rel", "abs"):
    raise ValueError(f"threshold_mode: threshold mode {threshold_mode!r} is unknown! (expected 'rel' or 'abs').")
  patience = _core.check_int("patience", patience, 0)
  cooldown = _core.check_int("cooldown", cooldown, 0)
  return ReduceLROnPlateau(
    base_lr,
    mode,
    float(factor),
    patience,
    _core.check_number("threshold", threshold),
    threshold_mode,
    cooldown,
    _core.check_number("min_lr", min_lr),
    _core.check_number("eps", eps),
  )


__all__ = ["PlateauState", "ReduceLROnPlateau", "reduce_lr_on_plateau"]
