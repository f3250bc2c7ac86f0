"""PNG plots of the main job: loss surfaces with each optimizer's path, loss curves, sweeps.

matplotlib is imported on first use, never at import time, so the library and
`gradcore-jax compare --no-plot` run without it. Figures are drawn with matplotlib's object
API (`matplotlib.figure.Figure`, rendered by Agg), which leaves pyplot and the process-wide
backend untouched.

Every optimizer has its own colour, line style and marker (`optimizer_style`), so two curves
that coincide stay visible; legends say when two curves are identical or nearly so.
"""

from __future__ import annotations

import itertools
import pathlib
from typing import Any
from typing import Mapping
from typing import Optional
from typing import Sequence
from typing import Union

import numpy as np

from gradcore_jax.compare._common import trailing_mean
from gradcore_jax.compare.digits import DigitsComparison
from gradcore_jax.compare.line_fit import LineFitComparison
from gradcore_jax.compare.line_fit import LineFitSetup
from gradcore_jax.compare.line_fit import loss_surface
from gradcore_jax.compare.sweep import TaskRun
from gradcore_jax.compare.sweep import Trial

PathLike = Union[str, pathlib.Path]

# Fixed per optimizer, so a name looks the same in every figure; others cycle through the rest.
_STYLES: dict[str, dict[str, Any]] = {
  "sgd": {"color": "tab:blue", "linestyle": "-", "marker": "o"},
  "sgd_ema": {"color": "tab:orange", "linestyle": "--", "marker": "s"},
  "rmsprop": {"color": "tab:green", "linestyle": "-.", "marker": "^"},
  "adam": {"color": "tab:red", "linestyle": ":", "marker": "D"},
}
_OTHER_COLORS = ("tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan", "black")
_OTHER_LINES = ("-", "--", "-.", ":")
_OTHER_MARKERS = ("v", "P", "X", "*", "<", ">", "h")
# Two curves closer than this (largest relative difference) are called the same in the legend.
IDENTICAL_RTOL = 1e-6
NEARLY_RTOL = 0.02
DPI = 80


def require_matplotlib() -> Any:
  """matplotlib's `Figure` class, or an ImportError that says how to install it."""
  try:
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    raise ImportError("Plots need matplotlib: pip install 'gradcore-jax[examples]' (or pass --no-plot).") from err
  return Figure


def optimizer_style(name: str) -> dict[str, Any]:
  """`color`, `linestyle` and `marker` of optimizer `name` (the same in every figure).

  Args:
    name: an optimizer name.
  """
  if name in _STYLES:
    return dict(_STYLES[name])
  index = sum(ord(c) for c in name)  # stable across runs, unlike hash()
  return {
    "color": _OTHER_COLORS[index % len(_OTHER_COLORS)],
    "linestyle": _OTHER_LINES[index % len(_OTHER_LINES)],
    "marker": _OTHER_MARKERS[index % len(_OTHER_MARKERS)],
  }


def _relative_gaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, bool]:
  """`|a - b| / max(|a|, |b|)` where both are finite, and whether both are finite at the same places."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    return np.full(1, np.inf), False
  both = np.isfinite(a) & np.isfinite(b)
  scale = np.maximum(np.abs(a[both]), np.abs(b[both]))
  gaps = np.abs(a[both] - b[both]) / np.where(scale > 0, scale, 1.0)
  return gaps, bool(np.array_equal(np.isfinite(a), np.isfinite(b)))


def overlap_notes(curves: Mapping[str, np.ndarray]) -> dict[str, str]:
  """Legend notes for curves that coincide with an earlier one: `{name: "identical to sgd"}`.

  A curve is "identical to X" when it is finite where the earlier curve X is and differs from it
  by at most `IDENTICAL_RTOL` (relative) everywhere; it "overlaps X" when, over at least half of
  the points, where both are finite, it is within `NEARLY_RTOL` of X at 90 % of them (a start
  that differs, or one of them diverging at the largest rates, then the same line).

  Args:
    curves: `{name: values}` in drawing order.
  """
  notes: dict[str, str] = {}
  for (first, a), (second, b) in itertools.combinations(curves.items(), 2):
    if second in notes:
      continue
    gaps, same_support = _relative_gaps(a, b)
    if same_support and (not gaps.size or gaps.max() <= IDENTICAL_RTOL):
      notes[second] = f"identical to {first}"
    elif 2 * gaps.size >= np.size(a) and gaps.size and np.percentile(gaps, 90) <= NEARLY_RTOL:
      notes[second] = f"overlaps {first}"
  return notes


def _label(name: str, notes: Mapping[str, str], extra: str = "") -> str:
  note = notes.get(name)
  parts = [extra] if extra else []
  if note:
    parts.append(note)
  return f"{name} ({'; '.join(parts)})" if parts else name


def _figure(rows: int, columns: int, width: float, height: float = 4.5) -> tuple[Any, np.ndarray]:
  """A new Agg-rendered figure with a `rows` x `columns` grid of axes."""
  figure = require_matplotlib()(figsize=(width, height * rows), layout="constrained")
  return figure, figure.subplots(rows, columns, squeeze=False)


def _save(figure: Any, path: PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=DPI)
  return path


def _draw_curves(axes: Any, curves: Mapping[str, np.ndarray], labels: Mapping[str, str], every: int) -> None:
  """One line per curve in its optimizer's style; markers every `every` points keep overlaps visible."""
  for index, (name, values) in enumerate(curves.items()):
    style = optimizer_style(name)
    steps = np.arange(1, len(values) + 1)
    offset = (index * every) // max(len(curves), 1)  # stagger the markers of overlapping curves
    axes.plot(steps, values, label=labels[name], linewidth=1.4, markevery=(offset, every), markersize=5, **style)


# ---------------------------------------------------------------------------------------
# Loss curves.


def plot_loss_curves(
  curves: Mapping[str, np.ndarray],
  path: PathLike,
  *,
  title: str,
  smoothing: int = 1,
  threshold: Optional[float] = None,
) -> pathlib.Path:
  """Loss against updates, one line per curve, log-scale loss; returns the PNG's path.

  Each curve is drawn as its `trailing_mean` over `smoothing` updates (1: as given); a
  `threshold` adds a dashed horizontal line. Empty curves (a diverged run) are skipped.

  Args:
    curves: `{optimizer name: batch losses}`.
    path: where to write the PNG.
    title: the figure's title.
    smoothing: the moving-average window, >= 1.
    threshold: a loss to mark, or None.
  """
  figure, axes = _figure(1, 1, 7.5)
  _loss_panel(axes[0, 0], curves, {}, title=title, smoothing=smoothing, threshold=threshold)
  return _save(figure, path)


def _loss_panel(
  axes: Any,
  curves: Mapping[str, np.ndarray],
  extras: Mapping[str, str],
  *,
  title: str,
  smoothing: int,
  threshold: Optional[float],
) -> None:
  smoothed = {name: trailing_mean(v, smoothing) for name, v in curves.items() if len(v)}
  notes = overlap_notes(smoothed)
  labels = {name: _label(name, notes, extras.get(name, "")) for name in smoothed}
  every = max(1, max((len(v) for v in smoothed.values()), default=1) // 12)
  _draw_curves(axes, smoothed, labels, every)
  if threshold is not None:
    axes.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
  axes.set_yscale("log")
  axes.set_xlabel("updates")
  axes.set_ylabel("loss" if smoothing == 1 else f"loss (mean of the last {smoothing} batches)")
  axes.set_title(title)
  axes.grid(True, which="both", alpha=0.3)
  axes.legend(fontsize="small")


def _rate_columns(run: TaskRun) -> list[tuple[str, dict[tuple[str, str], Trial]]]:
  """`[("default rates", trials), ("best rates", trials)]`, the second only when swept."""
  columns = [("default rates", run.default)]
  if run.swept:
    columns.append(("best rates", run.best))
  return columns


def plot_digits(run: TaskRun, path: PathLike) -> pathlib.Path:
  """The digits loss curves: a row per preset, a column for the default rates and (when swept)
  one for the best rates; returns the PNG's path.

  Args:
    run: a digits `TaskRun`.
    path: where to write the PNG.
  """
  setup = run.setup
  columns = _rate_columns(run)
  figure, axes = _figure(len(run.presets), len(columns), 7 * len(columns), 4.2)
  for row, preset in enumerate(run.presets):
    for column, (rates, chosen) in enumerate(columns):
      trials = {name: chosen[(preset, name)] for name in run.optimizers}
      _loss_panel(
        axes[row, column],
        {name: t.batch_losses for name, t in trials.items()},
        {name: f"lr {t.learning_rate:g}" for name, t in trials.items()},
        title=f"preset {preset}, {rates}",
        smoothing=getattr(setup, "smoothing", 1),
        threshold=getattr(setup, "loss_threshold", None),
      )
  figure.suptitle("Digits: linear layer 64→10, MSE on one-hot targets, loss during training")
  return _save(figure, path)


# ---------------------------------------------------------------------------------------
# Line fits: the loss surface with each optimizer's path, and the slow parameter over time.


def _view(paths: Sequence[np.ndarray], setup: LineFitSetup, optimum: tuple[float, float]) -> tuple[float, ...]:
  """`(m_low, m_high, b_low, b_high)`: the start, the optimum and the middle 98 % of every path."""
  points = [np.array([[0.0, 0.0], [setup.slope, setup.intercept], optimum])]
  for path in paths:
    finite = path[np.all(np.isfinite(path), axis=1)]
    if finite.size:
      points.append(np.percentile(finite, [1, 99], axis=0))
  stacked = np.concatenate(points)
  low, high = stacked.min(axis=0), stacked.max(axis=0)
  pad = 0.15 * np.maximum(high - low, 1e-3)
  return (low[0] - pad[0], high[0] + pad[0], low[1] - pad[1], high[1] + pad[1])


def _landscape_panel(axes: Any, run: TaskRun, trials: Mapping[str, Trial], preset: str) -> None:
  setup = run.setup
  assert isinstance(setup, LineFitSetup) and run.x is not None and run.y is not None
  slope, intercept = np.polyfit(run.x.astype(np.float64), run.y.astype(np.float64), 1)
  optimum = (float(slope), float(intercept))
  live = {name: t for name, t in trials.items() if not t.diverged and t.path is not None}
  m_low, m_high, b_low, b_high = _view([t.path for t in live.values() if t.path is not None], setup, optimum)
  grid_m, grid_b = np.meshgrid(np.linspace(m_low, m_high, 160), np.linspace(b_low, b_high, 160))
  surface = loss_surface(run.x, run.y, grid_m, grid_b)
  floor = max(float(surface.min()), 1e-6 * float(surface.max()), 1e-12)
  levels = np.geomspace(floor * 1.02, float(surface.max()), 14)
  axes.contourf(grid_m, grid_b, np.log10(np.maximum(surface, floor)), levels=20, cmap="Greys", alpha=0.35)
  axes.contour(grid_m, grid_b, surface, levels=levels, colors="0.45", linewidths=0.6)
  notes = overlap_notes({name: t.path for name, t in live.items() if t.path is not None})
  for index, (name, trial) in enumerate(live.items()):
    assert trial.path is not None
    style = optimizer_style(name)
    every = max(1, len(trial.path) // 10)
    axes.plot(
      trial.path[:, 0],
      trial.path[:, 1],
      linewidth=1.2,
      markevery=((index * every) // max(len(live), 1), every),
      markersize=5,
      label=_label(name, notes, f"lr {trial.learning_rate:g}"),
      **style,
    )
    axes.plot(*trial.path[-1], marker=style["marker"], color=style["color"], markersize=9, markeredgecolor="black")
  for name, trial in trials.items():
    if name not in live:
      axes.plot([], [], label=f"{name} (lr {trial.learning_rate:g}): diverged", **optimizer_style(name))
  axes.plot(0, 0, marker="o", color="black", markersize=6, linestyle="none", label="start (0, 0)")
  axes.plot(
    *optimum,
    marker="*",
    color="gold",
    markersize=15,
    markeredgecolor="black",
    linestyle="none",
    label=f"least-squares minimum ({optimum[0]:.2f}, {optimum[1]:.2f})",
  )
  axes.set(xlim=(m_low, m_high), ylim=(b_low, b_high), xlabel="slope m", ylabel="intercept b")
  axes.set_title(f"preset {preset}, default rates: loss surface, paths from (0, 0)")
  axes.legend(fontsize="x-small", loc="best")


def _slow_panel(axes: Any, run: TaskRun, trials: Mapping[str, Trial], title: str) -> None:
  setup = run.setup
  assert isinstance(setup, LineFitSetup)
  column = 0 if setup.slow_parameter == "m" else 1
  curves = {name: t.path[1:, column] for name, t in trials.items() if t.path is not None and not t.diverged}
  notes = overlap_notes(curves)
  labels = {name: _label(name, notes, f"lr {trials[name].learning_rate:g}") for name in curves}
  _draw_curves(axes, curves, labels, max(1, setup.updates // 10))
  name = "slope m" if setup.slow_parameter == "m" else "intercept b"
  axes.axhline(
    setup.slow_target, color="black", linestyle="--", linewidth=1, label=f"true {name} = {setup.slow_target:g}"
  )
  axes.set(xlabel="updates", ylabel=name)
  axes.set_title(f"{title}: {name} during training")
  axes.grid(True, alpha=0.3)
  axes.legend(fontsize="x-small")


def plot_landscape(run: TaskRun, path: PathLike) -> pathlib.Path:
  """For a line-fit run, a row per preset: the loss surface over (m, b) as contours with each
  optimizer's path from (0, 0) at the default rates, and the slow parameter against updates at
  the default rates and (when swept) at the best rates; returns the PNG's path.

  The surface is the mean squared error over all points (`loss_surface`); its long, narrow
  valley runs along the slow parameter. The paths are drawn at the default rates, where the
  lesson is visible (SGD at a rate safe for the fast parameter crawls along the valley); at the
  best rates per-example noise fills the valley, and the sweep plot tells that story.

  Args:
    run: a "regression" or "spreadsheet" `TaskRun`.
    path: where to write the PNG.
  """
  if not isinstance(run.setup, LineFitSetup):
    raise ValueError(f"plot_landscape needs a line-fit run, got task {run.task!r}.")
  columns = _rate_columns(run)
  figure, axes = _figure(len(run.presets), 1 + len(columns), 6.2 * (1 + len(columns)), 4.8)
  for row, preset in enumerate(run.presets):
    _landscape_panel(axes[row, 0], run, {name: run.default[(preset, name)] for name in run.optimizers}, preset)
    for column, (rates, chosen) in enumerate(columns, start=1):
      trials = {name: chosen[(preset, name)] for name in run.optimizers}
      _slow_panel(axes[row, column], run, trials, f"preset {preset}, {rates}")
  figure.suptitle(f"Line fit {run.setup.describe()}")
  return _save(figure, path)


def plot_line_fit(comparison: LineFitComparison, path: PathLike) -> pathlib.Path:
  """Two panels: the points with the true and each fitted line, and the slope `m` per update.

  Args:
    comparison: the output of `compare_line_fit`.
    path: where to write the PNG.
  """
  setup = comparison.setup
  figure, axes = _figure(1, 2, 12)
  data_axes, path_axes = axes[0]
  data_axes.scatter(comparison.x, comparison.y, s=6, color="0.7", label="data")
  ends = np.array([setup.x_offset - setup.x_range, setup.x_offset + setup.x_range])
  data_axes.plot(
    ends,
    setup.slope * ends + setup.intercept,
    color="black",
    linestyle="--",
    label=f"true: m={setup.slope:g}, b={setup.intercept:g}",
  )
  slopes = {name: r.path[1:, 0] for name, r in comparison.results.items()}
  notes = overlap_notes(slopes)
  for name, result in comparison.results.items():
    style = optimizer_style(name)
    data_axes.plot(
      ends,
      result.m * ends + result.b,
      linewidth=1.6,
      label=f"{name}: m={result.m:.2f}, b={result.b:.2f}",
      color=style["color"],
      linestyle=style["linestyle"],
    )
  labels = {name: _label(name, notes, f"lr {r.learning_rate:g}") for name, r in comparison.results.items()}
  _draw_curves(path_axes, slopes, labels, max(1, setup.updates // 10))
  data_axes.set(xlabel="x", ylabel="y", title=f"Fitted lines after {setup.epochs} epochs ({setup.updates} updates)")
  path_axes.axhline(setup.slope, color="black", linestyle="--", linewidth=1, label=f"true m = {setup.slope:g}")
  updates = "one example per update" if setup.batch_size == 1 else f"{setup.batch_size} examples per update"
  path_axes.set(xlabel="updates", ylabel="slope m", title=f"Slope m during training ({updates})")
  for panel in (data_axes, path_axes):
    panel.grid(True, alpha=0.3)
    panel.legend(fontsize="small")
  return _save(figure, path)


# ---------------------------------------------------------------------------------------
# The sweep.


def _sweep_panel(axes: Any, run: TaskRun, preset: str) -> None:
  finals = [t.final_loss for (p, _), ts in run.trials.items() if p == preset for t in ts if not t.diverged]
  starts = [t.initial_loss for ts in run.trials.values() for t in ts]
  top = 3 * max(starts) if starts else 1.0
  bottom = 0.5 * min(finals) if finals else top / 1e3
  curves = {
    name: np.array([np.nan if t.diverged else t.final_loss for t in run.trials[(preset, name)]])
    for name in run.optimizers
  }
  notes = overlap_notes(curves)
  for name in run.optimizers:
    trials = run.trials[(preset, name)]
    style = optimizer_style(name)
    rates = np.array([t.learning_rate for t in trials])
    axes.plot(rates, curves[name], label=_label(name, notes), linewidth=1.4, markersize=5, **style)
    blown = rates[[t.diverged for t in trials]]
    if blown.size:
      axes.plot(blown, np.full(blown.size, top), linestyle="none", marker="x", color=style["color"], markersize=8)
    best = run.best[(preset, name)]
    if not best.diverged:
      axes.plot(
        best.learning_rate,
        best.final_loss,
        marker="*",
        color=style["color"],
        markersize=16,
        markeredgecolor="black",
        linestyle="none",
      )
  threshold = getattr(run.setup, "loss_threshold", None)
  if threshold is not None:
    axes.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
  axes.plot([], [], linestyle="none", marker="x", color="black", label="diverged (drawn at the top)")
  axes.plot([], [], linestyle="none", marker="*", color="white", markeredgecolor="black", markersize=12, label="best")
  axes.set(xscale="log", yscale="log", ylim=(bottom, top * 1.5), xlabel="learning rate", ylabel="final loss")
  axes.set_title(f"{run.task}, preset {preset}: final loss against learning rate")
  axes.grid(True, which="both", alpha=0.3)
  axes.legend(fontsize="x-small")


def plot_sweep(runs: Sequence[TaskRun], path: PathLike) -> pathlib.Path:
  """Final loss against learning rate, one line per optimizer: a column per task, a row per preset.

  Diverged rates are marked with an x at the top of the panel, each optimizer's best rate
  with a star. Returns the PNG's path.

  Args:
    runs: swept `TaskRun`s (the same presets in each).
    path: where to write the PNG.
  """
  swept = [run for run in runs if run.swept]
  if not swept:
    raise ValueError("plot_sweep needs at least one swept task run.")
  preset_names = swept[0].presets
  figure, axes = _figure(len(preset_names), len(swept), 6.5 * len(swept), 4.8)
  for column, run in enumerate(swept):
    for row, preset in enumerate(preset_names):
      _sweep_panel(axes[row, column], run, preset)
  return _save(figure, path)


# ---------------------------------------------------------------------------------------
# What `compare` writes.


def plot_files(tasks: Sequence[str], swept: bool) -> list[str]:
  """The file names `save_plots` writes for `tasks` (and the sweep).

  Args:
    tasks: the tasks that run.
    swept: whether the learning rates are swept.
  """
  return [f"compare_{task}.png" for task in tasks] + (["compare_sweep.png"] if swept else [])


def save_plots(out_dir: PathLike, runs: Sequence[TaskRun]) -> list[pathlib.Path]:
  """Writes every plot of `runs` into `out_dir` (named by `plot_files`); returns their paths.

  Args:
    out_dir: the folder (created if missing).
    runs: the task runs.
  """
  out_dir = pathlib.Path(out_dir)
  written = []
  for run in runs:
    target = out_dir / f"compare_{run.task}.png"
    written.append(plot_digits(run, target) if run.task == "digits" else plot_landscape(run, target))
  if any(run.swept for run in runs):
    written.append(plot_sweep(runs, out_dir / "compare_sweep.png"))
  return written


def save_comparison_plots(
  out_dir: PathLike,
  line_fit: Optional[LineFitComparison] = None,
  digits: Optional[DigitsComparison] = None,
) -> list[pathlib.Path]:
  """Writes `compare_regression.png` (`plot_line_fit`) and/or `compare_digits.png` (loss curves).

  The examples' plots, from `compare_line_fit` and `compare_digits`. Returns the paths.

  Args:
    out_dir: the folder (created if missing).
    line_fit: a line-fit comparison, or None.
    digits: a digits comparison, or None.
  """
  out_dir = pathlib.Path(out_dir)
  written = []
  if line_fit is not None:
    written.append(plot_line_fit(line_fit, out_dir / "compare_regression.png"))
  if digits is not None:
    setup = digits.setup
    written.append(
      plot_loss_curves(
        {name: r.batch_losses for name, r in digits.results.items()},
        out_dir / "compare_digits.png",
        title=f"Digits, linear 64→10, MSE on one-hot targets, {setup.batch_size} examples per update",
        smoothing=setup.smoothing,
        threshold=setup.loss_threshold,
      )
    )
  return written
