"""A short training run with checkpoints, which can kill itself mid-epoch; for `tests/test_checkpoint.py`.

    python tests/_resume_run.py DIR OUT [--kill-at K] [--compiled]

Trains a small Flax NNX model with BatchNorm and dropout (so its batch statistics and RNG
state matter) on synthetic data in which one target is infinite (so `on_nonfinite="skip"`
skips one step per epoch), with gradient clipping, checkpointing into DIR every few steps and resuming from DIR
when it holds a checkpoint. With `--kill-at K` the process sends itself SIGKILL when the
loader is asked for the run's K-th batch (counted from 0), i.e. mid-epoch, after the
checkpoints before it are complete. At the end it writes the final model state
(`OUT.npz`, keys are tree paths, PRNG keys as their key data) and the `TrainingStats`
without wall-clock times (`OUT.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import gradcore_jax as gcj  # noqa: E402

EXAMPLES, FEATURES, BATCH, EPOCHS, EVERY = 60, 4, 8, 3, 5  # 8 batches per epoch (the last one 4 rows)


class KillingLoader(gcj.DataLoader):
  """A DataLoader that kills its process when asked for the run's `kill_at`-th batch."""

  def __init__(self, *args, kill_at: int | None, **kwargs) -> None:
    super().__init__(*args, **kwargs)
    self.kill_at, self.served = kill_at, 0

  def epoch(self, epoch: int, *, start: int = 0):
    for batch in super().epoch(epoch, start=start):
      if self.served == self.kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
      self.served += 1
      yield batch


class Model(nnx.Module):
  def __init__(self, rngs: nnx.Rngs) -> None:
    self.hidden = nnx.Linear(FEATURES, 16, rngs=rngs)
    self.norm = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
    self.dropout = nnx.Dropout(0.25, rngs=rngs)
    self.out = nnx.Linear(16, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(self.dropout(nnx.tanh(self.norm(self.hidden(x)))))[:, 0]


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("directory")
  parser.add_argument("out")
  parser.add_argument("--kill-at", type=int, default=None)
  parser.add_argument("--compiled", action="store_true")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  x = rng.standard_normal((EXAMPLES, FEATURES)).astype(np.float32)
  y = np.tanh(x @ rng.standard_normal(FEATURES)).astype(np.float32)
  y[7] = np.inf  # one poisoned example: its batch is skipped once per epoch
  loader = KillingLoader((x, y), batch_size=BATCH, shuffle=True, seed=3, kill_at=args.kill_at)
  model = Model(nnx.Rngs(0, dropout=1))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  _, stats = gcj.fit(
      model,
      optimizer,
      loss=gcj.losses.mse,
      train_loader=loader,
      epochs=EPOCHS,
      metrics={"mae": gcj.metrics.mean_absolute_error()},
      log_interval=2,
      progress=False,
      clip_global_norm=1.0,
      on_nonfinite="skip",
      compiled_epoch=args.compiled,
      checkpoint_dir=args.directory,
      checkpoint_every=EVERY,
      keep=2,
      resume=True,
  )
  state = jax.tree_util.tree_flatten_with_path(nnx.state((model, optimizer)))[0]
  arrays = {
      jax.tree_util.keystr(path): np.asarray(jax.random.key_data(leaf) if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf)
      for path, leaf in state
  }
  np.savez(args.out + ".npz", **arrays)
  record = stats.to_dict()
  del record["epoch_times"], record["steps_per_second"]
  with open(args.out + ".json", "w") as f:
    json.dump(record, f)


if __name__ == "__main__":
  main()
