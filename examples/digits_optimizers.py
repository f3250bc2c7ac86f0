"""The article's classifier comparison: one linear layer trained with the MSE loss on one-hot
targets, per optimizer, on scikit-learn's 8x8 digits (the embedded stand-in for MNIST: 64 pixels
instead of 784), through `gcj.fit`, with the loss curves as a PNG.

It also prints what each optimizer keeps per parameter (the article's "two values stored for
each initialized parameter" for Adam). `--preset article` uses the article's coefficients (Adam's
betas 0.9 and 0.9, RMSprop's average 0.9); `gradcore-jax compare` also sweeps the learning rates.

Run: python examples/digits_optimizers.py [--quick] [--optimizers sgd,adam,...] [--preset torch|article]
     [--out DIR] [--no-plot]
"""

from __future__ import annotations

from typing import Optional
from typing import Sequence

import _shared
import numpy as np

import gradcore_jax as gcj
from gradcore_jax.compare import cli
from gradcore_jax.compare import digits
from gradcore_jax.compare import presets
from gradcore_jax.compare import report
from gradcore_jax.compare._common import init_mlp


def state_sizes(names: Sequence[str], preset: str) -> str:
  """Bytes of each optimizer's state for the 64 -> 10 layer, and as a multiple of the parameters."""
  params = init_mlp(np.random.default_rng(0), (64, 10))
  memories = {name: gcj.state_memory(presets.make_optimizer(name, 0.1, preset).init(params), params)
              for name in names}
  rows = [[name, f"{m.state_bytes:,}", f"{m.multiple:.2f}x"] for name, m in memories.items()]
  param_bytes = next(iter(memories.values())).param_bytes
  return report.format_table(["optimizer", "state bytes", f"multiple of the {param_bytes:,} parameter bytes"], rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = _shared.parser(__doc__, plots="digits_optimizers")
  parser.add_argument("--optimizers", type=cli.optimizer_list, default=presets.DEFAULT_OPTIMIZERS,
                      metavar="LIST", help="comma-separated optimizer names (default: sgd,sgd_ema,rmsprop,adam)")
  parser.add_argument("--preset", choices=presets.PRESET_NAMES, default="torch",
                      help="the optimizers' coefficients: torch (default) or article")
  args = parser.parse_args(argv)
  print(state_sizes(args.optimizers, args.preset) + "\n")
  setup = digits.DigitsSetup(epochs=3 if args.quick else digits.DigitsSetup.epochs)
  comparison = digits.compare_digits(presets.learning_rates("digits", args.optimizers), setup, args.preset)
  print(f"preset {args.preset}: {presets.get_preset(args.preset).description}\n")
  print(report.digits_report(comparison) + "\n")
  if not args.no_plot:
    from gradcore_jax.compare import plots  # pylint: disable=g-import-not-at-top

    (path,) = plots.save_comparison_plots(args.out, digits=comparison)
    print(f"Plot: {path}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
