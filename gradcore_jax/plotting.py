"""The experiments' plots under their first module name (they live in `gradcore_jax.compare.plots`).

matplotlib is still imported on first use only; every name here is the `gradcore_jax.compare`
object itself.
"""

from gradcore_jax.compare.plots import plot_landscape
from gradcore_jax.compare.plots import plot_line_fit
from gradcore_jax.compare.plots import plot_loss_curves
from gradcore_jax.compare.plots import plot_sweep
from gradcore_jax.compare.plots import require_matplotlib
from gradcore_jax.compare.plots import save_comparison_plots
from gradcore_jax.compare.plots import save_plots

__all__ = [
  "plot_landscape",
  "plot_line_fit",
  "plot_loss_curves",
  "plot_sweep",
  "require_matplotlib",
  "save_comparison_plots",
  "save_plots",
]
