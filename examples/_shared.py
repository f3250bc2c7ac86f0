"""What the examples share: their command-line flags, and the set-up of the RMSprop page's Full
Example (scikit-learn's diabetes data, Huber loss with delta 2.0, 100 epochs), which
`huber_rmsprop.py`, `flax_linen.py` and `flax_nnx.py` train with three kinds of model.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
from typing import Any
from typing import Optional

from gradcore_jax import experiments
from gradcore_jax import losses
from gradcore_jax import metrics
from gradcore_jax.data import DataLoader
from gradcore_jax.training import TrainingStats

# nn::HuberLoss criterion(2.0f): quadratic for |error| <= 2, linear beyond.
huber = functools.partial(losses.huber, delta=2.0)
FULL_EXAMPLE_EPOCHS = 100  # trainer.fit_dataloader(loader, 100)
FULL_EXAMPLE_BATCH = 32  # gradientcore's Trainer default batch size
HIDDEN = 32
QUICK_EPOCHS = 3


OUT_ROOT = pathlib.Path("gradcore-examples")


def parser(description: str, *, plots: Optional[str] = None) -> argparse.ArgumentParser:
  """An argument parser with `--quick` (the CI smoke-test budget) and, when `plots` names the
  example, `--out`/`--no-plot`: its plots go to `./gradcore-examples/<plots>/` by default, a
  folder of its own (so no example overwrites another's, or `gradcore-jax compare`'s)."""
  result = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
  result.add_argument("--quick", action="store_true", help="a few seconds' run (what the smoke test uses)")
  if plots is not None:
    default = OUT_ROOT / plots
    result.add_argument("--out", type=pathlib.Path, default=default, metavar="DIR",
                        help=f"directory for the PNG plots (default: ./{default}/)")
    result.add_argument("--no-plot", action="store_true", help="write no plots")
  return result


def fit_options(quick: bool, seed: int = 0) -> dict[str, Any]:
  """The keyword arguments of `fit` in the Full Example: the diabetes loaders (shuffled training
  batches of 32, the whole test set; targets shaped `(n, 1)` like the model's output), the
  Huber loss, the test MAE, and the epochs."""
  split = experiments.diabetes_data(seed)
  return {
      "loss": huber,
      "train_loader": DataLoader((split.x_train, split.y_train[:, None]), batch_size=FULL_EXAMPLE_BATCH,
                                 shuffle=True, seed=seed),
      "eval_loader": DataLoader((split.x_test, split.y_test[:, None]), batch_size=len(split.x_test)),
      "metrics": {"mae": metrics.mean_absolute_error()},
      "epochs": QUICK_EPOCHS if quick else FULL_EXAMPLE_EPOCHS,
      "progress": False,
  }


def report(stats: TrainingStats, *, rows: int = 10) -> str:
  """About `rows` lines of per-epoch figures, then the run's `TrainingStats` counters.

  Needs a `fit` run with `fit_options`.
  """
  every = max(1, stats.epochs_trained // rows)
  lines = ["epoch  train loss (epoch running)  test loss  test MAE"]
  for e in range(every - 1, stats.epochs_trained, every):
    test = stats.eval_metrics[e]
    lines.append(f"{e + 1:5d}  {stats.epoch_losses[e]:26.4f}  {test['loss']:9.4f}  {test['mae']:8.4f}")
  lines += [
      "",
      f"TrainingStats: epochs_trained={stats.epochs_trained}, total_steps={stats.total_steps}, "
      f"final_loss={stats.final_loss:.4f}",
      "(losses are Huber with delta 2 and MAE is in standard deviations of the target: "
      "the targets are standardized)",
  ]
  return "\n".join(lines)

