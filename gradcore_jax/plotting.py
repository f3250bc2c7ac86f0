"""PNG plots of the experiments in `gradcore_jax.experiments`.

matplotlib is imported on first use, never at import time, so the library and
`gradcore-jax compare --no-plot` run without it. Figures are drawn with matplotlib's
object API (`matplotlib.figure.Figure`, rendered by Agg), which leaves pyplot and the
process-wide backend untouched.
"""

from __future__ import annotations

import pathlib
from typing import Any
from typing import Mapping
from typing import Optional
from typing import Union

import numpy as np

from gradcore_jax.experiments import DigitsComparison
from gradcore_jax.experiments import LineFitComparison
from gradcore_jax.experiments import trailing_mean

PathLike = Union[str, pathlib.Path]


def require_matplotlib() -> Any:
  """matplotlib's `Figure` class, or an ImportError that says how to install it."""
  try:
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    raise ImportError("Plots need matplotlib: pip install 'gradcore-jax[examples]' (or pass --no-plot).") from err
  return Figure


def _figure(columns: int, width: float) -> tuple[Any, Any]:
  """A new Agg-rendered figure with `columns` side-by-side axes."""
  figure = require_matplotlib()(figsize=(width, 4.5), layout="constrained")
  return figure, figure.subplots(1, columns, squeeze=False)[0]


def _save(figure: Any, path: PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=110)
  return path


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
  """
  figure, (axes,) = _figure(1, 7.5)
  for name, losses in curves.items():
    if len(losses):
      axes.plot(np.arange(1, len(losses) + 1), trailing_mean(losses, smoothing), label=name, linewidth=1.4)
  if threshold is not None:
    axes.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
  axes.set_yscale("log")
  axes.set_xlabel("updates")
  axes.set_ylabel("loss" if smoothing == 1 else f"loss (mean of the last {smoothing} batches)")
  axes.set_title(title)
  axes.grid(True, which="both", alpha=0.3)
  axes.legend()
  return _save(figure, path)


def plot_line_fit(comparison: LineFitComparison, path: PathLike) -> pathlib.Path:
  """Two panels: the points with the true and each fitted line, and the slope `m` per update."""
  setup = comparison.setup
  figure, (data_axes, path_axes) = _figure(2, 12)
  data_axes.scatter(comparison.x, comparison.y, s=6, color="0.7", label="data")
  ends = np.array([-setup.x_range, setup.x_range])
  data_axes.plot(
    ends,
    setup.slope * ends + setup.intercept,
    color="black",
    linestyle="--",
    label=f"true: m={setup.slope:g}, b={setup.intercept:g}",
  )
  for name, result in comparison.results.items():
    data_axes.plot(ends, result.m * ends + result.b, linewidth=1.6, label=f"{name}: m={result.m:.2f}, b={result.b:.2f}")
    path_axes.plot(result.path[:, 0], linewidth=1.4, label=name)
  data_axes.set(xlabel="x", ylabel="y", title=f"Fitted lines after {setup.epochs} epochs")
  path_axes.axhline(setup.slope, color="black", linestyle="--", linewidth=1, label=f"true m = {setup.slope:g}")
  path_axes.set(xlabel="updates", ylabel="slope m", title=f"Slope during training (batch {setup.batch_size})")
  for axes in (data_axes, path_axes):
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
  return _save(figure, path)


def save_comparison_plots(
  out_dir: PathLike,
  line_fit: Optional[LineFitComparison] = None,
  digits: Optional[DigitsComparison] = None,
) -> list[pathlib.Path]:
  """Writes `compare_regression.png` and/or `compare_digits.png` into `out_dir`; returns their paths."""
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
        title=f"Digits, linear 64→10, MSE on one-hot targets, batch {setup.batch_size}",
        smoothing=setup.smoothing,
        threshold=setup.loss_threshold,
      )
    )
  return written
