"""`fit` and `evaluate`: the host-side loop around the compiled steps.

The loop never waits for the device inside an epoch except every `log_interval` steps
(and at the end of the epoch), where it fetches the batch losses gathered since the last
sync in one transfer, checks them for NaN/Inf, adds them to the epoch's running loss
(in float64, each weighted by its batch's real rows) and refreshes the progress bar.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator, Mapping, Optional

import jax
import numpy as np

from gradcore_jax import metrics as metrics_lib
from gradcore_jax._typing import PyTree
from gradcore_jax.data import DataLoader
from gradcore_jax.data import _check_int
from gradcore_jax.training import _progress
from gradcore_jax.training._models import adapt
from gradcore_jax.training._models import copy_tree
from gradcore_jax.training._stats import TrainingStats
from gradcore_jax.training._steps import Carry
from gradcore_jax.training._steps import LossFn
from gradcore_jax.training._steps import Steps
from gradcore_jax.training._steps import build_steps


class NonFiniteLossError(FloatingPointError):
  """A batch loss was NaN or infinite. Indices count from 0, as in `TrainingStats`.

  Attributes: `step` (index into `batch_losses` over the whole run), `epoch`, `batch`
  (index within the epoch) and `loss` (the value). The caller's model, params and
  optimizer state are left as they were before `fit`.
  """

  def __init__(self, loss: float, step: int, epoch: int, batch: int) -> None:
    super().__init__(f"Non-finite training loss {loss} at step {step} (epoch {epoch}, batch {batch}; counted from 0).")
    self.loss, self.step, self.epoch, self.batch = loss, step, epoch, batch


@dataclasses.dataclass(frozen=True)
class FitResult:
  """What `fit` returns; unpacks as `model, stats = fit(...)`.

  Attributes:
    model: the trained model in the form it was given: the params (for an apply
      function), a `TrainState` (for a linen `TrainState` or `Module`), or the NNX module
      itself, updated in place (with its `nnx.Optimizer`, if one was given).
    stats: the `TrainingStats` of the run.
    opt_state: the final Optax state (to continue training an apply function with
      `fit(..., opt_state=result.opt_state)`; the other kinds carry it already).
  """

  model: Any
  stats: TrainingStats
  opt_state: PyTree

  def __iter__(self) -> Iterator[Any]:
    return iter((self.model, self.stats))


def fit(
    model: Any,
    optimizer: Any = None,
    *,
    loss: LossFn,
    train_loader: DataLoader,
    epochs: int,
    start_epoch: int = 0,
    params: PyTree = None,
    opt_state: PyTree = None,
    eval_loader: Optional[DataLoader] = None,
    metrics: Optional[Mapping[str, metrics_lib.Metric]] = None,
    log_interval: int = 50,
    progress: bool = True,
) -> FitResult:
  """Trains `model` for `epochs` epochs over `train_loader`; returns `FitResult(model, stats, opt_state)`.

  Args:
    model: an apply function `apply_fn(params, inputs)` (with `params`), a Flax linen
      `TrainState`, a linen `Module` (with `params`), or a Flax NNX `Module`.
    optimizer: an Optax transformation (any `gradcore_jax` optimizer or Optax's), or an
      `nnx.Optimizer` for an NNX module; omitted for a `TrainState` (it has `.tx`).
    loss: `loss(y_pred, y_true, *, reduction)`, e.g. `gradcore_jax.losses.cross_entropy`;
      called with `reduction="none"` for one value per example. The batch loss that is
      differentiated is the mean over the batch's real (unmasked) rows.
    train_loader: a `DataLoader` over `(inputs, targets)`; epoch `e` uses `train_loader.epoch(e)`.
    epochs: number of epochs to run (>= 0).
    start_epoch: index of the first of them, which picks its order in `train_loader`:
      to continue a run, pass the epochs already trained, so no epoch's shuffle repeats.
    params, opt_state: the params of an apply function or linen module, and optionally an
      optimizer state to continue from (fresh `optimizer.init(params)` otherwise).
    eval_loader: evaluated after every epoch with fixed params (`stats.eval_metrics`).
    metrics: `{name: gradcore_jax.metrics.Metric}` updated with `(y_true, y_pred)`, over
      the training epoch (`stats.train_metrics`) and the evaluation (`stats.eval_metrics`).
    log_interval: steps between syncs with the device (NaN/Inf check, progress bar).
    progress: print the header and progress bars (to stderr).

  Before the first step, the model, loss and metrics are traced on the loaders' batch
  shapes; a mismatch raises ValueError naming the loader. The step compiles once: every
  batch has the same shape. The caller's arrays are copied once, then donated, so the
  arguments stay valid and untouched if training stops with an error (e.g.
  `NonFiniteLossError`).
  """
  epochs = _check_int("epochs", epochs, minimum=0)
  start_epoch = _check_int("start_epoch", start_epoch, minimum=0)
  log_interval = _check_int("log_interval", log_interval, minimum=1)
  _check_loader("train_loader", train_loader)
  adapted = adapt(model, optimizer, params=params, opt_state=opt_state)
  if adapted.tx is None:
    raise ValueError("optimizer is required to train: pass an Optax transformation (or an nnx.Optimizer).")
  steps = build_steps(adapted, loss, _check_metrics(metrics))
  carry = Carry(*copy_tree((adapted.params, adapted.opt_state, adapted.model_state)), steps.new_metrics())
  _check_runs("train_loader", train_loader, steps.train, carry)
  if eval_loader is not None:
    _check_runs("eval_loader", eval_loader, steps.evaluate, steps.new_tally(), carry.params, carry.model_state)
  _progress.say(_progress.header(train_loader, carry.params, carry.opt_state, epochs), progress)
  stats = TrainingStats()
  for epoch in range(start_epoch, start_epoch + epochs):
    with _progress.epoch_bar(epoch, start_epoch + epochs, len(train_loader), progress) as bar:
      carry = _train_epoch(steps, carry, train_loader, epoch, stats, log_interval=log_interval, bar=bar)
      if eval_loader is not None:
        stats.eval_metrics.append(_evaluate_loader(steps, carry.params, carry.model_state, eval_loader))
        evaluation = {f"eval_{name}": value for name, value in stats.eval_metrics[-1].items()}
        _progress.show(bar, 0, {"loss": stats.epoch_losses[-1], **evaluation})
  trained = adapted.rebuild(carry.params, carry.opt_state, carry.model_state, stats.total_steps)
  return FitResult(trained, stats, carry.opt_state)


def evaluate(
    model: Any,
    loader: DataLoader,
    *,
    loss: LossFn,
    metrics: Optional[Mapping[str, metrics_lib.Metric]] = None,
    params: PyTree = None,
) -> dict[str, Any]:
  """The exact loss and metrics of `model` over the whole of `loader`, params fixed.

  `model` and `params` as in `fit`. Returns `{"loss": sum of per-example losses / number
  of examples, **{name: metric value}}` as Python numbers; padded rows count for nothing,
  so the figures do not depend on the batch size (beyond float32 rounding).
  """
  _check_loader("loader", loader)
  adapted = adapt(model, params=params)
  steps = build_steps(adapted, loss, _check_metrics(metrics))
  _check_runs("loader", loader, steps.evaluate, steps.new_tally(), adapted.params, adapted.model_state)
  return _evaluate_loader(steps, adapted.params, adapted.model_state, loader)


def _train_epoch(
    steps: Steps,
    carry: Carry,
    loader: DataLoader,
    epoch: int,
    stats: TrainingStats,
    *,
    log_interval: int,
    bar: Any,
) -> Carry:
  """Runs epoch `epoch` and appends its figures to `stats`; syncs every `log_interval` steps."""
  started = time.perf_counter()
  carry = carry._replace(metrics=steps.new_metrics())
  running = _RunningLoss(epoch=epoch, first_step=len(stats.batch_losses))
  pending: list[tuple[jax.Array, int]] = []
  for i, batch in enumerate(loader.epoch(epoch), start=1):
    carry, batch_loss = steps.train(carry, (batch.data, batch.mask))
    pending.append((batch_loss, batch.size))
    if i % log_interval == 0 or i == len(loader):
      running.add(jax.device_get(pending), stats)
      _progress.show(bar, len(pending), {"loss": stats.running_losses[-1]})
      pending = []
  stats.train_metrics.append(_host_values(steps.metric_values(carry.metrics)))
  seconds = time.perf_counter() - started
  stats.epoch_losses.append(stats.running_losses[-1])
  stats.epochs_trained += 1
  stats.total_steps += len(loader)
  stats.examples_seen += loader.examples_per_epoch
  stats.epoch_times.append(seconds)
  stats.steps_per_second.append(len(loader) / seconds)
  return carry


@dataclasses.dataclass
class _RunningLoss:
  """The epoch's loss so far, on the host: sum of per-example losses and number of examples."""

  epoch: int
  first_step: int  # index in `TrainingStats.batch_losses` of the epoch's first step
  total: float = 0.0
  examples: int = 0

  def add(self, fetched: list[tuple[Any, int]], stats: TrainingStats) -> None:
    """Appends fetched `(batch_loss, real rows)` pairs to `stats`; raises at the first non-finite loss."""
    for batch_loss, size in fetched:
      step = len(stats.batch_losses)
      if not np.isfinite(batch_loss):
        raise NonFiniteLossError(float(batch_loss), step=step, epoch=self.epoch, batch=step - self.first_step)
      self.total += float(batch_loss) * size
      self.examples += size
      stats.batch_losses.append(float(batch_loss))
      stats.running_losses.append(self.total / self.examples)


def _evaluate_loader(steps: Steps, params: PyTree, model_state: PyTree, loader: DataLoader) -> dict[str, Any]:
  tally = steps.new_tally()
  for batch in loader.epoch(0):
    tally = steps.evaluate(tally, params, model_state, (batch.data, batch.mask))
  return _host_values(steps.tally_values(tally))


def _host_values(values: Mapping[str, jax.Array]) -> dict[str, Any]:
  """Device figures as plain Python numbers (one transfer)."""
  return {name: np.asarray(value).tolist() for name, value in jax.device_get(values).items()}


def _check_runs(name: str, loader: DataLoader, step: Callable[..., Any], *args: Any) -> None:
  """Traces `step(*args, batch)` on `loader`'s batch shapes; a failure names the loader."""
  spec = loader.spec
  try:
    jax.eval_shape(step, *args, (spec.data, spec.mask))
  except Exception as err:  # pylint: disable=broad-except
    shapes = jax.tree.map(lambda s: f"{s.dtype}{list(s.shape)}", spec.data)
    raise ValueError(
        f"The model, loss or metrics cannot run on the batches of {name} (data {shapes}): "
        f"{type(err).__name__}: {err}"
    ) from err


def _check_loader(name: str, loader: Any) -> None:
  if not isinstance(loader, DataLoader):
    raise ValueError(f"{name} must be a gradcore_jax.data.DataLoader, got {type(loader).__name__}.")


def _check_metrics(metrics: Optional[Mapping[str, metrics_lib.Metric]]) -> dict[str, metrics_lib.Metric]:
  if metrics is None:
    return {}
  if not isinstance(metrics, Mapping) or not all(isinstance(m, metrics_lib.Metric) for m in metrics.values()):
    raise ValueError("metrics must be a dict {name: gradcore_jax.metrics.Metric}, e.g. {'acc': metrics.accuracy()}.")
  if "loss" in metrics:
    raise ValueError("metrics must not use the name 'loss': it is reserved for the loss figure.")
  return dict(metrics)
