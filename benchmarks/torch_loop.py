"""`gradcore_jax.training.fit` against the equivalent PyTorch training loop.

Same model, same initial weights, same batches, same optimizer, same epochs:

* models: the digits MLP of `loop.py` (64 -> 64 -> 10, 4.8K params) and a small CNN on
  the 8x8 digit images (conv 3x3/16, ReLU, 2x2 max pool, conv 3x3/32, ReLU, 2x2 max
  pool, dense 10; 6.1K params), as Flax linen modules and as `torch.nn` modules; the
  torch weights are copied from the Flax initialisation (kernels transposed, the dense
  layer after the CNN's flatten reordered from NHWC to NCHW);
* batches: one `gradcore_jax.data.DataLoader` (batch 32, shuffled, seed 0) feeds every
  variant, epoch by epoch; torch sees each batch's real rows (`torch.from_numpy`, no
  copy), the short last batch short, as a torch `DataLoader` would give it;
* optimizer: `gcj.adam(1e-3)` and `torch.optim.Adam(lr=1e-3)` (the same update rule:
  gradcore_jax's Adam is torch's);
* loss: the mean cross-entropy over the batch's real rows.

Variants:

* `fit_gcj`: `fit`, one compiled step per batch;
* `fit_gcj_compiled_epoch`: `fit(..., compiled_epoch=True)`, each epoch one `lax.scan`;
* `torch_eager`: the usual loop (`zero_grad`, forward, `backward`, `step`; batch
  losses kept as tensors and read once per epoch), with torch's default threads;
* `torch_eager_1_thread`: the same with `torch.set_num_threads(1)`: at this size the
  threads only synchronise, and on a shared machine a 2-thread OpenMP region waits for
  the busier core at every op;
* `torch_compile`: the 1-thread loop with the module wrapped in `torch.compile` (forward
  and backward compiled by Inductor, the optimizer eager); full runs only, as Inductor
  takes tens of seconds per model here. The compiled module is built once per workload
  and its weights reset in place before each run, so only the first run compiles.

Steps per second are taken per epoch, leaving out each run's first epoch (compilation
or warm-up); runs alternate in rounds in a new random order each round; the figure is
the median over every timed epoch. Each row also gives the longest first epoch (what
compilation costs), the peak growth of the resident set during a run (as `loop.py`
measures it: the median over the rounds) and the relative difference of the run's epoch
losses from `fit_gcj`'s, for the first epoch (its updates start from the same weights: a check
that every variant trained the same model on the same batches, to float32 rounding) and
for the last. Rounding differs between XLA's and torch's kernels, and between XLA's
per-step and scanned code for convolutions, and training carries it on: the CNN's
trajectories part at about 1e-6 within the first epoch and by tenths of a percent a few
epochs later; the MLP's stay within about 3e-7.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any
from typing import Callable
from typing import Optional

import flax.linen as nn
import jax
import numpy as np
import torch
import torch.nn.functional as F

import gradcore_jax as gcj
from benchmarks import common
from benchmarks import loop
from gradcore_jax import losses
from gradcore_jax.data import DataLoader
from gradcore_jax.training import fit

LEARNING_RATE = 1e-3
BATCH_SIZE = 32


class CNN(nn.Module):
  """The digits CNN: two 3x3 convolutions (16 and 32 channels, SAME), each followed by
  ReLU and a 2x2 max pool, then a dense layer to the classes; inputs are the 64 pixels
  of an 8x8 image, flat."""

  classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], 8, 8, 1)
    for channels in (16, 32):
      x = nn.max_pool(nn.relu(nn.Conv(channels, (3, 3), padding="SAME")(x)), (2, 2), strides=(2, 2))
    return nn.Dense(self.classes)(x.reshape(x.shape[0], -1))


def torch_cnn(classes: int = 10) -> torch.nn.Module:
  """`CNN` in torch (NCHW): the same layers in the same order."""
  return torch.nn.Sequential(
    torch.nn.Unflatten(1, (1, 8, 8)),
    torch.nn.Conv2d(1, 16, 3, padding=1),
    torch.nn.ReLU(),
    torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(16, 32, 3, padding=1),
    torch.nn.ReLU(),
    torch.nn.MaxPool2d(2),
    torch.nn.Flatten(),
    torch.nn.Linear(32 * 2 * 2, classes),
  )


def torch_mlp(hidden: int = 64, classes: int = 10) -> torch.nn.Module:
  """`loop.MLP((hidden,), classes)` on the 64 digit pixels, in torch."""
  return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes))


def _mlp_weights(params: Any) -> list[np.ndarray]:
  """Flax MLP params as the torch MLP's `parameters()`, in order: `(in, out)` kernels transposed."""
  return [w for name in ("Dense_0", "Dense_1") for w in (params[name]["kernel"].T, params[name]["bias"])]


def _cnn_weights(params: Any) -> list[np.ndarray]:
  """Flax CNN params as the torch CNN's `parameters()`, in order.

  Conv kernels go from `(h, w, in, out)` to `(out, in, h, w)`. The dense kernel's rows
  follow Flax's NHWC flatten `(h, w, c)`; torch flattens NCHW `(c, h, w)`, so the rows
  are reordered before the transpose.
  """
  conv = [
    w for name in ("Conv_0", "Conv_1") for w in (params[name]["kernel"].transpose(3, 2, 0, 1), params[name]["bias"])
  ]
  kernel = params["Dense_0"]["kernel"]
  dense = kernel.reshape(2, 2, 32, kernel.shape[-1]).transpose(2, 0, 1, 3).reshape(kernel.shape)
  return conv + [dense.T, params["Dense_0"]["bias"]]


@dataclasses.dataclass(frozen=True)
class Pair:
  """One model in both frameworks, on one loader."""

  workload: loop.Workload
  torch_model: Callable[[], torch.nn.Module]
  torch_weights: Callable[[Any], list[np.ndarray]]  # Flax params -> torch `parameters()` order


@dataclasses.dataclass(frozen=True)
class Run:
  """What one run of a variant gives: steps per second and the loss of each epoch."""

  rates: list[float]
  epoch_losses: list[float]
  first_epoch_s: float


def pairs(settings: common.Settings) -> list[Pair]:
  """The digits MLP and the digits CNN, 11 epochs each; `--quick`: 2 epochs of the first 320 digits."""
  epochs = 2 if settings.quick else 11
  x, y = loop._digits()
  if settings.quick:
    x, y = x[:320], y[:320]
  digits = DataLoader((x, y), batch_size=BATCH_SIZE, shuffle=True, seed=0)
  return [
    Pair(loop.Workload("digits_mlp", loop.MLP((64,), 10), digits, epochs), torch_mlp, _mlp_weights),
    Pair(loop.Workload("digits_cnn", CNN(10), digits, epochs), torch_cnn, _cnn_weights),
  ]


def _flax_params(workload: loop.Workload) -> Any:
  """The initial params every variant starts from (`loop._train_state`'s, key 0)."""
  return jax.device_get(loop._train_state(workload, gcj.adam(LEARNING_RATE)).params)


def run_fit(pair: Pair, compiled_epoch: bool) -> Run:
  workload = pair.workload
  result = fit(
    loop._train_state(workload, gcj.adam(LEARNING_RATE)),
    loss=losses.cross_entropy,
    train_loader=workload.loader,
    epochs=workload.epochs,
    progress=False,
    compiled_epoch=compiled_epoch,
  )
  stats = result.stats
  return Run(list(stats.steps_per_second), list(stats.epoch_losses), stats.epoch_times[0])


class TorchModels:
  """Each workload's torch module (eager, and wrapped in `torch.compile`), built once.

  Reusing the module keeps `torch.compile`'s compiled code valid across runs; each run
  first copies the Flax initial weights into it, in place.
  """

  def __init__(self) -> None:
    self._modules: dict[str, torch.nn.Module] = {}
    self._compiled: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}

  def get(self, pair: Pair, compiled: bool) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    name = pair.workload.name
    if name not in self._modules:
      self._modules[name] = pair.torch_model()
    module = self._modules[name]
    with torch.no_grad():
      weights = pair.torch_weights(_flax_params(pair.workload))
      for parameter, weight in zip(module.parameters(), weights, strict=True):
        parameter.copy_(torch.from_numpy(np.array(weight)))  # a writable, contiguous copy
    if not compiled:
      return module, module
    if name not in self._compiled:
      self._compiled[name] = torch.compile(module)
    return module, self._compiled[name]


def run_torch(pair: Pair, models: TorchModels, threads: Optional[int], compiled: bool) -> Run:
  """The PyTorch loop over the same batches; `threads`: None keeps torch's default."""
  module, forward = models.get(pair, compiled)
  optimizer = torch.optim.Adam(module.parameters(), lr=LEARNING_RATE)
  loader = pair.workload.loader
  default_threads = torch.get_num_threads()
  if threads is not None:
    torch.set_num_threads(threads)
  rates, epoch_losses, first_epoch_s = [], [], 0.0
  try:
    for epoch in range(pair.workload.epochs):
      started = time.perf_counter()
      batch_losses, sizes = [], []
      for batch in loader.epoch(epoch):
        (x, y), rows = batch.data, batch.size
        inputs, targets = torch.from_numpy(x[:rows]), torch.from_numpy(y[:rows]).long()
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(inputs), targets)
        loss.backward()
        optimizer.step()
        batch_losses.append(loss.detach())
        sizes.append(rows)
      values = torch.stack(batch_losses).tolist()
      seconds = time.perf_counter() - started
      rates.append(len(loader) / seconds)
      first_epoch_s = first_epoch_s or seconds
      epoch_losses.append(sum(v * n for v, n in zip(values, sizes, strict=True)) / sum(sizes))
  finally:
    torch.set_num_threads(default_threads)
  return Run(rates, epoch_losses, first_epoch_s)


def variants(settings: common.Settings, models: TorchModels) -> dict[str, Callable[[Pair], Run]]:
  """The variants of a run: `torch_compile` only in full runs."""
  chosen: dict[str, Callable[[Pair], Run]] = {
    "fit_gcj": lambda pair: run_fit(pair, compiled_epoch=False),
    "fit_gcj_compiled_epoch": lambda pair: run_fit(pair, compiled_epoch=True),
    "torch_eager": lambda pair: run_torch(pair, models, threads=None, compiled=False),
    "torch_eager_1_thread": lambda pair: run_torch(pair, models, threads=1, compiled=False),
  }
  if not settings.quick:
    chosen["torch_compile"] = lambda pair: run_torch(pair, models, threads=1, compiled=True)
  return chosen


def run_pair(pair: Pair, chosen: dict[str, Callable[[Pair], Run]], rounds: int) -> list[dict[str, Any]]:
  rates: dict[str, list[float]] = {name: [] for name in chosen}
  first: dict[str, float] = {name: 0.0 for name in chosen}
  growth: dict[str, list[int]] = {name: [] for name in chosen}
  runs: dict[str, Run] = {}
  for names in common.shuffled_rounds(list(chosen), rounds):
    for name in names:
      common.reset_peak()
      before = common.resident_kib("VmRSS")
      run = chosen[name](pair)
      growth[name].append(common.resident_kib("VmHWM") - before)
      rates[name].extend(run.rates[1:])  # epoch 0 compiles (or warms up)
      first[name] = max(first[name], run.first_epoch_s)
      runs[name] = run
  reference = runs["fit_gcj"].epoch_losses
  torch_eager = statistics.median(rates["torch_eager"])
  torch_1 = statistics.median(rates["torch_eager_1_thread"])
  return [
    {
      "workload": pair.workload.name,
      "variant": name,
      "steps_per_s": statistics.median(values),
      "vs_torch_eager": statistics.median(values) / torch_eager,
      "vs_torch_eager_1_thread": statistics.median(values) / torch_1,
      "first_epoch_s": first[name],
      "peak_growth_mib": statistics.median(growth[name]) / 1024,
      "epoch0_loss_rel_diff_vs_fit": abs(runs[name].epoch_losses[0] / reference[0] - 1),
      "last_loss_rel_diff_vs_fit": abs(runs[name].epoch_losses[-1] / reference[-1] - 1),
      "epochs_timed": len(values),
    }
    for name, values in rates.items()
  ]


def run(settings: common.Settings) -> dict[str, Any]:
  rounds = 1 if settings.quick else 3
  models = TorchModels()
  chosen = variants(settings, models)
  rows = [row for pair in pairs(settings) for row in run_pair(pair, chosen, rounds)]
  note = "not run with --quick (Inductor compiles for tens of seconds)" if settings.quick else "run"
  return {"torch_loop": rows, "torch_loop_torch_compile": note}


COLUMNS = (
  "workload",
  "variant",
  "steps_per_s",
  "vs_torch_eager",
  "vs_torch_eager_1_thread",
  "first_epoch_s",
  "peak_growth_mib",
  "epoch0_loss_rel_diff_vs_fit",
  "last_loss_rel_diff_vs_fit",
  "epochs_timed",
)


def report(result: dict[str, Any]) -> str:
  return common.markdown_table(result["torch_loop"], COLUMNS)
