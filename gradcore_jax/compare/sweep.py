"""A fair comparison: every optimizer over a log grid of learning rates, each at its best.

`run_task` runs one task for the chosen optimizers and presets. For each optimizer it builds
one row per (preset, learning rate) and runs all rows in one compiled, `jax.vmap`-ed scan (the
learning rate and the preset's coefficients are hyperparameters injected with
`optax.inject_hyperparams`), so a 19-rate grid under both presets costs about what one run
costs. Each row becomes a `Trial`; `pick_best` chooses each optimizer's rate by `BEST_RULE`.

Without a grid the rows are the default (or given) learning rates only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable
from typing import Mapping
from typing import Optional
from typing import Sequence
from typing import Union

import numpy as np

from gradcore_jax.compare import digits as digits_task
from gradcore_jax.compare import line_fit
from gradcore_jax.compare import presets
from gradcore_jax.compare._common import check_positive_number
from gradcore_jax.data import _check_int

Setup = Union[line_fit.LineFitSetup, digits_task.DigitsSetup]

BEST_RULE = (
  "each optimizer's best rate is the one with the fewest updates to the task's loss threshold, among "
  "rates whose run also ends at or below it; ties, and tasks where no rate gets there, go to the lowest "
  "final loss. A run whose loss turns non-finite or ends above where it started has diverged and never wins."
)


def learning_rate_grid(low: float = 1e-5, high: float = 10.0, points: int = 19) -> tuple[float, ...]:
  """`points` learning rates spaced evenly in log scale from `low` to `high`, both included.

  Each rate is rounded to 3 significant digits, so that it prints as it is run. The default,
  3 per decade from 1e-5 to 10, holds every power of ten in between.

  Args:
    low: the smallest rate, > 0.
    high: the largest rate, >= low.
    points: how many rates, >= 1 (1: `low` alone, which must then equal `high`).
  """
  check_positive_number("low", low)
  check_positive_number("high", high)
  _check_int("points", points, minimum=1)
  if high < low or (points == 1 and high != low):
    raise ValueError(f"Expected low <= high (and low == high for one point), got {low!r}, {high!r}, {points}.")
  return tuple(float(f"{v:.3g}") for v in np.logspace(math.log10(low), math.log10(high), points))


@dataclasses.dataclass(frozen=True)
class Trial:
  """One run: an optimizer with one learning rate under one preset, on one task.

  Attributes:
    optimizer: the optimizer's name.
    preset: "torch" or "article".
    learning_rate: the rate it ran with.
    batch_losses: the loss of every update's batch, `(updates,)`.
    final_loss: the loss over the whole (training) data at the end.
    initial_loss: the same at the start.
    updates_to_threshold: updates until the smoothed batch loss first reached the task's threshold, or None.
    reached: whether the final loss, too, is at or below the threshold (converged and stayed).
    diverged: the loss turned non-finite or ended above `initial_loss`.
    path: line fits: `(updates + 1, 2)`, `(m, b)` from the start; None for digits.
    test_accuracy: digits: the held-out accuracy; None for line fits.
  """

  optimizer: str
  preset: str
  learning_rate: float
  batch_losses: np.ndarray
  final_loss: float
  initial_loss: float
  updates_to_threshold: Optional[int]
  reached: bool
  diverged: bool
  path: Optional[np.ndarray] = None
  test_accuracy: Optional[float] = None

  @property
  def m(self) -> float:
    """Line fits: the final slope (NaN for digits)."""
    return float(self.path[-1, 0]) if self.path is not None else math.nan

  @property
  def b(self) -> float:
    """Line fits: the final intercept (NaN for digits)."""
    return float(self.path[-1, 1]) if self.path is not None else math.nan


def _rank(trial: Trial) -> tuple[int, float, float]:
  """`BEST_RULE` as a sort key: converged runs by updates, then everything else by final loss."""
  if trial.diverged:
    return (2, math.inf, math.inf)
  if trial.reached and trial.updates_to_threshold is not None:
    return (0, trial.updates_to_threshold, trial.final_loss)
  return (1, math.inf, trial.final_loss)


def pick_best(trials: Sequence[Trial]) -> Trial:
  """The trial `BEST_RULE` picks; among equals, the smaller learning rate.

  Args:
    trials: one optimizer's trials (non-empty).
  """
  if not trials:
    raise ValueError("pick_best needs at least one trial.")
  return min(trials, key=lambda t: (*_rank(t), t.learning_rate))


@dataclasses.dataclass(frozen=True)
class TaskRun:
  """One task run for some optimizers under some presets.

  Attributes:
    task: "regression", "spreadsheet" or "digits".
    setup: its `LineFitSetup` or `DigitsSetup`.
    updates: optimizer updates per trial.
    grid: the swept learning rates (empty when nothing was swept).
    trials: `{(preset, optimizer): [Trial, ...]}`, ascending learning rate.
    default: `{(preset, optimizer): Trial}` at the default or `--lr` rate.
    best: `{(preset, optimizer): Trial}` by `BEST_RULE` (the default trial when not swept).
    x: line fits: the points' inputs (None for digits).
    y: line fits: the points' targets.
  """

  task: str
  setup: Setup
  updates: int
  grid: tuple[float, ...]
  trials: dict[tuple[str, str], list[Trial]]
  default: dict[tuple[str, str], Trial]
  best: dict[tuple[str, str], Trial]
  x: Optional[np.ndarray] = None
  y: Optional[np.ndarray] = None

  @property
  def swept(self) -> bool:
    """Whether a grid of rates ran (else each optimizer ran at one rate)."""
    return bool(self.grid)

  @property
  def presets(self) -> tuple[str, ...]:
    """The presets that ran, in order."""
    return tuple(dict.fromkeys(p for p, _ in self.trials))

  @property
  def optimizers(self) -> tuple[str, ...]:
    """The optimizers that ran, in order."""
    return tuple(dict.fromkeys(o for _, o in self.trials))

  def chosen(self) -> dict[tuple[str, str], Trial]:
    """The trials the comparison reports: the best when swept, else the default."""
    return self.best if self.swept else self.default


def _trials(
  name: str, preset_names: Sequence[str], rates: Sequence[float], task: str, setup: Setup, data: object
) -> list[Trial]:
  """One vmapped run of optimizer `name` over every (preset, rate) row, as Trials in row order."""
  keys = presets.coefficient_names(name)
  rows = [(p, lr) for p in preset_names for lr in rates]
  hyperparams = {"learning_rate": np.array([lr for _, lr in rows])}
  for key in keys:
    hyperparams[key] = np.array([presets.coefficients(p, name)[key] for p, _ in rows])
  if task == "digits":
    assert isinstance(setup, digits_task.DigitsSetup) and isinstance(data, digits_task.Split)
    out = digits_task.digits_rows(name, hyperparams, data, setup)
    paths, accuracies = [None] * len(rows), [float(a) for a in out.test_accuracy]
  else:
    assert isinstance(setup, line_fit.LineFitSetup) and isinstance(data, tuple)
    out = line_fit.line_fit_rows(name, hyperparams, data[0], data[1], setup)
    paths, accuracies = list(out.path), [None] * len(rows)
  trials = []
  for r, (preset, lr) in enumerate(rows):
    losses, final = out.batch_losses[r], float(out.final_loss[r])
    finite = bool(np.all(np.isfinite(losses))) and math.isfinite(final)
    trials.append(
      Trial(
        optimizer=name,
        preset=preset,
        learning_rate=lr,
        batch_losses=losses,
        final_loss=final,
        initial_loss=out.initial_loss,
        updates_to_threshold=out.updates_to_threshold[r],
        reached=finite and final <= setup.loss_threshold,
        diverged=not finite or final > out.initial_loss,
        path=paths[r],
        test_accuracy=accuracies[r],
      )
    )
  return trials


def task_data(task: str, setup: Setup) -> object:
  """The data a task trains on: `(x, y)` for line fits, a `digits.Split` for digits.

  Args:
    task: "regression", "spreadsheet" or "digits".
    setup: the task's setup.
  """
  if task == "digits":
    assert isinstance(setup, digits_task.DigitsSetup)
    return digits_task.digits_data(setup.seed, setup.test_fraction)
  assert isinstance(setup, line_fit.LineFitSetup)
  return line_fit.line_data(setup)


def run_task(
  task: str,
  setup: Setup,
  optimizer_names: Sequence[str],
  preset_names: Sequence[str],
  rates: Mapping[str, float],
  grid: Sequence[float] = (),
  fixed: Sequence[str] = (),
  on_optimizer_done: Optional[Callable[[str], None]] = None,
) -> TaskRun:
  """Runs `task` for every optimizer under every preset, at its rate or over `grid`.

  Each optimizer runs once, vmapped over its rows: every preset at `rates[name]`, and, when
  `grid` is given and the optimizer is not in `fixed`, at every rate of `grid` too.

  Args:
    task: "regression", "spreadsheet" or "digits".
    setup: the task's `LineFitSetup` or `DigitsSetup`.
    optimizer_names: the optimizers, in report order.
    preset_names: the presets, in report order.
    rates: `{optimizer: learning rate}` when not swept (the defaults or `--lr`).
    grid: learning rates to sweep (empty: no sweep).
    fixed: optimizers run at `rates[name]` only, even with a grid (given with `--lr`).
    on_optimizer_done: called with each optimizer's name once its runs are done (progress bars).
  """
  if task not in presets.TASKS:
    raise ValueError(f"Unknown task {task!r}; choose one of: {', '.join(presets.TASKS)}.")
  if not optimizer_names or not preset_names:
    raise ValueError("run_task needs at least one optimizer and one preset.")
  for preset in preset_names:
    presets.get_preset(preset)
  missing = [name for name in optimizer_names if name not in rates]
  if missing:
    raise ValueError(f"rates has no learning rate for {', '.join(missing)}.")
  data = task_data(task, setup)
  trials: dict[tuple[str, str], list[Trial]] = {}
  default: dict[tuple[str, str], Trial] = {}
  best: dict[tuple[str, str], Trial] = {}
  for name in optimizer_names:
    swept = bool(grid) and name not in fixed
    own = sorted({rates[name], *grid}) if swept else [rates[name]]
    runs = _trials(name, preset_names, own, task, setup, data)
    for preset in preset_names:
      mine = [t for t in runs if t.preset == preset]
      trials[(preset, name)] = mine
      default[(preset, name)] = next(t for t in mine if t.learning_rate == rates[name])
      best[(preset, name)] = pick_best(mine)
    if on_optimizer_done is not None:
      on_optimizer_done(name)
  if task == "digits":
    assert isinstance(setup, digits_task.DigitsSetup) and isinstance(data, digits_task.Split)
    updates, x, y = setup.updates(len(data.x_train)), None, None
  else:
    assert isinstance(setup, line_fit.LineFitSetup) and isinstance(data, tuple)
    updates, (x, y) = setup.updates, data
  return TaskRun(task, setup, updates, tuple(grid), trials, default, best, x, y)
