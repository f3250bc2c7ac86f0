"""A small CNN with BatchNorm and Dropout (Flax NNX) on scikit-learn's 8x8 digits, trained by
`gcj.fit` with an eval loader, accuracy and macro F1, `EarlyStopping(restore_best=True)` and a
`CSVLogger`; the curves are drawn from the CSV file.

The point is the two modes. Training steps run the network in train mode (Dropout on, BatchNorm
normalizing with each batch's statistics and updating its running averages); the eval loader and
`gcj.evaluate` run it in eval mode (no dropout, the running averages). The summary shows the
same returned model scored both ways on the test set: what `fit` reports, and what a loop that
forgot to switch the model to eval mode would have said.

Writes `training.csv` and `curves.png` to `./gradcore-examples/cnn_batchnorm_dropout/`.

Run: python examples/cnn_batchnorm_dropout.py [--quick] [--epochs N] [--patience N] [--out DIR] [--no-plot]
"""

from __future__ import annotations

import csv
import pathlib
from typing import Optional
from typing import Sequence

import _shared
import jax
import numpy as np
from flax import nnx

import gradcore_jax as gcj
from gradcore_jax import experiments

BATCH = 32
EPOCHS = 60  # an upper bound: EarlyStopping ends the run well before it
PATIENCE = 6
DROPOUT = 0.5
LEARNING_RATE = 1e-3


class CNN(nnx.Module):
  """8x8x1 -> conv 3x3 (16) -> BN -> ReLU -> conv 3x3 (32) -> BN -> ReLU -> 2x2 mean pool
  -> Dropout -> 10 logits. The convolutions have no bias: BatchNorm's shift replaces it."""

  def __init__(self, dropout: float, *, rngs: nnx.Rngs) -> None:
    """Builds the layers.

    Args:
      dropout: the dropout rate before the output layer.
      rngs: the random streams for the initial weights and the dropout masks.
    """
    self.conv1 = nnx.Conv(1, 16, (3, 3), use_bias=False, rngs=rngs)
    self.norm1 = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)  # torch's momentum=0.1
    self.conv2 = nnx.Conv(16, 32, (3, 3), use_bias=False, rngs=rngs)
    self.norm2 = nnx.BatchNorm(32, momentum=0.9, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.out = nnx.Linear(4 * 4 * 32, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.norm1(self.conv1(x)))
    x = nnx.relu(self.norm2(self.conv2(x)))
    x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
    return self.out(self.dropout(x.reshape(x.shape[0], -1)))


def train_mode_accuracy(model: CNN, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
  """Test accuracy with the model left in train mode, over batches of `batch_size`.

  Runs on a clone switched by `.train()`: dropout draws masks and BatchNorm normalizes each
  batch with its own statistics (the clone's running averages move too, the model's do not).

  Args:
    model: the trained module; left as it is.
    x: the test images, `(n, 8, 8, 1)`.
    y: the test labels, `(n,)`.
    batch_size: the images per forward pass (the batch statistics come from these).
  """
  twin = nnx.clone(model)
  twin.train()
  forward = nnx.jit(lambda m, images: m(images))
  correct = 0
  for start in range(0, len(x), batch_size):
    logits = forward(twin, x[start : start + batch_size])
    correct += int(np.sum(np.argmax(np.asarray(logits), axis=1) == y[start : start + batch_size]))
  return correct / len(x)


def read_log(path: pathlib.Path) -> dict[str, np.ndarray]:
  """The CSVLogger file as one float array per column."""
  with open(path, newline="") as file:
    rows = list(csv.DictReader(file))
  return {name: np.array([float(row[name]) for row in rows]) for name in rows[0]}


def plot(log: dict[str, np.ndarray], best_epoch: int, out: pathlib.Path) -> pathlib.Path:
  """Train and eval loss and accuracy per epoch, from the CSV log, with the best epoch marked."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
  epochs = log["epoch"]
  left.plot(epochs, log["loss"], label="train (train mode, epoch running)")
  left.plot(epochs, log["eval_loss"], label="test (eval mode)")
  left.set_ylabel("cross-entropy")
  left.set_yscale("log")
  right.plot(epochs, 100 * log["accuracy"], label="train (train mode, epoch running)")
  right.plot(epochs, 100 * log["eval_accuracy"], label="test (eval mode)")
  right.plot(epochs, 100 * log["eval_f1_macro"], linestyle=":", label="test macro F1 x 100 (eval mode)")
  right.set_ylabel("accuracy (%)")
  for axis in (left, right):
    axis.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
    axis.set_xlabel("epoch (as in the CSV, from 0)")
    axis.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    axis.legend()
  fig.suptitle("BatchNorm + Dropout CNN on the 8x8 digits: EarlyStopping on eval_loss")
  fig.tight_layout()
  path = out / "curves.png"
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = _shared.parser(__doc__ or "", plots="cnn_batchnorm_dropout")
  parser.add_argument("--epochs", type=int, default=None, help=f"most epochs (default {EPOCHS}; --quick: 3)")
  parser.add_argument("--patience", type=int, default=PATIENCE, help=f"EarlyStopping patience (default {PATIENCE})")
  args = parser.parse_args(argv)
  epochs = args.epochs if args.epochs is not None else (_shared.QUICK_EPOCHS if args.quick else EPOCHS)
  if epochs < 1:
    parser.error(f"--epochs must be at least 1, got {epochs}")
  args.out.mkdir(parents=True, exist_ok=True)
  csv_path = args.out / "training.csv"

  split = experiments.digits_data(0)
  x_train, x_test = split.x_train.reshape(-1, 8, 8, 1), split.x_test.reshape(-1, 8, 8, 1)
  train_loader = gcj.DataLoader((x_train, split.y_train), batch_size=BATCH, shuffle=True, seed=0)
  test_loader = gcj.DataLoader((x_test, split.y_test), batch_size=len(x_test))
  model = CNN(DROPOUT, rngs=nnx.Rngs(0))
  n_params = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  print(
    f"digits: {len(x_train)} training and {len(x_test)} test images of 8x8 pixels, batches of {BATCH}; "
    f"CNN with {n_params:,} parameters, BatchNorm and Dropout({DROPOUT}); Adam({LEARNING_RATE}), "
    f"at most {epochs} epochs\n"
  )

  stopping = gcj.callbacks.EarlyStopping(monitor="eval_loss", patience=args.patience, restore_best=True)
  metrics = {"accuracy": gcj.metrics.accuracy(), "f1_macro": gcj.metrics.f1(num_classes=10, average="macro")}
  model, stats = gcj.fit(
    model,
    nnx.Optimizer(model, gcj.adam(LEARNING_RATE), wrt=nnx.Param),
    loss=gcj.losses.cross_entropy,
    train_loader=train_loader,
    eval_loader=test_loader,
    metrics=metrics,
    epochs=epochs,
    seed=0,
    callbacks=[stopping, gcj.callbacks.CSVLogger(csv_path)],
    progress=False,
  )

  best = stopping.best_epoch
  assert best is not None  # at least one epoch was monitored
  log = read_log(csv_path)
  rows = len(log["epoch"])
  every = max(1, rows // 10)  # about ten rows, with the best epoch's and the last
  shown = sorted({*range(0, rows, every), best, rows - 1})
  print("epoch  train loss  train acc  test loss  test acc  test F1 macro   (train: train mode; test: eval mode)")
  for i in shown:
    print(
      f"{int(log['epoch'][i]):5d}  {log['loss'][i]:10.4f}  {100 * log['accuracy'][i]:7.2f} %  "
      f"{log['eval_loss'][i]:9.4f}  {100 * log['eval_accuracy'][i]:6.2f} %  {log['eval_f1_macro'][i]:13.4f}"
    )

  stopped = f"stopped after epoch {stopping.stopped_epoch}" if stopping.stopped_epoch is not None else "ran all epochs"
  print(
    f"\nEarlyStopping(eval_loss, patience={args.patience}): {stopped}; best epoch {best} "
    f"(test loss {stopping.best:.4f}); the returned model is that epoch's (restore_best=True)"
  )

  at_best = stats.eval_metrics[best]
  now = gcj.evaluate(model, test_loader, loss=gcj.losses.cross_entropy, metrics=metrics)
  same = "matches" if now == at_best else f"DIFFERS from {at_best}"
  train_mode = train_mode_accuracy(model, x_test, split.y_test, BATCH)
  print(f"The returned model on the {len(x_test)} test images:")
  print(
    f"  eval mode, gcj.evaluate:  accuracy {100 * now['accuracy']:.2f} %, macro F1 {now['f1_macro']:.4f} "
    f"({same} stats.eval_metrics[{best}])"
  )
  print(
    f"  train mode, batches of {BATCH} (dropout on, batch statistics): accuracy {100 * train_mode:.2f} % "
    f"({100 * (train_mode - now['accuracy']):+.2f} points)"
  )
  print(
    f"  fit's training accuracy of epoch {best} (train mode, weights moving): "
    f"{100 * stats.train_metrics[best]['accuracy']:.2f} %"
  )
  print(f"\nTrainingStats: epochs_trained={stats.epochs_trained}, total_steps={stats.total_steps}")
  print(f"CSV log (every epoch): {csv_path}")
  if not args.no_plot:
    print(f"Plot: {plot(log, best, args.out)}")
  return 0 if now == at_best else 1


if __name__ == "__main__":
  raise SystemExit(main())
