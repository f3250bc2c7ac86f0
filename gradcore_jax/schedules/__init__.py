"""`torch.optim.lr_scheduler` as Optax schedules, value for value.

Each function takes torch's arguments (names, defaults, checks) plus the optimizer's lr
and returns a `TorchSchedule`: `schedule(count)` is torch's `get_last_lr()[0]` after
`count` calls of `scheduler.step()`, which is what Optax's schedules receive (the number
of updates already taken, 0 on the first update). Pass it as any optimizer's
`learning_rate`; for schedulers that cycle momentum, `schedule.momentum` is the momentum
schedule (`momentum=` for sgd/rmsprop, `b1=` for the Adam family):

    >>> import gradcore_jax as gcj
    >>> s = gcj.schedules.one_cycle_lr(0.1, total_steps=1000)
    >>> tx = gcj.adamw(learning_rate=s, b1=s.momentum)
    >>> round(float(s(0)), 6), round(float(s.momentum(0)), 6)  # max_lr / div_factor, max_momentum
    (0.004, 0.95)

Values follow torch's own arithmetic: its recursive (chainable) updates where torch runs
them, including past `T_max`/`total_iters` and inside `sequential_lr`/`chained_scheduler`,
mostly through closed forms equal to the recursion to rounding (float64: within 5e-15
relative of torch over thousands of steps, see `cosine_annealing_lr` for its one exception),
and through a `lax.fori_loop` (O(count) per evaluation) only where no closed form is exact
(`multiplicative_lr`, chains with additive steps). A
schedule traces once under `jit` whatever the count. Where torch raises on stepping (e.g.
`one_cycle_lr` past `total_steps`) a concrete count raises a ValueError and a traced one
gives NaN. `per_epoch` turns an epoch-stepped scheduler into a per-update schedule;
`reduce_lr_on_plateau` is torch's metric-driven rule as pure `init`/`step`/`lr` functions.
"""

from __future__ import annotations

from gradcore_jax.schedules._annealing import cosine_annealing_lr
from gradcore_jax.schedules._annealing import cosine_annealing_warm_restarts
from gradcore_jax.schedules._annealing import swa_lr
from gradcore_jax.schedules._basic import constant_lr
from gradcore_jax.schedules._basic import exponential_lr
from gradcore_jax.schedules._basic import lambda_lr
from gradcore_jax.schedules._basic import linear_lr
from gradcore_jax.schedules._basic import multi_step_lr
from gradcore_jax.schedules._basic import multiplicative_lr
from gradcore_jax.schedules._basic import polynomial_lr
from gradcore_jax.schedules._basic import step_lr
from gradcore_jax.schedules._composite import chained_scheduler
from gradcore_jax.schedules._composite import per_epoch
from gradcore_jax.schedules._composite import sequential_lr
from gradcore_jax.schedules._core import MomentumSchedule
from gradcore_jax.schedules._core import TorchSchedule
from gradcore_jax.schedules._cyclic import cyclic_lr
from gradcore_jax.schedules._cyclic import one_cycle_lr
from gradcore_jax.schedules._plateau import PlateauState
from gradcore_jax.schedules._plateau import ReduceLROnPlateau
from gradcore_jax.schedules._plateau import reduce_lr_on_plateau

__all__ = [
  "MomentumSchedule",
  "PlateauState",
  "ReduceLROnPlateau",
  "TorchSchedule",
  "chained_scheduler",
  "constant_lr",
  "cosine_annealing_lr",
  "cosine_annealing_warm_restarts",
  "cyclic_lr",
  "exponential_lr",
  "lambda_lr",
  "linear_lr",
  "multi_step_lr",
  "multiplicative_lr",
  "one_cycle_lr",
  "per_epoch",
  "polynomial_lr",
  "reduce_lr_on_plateau",
  "sequential_lr",
  "step_lr",
  "swa_lr",
]
