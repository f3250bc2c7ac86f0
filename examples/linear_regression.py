"""The article's line fit, step by step: y = 30x + 2 + noise, fitted from m = b = 0 by per-example
updates for 2 epochs with SGD, SGD with the article's EMA momentum, RMSprop and Adam
(`--setting spreadsheet`: the fast.ai spreadsheet's y = 2x + 30 with x up to 100 instead).

It shows (1) the very first update of each optimizer, worked out by hand next to the library's,
(2) m and b along the way, (3) the final table and (4) a plot of the lines and of the slope.
`gradcore-jax compare` runs the same fits over a grid of learning rates and under the article's
coefficients too, and draws the paths on the loss surface.

Run: python examples/linear_regression.py [--quick] [--setting regression|spreadsheet] [--out DIR] [--no-plot]
"""

from __future__ import annotations

import dataclasses
from typing import Callable
from typing import Optional
from typing import Sequence

import _shared
import numpy as np

from gradcore_jax.compare import line_fit
from gradcore_jax.compare import presets
from gradcore_jax.compare import report

# The first update from m = b = 0 with gradient g, by each optimizer's rule (state starts at zero).
FIRST_STEP: dict[str, tuple[str, Callable[[float, np.ndarray], np.ndarray]]] = {
    "sgd": ("-lr*g", lambda lr, g: -lr * g),
    "sgd_ema": ("-lr*(0.1*g): the EMA of g starts at 0", lambda lr, g: -lr * 0.1 * g),
    "rmsprop": ("-lr*g/sqrt(0.01*g^2) = -10*lr*sign(g)", lambda lr, g: -lr * g / (np.sqrt(0.01 * g * g) + 1e-8)),
    "adam": ("-lr*m_hat/sqrt(v_hat) = -lr*sign(g)", lambda lr, g: -lr * g / (np.abs(g) + 1e-8)),
}


def first_update(comparison: line_fit.LineFitComparison) -> str:
  """Each optimizer's first (m, b) by hand from the first example, next to the library's."""
  batches = line_fit.line_batches(comparison.x, comparison.y, comparison.setup)
  x0, y0 = float(batches.x[0, 0]), float(batches.y[0, 0])
  grad = np.array([2 * (0 - y0) * x0, 2 * (0 - y0)])  # d/dm and d/db of (m*x0 + b - y0)^2 at m = b = 0
  lines = [
      f"First example: x = {x0:.4f}, y = {y0:.4f}; at m = b = 0 the gradient is "
      f"dL/dm = 2*(0 - y)*x = {grad[0]:.4f}, dL/db = 2*(0 - y) = {grad[1]:.4f}",
      "",
      report.format_table(
          ["optimizer", "first step (rule)", "m, b by hand", "m, b from the library"],
          [[name, rule, "{:.4f}, {:.4f}".format(*step(comparison.results[name].learning_rate, grad)),
            "{:.4f}, {:.4f}".format(*comparison.results[name].path[1])]
           for name, (rule, step) in FIRST_STEP.items()],
          text_columns=2,
      ),
      "",
      "SGD's first step is as small as the gradient; RMSprop's and Adam's are lr-sized whatever the gradient.",
  ]
  return "\n".join(lines)


def along_the_way(comparison: line_fit.LineFitComparison) -> str:
  """m and b of every optimizer after 1, 10, 100 updates and at the end of each epoch."""
  per_epoch = comparison.setup.updates // comparison.setup.epochs
  marks = sorted({1, 10, 100, *(per_epoch * (e + 1) for e in range(comparison.setup.epochs))})
  marks = [u for u in marks if u <= comparison.setup.updates]
  rows = [[name, *(f"{r.path[u, 0]:.2f}, {r.path[u, 1]:.2f}" for u in marks)]
          for name, r in comparison.results.items()]
  return report.format_table(["m, b after update", *(str(u) for u in marks)], rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = _shared.parser(__doc__, plots="linear_regression")
  parser.add_argument("--setting", choices=tuple(line_fit.LINE_FIT_SETUPS), default="regression",
                      help="the article's y = 30x + 2 (default) or the spreadsheet's y = 2x + 30")
  args = parser.parse_args(argv)
  setup = line_fit.LINE_FIT_SETUPS[args.setting]
  if args.quick and args.setting == "regression":
    setup = dataclasses.replace(setup, num_points=100)
  rates = presets.learning_rates(args.setting, list(FIRST_STEP))
  comparison = line_fit.compare_line_fit(rates, setup)
  for text in (first_update(comparison), along_the_way(comparison), report.line_fit_report(comparison)):
    print(text + "\n")
  if not args.no_plot:
    from gradcore_jax.compare import plots  # pylint: disable=g-import-not-at-top

    print(f"Plot: {plots.plot_line_fit(comparison, args.out / f'linear_regression_{args.setting}.png')}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
