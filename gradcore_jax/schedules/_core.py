"""What every torch scheduler shares: the param group's lr as a sequence of maps, and the schedule object.

A `torch.optim.lr_scheduler` owns no learning rate of its own: it rewrites the optimizer's
`param_group["lr"]` each time `get_lr()` runs, with `last_epoch = k`. The constructor runs it
once with `k = 0` ("initial step"), then every `scheduler.step()` runs it with `k = 1, 2, ...`.
Most schedulers are *chainable*: they multiply (or otherwise map) the group's current lr,
so what a scheduler does depends on what the group's lr was. `Scheduler` writes each
torch scheduler as those maps of the current lr, in torch's arithmetic:

* `first(lr)`: the constructor's step (`k = 0`, torch's `_is_initial` mode);
* `step(k, lr)`: step `k >= 1`;
* `reset(lr)`: what SequentialLR's milestone step (`_update_lr(0)`) does to it;
* `run(k, lr)`: `step(k, ... step(1, lr))`, a closed form wherever one equals torch's
  recursion to rounding, else a `lax.fori_loop` (O(k)).

A standalone schedule is `run(count, first(base_lr))`; `sequential_lr` and
`chained_scheduler` compose the same maps the way torch's composites call them.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
ABSOLUTE = "absolute"  # every step k >= 1 ignores the incoming lr (LambdaLR, CyclicLR, ...)
MULTIPLICATIVE = "multiplicative"  # every map is lr -> factor * lr (StepLR, LinearLR, ...)
AFFINE = "affine"  # anything else (CosineAnnealingLR's restarts add a constant, SWALR)
INT32_MAX = 2**31 - 1


def as_float(value: Any) -> Array:
  """`value` as a float of the default precision (float64 under `jax.enable_x64`)."""
  return jnp.asarray(value, dtype=jnp.result_type(float))


def as_int(value: Any) -> Array:
  """A step count as an integer of the default precision, as a user's lambda receives it.

  int64 under `jax.enable_x64` (so that `1 / (1 + t)` is computed in float64, as JAX
  promotes int32 / int to float32), int32 otherwise.
  """
  return jnp.asarray(value).astype(jnp.result_type(int))


def div(numerator: Any, denominator: Any) -> Array:
  """IEEE `numerator / denominator`, as Python divides.

  XLA rewrites a division by a constant into a multiplication by its reciprocal, which is
  off by an ulp (`49 * (1/49) = 0.9999999999999999`) and would move `floor(k / T)` or
  `1 - k/T` off torch's values at exact multiples; hiding the divisor behind an
  optimization barrier keeps a true division.
  """
  numerator = as_float(numerator)
  return numerator / lax.optimization_barrier(jnp.asarray(denominator, numerator.dtype))


def nan_like(value: Array) -> Array:
  return jnp.full_like(value, jnp.nan)


# ----------------------------------------------------------------------------- validation


def is_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_number(name: str, value: Any) -> float:
  if not is_number(value) or math.isnan(value):
    raise ValueError(f"{name} must be a real number, got {value!r}.")
  return float(value)


def check_lr(name: str, value: Any) -> float:
  """A learning rate: a concrete, finite number >= 0 (torch's optimizers reject negative ones)."""
  if not is_number(value) or not 0 <= value < math.inf:
    raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
  return float(value)


def check_int(name: str, value: Any, minimum: int) -> int:
  if not is_int(value) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
  return int(value)


def check_callable(name: str, value: Any) -> None:
  if not callable(value):
    raise TypeError(f"{name} should be a function, but got {type(value).__name__}.")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
  if value not in choices:
    options = " or ".join(repr(c) for c in choices)
    raise ValueError(f"{name} must be one of {options}, instead got {value!r}.")
  return value


# ----------------------------------------------------------------------------- schedulers


class Scheduler:
  """One torch scheduler as maps of the param group's lr (see the module docstring).

  Subclasses set `kind` (ABSOLUTE, MULTIPLICATIVE or AFFINE), `name`, `base_lr` (torch's
  `base_lrs[0]`: the optimizer's lr when the scheduler was built) and write `step` and
  `reset`; the defaults below are the common cases.
  """

  kind: str = AFFINE
  name: str = "LRScheduler"
  base_lr: float = 0.0
  reads_lr_on_reset: bool = False  # SequentialLR's milestone step depends on the incoming lr
  shares_initial_lr: bool = True  # its base_lrs are the group's shared `initial_lr`
  reset_error: Optional[str] = None  # why SequentialLR's milestone step raises in torch, if it does
  has_momentum: bool = False  # it also sets the group's momentum (CyclicLR, OneCycleLR)

  def install(self, initial_lr: Optional[float]) -> float:
    """The group's `initial_lr` once this scheduler's constructor has run (torch's `setdefault`)."""
    return self.base_lr if initial_lr is None else initial_lr

  def constructed(self, lr: Array, initial_lr: float) -> Array:
    """The group's lr once this scheduler's constructor has run on a group whose lr was `lr`."""
    del initial_lr
    return self.first(lr)

  def first(self, lr: Array) -> Array:
    return lr

  def step(self, k: Array, lr: Array) -> Array:
    raise NotImplementedError

  def reset(self, lr: Array) -> Array:
    raise NotImplementedError

  def run(self, k: Array, lr: Array) -> Array:
    """`step(k, ... step(1, lr))`: torch's recursion, one map per step (O(k))."""
    return lax.fori_loop(1, k + 1, lambda j, value: self.step(j, value).astype(value.dtype), as_float(lr))

  def lr(self, k: Array) -> Array:
    return self.run(k, self.first(as_float(self.base_lr)))

  def momentum(self, k: Array) -> Array:
    raise NotImplementedError

  def check(self, k: int) -> None:
    """Raises where torch's `scheduler.step()` would raise on reaching `last_epoch = k`."""
    del k


class Program:
  """What a schedule evaluates: `lr(k)`, `momentum(k)` if `has_momentum`, and `check(k)`."""

  has_momentum = False

  def lr(self, k: Array) -> Array:
    raise NotImplementedError

  def momentum(self, k: Array) -> Array:
    raise NotImplementedError

  def check(self, k: int) -> None:
    del k

  def compiled(self, which: str) -> Callable[[Array], Array]:
    """`lr` or `momentum` of an int32 count array, jitted once per program.

    A concrete count then costs one dispatch, not one per operation; under an outer `jit`
    the call is inlined. Arrays are evaluated one scalar at a time (`lax.map`), so every
    value is computed exactly as for a scalar count (a vectorized division by a constant
    would be rewritten by XLA into a multiplication by the reciprocal).
    """
    cache = self.__dict__.setdefault("_compiled", {})
    if which not in cache:
      fn = self.lr if which == "lr" else self.momentum

      def run(k: Array) -> Array:
        out = fn(k) if k.ndim == 0 else lax.map(fn, k.reshape(-1)).reshape(k.shape)
        return jnp.where(k < 0, nan_like(out), out)  # torch has no negative step counts

      cache[which] = jax.jit(run)
    return cache[which]


def evaluate(program: Program, which: str, count: Any) -> Array:
  """`program`'s lr or momentum at `count` (an int, or an int array of any shape).

  A concrete count is checked eagerly (`check` raises where torch would); under `jit` the
  count is a tracer and an invalid count gives NaN instead.
  """
  k = jnp.asarray(count)
  if not jnp.issubdtype(k.dtype, jnp.integer):
    raise TypeError(f"count must be an integer (the number of scheduler steps), got dtype {k.dtype}.")
  if not isinstance(count, jax.core.Tracer):
    values = np.asarray(count)
    if values.size and (values.min() < 0 or values.max() > INT32_MAX):
      raise ValueError(f"count must be in [0, 2**31 - 1], got {values.min() if values.min() < 0 else values.max()}.")
    for value in np.unique(values):
      program.check(int(value))
  return program.compiled(which)(k.astype(jnp.int32))


@dataclasses.dataclass(frozen=True, eq=False)
class MomentumSchedule:
  """The momentum (torch's `momentum`, or `betas[0]` for the Adam family) after `count` scheduler steps.

  Attributes:
    name: the torch scheduler it follows.
  """

  name: str
  _program: Program = dataclasses.field(repr=False)

  def __call__(self, count: Any) -> Array:
    return evaluate(self._program, "momentum", count)


@dataclasses.dataclass(frozen=True, eq=False)
class TorchSchedule:
  """An Optax schedule equal to a `torch.optim.lr_scheduler`'s `get_last_lr()`.

  `schedule(count)` is the lr after `count` calls of torch's `scheduler.step()` (0 before
  the first), which is the lr Optax's `count` convention wants: the number of updates
  already taken. Pass it as any optimizer's `learning_rate`. Works under `jit` with a
  traced int32 `count` (one trace for all counts) and with int arrays of counts.

  Attributes:
    name: the torch scheduler class it reproduces.
    momentum: `None`, or (for schedulers that cycle momentum: `one_cycle_lr`, `cyclic_lr`)
      a schedule `count -> momentum` to pass as `momentum` (sgd, rmsprop) or `b1` (the
      Adam family).
  """

  name: str
  momentum: Optional[MomentumSchedule]
  _program: Program = dataclasses.field(repr=False)

  def __call__(self, count: Any) -> Array:
    return evaluate(self._program, "lr", count)


class Standalone(Program):
  """A single scheduler driven from its own construction."""

  def __init__(self, scheduler: Scheduler):
    self.scheduler = scheduler
    self.has_momentum = scheduler.has_momentum

  def lr(self, k: Array) -> Array:
    return self.scheduler.lr(k)

  def momentum(self, k: Array) -> Array:
    return self.scheduler.momentum(k)

  def check(self, k: int) -> None:
    self.scheduler.check(k)


def make_schedule(name: str, program: Program) -> TorchSchedule:
  momentum = MomentumSchedule(name, program) if program.has_momentum else None
  return TorchSchedule(name, momentum, program)


def from_scheduler(scheduler: Scheduler) -> TorchSchedule:
  """The public schedule of one scheduler, after the checks torch's constructor makes."""
  scheduler.check(0)
  return make_schedule(scheduler.name, Standalone(scheduler))


def scheduler_of(schedule: Any, where: str) -> Scheduler:
  """The single torch scheduler behind `schedule`, for the composites (which cannot nest)."""
  program = getattr(schedule, "_program", None)
  if not isinstance(schedule, TorchSchedule) or not isinstance(program, Standalone):
    raise TypeError(
      f"{where} must be a schedule made by one of gradcore_jax.schedules' torch schedulers (not a composite, "
      f"not per_epoch, not reduce_lr_on_plateau), got {schedule!r}."
    )
  return program.scheduler
