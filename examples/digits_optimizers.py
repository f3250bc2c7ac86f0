"""The article's classifier comparison: one linear layer trained with the MSE loss on one-hot
targets, per optimizer, on scikit-learn's 8x8 digits (the embedded stand-in for MNIST: 64 pixels
instead of 784), with the loss curves as a PNG.

It also prints what each optimizer keeps per parameter (the article's "two values stored for
each initialized parameter" for Adam).

Run: python examples/digits_optimizers.py [--quick] [--optimizers sgd,adam,...] [--out DIR] [--no-plot]
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

import _shared
import gradcore_jax as gcj
from gradcore_jax import cli
from gradcore_jax import experiments


def state_sizes(names: Sequence[str]) -> str:
  """Bytes of each optimizer's state for the 64 -> 10 layer, and as a multiple of the parameters."""
  params = experiments.init_mlp(np.random.default_rng(0), (64, 10))
  memories = {name: gcj.state_memory(experiments.make_optimizer(name, 0.1).init(params), params) for name in names}
  rows = [[name, f"{m.state_bytes:,}", f"{m.multiple:.2f}x"] for name, m in memories.items()]
  param_bytes = next(iter(memories.values())).param_bytes
  return cli.format_table(["optimizer", "state bytes", f"multiple of the {param_bytes:,} parameter bytes"], rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = _shared.parser(__doc__, plots=True)
  parser.add_argument("--optimizers", type=cli.optimizer_list, default=experiments.DEFAULT_OPTIMIZERS,
                      metavar="LIST", help="comma-separated optimizer names (default: sgd,sgd_ema,rmsprop,adam)")
  args = parser.parse_args(argv)
  print(state_sizes(args.optimizers) + "\n")
  setup = experiments.DigitsSetup(epochs=3 if args.quick else experiments.DigitsSetup.epochs)
  comparison = experiments.compare_digits(experiments.learning_rates("digits", args.optimizers), setup)
  print(cli.digits_report(comparison) + "\n")
  if not args.no_plot:
    from gradcore_jax import plotting  # pylint: disable=g-import-not-at-top

    (path,) = plotting.save_comparison_plots(args.out, digits=comparison)
    print(f"Plot: {path}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
