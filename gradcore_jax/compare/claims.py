"""The article's statements, each turned into a test that our numbers pass or fail.

The article's figures come from two places: the fast.ai gradient-descent spreadsheet (a line
whose slow parameter should reach 30: SGD 1.5, RMSprop 4.72, Adam 29.25 after 2 epochs) and
its MNIST loss plots (SGD ~800 updates; Adam and RMSprop ~250, Adam slightly steeper). Each
`Claim` states the article's words, the rule that decides it, and which optimizers it needs.
`check_claims` applies every claim whose task ran to the trials of each preset, at the
default rates and (after a sweep) at the best rates.

Rules (the thresholds are ours; the article gives only its numbers):

- line fits, with `p` the slow parameter after the run and 30 its target (both line fits):
  - `sgd_crawls`: SGD's `p` covers less than a quarter of the way (article: 1.5).
  - `momentum_no_better`: `sgd_ema`'s distance to 30 is at least 90 % of SGD's (article: "not even better").
  - `rmsprop_partway`: RMSprop's `p` is at least twice SGD's and still more than 10 % short of 30 (article: 4.72).
  - `adam_close`: Adam's `p` is within 5 % of 30 (article: 29.25).
- digits (updates to the loss threshold; a run that never gets there counts as more than all updates):
  - `sgd_3x_slower`: the article's SGD needs at least twice the updates of RMSprop and of Adam (article: ~800 vs ~250).
  - `adaptive_same_time`: RMSprop's and Adam's counts are within a factor 1.5 (article: both ~250).
  - `adam_steeper`: Adam's smoothed loss is below RMSprop's at more than half of the updates until
    both reached the threshold (article: "Adam's descent is slightly steeper").
"""

from __future__ import annotations

import dataclasses
from typing import Callable
from typing import Mapping
from typing import Optional
from typing import Sequence

import numpy as np

from gradcore_jax.compare import line_fit
from gradcore_jax.compare import presets
from gradcore_jax.compare._common import trailing_mean
from gradcore_jax.compare.sweep import TaskRun
from gradcore_jax.compare.sweep import Trial

LINE_TASKS = ("regression", "spreadsheet")


@dataclasses.dataclass(frozen=True)
class Verdict:
  """A claim applied to one set of trials.

  Attributes:
    holds: True or False; None when it could not be decided (an optimizer missing, a run diverged).
    figures: our numbers, e.g. "sgd b = 0.11 (lr 1e-4)".
  """

  holds: Optional[bool]
  figures: str

  @property
  def word(self) -> str:
    """ "holds", "does not hold" or "undecided"."""
    return {True: "holds", False: "does not hold", None: "undecided"}[self.holds]


Check = Callable[[Mapping[str, Trial], TaskRun, str], Verdict]


@dataclasses.dataclass(frozen=True)
class Claim:
  """One statement of the article and how we decide it.

  Attributes:
    key: a short identifier.
    tasks: the tasks it applies to.
    article: what the article says, with its numbers.
    rule: how our numbers decide it.
    check: `(trials by optimizer, task run, preset) -> Verdict`.
  """

  key: str
  tasks: tuple[str, ...]
  article: str
  rule: str
  check: Check


def _slow(trial: Trial, setup: line_fit.LineFitSetup) -> float:
  return trial.m if setup.slow_parameter == "m" else trial.b


def _need(trials: Mapping[str, Trial], names: Sequence[str]) -> Optional[Verdict]:
  """An undecided Verdict when an optimizer did not run or diverged, else None."""
  missing = [n for n in names if n not in trials]
  if missing:
    return Verdict(None, f"needs {', '.join(missing)} (add it to --optimizers)")
  diverged = [n for n in names if trials[n].diverged]
  if diverged:
    return Verdict(
      None, f"{', '.join(diverged)} diverged at lr {', '.join(f'{trials[n].learning_rate:g}' for n in diverged)}"
    )
  return None


def _line_figures(trials: Mapping[str, Trial], names: Sequence[str], setup: line_fit.LineFitSetup) -> str:
  p = setup.slow_parameter
  return "; ".join(f"{n} {p} = {_slow(trials[n], setup):.2f} (lr {trials[n].learning_rate:g})" for n in names)


def _line_setup(run: TaskRun) -> line_fit.LineFitSetup:
  assert isinstance(run.setup, line_fit.LineFitSetup)
  return run.setup


def _sgd_crawls(trials: Mapping[str, Trial], run: TaskRun, preset: str) -> Verdict:
  del preset  # plain SGD in every preset: the spreadsheet's "basic SGD" sheet
  setup = _line_setup(run)
  undecided = _need(trials, ["sgd"])
  if undecided:
    return undecided
  progress = _slow(trials["sgd"], setup) / setup.slow_target
  return Verdict(progress < 0.25, _line_figures(trials, ["sgd"], setup) + f": {100 * progress:.0f} % of the way")


def _momentum_no_better(trials: Mapping[str, Trial], run: TaskRun, preset: str) -> Verdict:
  del preset
  setup = _line_setup(run)
  undecided = _need(trials, ["sgd", "sgd_ema"])
  if undecided:
    return undecided
  plain, ema = (abs(setup.slow_target - _slow(trials[n], setup)) for n in ("sgd", "sgd_ema"))
  return Verdict(ema >= 0.9 * plain, _line_figures(trials, ["sgd", "sgd_ema"], setup))


def _rmsprop_partway(trials: Mapping[str, Trial], run: TaskRun, preset: str) -> Verdict:
  del preset
  setup = _line_setup(run)
  undecided = _need(trials, ["sgd", "rmsprop"])
  if undecided:
    return undecided
  sgd, rmsprop = (_slow(trials[n], setup) for n in ("sgd", "rmsprop"))
  short = abs(setup.slow_target - rmsprop) > 0.1 * abs(setup.slow_target)
  return Verdict(rmsprop >= 2 * sgd and short, _line_figures(trials, ["sgd", "rmsprop"], setup))


def _adam_close(trials: Mapping[str, Trial], run: TaskRun, preset: str) -> Verdict:
  del preset
  setup = _line_setup(run)
  undecided = _need(trials, ["adam"])
  if undecided:
    return undecided
  adam = _slow(trials["adam"], setup)
  return Verdict(abs(adam - setup.slow_target) <= 0.05 * abs(setup.slow_target), _line_figures(trials, ["adam"], setup))


def _count(trial: Trial, run: TaskRun) -> float:
  """Updates to the threshold; a run that never got there counts as one more than the run's updates."""
  return trial.updates_to_threshold if trial.updates_to_threshold is not None else run.updates + 1


def _digits_figures(trials: Mapping[str, Trial], names: Sequence[str], run: TaskRun) -> str:
  def one(name: str) -> str:
    t = trials[name]
    count = str(t.updates_to_threshold) if t.updates_to_threshold is not None else f"> {run.updates}"
    return f"{name} {count} (lr {t.learning_rate:g})"

  return "; ".join(one(n) for n in names)


def _sgd_3x_slower(trials: Mapping[str, Trial], run: TaskRun, preset: str) -> Verdict:
  sgd = presets.get_preset(preset).article_sgd
  names = [sgd, "rmsprop", "adam"]
  undecided = _need(trials, names)
  if undecided:
    return undecided
  slow = _count(trials[sgd], run)
  holds = all(slow >= 2 * _count(trials[n], run) for n in ("rmsprop", "adam"))
  ratios = ", ".join(f"{slow / _count(trials[n], run):.1f}x {n}" for n in ("rmsprop", "adam"))
  return Verdict(holds, f"updates: {_digits_figures(trials, names, run)}; {sgd} = {ratios}")


def _adaptive_same_time(trials: Mapping[str, Trial], run: TaskRun, preset: str) -> Verdict:
  del preset
  names = ["rmsprop", "adam"]
  undecided = _need(trials, names)
  if undecided:
    return undecided
  if all(trials[n].updates_to_threshold is None for n in names):
    return Verdict(None, f"neither reached the threshold in {run.updates} updates")
  counts = sorted(_count(trials[n], run) for n in names)
  return Verdict(counts[1] <= 1.5 * counts[0], f"updates: {_digits_figures(trials, names, run)}")


def _adam_steeper(trials: Mapping[str, Trial], run: TaskRun, preset: str) -> Verdict:
  del preset
  undecided = _need(trials, ["rmsprop", "adam"])
  if undecided:
    return undecided
  window = getattr(run.setup, "smoothing", 1)
  adam, rmsprop = (trailing_mean(trials[n].batch_losses, window) for n in ("adam", "rmsprop"))
  end = int(min(max(_count(trials[n], run) for n in ("adam", "rmsprop")), run.updates))
  below = float(np.mean(adam[:end] < rmsprop[:end]))
  return Verdict(below > 0.5, f"Adam's loss lower at {100 * below:.0f} % of the first {end} updates")


CLAIMS: tuple[Claim, ...] = (
  Claim(
    "sgd_crawls",
    LINE_TASKS,
    "SGD barely moves the slow parameter: 1.5 of 30 after 2 epochs",
    "holds if SGD's slow parameter covers less than a quarter of the way to 30",
    _sgd_crawls,
  ),
  Claim(
    "momentum_no_better",
    LINE_TASKS,
    "momentum (step = 0.9*step + 0.1*grad) is not even better than SGD",
    "holds if sgd_ema ends at least 90 % as far from 30 as SGD",
    _momentum_no_better,
  ),
  Claim(
    "rmsprop_partway",
    LINE_TASKS,
    "RMSprop reaches 4.72: three times SGD's 1.5, not quite 30",
    "holds if RMSprop's slow parameter is at least twice SGD's and more than 10 % short of 30",
    _rmsprop_partway,
  ),
  Claim(
    "adam_close",
    LINE_TASKS,
    "Adam reaches 29.25, very close to 30",
    "holds if Adam's slow parameter is within 5 % of 30",
    _adam_close,
  ),
  Claim(
    "sgd_3x_slower",
    ("digits",),
    "SGD converges only after ~800 updates, Adam and RMSprop after ~250",
    "holds if the article's SGD needs at least twice the updates of RMSprop and of Adam to reach the loss threshold",
    _sgd_3x_slower,
  ),
  Claim(
    "adaptive_same_time",
    ("digits",),
    "Adam and RMSprop converge at around the same time",
    "holds if their updates to the threshold are within a factor 1.5",
    _adaptive_same_time,
  ),
  Claim(
    "adam_steeper",
    ("digits",),
    "Adam's descent is slightly steeper than RMSprop's",
    "holds if Adam's smoothed loss is lower at more than half of the updates until both reach the threshold",
    _adam_steeper,
  ),
)


@dataclasses.dataclass(frozen=True)
class ClaimCheck:
  """One claim on one task under one preset, at the default rates and (after a sweep) the best.

  Attributes:
    claim: the claim.
    task: the task it was checked on.
    preset: "torch" or "article".
    at_default: the verdict at the default (or `--lr`) rates.
    at_best: the verdict at each optimizer's best rate; None when nothing was swept.
  """

  claim: Claim
  task: str
  preset: str
  at_default: Verdict
  at_best: Optional[Verdict]


def _by_optimizer(chosen: Mapping[tuple[str, str], Trial], preset: str) -> dict[str, Trial]:
  return {name: trial for (p, name), trial in chosen.items() if p == preset}


def check_claims(runs: Sequence[TaskRun]) -> list[ClaimCheck]:
  """Every claim on every task run that it applies to, under every preset that ran.

  Args:
    runs: the task runs (`sweep.run_task`).
  """
  checks = []
  for run in runs:
    for claim in CLAIMS:
      if run.task not in claim.tasks:
        continue
      for preset in run.presets:
        at_default = claim.check(_by_optimizer(run.default, preset), run, preset)
        at_best = claim.check(_by_optimizer(run.best, preset), run, preset) if run.swept else None
        checks.append(ClaimCheck(claim, run.task, preset, at_default, at_best))
  return checks


def tally(checks: Sequence[ClaimCheck]) -> dict[str, tuple[int, int]]:
  """`{"<preset>, <rates>": (claims that hold, claims decided)}`, rates "default" or "best".

  Args:
    checks: the output of `check_claims`.
  """
  counts: dict[str, list[int]] = {}
  for check in checks:
    for rates, verdict in (("default", check.at_default), ("best", check.at_best)):
      if verdict is None:
        continue
      entry = counts.setdefault(f"{check.preset}, {rates} rates", [0, 0])
      if verdict.holds is not None:
        entry[0] += int(verdict.holds)
        entry[1] += 1
  return {key: (held, decided) for key, (held, decided) in counts.items()}
