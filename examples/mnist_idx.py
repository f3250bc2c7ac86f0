"""gradientcore's MNIST recipe on real MNIST, read from IDX files you already have (nothing is
downloaded): 784 -> 128 -> ReLU -> 10, cross-entropy, Adam with lr 5e-4, batch 64, 40 epochs
(gradientcore reports 97.77 % test accuracy with it).

--data-dir must hold train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte
and t10k-labels-idx1-ubyte (each may be gzipped, `.gz`, or spelled `train-images.idx3-ubyte`).

Run: python examples/mnist_idx.py --data-dir DIR [--epochs N] [--quick]
"""

from __future__ import annotations

import pathlib
import sys
from typing import Optional
from typing import Sequence

import _shared
import numpy as np

import gradcore_jax as gcj
from gradcore_jax import cli
from gradcore_jax import experiments
from gradcore_jax import idx
from gradcore_jax import losses
from gradcore_jax import metrics
from gradcore_jax.data import DataLoader
from gradcore_jax.training import TrainingStats
from gradcore_jax.training import fit

EPOCHS = 40
QUICK_EXAMPLES = 2048  # --quick: one epoch over at most this many training images
HIDDEN = 128
BATCH = 64


def as_features(images: np.ndarray) -> np.ndarray:
  """uint8 images `(n, rows, cols)` -> float32 rows of pixels scaled to [0, 1]."""
  return images.reshape(len(images), -1).astype(np.float32) / 255.0


def report(stats: TrainingStats) -> str:
  lines = ["epoch  train loss (epoch running)  test loss  test accuracy"]
  for e, test in enumerate(stats.eval_metrics):
    lines.append(f"{e + 1:5d}  {stats.epoch_losses[e]:26.4f}  {test['loss']:9.4f}  {100 * test['accuracy']:11.2f} %")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = _shared.parser(__doc__)
  parser.add_argument("--data-dir", type=pathlib.Path, required=True, metavar="DIR", help="folder of the IDX files")
  parser.add_argument("--epochs", type=cli.positive_int, default=EPOCHS, metavar="N",
                      help=f"epochs (default: {EPOCHS})")
  args = parser.parse_args(argv)
  try:
    data = idx.load_mnist(args.data_dir)
  except (FileNotFoundError, ValueError) as err:
    print(f"mnist_idx.py: error: {err}", file=sys.stderr)
    return 1
  x_train, y_train = as_features(data.train_images), data.train_labels.astype(np.int32)
  x_test, y_test = as_features(data.test_images), data.test_labels.astype(np.int32)
  epochs = args.epochs
  if args.quick:
    x_train, y_train, epochs = x_train[:QUICK_EXAMPLES], y_train[:QUICK_EXAMPLES], 1
  print(f"MNIST from {args.data_dir}: {len(x_train):,} training and {len(x_test):,} test images "
        f"of {x_train.shape[1]} pixels; {epochs} epoch(s)")
  params = experiments.init_mlp(np.random.default_rng(0), (x_train.shape[1], HIDDEN, 10))
  _, stats = fit(
      experiments.mlp, gcj.adam(5e-4), params=params, loss=losses.cross_entropy,
      train_loader=DataLoader((x_train, y_train), batch_size=BATCH, shuffle=True, seed=0),
      eval_loader=DataLoader((x_test, y_test), batch_size=min(1000, len(x_test))),
      metrics={"accuracy": metrics.accuracy()}, epochs=epochs, progress=not args.quick,
  )
  print(report(stats))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
