"""The main job's text output: tables, the sweep grid, the claim-by-claim verdicts, the JSON summary.

Pure functions from results to strings (or, for `summary`, to JSON-ready dicts).
"""

from __future__ import annotations

import math
from typing import Any
from typing import Optional
from typing import Sequence

from gradcore_jax.compare import presets
from gradcore_jax.compare._common import finite_or_none
from gradcore_jax.compare.claims import ClaimCheck
from gradcore_jax.compare.claims import tally
from gradcore_jax.compare.digits import DigitsComparison
from gradcore_jax.compare.line_fit import LineFitComparison
from gradcore_jax.compare.line_fit import LineFitSetup
from gradcore_jax.compare.sweep import BEST_RULE
from gradcore_jax.compare.sweep import TaskRun
from gradcore_jax.compare.sweep import Trial

TASK_TITLES = {
  "regression": "Line fit (the article's text)",
  "spreadsheet": "Line fit (the fast.ai spreadsheet behind the article's figures)",
  "digits": "Digits (the article's MNIST classifier, on scikit-learn's 8x8 digits)",
}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, text_columns: int = 1) -> str:
  """A plain-text table: the first `text_columns` columns left-aligned, the others right-aligned.

  Args:
    headers: the column titles.
    rows: the cells, one sequence per row, as many as `headers`.
    text_columns: how many leading columns are left-aligned.
  """
  widths = [max(len(str(row[i])) for row in (headers, *rows)) for i in range(len(headers))]

  def line(cells: Sequence[str]) -> str:
    return "  ".join(
      f"{c:<{w}}" if i < text_columns else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    ).rstrip()

  return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def _fixed(value: float, digits: int) -> str:
  return f"{value:.{digits}f}" if math.isfinite(value) else "diverged"


def _loss(value: float) -> str:
  return f"{value:.3g}" if math.isfinite(value) else "nan"


def _count(value: Optional[int]) -> str:
  return str(value) if value is not None else "not reached"


# ---------------------------------------------------------------------------------------
# The bullets that explain a line fit: only about the optimizers that ran.

_ADAPTIVE = ("rmsprop", "adam", "adamw", "adagrad", "adadelta", "adamax", "nadam", "radam", "adafactor")


def line_fit_notes(setup: LineFitSetup, names: Sequence[str]) -> list[str]:
  """How to read a line-fit table, one bullet per kind of optimizer that ran.

  Args:
    setup: the problem.
    names: the optimizers that ran.
  """
  slow = "slope m" if setup.slow_parameter == "m" else "intercept b"
  why = (
    "the slope's gradient 2*x*error is small where x is"
    if setup.slow_parameter == "m"
    else "the slope's curvature 2*x^2 is large where x is, which caps the learning rate, and the intercept's gradient "
    "2*error is small next to the slope's 2*x*error"
  )
  notes = ["- final loss: mean squared error over all points with the final m, b"]
  if setup.noise:
    notes[0] += f" (the noise alone gives ~{setup.noise**2:.3g})."
  else:
    notes[0] += " (0 at the true line: there is no noise)."
  sgd_like = [n for n in names if n in presets.SGD_LIKE]
  adaptive = [n for n in names if n in _ADAPTIVE]
  if sgd_like:
    notes.append(f"- {', '.join(sgd_like)} step by lr x gradient; {why}, so the {slow} crawls.")
  if adaptive:
    notes.append(
      f"- {', '.join(adaptive)} divide each parameter's gradient by its own running scale and move ~lr per update,"
      f" {slow} included."
    )
  return notes


def line_fit_report(comparison: LineFitComparison) -> str:
  """One line fit's setup, its table (m, b, final loss per optimizer) and how to read it.

  Args:
    comparison: the output of `compare_line_fit`.
  """
  s = comparison.setup
  rows = [
    [name, f"{r.learning_rate:g}", _fixed(r.m, 2), _fixed(r.b, 2), _fixed(r.final_loss, 3)]
    for name, r in comparison.results.items()
  ]
  rows.append(["(true)", "", f"{s.slope:.2f}", f"{s.intercept:.2f}", f"~{s.noise**2:.3f}"])
  updates = "per-example updates" if s.batch_size == 1 else f"batches of {s.batch_size}"
  return "\n".join(
    [
      f"Line fit: {s.describe()}",
      f"{s.epochs} epochs of {updates} = {s.updates} updates per optimizer",
      "",
      format_table(["optimizer", "lr", "m", "b", "final loss"], rows),
      "",
      *line_fit_notes(s, list(comparison.results)),
    ]
  )


def _digits_notes(loss_threshold: float, smoothing: int) -> list[str]:
  return [
    f"- updates to loss <= {loss_threshold:g}: updates (one per batch) until the mean loss of the last "
    f"{smoothing} batches first was <= {loss_threshold:g}.",
    "- final loss: MSE over the whole training set with the final weights.",
  ]


def digits_report(comparison: DigitsComparison) -> str:
  """The digits run's setup, its table (updates to threshold, final loss, test accuracy) and notes.

  Args:
    comparison: the output of `compare_digits`.
  """
  s = comparison.setup
  rows = []
  for name, r in comparison.results.items():
    if r.diverged_at is not None:
      rows.append([name, f"{r.learning_rate:g}", f"diverged at update {r.diverged_at}", "-", "-"])
      continue
    rows.append(
      [
        name,
        f"{r.learning_rate:g}",
        _count(r.updates_to_threshold),
        _fixed(r.final_loss, 4),
        f"{100 * r.test_accuracy:.1f} %",
      ]
    )
  return "\n".join(
    [
      f"Digits: scikit-learn's 8x8 digits, pixels scaled to [0, 1], {100 * s.test_fraction:g} % held out for testing",
      f"linear layer 64->10, MSE loss on one-hot targets, batch {s.batch_size}, {s.epochs} epochs = "
      f"{comparison.updates} updates per optimizer",
      "",
      format_table(
        ["optimizer", "lr", f"updates to loss <= {s.loss_threshold:g}", "final loss", "test accuracy"], rows
      ),
      "",
      *_digits_notes(s.loss_threshold, s.smoothing),
    ]
  )


# ---------------------------------------------------------------------------------------
# A task run: its setup, the sweep grid, the table at the reported rates.


def _task_header(run: TaskRun) -> list[str]:
  s = run.setup
  threshold = f"loss threshold {s.loss_threshold:g} (mean of the last {s.smoothing} batches)"
  if isinstance(s, LineFitSetup):
    updates = "per-example updates" if s.batch_size == 1 else f"batches of {s.batch_size}"
    return [
      f"{TASK_TITLES[run.task]}: {s.describe()}",
      f"{s.epochs} epochs of {updates} = {run.updates} updates per run; {threshold}",
    ]
  return [
    f"{TASK_TITLES[run.task]}: pixels scaled to [0, 1], {100 * s.test_fraction:g} % held out",
    f"linear layer 64->10, MSE on one-hot targets, batch {s.batch_size}, {s.epochs} epochs = {run.updates} updates "
    f"per run; {threshold}",
  ]


def _grid_cell(trial: Trial, best: Trial) -> str:
  if trial.diverged:
    text = "x"
  else:
    text = _loss(trial.final_loss) + ("+" if trial.reached else "")
  return text + ("*" if trial is best else "")


def sweep_table(run: TaskRun) -> str:
  """The final loss of every (learning rate, optimizer) under each preset, best rates starred.

  A cell is the final loss, `+` when the run reached the threshold and ended below it, `*`
  at the optimizer's best rate; `x` marks a diverged run and `-` a rate not run.

  Args:
    run: a swept `TaskRun`.
  """
  rates = sorted({t.learning_rate for trials in run.trials.values() for t in trials})
  columns = [(p, n) for p in run.presets for n in run.optimizers]
  headers = ["lr", *(f"{n}" for _, n in columns)]
  by_rate = {key: {t.learning_rate: t for t in trials} for key, trials in run.trials.items()}
  rows = []
  for lr in rates:
    cells = [f"{lr:g}"]
    for key in columns:
      trial = by_rate[key].get(lr)
      cells.append(_grid_cell(trial, run.best[key]) if trial is not None else "-")
    rows.append(cells)
  table = format_table(headers, rows).splitlines()
  if len(run.presets) > 1:  # a line above the header that says which columns belong to which preset
    widths = [max(len(str(r[i])) for r in (headers, *rows)) for i in range(len(headers))]
    n = len(run.optimizers)
    spans = []
    for i, preset in enumerate(run.presets):
      span = sum(widths[1 + i * n : 1 + (i + 1) * n]) + 2 * (n - 1)
      spans.append(f" preset {preset} ".center(span, "-"))
    table.insert(0, " " * (widths[0] + 2) + "  ".join(spans))
  return "\n".join(table)


def results_table(run: TaskRun) -> str:
  """Each (preset, optimizer) at its reported rate: the best when swept, else the default.

  Args:
    run: a `TaskRun`.
  """
  chosen = run.chosen()
  threshold = f"updates to loss <= {run.setup.loss_threshold:g}"
  line = isinstance(run.setup, LineFitSetup)
  headers = ["preset", "optimizer", "lr", *(["m", "b"] if line else []), threshold, "final loss"]
  if not line:
    headers.append("test accuracy")
  rows = []
  for preset in run.presets:
    for name in run.optimizers:
      t = chosen[(preset, name)]
      lr = f"{t.learning_rate:g}" + (" (--lr)" if run.swept and len(run.trials[(preset, name)]) == 1 else "")
      if t.diverged:
        rows.append([preset, name, lr, *(["-", "-"] if line else []), "diverged", _loss(t.final_loss)])
        if not line:
          rows[-1].append("-")
        continue
      row = [preset, name, lr]
      if line:
        row += [f"{t.m:.2f}", f"{t.b:.2f}"]
      row += [_count(t.updates_to_threshold), f"{t.final_loss:.4g}"]
      if not line:
        row.append(f"{100 * (t.test_accuracy or 0.0):.1f} %")
      rows.append(row)
  if line:
    s = run.setup
    assert isinstance(s, LineFitSetup)
    rows.append(["(true)", "", "", f"{s.slope:.2f}", f"{s.intercept:.2f}", "", f"~{s.noise**2:.3g}"])
  return format_table(headers, rows, text_columns=2)


def task_report(run: TaskRun) -> str:
  """A task's header, its sweep grid (when swept), its results table and how to read them.

  Args:
    run: a `TaskRun`.
  """
  lines = [*_task_header(run), ""]
  if run.swept:
    lines += [
      f"Sweep: final loss at each learning rate ({len(run.grid)} rates from {min(run.grid):g} to {max(run.grid):g}; "
      "+ reached the threshold and ended below it, * best, x diverged)",
      sweep_table(run),
      "",
      "At each optimizer's best rate:",
    ]
  else:
    lines.append("At the default learning rates (see --help):")
  lines += [results_table(run), ""]
  if isinstance(run.setup, LineFitSetup):
    lines += line_fit_notes(run.setup, run.optimizers)
  else:
    lines += _digits_notes(run.setup.loss_threshold, run.setup.smoothing)
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The claims.


def claims_report(checks: Sequence[ClaimCheck]) -> str:
  """The article's claims one by one: what it says, our rule, and each preset's verdict with our numbers.

  Args:
    checks: the output of `claims.check_claims`.
  """
  if not checks:
    return "The article's claims: none of their tasks ran."
  lines = ["The article's claims, checked (at the default rates, and at each optimizer's best rate when swept):"]
  seen: list[tuple[str, str]] = []
  for check in checks:
    key = (check.claim.key, check.task)
    if key not in seen:
      seen.append(key)
      lines += [
        "",
        f'[{len(seen)}] {check.task}: "{check.claim.article}"',
        f"    rule: {check.claim.rule}",
      ]
    lines.append(f"    {check.preset:8s} default rates: {check.at_default.word:13s} {check.at_default.figures}")
    if check.at_best is not None:
      lines.append(f"    {'':8s} best rates:    {check.at_best.word:13s} {check.at_best.figures}")
  lines.append("")
  counts = tally(checks)
  lines.append(
    "Claims that hold (of those decided): " + "; ".join(f"{k}: {h} of {d}" for k, (h, d) in counts.items()) + "."
  )
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The JSON summary.


def _trial_summary(trial: Trial) -> dict[str, Any]:
  out: dict[str, Any] = {
    "lr": trial.learning_rate,
    "updates_to_threshold": trial.updates_to_threshold,
    "final_loss": finite_or_none(trial.final_loss),
    "diverged": trial.diverged,
  }
  if trial.path is not None:
    out["m"], out["b"] = finite_or_none(trial.m), finite_or_none(trial.b)
  if trial.test_accuracy is not None:
    out["test_accuracy"] = finite_or_none(trial.test_accuracy)
  return out


def summary(runs: Sequence[TaskRun], checks: Sequence[ClaimCheck]) -> dict[str, Any]:
  """The results as JSON-ready dicts (non-finite numbers as None).

  `{"rule": BEST_RULE or None, "tasks": {task: {preset: {optimizer: {"lr", "updates_to_threshold",
  "final_loss", "diverged", "m", "b" (line fits) | "test_accuracy" (digits), "sweep" (when swept:
  [{"lr", "final_loss", "updates_to_threshold", "diverged"}, ...])}}}}, "claims": [{"claim", "task",
  "preset", "article", "rule", "at_default": {"holds", "figures"}, "at_best": ... or None}]}`.
  The figures at the top of each optimizer's entry are at its reported rate (best when swept).

  Args:
    runs: the task runs.
    checks: their claims (`claims.check_claims(runs)`).
  """
  tasks: dict[str, Any] = {}
  for run in runs:
    chosen = run.chosen()
    per_preset: dict[str, Any] = {}
    for (preset, name), trial in chosen.items():
      entry = _trial_summary(trial)
      if run.swept:
        entry["sweep"] = [
          {k: _trial_summary(t)[k] for k in ("lr", "final_loss", "updates_to_threshold", "diverged")}
          for t in run.trials[(preset, name)]
        ]
      per_preset.setdefault(preset, {})[name] = entry
    tasks[run.task] = per_preset

  def verdict(v: Any) -> Optional[dict[str, Any]]:
    return None if v is None else {"holds": v.holds, "figures": v.figures}

  claims = [
    {
      "claim": c.claim.key,
      "task": c.task,
      "preset": c.preset,
      "article": c.claim.article,
      "rule": c.claim.rule,
      "at_default": verdict(c.at_default),
      "at_best": verdict(c.at_best),
    }
    for c in checks
  ]
  return {"rule": BEST_RULE if any(run.swept for run in runs) else None, "tasks": tasks, "claims": claims}
