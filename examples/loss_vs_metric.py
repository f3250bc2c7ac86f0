"""Why the MSE loss differs from the MSE metric: the source note's three demonstrations in JAX.

Its set-up: 100 examples with 10 uniform features and a uniform target, a linear layer without
bias (weights drawn from N(0, 0.05^2)), Adam with lr 0.01, one epoch.

1. Within an epoch: the loss of each batch against the epoch's running metric.
2. Two batch sizes: the same epoch, started from the same weights, with batches of 10 and 20
   (and 30, whose last batch is short).
3. The training loop's metric against an evaluation over the whole data set.

Run: python examples/loss_vs_metric.py [--quick]   (it takes a few seconds either way)
"""

from __future__ import annotations

from typing import Optional
from typing import Sequence

import _shared
import jax
import numpy as np

import gradcore_jax as gcj
from gradcore_jax import losses
from gradcore_jax import metrics
from gradcore_jax.data import DataLoader
from gradcore_jax.training import FitResult
from gradcore_jax.training import evaluate
from gradcore_jax.training import fit

RNG = np.random.default_rng(0)
X = RNG.random((100, 10), dtype=np.float32)
Y = RNG.random((100, 1), dtype=np.float32)
INITIAL = {"w": (0.05 * RNG.standard_normal((10, 1))).astype(np.float32)}
METRICS = {"mse": metrics.mean_squared_error()}


def linear(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  """The note's `Dense(1, use_bias=False)`."""
  return x @ params["w"]


def train(batch_size: int) -> FitResult:
  """One epoch over the 100 examples in order, from the same initial weights every time."""
  return fit(
      linear, gcj.adam(1e-2), params=INITIAL, loss=losses.mse, metrics=METRICS,
      train_loader=DataLoader((X, Y), batch_size=batch_size), epochs=1, progress=False,
  )


def whole_data_mse(params: dict[str, jax.Array], batch_size: int = 100) -> float:
  """The MSE of fixed `params` over all 100 examples (`evaluate`)."""
  return evaluate(linear, DataLoader((X, Y), batch_size=batch_size), loss=losses.mse, params=params)["loss"]


def within_an_epoch() -> FitResult:
  print("1. Batch loss vs running metric (batch size 10, so 10 updates in the epoch)\n")
  result = train(10)
  stats = result.stats
  print("batch  loss of this batch  running MSE of the epoch so far")
  for i, (loss, running) in enumerate(zip(stats.batch_losses, stats.running_losses, strict=True), start=1):
    print(f"{i:5d}  {loss:18.4f}  {running:31.4f}")
  print(f"""
 - loss of this batch: the MSE of its 10 examples under the weights before its update; its gradient
   made that update. It jumps from batch to batch because every batch holds other examples.
 - running MSE: the squared errors of every example seen so far in the epoch, summed, divided by
   their number (10, 20, ..., 100). Batch 1 gives the same number twice (the same 10 examples);
   from batch 2 on, the running figure also carries the earlier batches, each measured with the
   weights of its own step.
 - after the last batch, the running MSE is the epoch's figure: stats.epoch_losses[0] = {stats.epoch_losses[0]:.4f},
   and the MSE metric accumulated alongside gives stats.train_metrics[0]['mse'] = {stats.train_metrics[0]['mse']:.4f}
   (the same statistic: sums of squared errors and a count of examples, reset every epoch).
""")
  return result


def two_batch_sizes() -> None:
  print("2. The same epoch with other batch sizes (each run starts from the same weights)\n")
  print("batch size  updates  epoch MSE (running)  mean of the batch losses  MSE of the final weights")
  for batch_size in (10, 20, 30):
    result = train(batch_size)
    stats = result.stats
    print(f"{batch_size:10d}  {stats.total_steps:7d}  {stats.epoch_losses[0]:19.4f}  "
          f"{np.mean(stats.batch_losses):24.4f}  {whole_data_mse(result.model):24.4f}")
  print("""
 - epoch MSE: every example counted once, whatever the batch size. It still changes with the batch
   size because the weights do: with batches of 10 Adam makes 10 updates, with 20 only 5, so the
   later examples are measured under different weights.
 - mean of the batch losses: what a loop that averages batch means reports. With 10 or 20 it equals the
   epoch MSE (all batches are full); with 30 the last batch holds 10 examples but counts as much as
   a batch of 30, so the plain mean is off. The epoch MSE weighs each batch by its examples.
 - MSE of the final weights: the whole data set under the weights the epoch ended with (see 3).
""")


def training_vs_evaluation(result: FitResult) -> None:
  print("3. The training loop's metric vs an evaluation over the whole data set (the run of 1)\n")
  epoch, evaluation = result.stats.epoch_losses[0], whole_data_mse(result.model)
  print(f"   training-loop MSE of the epoch                  {epoch:.4f}")
  print(f"   MSE of the final weights, all 100 examples      {evaluation:.4f}")
  print(f"   the same, evaluated in batches of 7             {whole_data_mse(result.model, batch_size=7):.4f}")
  trend = ("improved during the epoch, so the evaluation is lower" if evaluation < epoch
           else "got worse during the epoch, so the evaluation is higher")
  print(f"""
 - the training-loop figure mixes 10 sets of weights (each batch saw the weights of its step);
   the evaluation holds the final weights fixed over all 100 examples.
   The model {trend}.
 - the evaluation does not depend on how it is batched: the last batch of 7 is padded to the fixed
   batch shape and its padding is masked out, so every example counts exactly once.
""")


def main(argv: Optional[Sequence[str]] = None) -> int:
  _shared.parser(__doc__).parse_args(argv)
  result = within_an_epoch()
  two_batch_sizes()
  training_vs_evaluation(result)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
