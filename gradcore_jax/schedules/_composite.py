"""Composites: SequentialLR, ChainedScheduler, and `per_epoch` (a scheduler stepped once per epoch).

Torch's composites share one param group between their schedulers, and that is where their
quirks come from: every sub-scheduler's constructor runs its first step on the group's lr,
they all read the group's shared `initial_lr`, and a chainable scheduler maps whatever lr
the previous one left. The composites here replay exactly that: sub-schedulers are
"constructed" in list order on one simulated group, then stepped as torch steps them.
"""

from __future__ import annotations

import bisect
import itertools
from typing import Any
from typing import Callable
from typing import Optional
from typing import Sequence

import jax.numpy as jnp
from jax import lax

from gradcore_jax.schedules import _core
from gradcore_jax.schedules._core import Array
from gradcore_jax.schedules._core import TorchSchedule
from gradcore_jax.schedules._core import as_float


def _schedulers(schedules: Sequence[TorchSchedule], owner: str) -> list[_core.Scheduler]:
  if isinstance(schedules, TorchSchedule) or not isinstance(schedules, (list, tuple)):
    raise TypeError(f"{owner}: schedules must be a list of schedules, got {schedules!r}.")
  if not schedules:
    raise ValueError(f"{owner} expects at least one scheduler, but got no scheduler (schedules is empty).")
  return [_core.scheduler_of(s, f"{owner}: schedules[{i}]") for i, s in enumerate(schedules)]


def _install(schedulers: list[_core.Scheduler], owner: str) -> float:
  """Torch's constructors, in list order, on one param group: the group's final `initial_lr`.

  Every scheduler but CyclicLR and OneCycleLR takes its `base_lrs` from the group's
  `initial_lr` (the optimizer's lr when the first scheduler was built), so each must have
  been built with that `base_lr`; a different one could not happen in torch.
  """
  initial_lr: Optional[float] = None
  for i, scheduler in enumerate(schedulers):
    initial_lr = scheduler.install(initial_lr)
    if scheduler.shares_initial_lr and scheduler.base_lr != initial_lr:
      raise ValueError(
        f"{owner}: schedules[{i}] ({scheduler.name}) was built with base_lr={scheduler.base_lr}, but in torch it "
        f"shares the optimizer's initial lr {initial_lr}; build every schedule with the optimizer's lr."
      )
  if initial_lr is None:  # `_schedulers` already refused an empty list
    raise ValueError(f"{owner} expects at least one scheduler, but got no scheduler (schedules is empty).")
  return initial_lr


def _constructed_lr(schedulers: list[_core.Scheduler]) -> Array:
  """The group's lr after all constructors ran (each one's first step, in order)."""
  first = schedulers[0]  # never empty (`_schedulers`)
  initial_lr = first.install(None)
  lr = first.constructed(as_float(first.base_lr), initial_lr)
  for scheduler in schedulers[1:]:
    initial_lr = scheduler.install(initial_lr)
    lr = scheduler.constructed(as_float(lr), initial_lr)
  return lr


class _Sequential(_core.Program):
  def __init__(self, schedulers: list[_core.Scheduler], milestones: list[int], initial_lr: float):
    self.schedulers, self.milestones, self.initial_lr = schedulers, milestones, initial_lr
    self.first_index = bisect.bisect_right(milestones, 0)
    # Schedulers whose segment [milestones[i-1], milestones[i]) is non-empty and reached at some step.
    n = len(schedulers)
    self.active = [
      i for i in range(self.first_index, n) if i == self.first_index or i == n - 1 or milestones[i - 1] < milestones[i]
    ]
    self.has_momentum = any(s.has_momentum for s in schedulers)

  def _segment(self, e: int) -> tuple[int, int]:
    """(scheduler index, that scheduler's own step count) at SequentialLR step e, for a Python int e."""
    i = bisect.bisect_right(self.milestones, e)
    return (i, e) if i == self.first_index else (i, e - self.milestones[i - 1])

  def _local(self, i: int, e: Any) -> Array:
    """Scheduler i's own step count at SequentialLR step e, clipped to its segment (so that no
    scheduler loops past its segment when another one is active)."""
    start = 0 if i == self.first_index else self.milestones[i - 1]
    local = jnp.maximum(jnp.asarray(e, jnp.int32) - start, 0)
    if i < len(self.schedulers) - 1:
      local = jnp.minimum(local, max(self.milestones[i] - 1 - start, 0))
    return local

  def _segment_lr(self, i: int, e: Any) -> Array:
    scheduler = self.schedulers[i]
    if i == self.first_index:
      return scheduler.run(self._local(i, e), scheduler.first(as_float(self.initial_lr)))
    start = self.milestones[i - 1]
    incoming = self._lr_at(start - 1) if scheduler.reads_lr_on_reset else as_float(self.initial_lr)
    return scheduler.run(self._local(i, e), scheduler.reset(incoming))

  def _lr_at(self, e: int) -> Array:
    """The lr at a fixed step e (what a scheduler that reads the incoming lr starts from)."""
    i = self.first_index if e <= 0 else bisect.bisect_right(self.milestones, e)
    return self._segment_lr(i, jnp.asarray(e, jnp.int32))

  def _select(self, e: Array, value_of: Callable[[int], Array]) -> Array:
    index = jnp.searchsorted(jnp.asarray(self.milestones, jnp.int32), e, side="right") if self.milestones else 0
    index = jnp.maximum(index, self.first_index)
    out = value_of(self.active[-1])
    for i in reversed(self.active[:-1]):
      out = jnp.where(index == i, value_of(i), out)
    return out

  def lr(self, k: Array) -> Array:
    return self._select(k, lambda i: self._segment_lr(i, k))

  def _momentum_of(self, i: int, e: Any) -> Array:
    scheduler = self.schedulers[i]
    if scheduler.has_momentum:
      return scheduler.momentum(self._local(i, e))
    if i == self.first_index:  # what the constructors left: the last momentum-cycling one's first step
      last = [s for s in self.schedulers if s.has_momentum][-1]
      return last.momentum(jnp.zeros([], jnp.int32))
    return self._momentum_at(self.milestones[i - 1] - 1)

  def _momentum_at(self, e: int) -> Array:
    i = self.first_index if e <= 0 else bisect.bisect_right(self.milestones, e)
    return self._momentum_of(i, jnp.asarray(e, jnp.int32))

  def momentum(self, k: Array) -> Array:
    return self._select(k, lambda i: self._momentum_of(i, k))

  def check(self, k: int) -> None:
    i, local = self._segment(k) if k > 0 else (self.first_index, 0)
    self.schedulers[i].check(local)


def sequential_lr(schedules: Sequence[TorchSchedule], milestones: Sequence[int]) -> TorchSchedule:
  """`torch.optim.lr_scheduler.SequentialLR`: `schedules[i]` runs from `milestones[i-1]` to `milestones[i]`.

  Build every sub-schedule with the optimizer's lr as its `base_lr` (torch's schedulers
  all read the optimizer's `initial_lr`), in the order torch would construct them. Torch's
  behaviour, reproduced:

  * at step `milestones[i-1]` torch calls `schedules[i]._update_lr(0)`, which restarts it
    from its closed form at 0 (`base_lr` times its first factor); `multiplicative_lr` and
    `swa_lr` have no closed form and instead map the lr the previous schedule left (so
    `swa_lr` anneals from the lr reached at the milestone);
  * `schedules[i]` then counts its own steps from that milestone;
  * a schedule whose `base_lr` is not the group's `initial_lr` is refused (ValueError);
    `one_cycle_lr` overwrites `initial_lr` with `max_lr / div_factor` for the schedules
    built after it, and `cyclic_lr` uses its own `base_lr`, as in torch;
  * the momentum (if any sub-schedule cycles it) is the latest one set, as torch's param group.

  Args:
    schedules: schedules made by this module's torch schedulers (not composites, not
      `per_epoch`: torch's SequentialLR cannot step a nested composite at a milestone either).
    milestones: `len(schedules) - 1` integers, non-decreasing.

  Returns:
    A `TorchSchedule`; `.momentum` is set when a sub-schedule cycles momentum.

  Raises:
    ValueError: torch's checks (no schedules; wrong number of milestones), decreasing or
      non-integer milestones, a `base_lr` torch could not have, or a sub-schedule torch
      cannot restart at its milestone (LinearLR/PolynomialLR with `total_iters=0` divide by
      zero there).
    TypeError: a sub-schedule that is not a single torch scheduler.
  """
  schedulers = _schedulers(schedules, "SequentialLR")
  milestones = list(milestones)
  if len(milestones) != len(schedulers) - 1:
    raise ValueError(
      "milestones: Sequential Schedulers expects number of schedulers provided to be one more than the number of "
      f"milestone points, but got number of schedulers {len(schedulers)} and the number of milestones to be "
      f"equal to {len(milestones)}."
    )
  for m in milestones:
    if not _core.is_int(m):
      raise ValueError(f"milestones must be integers, got {m!r}.")
  if any(b < a for a, b in itertools.pairwise(milestones)):
    raise ValueError(f"milestones must be non-decreasing, got {milestones}.")
  milestones = [max(min(int(m), _core.INT32_MAX), -_core.INT32_MAX) for m in milestones]  # counts are int32
  initial_lr = _install(schedulers, "SequentialLR")
  program = _Sequential(schedulers, milestones, initial_lr)
  for i in program.active:
    if i != program.first_index and schedulers[i].reset_error:
      raise ValueError(
        f"SequentialLR: schedules[{i}] cannot start at milestone {milestones[i - 1]}: {schedulers[i].reset_error}."
      )
  program.check(0)
  return _core.make_schedule("SequentialLR", program)


class _Chained(_core.Program):
  def __init__(self, schedulers: list[_core.Scheduler]):
    self.schedulers = schedulers
    momentum = [s for s in schedulers if s.has_momentum]
    self.momentum_scheduler = momentum[-1] if momentum else None
    self.has_momentum = bool(momentum)
    absolute = [i for i, s in enumerate(schedulers) if s.kind == _core.ABSOLUTE]
    self.last_absolute = absolute[-1] if absolute else None

  def lr(self, k: Array) -> Array:
    start = _constructed_lr(self.schedulers)
    if self.last_absolute is not None:
      # The last absolute scheduler sets the lr at every step; only the ones after it map it.
      step = jnp.maximum(k, 1)
      lr = self.schedulers[self.last_absolute].step(step, start)
      for scheduler in self.schedulers[self.last_absolute + 1 :]:
        lr = scheduler.step(step, lr)
      return jnp.where(k == 0, start, lr)
    if all(s.kind == _core.MULTIPLICATIVE for s in self.schedulers):
      # Each step multiplies the lr by every scheduler's factor: the products factor out.
      lr = start
      for scheduler in self.schedulers:
        lr = scheduler.run(k, lr)
      return lr

    def one_step(j, lr):
      for scheduler in self.schedulers:
        lr = scheduler.step(j, lr).astype(start.dtype)
      return lr

    return lax.fori_loop(1, k + 1, one_step, start)

  def momentum(self, k: Array) -> Array:
    if self.momentum_scheduler is None:
      raise NotImplementedError("no scheduler of this chain sets the momentum")
    return self.momentum_scheduler.momentum(k)

  def check(self, k: int) -> None:
    for scheduler in self.schedulers:
      scheduler.check(k)


def chained_scheduler(schedules: Sequence[TorchSchedule]) -> TorchSchedule:
  """`torch.optim.lr_scheduler.ChainedScheduler`: every schedule steps, in list order, on the same lr.

  Build every sub-schedule with the optimizer's lr as its `base_lr`, in the order torch
  would construct them. As in torch, each constructor's first step acts on the lr the
  previous one left (two warm-up factors multiply), each step applies every scheduler's
  map in order, and a non-chainable scheduler (`lambda_lr`, `cyclic_lr`, `one_cycle_lr`,
  `cosine_annealing_warm_restarts`) overwrites the lr, so only those after it still act.

  Cost: O(1) per evaluation when the chain has a non-chainable member or only
  multiplicative ones (`multiplicative_lr` aside, which loops); otherwise (a chain with
  `cosine_annealing_lr` or `swa_lr`, whose maps add constants) torch's step-by-step
  recursion runs in a `lax.fori_loop`: O(count) per evaluation.

  Args:
    schedules: schedules made by this module's torch schedulers (not composites, not `per_epoch`).

  Returns:
    A `TorchSchedule`; `.momentum` follows the last sub-schedule that cycles momentum.

  Raises:
    ValueError: no schedules (torch's check), or a `base_lr` torch could not have.
    TypeError: a sub-schedule that is not a single torch scheduler.
  """
  schedulers = _schedulers(schedules, "ChainedScheduler")
  _install(schedulers, "ChainedScheduler")
  program = _Chained(schedulers)
  program.check(0)
  return _core.make_schedule("ChainedScheduler", program)


class _PerEpoch(_core.Program):
  def __init__(
    self,
    lr: Callable[[Array], Array],
    momentum: Optional[Callable[[Array], Array]],
    steps: int,
    check: Callable[[int], None],
  ):
    self.lr_fn, self.momentum_fn, self.steps, self.check_fn = lr, momentum, steps, check
    self.has_momentum = momentum is not None

  def lr(self, k: Array) -> Array:
    return self.lr_fn(k // self.steps)

  def momentum(self, k: Array) -> Array:
    if self.momentum_fn is None:
      raise NotImplementedError("the schedule sets no momentum")
    return self.momentum_fn(k // self.steps)

  def check(self, k: int) -> None:
    self.check_fn(k // self.steps)


def per_epoch(schedule: Callable[[Array], Array], steps_per_epoch: int) -> TorchSchedule:
  """A scheduler that the torch recipe steps once per epoch, as a schedule of the update count.

  `per_epoch(s, n)(count) = s(count // n)`: update `count` (0-based) falls in epoch
  `count // n`, after that many `scheduler.step()` calls. The momentum schedule, if any,
  is carried through the same way.

  Args:
    schedule: a schedule of this module (or any callable `epoch -> lr`; its `.momentum`,
      if it has one, is carried through).
    steps_per_epoch: updates per epoch, an integer >= 1.

  Returns:
    A `TorchSchedule` of the update count.

  Raises:
    ValueError: `steps_per_epoch` invalid.
    TypeError: `schedule` is not callable.
  """
  _core.check_callable("schedule", schedule)
  steps_per_epoch = _core.check_int("steps_per_epoch", steps_per_epoch, 1)
  name = getattr(schedule, "name", getattr(schedule, "__name__", "schedule"))
  program = getattr(schedule, "_program", None)
  if isinstance(schedule, TorchSchedule) and isinstance(program, _core.Program):
    inner = _PerEpoch(program.lr, program.momentum if program.has_momentum else None, steps_per_epoch, program.check)
  else:
    momentum: Optional[Callable[[Array], Array]] = getattr(schedule, "momentum", None)
    inner = _PerEpoch(schedule, momentum if callable(momentum) else None, steps_per_epoch, lambda k: None)
  return _core.make_schedule(f"per_epoch({name})", inner)


__all__ = ["chained_scheduler", "per_epoch", "sequential_lr"]
