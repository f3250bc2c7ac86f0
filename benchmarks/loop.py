"""Training-loop throughput: `gradcore_jax.training.fit` against a hand-written jitted loop.

Both train the same Flax linen MLP with Adam on the same `DataLoader` batches:

* `handwritten_optax`: the loop an experienced user writes: a `TrainState`, one jitted
  step with the state donated, the masked mean cross-entropy, batch losses kept on the
  device and fetched once per epoch;
* `fit_optax` and `fit_gcj`: `fit` with `optax.adam` and `gradcore_jax.adam`;
* `fit_gcj_compiled_epoch`: `fit(..., compiled_epoch=True)`, each epoch one `lax.scan`.

Steps per second are taken per epoch, leaving out each run's first epoch (it compiles);
runs of the variants alternate in rounds, in a new random order each round. Peak memory is
how far the process's resident set rose above its size at the start of a run, at its
highest (the high-water mark is reset before each run), the median over the rounds. In
one process it counts what a run needs beyond what earlier runs left behind (compiler
memory the allocator kept, the code pages of jaxlib already touched), and the first run
of a process pays one-time costs the others do not (the median leaves it out):
`memory.py` takes that apart.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from typing import Any
from typing import Callable
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

import gradcore_jax as gcj
from benchmarks import common
from gradcore_jax import losses
from gradcore_jax.data import DataLoader
from gradcore_jax.training import fit

LEARNING_RATE = 1e-3


class MLP(nn.Module):
  hidden: Sequence[int]
  classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.classes)(x)


@dataclasses.dataclass(frozen=True)
class Workload:
  name: str
  model: nn.Module
  loader: DataLoader
  epochs: int


def _digits() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  return (x / 16).astype(np.float32), y.astype(np.int32)


def _synthetic(examples: int, features: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  x = rng.standard_normal((examples, features), dtype=np.float32)
  return x, (x[:, :classes].argmax(axis=1)).astype(np.int32)


def workloads(settings: common.Settings) -> list[Workload]:
  """The digits MLP (64 -> 64 -> 10; 4.8K params) and an MLP 256 -> 1024 -> 1024 -> 10 (1.3M
  params) on synthetic data; the digits MLP alone in a quick run."""
  digits = DataLoader(_digits(), batch_size=32, shuffle=True, seed=0)
  if settings.quick:
    return [Workload("digits_mlp", MLP((64,), 10), digits, 2)]
  large = DataLoader(_synthetic(8192, 256, 10), batch_size=128, shuffle=True, seed=0)
  return [
    Workload("digits_mlp", MLP((64,), 10), digits, 11),
    Workload("mlp_large", MLP((1024, 1024), 10), large, 3),
  ]


def _train_state(workload: Workload, tx: optax.GradientTransformation) -> TrainState:
  x = jnp.zeros((1,) + workload.loader.spec.data[0].shape[1:])
  params = workload.model.init(jax.random.key(0), x)["params"]
  return TrainState.create(apply_fn=workload.model.apply, params=params, tx=tx)


def handwritten(workload: Workload) -> list[float]:
  """Steps per second of each epoch of the hand-written loop."""
  state = _train_state(workload, optax.adam(LEARNING_RATE))

  def loss_fn(params: Any, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    per_example = optax.softmax_cross_entropy_with_integer_labels(state.apply_fn({"params": params}, x), y)
    return jnp.sum(jnp.where(mask, per_example, 0)) / jnp.maximum(jnp.sum(mask), 1)

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state: TrainState, x: jax.Array, y: jax.Array, mask: jax.Array) -> tuple[TrainState, jax.Array]:
    loss, grads = jax.value_and_grad(loss_fn)(state.params, x, y, mask)
    return state.apply_gradients(grads=grads), loss

  rates = []
  for epoch in range(workload.epochs):
    started = time.perf_counter()
    batch_losses = []
    for batch in workload.loader.epoch(epoch):
      (x, y), mask = batch.data, batch.mask
      state, loss = step(state, x, y, mask)
      batch_losses.append(loss)
    jax.device_get(batch_losses)
    rates.append(len(workload.loader) / (time.perf_counter() - started))
  return rates


def with_fit(
  tx_factory: Callable[[], optax.GradientTransformation], compiled_epoch: bool = False
) -> Callable[[Workload], list[float]]:
  def run(workload: Workload) -> list[float]:
    result = fit(
      _train_state(workload, tx_factory()),
      loss=losses.cross_entropy,
      train_loader=workload.loader,
      epochs=workload.epochs,
      progress=False,
      compiled_epoch=compiled_epoch,
    )
    return list(result.stats.steps_per_second)

  return run


VARIANTS: dict[str, Callable[[Workload], list[float]]] = {
  "handwritten_optax": handwritten,
  "fit_optax": with_fit(lambda: optax.adam(LEARNING_RATE)),
  "fit_gcj": with_fit(lambda: gcj.adam(LEARNING_RATE)),
  "fit_gcj_compiled_epoch": with_fit(lambda: gcj.adam(LEARNING_RATE), compiled_epoch=True),
}


def run_workload(workload: Workload, rounds: int) -> list[dict[str, Any]]:
  rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
  growth: dict[str, list[int]] = {name: [] for name in VARIANTS}
  for names in common.shuffled_rounds(list(VARIANTS), rounds):
    for name in names:
      variant = VARIANTS[name]
      common.reset_peak()
      before = common.resident_kib("VmRSS")
      rates[name].extend(variant(workload)[1:])  # epoch 0 compiles
      growth[name].append(common.resident_kib("VmHWM") - before)
  reference = statistics.median(rates["handwritten_optax"])
  return [
    {
      "workload": workload.name,
      "variant": name,
      "steps_per_s": statistics.median(values),
      "vs_handwritten": statistics.median(values) / reference,
      "peak_growth_mib": statistics.median(growth[name]) / 1024,
      "epochs_timed": len(values),
    }
    for name, values in rates.items()
  ]


def run(settings: common.Settings) -> dict[str, Any]:
  rounds = 1 if settings.quick else 5
  return {"loop": [row for workload in workloads(settings) for row in run_workload(workload, rounds)]}


COLUMNS = ("workload", "variant", "steps_per_s", "vs_handwritten", "peak_growth_mib", "epochs_timed")


def report(result: dict[str, Any]) -> str:
  return common.markdown_table(result["loop"], COLUMNS)
