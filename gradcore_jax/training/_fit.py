"""`fit` and `evaluate`: the host-side loop around the compiled steps.

The loop never waits for the device inside an epoch except at its sync points: every
`log_interval` steps, at each checkpoint and at the end of the epoch (with
`compiled_epoch`, only the last two: each stretch between them is one compiled
`lax.scan`). There it fetches the step outputs gathered since the last sync in one
transfer, checks them for non-finite values, adds the batch losses to the epoch's running
loss (in float64, each weighted by its batch's real rows), refreshes the progress bar and
writes a checkpoint when one is due.

A run's position is `(epoch, batch)` plus the epoch's running loss so far; with the
carry (params, optimizer, model and metric states) and the `TrainingStats`, it is all a
checkpoint holds, so a resumed run continues exactly where the checkpoint was written.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import os
import time
import warnings
from typing import Any
from typing import Callable
from typing import Iterator
from typing import Mapping
from typing import Optional
from typing import Sequence
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gradcore_jax import checkpoint as checkpoint_lib
from gradcore_jax import metrics as metrics_lib
from gradcore_jax._typing import PyTree
from gradcore_jax.checkpoint import Checkpointer
from gradcore_jax.checkpoint import UnreadableCheckpointWarning
from gradcore_jax.data import DataLoader
from gradcore_jax.data import _check_int
from gradcore_jax.data_sources import IterableLoader
from gradcore_jax.data_sources import as_loader
from gradcore_jax.training import _progress
from gradcore_jax.training._callbacks import Callback
from gradcore_jax.training._callbacks import CallbackList
from gradcore_jax.training._callbacks import Run
from gradcore_jax.training._callbacks import Snapshot
from gradcore_jax.training._models import Adapted
from gradcore_jax.training._models import ModelOptions
from gradcore_jax.training._models import _loaded_flax
from gradcore_jax.training._models import adapt
from gradcore_jax.training._models import copy_tree
from gradcore_jax.training._placement import ParamSharding
from gradcore_jax.training._placement import Placement
from gradcore_jax.training._plateau import PlateauDriver
from gradcore_jax.training._plateau import learning_rate_reader
from gradcore_jax.training._stats import TrainingStats
from gradcore_jax.training._steps import BAD_UPDATE
from gradcore_jax.training._steps import FINITE
from gradcore_jax.training._steps import Accumulator
from gradcore_jax.training._steps import Carry
from gradcore_jax.training._steps import LossFn
from gradcore_jax.training._steps import StepOptions
from gradcore_jax.training._steps import Steps
from gradcore_jax.training._steps import build_steps

ON_NONFINITE = ("raise", "skip")


class NonFiniteLossError(FloatingPointError):
  """A batch loss, gradient or update was NaN or infinite. Indices count from 0, as in `TrainingStats`.

  The caller's model, params and optimizer state are left as they were before `fit`, and
  no checkpoint is written after the step; `partial_result` (set by `fit`) holds the state
  before it (see `fit`).

  Attributes:
    loss: the batch loss, a float (finite when `in_gradients` or `in_update` is True).
    step: the step's index into `batch_losses`, over the whole run.
    epoch: the epoch's index.
    batch: the batch's index within the epoch.
    in_update: True when the loss and gradients were finite but the update made the params
      or the model state non-finite, e.g. an optimizer with `eps=0` dividing a zero
      gradient by zero (keyword-only, default False).
    in_gradients: True when the loss was finite but a gradient was not (derived from `loss`
      and `in_update`).
    partial_result: the `FitResult` of the last checked state, set by `fit` once training
      has begun; read it with `getattr(err, "partial_result", None)`.
  """

  def __init__(self, loss: float, step: int, epoch: int, batch: int, *, in_update: bool = False) -> None:
    self.loss, self.step, self.epoch, self.batch = loss, step, epoch, batch
    self.in_update = in_update
    self.in_gradients = math.isfinite(loss) and not in_update
    where = f"at step {step} (epoch {epoch}, batch {batch}; counted from 0)"
    if in_update:
      what = (
        f"Non-finite update {where}: the batch loss ({loss}) and the gradients were finite, but the new params or "
        "model state were not (an optimizer dividing by zero, e.g. eps=0 with a zero gradient, or an overflow)."
      )
    elif self.in_gradients:
      what = f"Non-finite gradients {where}; the batch loss was {loss}."
    else:
      what = f"Non-finite training loss {loss} {where}."
    super().__init__(what)


class TooManySkippedStepsError(NonFiniteLossError):
  """More consecutive steps than `fit(max_consecutive_skips=...)` allows were skipped as non-finite.

  A `NonFiniteLossError` about the last of them (its `step`, `epoch`, `batch`, `loss`,
  `in_gradients`, `in_update`), with `skipped` listing every step of the streak (counted
  from 0 over the run). Training that skips every step makes no progress; this stops it
  instead of returning the untrained state as a success.

  Attributes:
    loss: the last skipped step's batch loss.
    step: the last skipped step's index into `batch_losses`, over the whole run.
    epoch: the last skipped step's epoch.
    batch: the last skipped step's index within its epoch.
    in_update: True when the last skipped step's loss and gradients were finite but its
      update was not (keyword-only).
    in_gradients: True when the last skipped step's loss was finite but a gradient was not.
    skipped: the steps of the streak, a list of ints counted from 0 over the run, ending
      with `step`.
    limit: the `max_consecutive_skips` the streak went past (`len(skipped) > limit`).
    partial_result: as in `NonFiniteLossError`, set by `fit`.
  """

  def __init__(
    self, loss: float, step: int, epoch: int, batch: int, *, in_update: bool, skipped: list[int], limit: int
  ) -> None:
    super().__init__(loss, step, epoch, batch, in_update=in_update)
    self.skipped, self.limit = list(skipped), limit
    steps = f"steps {skipped[0]} to {skipped[-1]}" if len(skipped) > 1 else f"step {skipped[0]}"
    self.args = (
      f"{len(skipped)} consecutive steps were skipped as non-finite ({steps}, counted from 0), more than "
      f"max_consecutive_skips={limit} allows: training is making no progress. The last one: {self.args[0]}",
    )


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
  train_loader: Any,
  epochs: int,
  start_epoch: int = 0,
  params: PyTree = None,
  opt_state: PyTree = None,
  eval_loader: Any = None,
  metrics: Optional[Mapping[str, metrics_lib.Metric]] = None,
  log_interval: int = 50,
  progress: bool = True,
  clip_global_norm: Optional[float] = None,
  on_nonfinite: str = "raise",
  compiled_epoch: bool = False,
  checkpoint_dir: Optional[str] = None,
  checkpoint_every: Optional[int] = None,
  keep: int = 3,
  resume: bool = False,
  mesh: Optional[Mesh] = None,
  param_sharding: ParamSharding = None,
  data_axis: Union[None, str, tuple[str, ...]] = None,
  lr_plateau: Any = None,
  plateau_monitor: Optional[str] = None,
  callbacks: Optional[Sequence[Callback]] = None,
  seed: Optional[int] = None,
  mode_flags: Optional[Mapping[str, bool]] = None,
  rng_streams: Optional[Sequence[str]] = None,
  mutable: Optional[Sequence[str]] = None,
  max_consecutive_skips: Optional[int] = 10,
  accumulate: int = 1,
) -> FitResult:
  """Trains `model` for `epochs` epochs over `train_loader`; returns `FitResult(model, stats, opt_state)`.

  Args:
    model: an apply function `apply_fn(params, inputs)` (with `params`), a Flax linen
      `TrainState`, a linen `Module` (with `params`), or a Flax NNX `Module`. Training
      steps run it in train mode, evaluations (`eval_loader`) in eval mode (see
      `mode_flags`). A linen model's non-params collections (`batch_stats`, ...) and an
      NNX module's batch statistics and RNG streams are carried from step to step.
    optimizer: an Optax transformation (any `gradcore_jax` optimizer or Optax's), or an
      `nnx.Optimizer` for an NNX module; omitted for a `TrainState` (it has `.tx`).
    loss: `loss(y_pred, y_true, *, reduction)`, e.g. `gradcore_jax.losses.cross_entropy`;
      called with `reduction="none"` for one value per example. The batch loss that is
      differentiated is the mean over the batch's real (unmasked) rows.
    train_loader: a `DataLoader` over `(inputs, targets)`; epoch `e` uses `train_loader.epoch(e)`.
      Or any source of `(inputs, targets)` batches, wrapped in `data_sources.IterableLoader`:
      an iterable (a grain `DataLoader`/`IterDataset`/`MapDataset`, a torch `DataLoader`, a
      list), iterated once per epoch, or a function returning a new iterator per epoch (a
      one-shot iterator serves one epoch). Batches may vary in size (padded to the first
      one's and masked); the epoch ends with the source; resuming mid-epoch is exact when
      its iterator has `get_state`/`set_state` (grain), else the epoch restarts with a
      warning. `accumulate > 1` needs a `DataLoader`.
    epochs: number of epochs to run (>= 0).
    start_epoch: index of the first of them, which picks its order in `train_loader`:
      to continue a run, pass the epochs already trained, so no epoch's shuffle repeats.
    params: the params of an apply function, or the variables of a linen module
      (`module.init(...)`, e.g. `{"params": ..., "batch_stats": ...}`). Trained params
      must be floating point (ValueError naming the leaf otherwise).
    opt_state: optionally an optimizer state to continue from (fresh
      `optimizer.init(params)` otherwise; a given one must have the structure, shapes and
      dtypes that makes, else ValueError naming opt_state).
    eval_loader: evaluated after every epoch with fixed params (`stats.eval_metrics`); a
      `DataLoader` or any source `train_loader` takes (one pass per evaluation).
    metrics: `{name: gradcore_jax.metrics.Metric}` updated with `(y_true, y_pred)`, over
      the training epoch (`stats.train_metrics`) and the evaluation (`stats.eval_metrics`).
    log_interval: steps between syncs with the device (NaN/Inf check, progress bar).
    progress: print the header and progress bars (to stderr).
    clip_global_norm: scale every step's gradients to a global norm of at most this
      with torch's `clip_grad_norm_` rule, `coef = min(1, max_norm / (norm + 1e-6))`
      (`transforms.clip_by_torch_norm` in front of the optimizer, without changing the
      optimizer state's structure); None: no clipping.
    on_nonfinite: what a step does whose loss or gradients hold a NaN/Inf, or whose
      update makes the params or model state non-finite. `"raise"`: training stops at
      the next sync with `NonFiniteLossError` naming the step. `"skip"`: the update is not
      applied (params, optimizer, model and metric states, RNG step counts included, stay
      as they were; decided on the device with `jnp.where`, no sync) and the step is
      listed in `stats.skipped_steps`. The finiteness check reads the gradients before
      clipping and the new params and model state after the update.
    compiled_epoch: run each epoch as one compiled `lax.scan` over the whole epoch's
      batches (`train_loader.stacked(e)`, moved to the device at once) instead of one
      call per step: for small models whose epoch fits in device memory. Same step, same
      results and `TrainingStats` as the per-step loop; the host syncs only at epoch ends
      and checkpoints (`log_interval` is not used).
    checkpoint_dir: a folder for checkpoints (`gradcore_jax.checkpoint`, needs
      orbax-checkpoint): params, optimizer and model state, metric statistics, the
      position `(epoch, batch)` and the `TrainingStats`. Written at the end of every epoch,
      or every `checkpoint_every` steps, and at the end of `fit`. Without `resume`, the
      folder must hold no checkpoint. It is created if missing and must be writable: this
      is checked before the first step (ValueError naming it).
    checkpoint_every: steps between checkpoints (counted over the run), or None.
    keep: how many checkpoints to keep in `checkpoint_dir` (the newest).
    resume: continue from the newest checkpoint in `checkpoint_dir` that can be read
      (start afresh when it has none). Newer ones that cannot be read (files empty, cut
      short or missing, an empty step folder) are passed over with a warning naming each
      folder and why, and renamed to `<step>.unreadable-<time>` (never deleted) so that
      this run's checkpoints neither collide with them nor are counted against `keep`
      because of them; when none can be read, `UnreadableCheckpointError` lists them all
      and nothing is renamed. Call `fit` with the same arguments as the interrupted run: the
      checkpoint must come from the same `start_epoch` and an identical `train_loader`,
      and it must fit the model and optimizer (else ValueError /
      `CheckpointMismatchError` saying what differs). `epochs` may be larger, to extend
      the run. The result equals the uninterrupted run's bit for bit (wall-clock times
      aside).
    mesh: a `jax.sharding.Mesh` to train on: each batch is split over the `data_axis`
      devices (its `batch_size` must divide evenly), params are placed as
      `param_sharding` says, and statistics are summed over all devices (exact). With
      several processes (`jax.distributed`), every process calls `fit` with the same
      arguments and a mesh over all their devices; each loader is either over the whole
      data on every process, or a `DataLoader(..., process_local=True)` over each
      process's own share (its batches fill that process's devices' rows of each global
      batch; the loss and counts weigh the global batch's real rows).
    param_sharding: how params lie on the mesh: None (replicated), one `PartitionSpec`
      or `NamedSharding` for all, a pytree of them shaped like params (or a prefix), or a
      callable `(path, param) -> PartitionSpec` (FSDP style). Optimizer-state leaves
      follow their params.
    data_axis: the mesh axis (or tuple of axes) the batch is split over; default all.
    lr_plateau: a `gradcore_jax.schedules.reduce_lr_on_plateau(...)`: torch's
      `ReduceLROnPlateau`, stepped after every epoch on `plateau_monitor`; its learning rate
      is written into the optimizer's `optax.inject_hyperparams` `learning_rate` for the
      next epoch (build the optimizer with `optax.inject_hyperparams`; exactly one injected
      learning rate). Its state is rebuilt from the recorded figures, so a resumed run
      continues with the same learning rate; a new `fit` call without `resume` starts a
      fresh plateau, as a newly built torch scheduler would.
    plateau_monitor: the figure `lr_plateau` watches: `"loss"` (the epoch's training
      loss), `"eval_loss"`, `"eval_<metric>"` or a training metric's name; default
      `"eval_loss"` with an `eval_loader`, else `"loss"`.
    callbacks: a list of `gradcore_jax.callbacks.Callback`s (e.g. `EarlyStopping`,
      `CSVLogger`, `TensorBoard`), called at the start, at every sync point, at each
      epoch's start and end and at the end of training (`gradcore_jax.callbacks`); any
      of them can stop training after the current epoch. None: no callbacks.
    seed: the integer every RNG key of the training steps derives from. The key of RNG
      stream `name` is `stream_key = fold_in(jax.random.key(seed), zlib.crc32(name))`.
      A linen model gets `rngs={name: fold_in(stream_key, step)}` in each training step
      (`step`: the updates made before it, `TrainState.step`; a skipped step does not
      count), an apply function with an `rngs` parameter the same dict (and `rngs=None`
      in evaluations). None: seed 0 for those. An NNX module draws from its own
      `nnx.Rngs` streams (part of its state); a seed first re-seeds each of them to its
      `stream_key` (`nnx.reseed`). Evaluations draw nothing. A checkpoint records the
      seed: resuming with another raises ValueError.
    mode_flags: `{name: value in training}`: the switches between train and eval mode;
      evaluations pass `not value`. For an apply function or a linen module these are
      keyword arguments of its call, for an NNX module attributes of its submodules (set
      on a copy of the graph; the caller's module keeps its own). None: detected. For a
      function or linen module: the keywords its signature has among `train`,
      `training`, `is_training` (True in training) and `deterministic` (False in
      training); for an NNX module `{"deterministic": False, "use_running_average":
      False}` (what `nnx.Module.train()` sets). `{}`: no switch.
    rng_streams: the RNG stream names: those a linen model (or an apply function's
      `rngs`) receives, default `("dropout",)`; for an NNX module with a seed, those
      re-seeded, default all its streams.
    mutable: the linen collections a training step updates (`apply(..., mutable=...)`);
      default every collection of the variables besides `"params"`, or for a
      `TrainState` its `batch_stats` field if it has one (the Flax BatchNorm recipe).
      Evaluations update none. Only for linen models.
    max_consecutive_skips: with `on_nonfinite="skip"`, the most consecutive skipped
      steps allowed; one more raises `TooManySkippedStepsError` (a `NonFiniteLossError`)
      listing them, at the sync that sees it. None: no limit.
    accumulate: gradient accumulation, `k` batches (micro-batches) per optimizer update
      (default 1: an update per batch, the plain step, bit for bit). The update is the one
      a single step on the `k` batches concatenated would make: the gradients of the
      per-example losses are summed over the micro-batches' real rows and divided once
      by their number of real rows (a short last batch counts by its real rows, not as a
      whole batch). Updates are made after every `k`-th batch of an epoch and after the
      epoch's last batch: an epoch of `n` batches, `n` not a multiple of `k`, ends with a
      smaller update of its `n % k` leftover batches (the practice of torch training
      loops), so every epoch ends on an update: its evaluation, `lr_plateau` step and
      end-of-epoch checkpoint see every batch of the epoch applied, and no gradient is
      carried from one epoch, shuffle or `fit` call into the next. Each micro-batch runs
      the model in train mode and updates the model state (BatchNorm statistics, RNG
      step) and the metrics, as each `loss.backward()` would in torch. Clipping
      (`clip_global_norm`) applies to the accumulated gradient, once per update, as torch
      clips before `optimizer.step()`. A step in `TrainingStats` stays a batch:
      `batch_losses`, `running_losses` and `learning_rates` have one entry per batch
      (`learning_rates[s]`: the rate of the update batch `s` contributes to), and
      `total_steps` counts batches; the optimizer makes one update per cycle of `k`
      batches. With `on_nonfinite="skip"`, a non-finite micro-batch is skipped as a batch
      is (its loss, rows, metrics and model state not counted) and its cycle makes no
      update (its gradient would poison the sum, as torch's `GradScaler` then skips
      `optimizer.step()`); the other micro-batches' model-state and metric updates
      stay. The summed gradients are part of the carry, so a checkpoint written in the
      middle of a cycle (`checkpoint_every`) holds them and a resumed run continues the
      cycle exactly; resuming needs the same `accumulate` (ValueError otherwise). Unlike
      `optax.MultiSteps`, which averages the per-batch mean gradients (a short batch then
      weighs as much as a full one) and keeps its partial sums in the optimizer state,
      this weighs every real row equally and flushes the leftover at the epoch's end.

  The learning rate each step used is recorded in `stats.learning_rates` when the
  optimizer state holds one injected `learning_rate` (`optax.inject_hyperparams`; see
  `TrainingStats`), fetched with the batch losses.

  Before the first step, the model, loss and metrics are traced on the loaders' batch
  shapes; a mismatch raises ValueError naming the loader. The step compiles once: every
  batch has the same shape. The caller's arrays are copied once, then donated, so the
  arguments stay valid and untouched if training stops with an error (e.g.
  `NonFiniteLossError`).

  Progress survives a failure: when anything stops `fit` once training has begun (an
  exception from a step, the loaders, an evaluation or a checkpoint write,
  `NonFiniteLossError`, `KeyboardInterrupt`), the exception is re-raised with the
  attribute `partial_result`: a `FitResult` of the last checked state, i.e. after the
  last sync point whose steps were all found finite (so before a non-finite step), with
  its `TrainingStats` up to that step. Steps after that sync point (at most
  `log_interval`; with `compiled_epoch`, up to the next checkpoint or epoch end) are not
  in it. The caller's arguments stay untouched: for an NNX module, `partial_result.model`
  is a clone holding that state. Read it with `getattr(err, "partial_result", None)` in
  an `except` clause (in IPython, from `sys.last_value` after an interrupted cell); it is
  not set when `fit` fails before training (bad arguments, no usable checkpoint). To keep
  that state, fit holds one extra copy of params, optimizer, model and metric states on
  the device, refreshed at each sync point.

  Raises:
    ValueError: a bad argument (named), a model or loss that cannot run on the loaders'
      batches, a `checkpoint_dir` that is a file or cannot be created or written (checked
      before the first step), or a checkpoint of another run.
    NonFiniteLossError: a non-finite loss, gradient or update with `on_nonfinite="raise"`;
      `TooManySkippedStepsError` (a subclass) with `"skip"` past `max_consecutive_skips`.
    gradcore_jax.checkpoint.CheckpointMismatchError: resuming into another model,
      optimizer or metrics.
    gradcore_jax.checkpoint.UnreadableCheckpointError: `resume=True` and no checkpoint in
      `checkpoint_dir` can be read; it lists each one and why.
  """
  epochs = _check_int("epochs", epochs, minimum=0)
  start_epoch = _check_int("start_epoch", start_epoch, minimum=0)
  log_interval = _check_int("log_interval", log_interval, minimum=1)
  options = _step_options(clip_global_norm, on_nonfinite)
  compiled_epoch = _check_bool("compiled_epoch", compiled_epoch)
  resume = _check_bool("resume", resume)
  checkpoint_every = None if checkpoint_every is None else _check_int("checkpoint_every", checkpoint_every, minimum=1)
  keep = _check_int("keep", keep, minimum=1)
  model_options = _model_options(seed, mode_flags, rng_streams, mutable)
  if max_consecutive_skips is not None:
    max_consecutive_skips = _check_int("max_consecutive_skips", max_consecutive_skips, minimum=0)
  accumulate = _check_int("accumulate", accumulate, minimum=1)
  if checkpoint_dir is None and (checkpoint_every is not None or resume):
    raise ValueError("checkpoint_every and resume need checkpoint_dir.")
  placement = Placement.build(mesh, data_axis, param_sharding)
  train_loader = _check_loader("train_loader", train_loader, placement)
  if eval_loader is not None:
    eval_loader = _check_loader("eval_loader", eval_loader, placement)
  if accumulate > 1 and not isinstance(train_loader, DataLoader):  # a cycle's end needs the epoch's length
    raise ValueError("accumulate > 1 needs train_loader to be a gradcore_jax.data.DataLoader (a known epoch length).")
  hooks = CallbackList(callbacks)
  adapted = adapt(model, optimizer, params=params, opt_state=opt_state, options=model_options)
  if adapted.tx is None:
    raise ValueError("optimizer is required to train: pass an Optax transformation (or an nnx.Optimizer).")
  options = dataclasses.replace(
    options,
    learning_rate=learning_rate_reader(adapted.opt_state),
    accumulate=accumulate,
    batches_per_epoch=len(train_loader) if accumulate > 1 else None,
  )
  plateau = PlateauDriver.build(lr_plateau, plateau_monitor, eval_loader is not None, list(metrics or {}))
  with placement.context():
    steps = build_steps(adapted, loss, _check_metrics(metrics), options)
    carry = _place(placement, adapted, steps, accumulate=accumulate)
    _check_runs("train_loader", train_loader, steps.train, carry)
    if eval_loader is not None:
      _check_runs("eval_loader", eval_loader, steps.evaluate, steps.new_tally(), carry.params, carry.model_state)
    loop = _Loop(
      steps=steps,
      placement=placement,
      loader=train_loader,
      eval_loader=eval_loader,
      raise_on_nonfinite=options.on_nonfinite == "raise",
      compiled_epoch=compiled_epoch,
      log_interval=log_interval,
      checkpoint_every=checkpoint_every,
      checkpoints=_open_checkpoints(checkpoint_dir, keep, resume),
      start_epoch=start_epoch,
      plateau=plateau,
      hooks=hooks,
      max_consecutive_skips=max_consecutive_skips if options.on_nonfinite == "skip" else None,
      seed=seed,
      accumulate=accumulate,
    )
    with loop:
      carry, position = loop.restore(carry, end_epoch=start_epoch + epochs)
      if plateau is not None:
        plateau.check_optimizer(carry.opt_state)
        carry = carry._replace(opt_state=plateau.apply(carry.opt_state, loop.stats))
      loop.checked(carry)
      try:
        _progress.say(_progress.header(train_loader, carry.params, carry.opt_state, epochs), progress)
        hooks.begin(loop.run(position, start_epoch + epochs, lambda *state: _detached_rebuild(model, adapted)(*state)))
        for epoch in range(position.epoch, start_epoch + epochs):
          if hooks.stop_training:  # asked for by a callback: after the epoch that asked, or before any
            break
          with _progress.epoch_bar(
            epoch, start_epoch + epochs, _length(train_loader), progress, done=position.batch
          ) as bar:
            carry, position = loop.epoch(carry, position, bar)
        loop.save(carry, position, final=True)
        restored = hooks.end()
      except BaseException as err:  # any failure, KeyboardInterrupt included, keeps the progress made
        loop.attach_partial_result(err, _detached_rebuild(model, adapted))
        raise
  stats = loop.stats
  if restored is not None:  # a callback (EarlyStopping(restore_best=True)) chose an earlier state
    state, done = restored, restored.step
  else:
    state, done = Snapshot(carry.params, carry.opt_state, carry.model_state, stats.total_steps), stats.total_steps
  updates = loop.updates(done)
  trained = adapted.rebuild(state.params, state.opt_state, state.model_state, updates)
  return FitResult(trained, stats, state.opt_state)


def evaluate(
  model: Any,
  loader: Any,
  *,
  loss: LossFn,
  metrics: Optional[Mapping[str, metrics_lib.Metric]] = None,
  params: PyTree = None,
  mesh: Optional[Mesh] = None,
  param_sharding: ParamSharding = None,
  data_axis: Union[None, str, tuple[str, ...]] = None,
  mode_flags: Optional[Mapping[str, bool]] = None,
) -> dict[str, Any]:
  """The exact loss and metrics of `model` over the whole of `loader`, params fixed, in eval mode.

  `model`, `params`, `mesh`, `param_sharding`, `data_axis` and `mode_flags` as in `fit`:
  the model runs in eval mode (dropout off, BatchNorm on its running averages; a linen
  model's collections immutable), the way `fit` evaluates its `eval_loader`. Returns
  `{"loss": sum of per-example losses / number of examples, **{name: metric value}}` as
  Python numbers; padded rows count for nothing, so the figures do not depend on the batch
  size or the number of devices (beyond float32 rounding).

  Args:
    model: the model, as for `fit` (e.g. `fit`'s returned params with the apply function,
      its `TrainState`, or the NNX module).
    loader: a `DataLoader` over `(inputs, targets)`, evaluated once in its order, or any
      source `fit`'s `train_loader` takes (one pass of it).
    loss: as for `fit`: `loss(y_pred, y_true, reduction="none")`.
    metrics: `{name: gradcore_jax.metrics.Metric}`, or None.
    params: the params (or linen variables) of an apply function or linen module.
    mesh: the device mesh to evaluate on, as for `fit` (None: one device).
    param_sharding: how the params are placed on `mesh`, as for `fit`.
    data_axis: the mesh axes the batches are split over, as for `fit`.
    mode_flags: the train/eval switches, as for `fit` (evaluation passes their negation).
  """
  placement = Placement.build(mesh, data_axis, param_sharding)
  loader = _check_loader("loader", loader, placement)
  adapted = adapt(model, params=params, options=_model_options(None, mode_flags, None, None), train=False)
  with placement.context():
    steps = build_steps(adapted, loss, _check_metrics(metrics))
    params = placement.params(adapted.params)[0]
    model_state = placement.replicated(adapted.model_state)
    _check_runs("loader", loader, steps.evaluate, steps.new_tally(), params, model_state)
    return _evaluate_loader(steps, placement, params, model_state, loader)


@dataclasses.dataclass
class _Position:
  """Where a run stands: the next batch to train on, and the epoch's loss so far (host, float64)."""

  epoch: int
  batch: int = 0
  loss_total: float = 0.0  # Σ per-example loss over the epoch's applied steps so far
  examples: int = 0  # real rows of those steps

  @property
  def running_loss(self) -> float:
    return self.loss_total / self.examples if self.examples else math.nan


@dataclasses.dataclass
class _Loop:
  """One `fit` call's training loop: epochs, sync points, stats and checkpoints."""

  steps: Steps
  placement: Placement
  loader: Any  # a DataLoader or an IterableLoader
  eval_loader: Any
  raise_on_nonfinite: bool
  compiled_epoch: bool
  log_interval: int
  checkpoint_every: Optional[int]
  checkpoints: Any  # a gradcore_jax.checkpoint.Checkpointer, or None
  start_epoch: int
  plateau: Optional[PlateauDriver] = None
  hooks: CallbackList = dataclasses.field(default_factory=CallbackList)
  max_consecutive_skips: Optional[int] = None  # with on_nonfinite="skip"
  seed: Optional[int] = None  # recorded in checkpoints: a resume must use the same
  resume_state: Any = None  # a streamed loader's saved iterator state, for the epoch being resumed
  accumulate: int = 1  # batches per optimizer update; recorded in checkpoints like the seed
  stats: TrainingStats = dataclasses.field(default_factory=TrainingStats)
  good: Optional[Carry] = None  # a copy of the last checked carry (the train steps donate the live one)
  marks: dict[str, Any] = dataclasses.field(default_factory=dict)  # `stats` then: list lengths and counters

  def __enter__(self) -> "_Loop":
    return self

  def __exit__(self, *exc: Any) -> None:
    if self.checkpoints is not None:
      self.checkpoints.close()

  def epoch(self, carry: Carry, position: _Position, bar: Any) -> tuple[Carry, _Position]:
    """Trains from `position` to the end of its epoch; appends the epoch's figures to `stats`."""
    self.hooks.epoch_begin(position.epoch)
    started, begin = time.perf_counter(), position.batch
    if begin == 0:
      carry = carry._replace(metrics=self.placement.replicated(self.steps.new_metrics()))
    for stretch, sizes, last in self._stretches(position):
      carry, outputs = self._train(carry, stretch)
      self._record(outputs, sizes, position, bar)
      self.checked(carry)
      if not last and self._due():
        self.save(carry, position)
      self.hooks.sync(position.epoch)
    seconds = time.perf_counter() - started
    stats = self.stats
    stats.train_metrics.append(_host_values(self.steps.metric_values(carry.metrics)))
    stats.epoch_losses.append(position.running_loss)
    stats.epochs_trained += 1
    stats.epoch_times.append(seconds)
    stats.steps_per_second.append((position.batch - begin) / seconds)
    if self.eval_loader is not None:
      stats.eval_metrics.append(
        _evaluate_loader(self.steps, self.placement, carry.params, carry.model_state, self.eval_loader)
      )
      evaluation = {f"eval_{name}": value for name, value in stats.eval_metrics[-1].items()}
      _progress.show(bar, 0, {"loss": stats.epoch_losses[-1], **evaluation})
    if self.plateau is not None:  # torch: scheduler.step(metric) after the epoch, lr for the next one
      carry = carry._replace(opt_state=self.plateau.apply(carry.opt_state, stats))
    self.checked(carry, copy=self.plateau is not None)  # the carry after the last stretch, with the epoch's figures
    finished, position = position.epoch, _Position(epoch=position.epoch + 1)
    if self.checkpoints is not None and (self.checkpoint_every is None or self._due()):
      self.save(carry, position)
    self.hooks.epoch_end(finished)  # after the checkpoint: a resume rebuilds what callbacks saw from `stats`
    return carry, position

  def run(self, position: _Position, end_epoch: int, rebuild: Callable[..., Any]) -> Run:
    """The `Run` callbacks see; its snapshots are the checked copy `good` (never donated)."""

    def state() -> Snapshot:
      good = self.good
      if good is None:  # `fit` checks the carry before building the run
        raise RuntimeError("fit: no checked state yet.")
      return Snapshot(good.params, good.opt_state, good.model_state, self.marks["total_steps"])

    def model(snapshot: Snapshot) -> Any:
      return rebuild(snapshot.params, snapshot.opt_state, snapshot.model_state, self.updates(snapshot.step))

    return Run(
      stats=self.stats,
      start_epoch=self.start_epoch,
      end_epoch=end_epoch,
      steps_per_epoch=_length(self.loader),
      resumed=self.stats.total_steps > 0,
      epoch=position.epoch,
      state=state,
      rebuild=model,
    )

  def _stretches(self, position: _Position) -> Iterator[tuple[Any, list[int], bool]]:
    """The stretches of the epoch between two sync points, from `position.batch` on.

    Yields `(stretch, sizes, last)`: the stretch's batches, stacked `(data, mask)` host
    arrays with `compiled_epoch` or else a list of `Batch`es, their numbers of real rows,
    and whether the stretch ends the epoch. A streamed loader's epoch ends when its source
    does: one batch is read ahead to know it.
    """
    begin = position.batch
    first = self.stats.total_steps - begin  # the run's step index of the epoch's batch 0
    every, interval = self.checkpoint_every, None if self.compiled_epoch else self.log_interval
    if isinstance(self.loader, IterableLoader):
      state, self.resume_state = self.resume_state, None
      batches = self.loader.epoch(position.epoch, start=begin, state=state)
      stretch: list[Any] = []
      for b, (batch, last) in enumerate(_with_last(batches), start=begin + 1):
        stretch.append(batch)
        if last or (interval and b % interval == 0) or (every and (first + b) % every == 0):
          sizes = [batch.size for batch in stretch]
          yield (_stack_host(stretch) if self.compiled_epoch else stretch), sizes, last
          stretch = []
      return
    count = len(self.loader)
    ends = [
      b
      for b in range(begin + 1, count + 1)
      if b == count or (interval and b % interval == 0) or (every and (first + b) % every == 0)
    ]
    if self.compiled_epoch:
      stacked = self.loader.stacked(position.epoch, start=begin)
      sizes = stacked.mask.sum(axis=1).tolist()
      for start, end in itertools.pairwise([begin] + ends):
        part = slice(start - begin, end - begin)
        yield jax.tree.map(lambda a, part=part: a[part], (stacked.data, stacked.mask)), sizes[part], end == count
    else:
      batches = self.loader.epoch(position.epoch, start=begin)
      for start, end in itertools.pairwise([begin] + ends):
        stretch = [next(batches) for _ in range(end - start)]
        yield stretch, [batch.size for batch in stretch], end == count

  def _train(self, carry: Carry, stretch: Any) -> tuple[Carry, PyTree]:
    """Trains on one stretch; returns the carry and the steps' outputs, stacked on the device."""
    if self.compiled_epoch:
      local = self.loader.process_local
      return self.steps.train_scan(carry, self.placement.batch(stretch, stacked=True, process_local=local))
    outputs = []
    for batch in stretch:
      placed = self.placement.batch((batch.data, batch.mask), process_local=self.loader.process_local)
      carry, output = self.steps.train(carry, placed)
      outputs.append(output)
    return carry, _stack(outputs)  # one transfer at the sync instead of one per step

  def _record(self, outputs: PyTree, sizes: list[int], position: _Position, bar: Any) -> None:
    """Fetches the step outputs (and learning rates) into `stats`; raises at a non-finite step unless skipping."""
    stats = self.stats
    sizes = self.placement.real_rows(self.loader, sizes)  # a process-local loader counts its own rows only
    fetched = jax.device_get(outputs)  # one wait for the device: the figures and the rates together
    rates: Optional[list[float]] = None
    if isinstance(fetched, tuple):  # `(figures, learning rates)`: the optimizer state holds a rate
      fetched, rates = fetched
      rates = np.asarray(rates).tolist()
    fetched = np.asarray(fetched).tolist()
    for index, ((batch_loss, status), size) in enumerate(zip(fetched, sizes, strict=True)):
      if status != FINITE:
        where = {"step": stats.total_steps, "epoch": position.epoch, "batch": position.batch}
        if self.raise_on_nonfinite:
          raise NonFiniteLossError(batch_loss, **where, in_update=status == BAD_UPDATE)
        streak = _streak(stats.skipped_steps, stats.total_steps)
        limit = self.max_consecutive_skips
        if limit is not None and len(streak) > limit:
          raise TooManySkippedStepsError(
            batch_loss, **where, in_update=status == BAD_UPDATE, skipped=streak, limit=limit
          )
        stats.skipped_steps.append(stats.total_steps)
      else:
        position.loss_total += batch_loss * size
        position.examples += size
        stats.examples_seen += size
      stats.batch_losses.append(batch_loss)
      stats.running_losses.append(position.running_loss)
      if rates is not None:
        stats.learning_rates.append(rates[index])
      stats.total_steps += 1
      position.batch += 1
    _progress.show(bar, len(fetched), {"loss": stats.running_losses[-1]})

  def updates(self, steps: int) -> int:
    """The optimizer updates made by the run's first `steps` batches (skipped ones make none).

    With `accumulate = k > 1`, a batch ends a cycle when it is the `k`-th of one or the
    epoch's last (every epoch has `len(loader)` batches and the run starts at a batch 0),
    and the cycle makes an update when none of its batches was skipped.
    """
    skipped = set(self.stats.skipped_steps)
    if self.accumulate == 1:
      return steps - sum(1 for step in skipped if step < steps)
    per_epoch, made, clean = len(self.loader), 0, True
    for step in range(steps):
      batch = step % per_epoch
      clean = (batch % self.accumulate == 0 or clean) and step not in skipped  # a cycle starts clean
      if (batch + 1) % self.accumulate == 0 or batch + 1 == per_epoch:
        made += clean
    return made

  def _due(self) -> bool:
    every = self.checkpoint_every
    return self.checkpoints is not None and every is not None and self.stats.total_steps % every == 0

  def save(self, carry: Carry, position: _Position, *, final: bool = False) -> None:
    """Writes checkpoint `stats.total_steps` (at the end of `fit`: unless it exists)."""
    if self.checkpoints is None or (final and self.stats.total_steps in self.checkpoints.steps()):
      return
    record = {
      "position": dataclasses.asdict(position),
      "start_epoch": self.start_epoch,
      "train_loader": repr(self.loader),
      "stats": self.stats.to_dict(),
      "seed": self.seed,
      "accumulate": self.accumulate,
    }
    if isinstance(self.loader, IterableLoader) and position.batch:
      record["loader_state"] = self.loader.state_at(position.batch)  # None: the source cannot say
    self.checkpoints.save(self.stats.total_steps, carry, record)

  def _streamed_position(self, position: _Position, state: Any, where: str) -> _Position:
    """Where a streamed loader resumes: at the checkpoint's batch when its source saved its state, else the
    epoch's beginning (with a warning): the steps already taken stay applied and recorded."""
    if state is not None and self.loader.resumable:
      self.resume_state = state
      return position
    warnings.warn(
      f"{where} is at batch {position.batch} of epoch {position.epoch}, but train_loader ({self.loader!r}) cannot "
      f"restore its position (its iterator has no get_state/set_state): epoch {position.epoch} restarts from its "
      f"beginning. Its {position.batch} steps already taken stay applied and in batch_losses; the epoch's loss and "
      "metrics cover the restarted pass only.",
      RuntimeWarning,
      stacklevel=4,
    )
    return _Position(epoch=position.epoch)

  def checked(self, carry: Carry, *, copy: bool = True) -> None:
    """Remembers `carry` (a copy, unless `copy=False` says `good` holds it already) and `stats` as checked."""
    if copy:
      self.good = copy_tree(carry)
    self.marks = {name: len(value) if isinstance(value, list) else value for name, value in vars(self.stats).items()}

  def attach_partial_result(self, err: BaseException, rebuild: Callable[..., Any]) -> None:
    """Sets `err.partial_result` to the `FitResult` of the last checked state (see `fit`)."""
    if self.good is None:
      return
    try:
      fields: dict[str, Any] = {
        name: value[: self.marks[name]] if isinstance(value, list) else self.marks[name]
        for name, value in vars(self.stats).items()
      }
      stats = TrainingStats(**fields)
      good = self.good
      model = rebuild(good.params, good.opt_state, good.model_state, self.updates(stats.total_steps))
      # An attribute of any exception type, as documented in `fit` (hence not declared on BaseException):
      err.partial_result = FitResult(model, stats, good.opt_state)  # pyright: ignore[reportAttributeAccessIssue]
      err.add_note(f"fit: the last checked state (after {stats.total_steps} steps) is in this error's .partial_result.")
    except Exception as failure:  # pylint: disable=broad-except  (never hide the error that stopped fit)
      err.add_note(f"fit: no partial_result: building it failed with {type(failure).__name__}: {failure}")

  def restore(self, carry: Carry, *, end_epoch: int) -> tuple[Carry, _Position]:
    """The newest readable checkpoint's carry and position (and `stats`), or `carry` at the run's start.

    Newer checkpoints that cannot be read are set aside (renamed, never deleted) with a
    warning, once the one found is known to belong to this run.
    """
    checkpoints = self.checkpoints
    if checkpoints is None or checkpoints.latest_step() is None:
      return carry, _Position(epoch=self.start_epoch)
    step, carry, record, unreadable = checkpoints.restore_newest(carry, check=_record_problem)
    where = f"The checkpoint {checkpoints.directory}/{step}"
    if record["train_loader"] != repr(self.loader):
      raise ValueError(f"{where} was written with another train_loader: {record['train_loader']}, not {self.loader!r}.")
    position = _Position(**record["position"])
    if record["start_epoch"] != self.start_epoch or position.epoch > end_epoch:
      raise ValueError(
        f"{where} belongs to a run of start_epoch={record['start_epoch']} and is at epoch {position.epoch}; "
        f"this call has start_epoch={self.start_epoch} and ends at epoch {end_epoch}."
      )
    if record.get("accumulate", 1) != self.accumulate:  # its carry may hold a partly summed cycle
      raise ValueError(
        f"{where} belongs to a run with accumulate={record.get('accumulate', 1)}; this call has "
        f"accumulate={self.accumulate}."
      )
    if record.get("seed") != self.seed:  # the RNG keys of the steps to come derive from it
      raise ValueError(f"{where} belongs to a run with seed={record.get('seed')}; this call has seed={self.seed}.")
    self.stats = TrainingStats.from_dict(record["stats"])
    if isinstance(self.loader, IterableLoader) and position.batch:
      position = self._streamed_position(position, record.get("loader_state"), f"{where}")
    if unreadable:
      moved = "".join(
        f"\n  {path}: {reason}\n    (renamed to {checkpoints.set_aside(int(os.path.basename(path)))})"
        for path, reason in unreadable
      )
      warnings.warn(
        UnreadableCheckpointWarning(
          f"Resuming from step {step} in {checkpoints.directory}: {len(unreadable)} newer checkpoint(s) cannot be "
          f"read. They were renamed, not deleted, so that this run's checkpoints do not collide with them:{moved}"
        ),
        stacklevel=3,
      )
    return carry, position


# One dispatch (eager `jnp.stack` makes one per array); each output leaf (figures, learning rate) stacked apart.
def _streak(skipped: list[int], step: int) -> list[int]:
  """The consecutive skipped steps ending with `step`: `step` and the unbroken run of `skipped` before it."""
  run = [step]
  for earlier in reversed(skipped):
    if earlier != run[0] - 1:
      break
    run.insert(0, earlier)
  return run


_stack = jax.jit(lambda outputs: jax.tree.map(lambda *steps: jnp.stack(steps), *outputs))


def _place(placement: Placement, adapted: Adapted, steps: Steps, *, accumulate: int = 1) -> Carry:
  """The initial carry: fresh buffers (to be donated) laid out by `placement`.

  With `accumulate > 1` it holds an empty `Accumulator` (gradient sums laid out as the params).
  """
  if adapted.tx is None:  # `fit` refuses a missing optimizer before this
    raise ValueError("optimizer is required to train: pass an Optax transformation (or an nnx.Optimizer).")
  params, _ = placement.params(adapted.params)
  accumulator = None
  if accumulate > 1:
    counters = placement.replicated((jnp.zeros((), jnp.int32), jnp.zeros((), jnp.bool_), jnp.zeros((), jnp.int32)))
    accumulator = Accumulator(_zeros_like(params), *counters)
  return Carry(
    params,
    placement.opt_state(adapted.tx, adapted.opt_state, params),
    placement.replicated(adapted.model_state),
    placement.replicated(steps.new_metrics()),
    accumulator,
  )


# Zeros laid out as their (placed) params: the jitted function keeps each input's sharding.
_zeros_like = jax.jit(lambda tree: jax.tree.map(jnp.zeros_like, tree))


def _open_checkpoints(directory: Optional[str], keep: int, resume: bool) -> Any:
  """The `Checkpointer` of `checkpoint_dir`, once the folder is known to be writable (None without one)."""
  if directory is None:
    return None
  checkpoints = Checkpointer(checkpoint_lib._folder(directory, "checkpoint_dir", writable=True), keep=keep)
  if not resume and checkpoints.steps():
    checkpoints.close()
    raise ValueError(
      f"checkpoint_dir {directory} already holds checkpoints (steps {checkpoints.steps()}): pass resume=True "
      "to continue that run, or choose an empty folder."
    )
  return checkpoints


def _record_problem(record: dict[str, Any]) -> Optional[str]:
  """None when `record` is one `_Loop.save` writes, else why a checkpoint with it cannot be resumed from."""
  try:
    _Position(**record["position"])
    TrainingStats.from_dict(record["stats"])
    if not isinstance(record["start_epoch"], int) or not isinstance(record["train_loader"], str):
      raise TypeError("its start_epoch or train_loader has the wrong type")
    if not isinstance(record.get("seed"), (int, type(None))):
      raise TypeError("its seed has the wrong type")
    if not isinstance(record.get("accumulate", 1), int):
      raise TypeError("its accumulate has the wrong type")
  except (KeyError, TypeError, ValueError) as err:
    return f"its record is not one fit writes ({type(err).__name__}: {err})"
  return None


def _detached_rebuild(model: Any, adapted: Adapted) -> Callable[..., Any]:
  """`adapted.rebuild`, but leaving the caller's objects as they were: an NNX module is cloned first."""
  flax = _loaded_flax()
  if flax is None or not isinstance(model, flax.nnx.Module):
    return adapted.rebuild  # a function's params or a new TrainState: nothing of the caller's changes
  clone = flax.nnx.clone(model)

  def rebuild(params: PyTree, opt_state: PyTree, model_state: PyTree, steps: int) -> Any:
    del opt_state, steps  # in `FitResult.opt_state`; the caller's nnx.Optimizer is not touched
    flax.nnx.update(clone, params, model_state)
    return clone

  return rebuild


def _evaluate_loader(
  steps: Steps, placement: Placement, params: PyTree, model_state: PyTree, loader: Any
) -> dict[str, Any]:
  tally = placement.replicated(steps.new_tally())
  for batch in loader.epoch(0):
    placed = placement.batch((batch.data, batch.mask), process_local=loader.process_local)
    tally = steps.evaluate(tally, params, model_state, placed)
  return _host_values(steps.tally_values(tally))


def _host_values(values: Mapping[str, jax.Array]) -> dict[str, Any]:
  """Device figures as plain Python numbers (one transfer)."""
  return {name: np.asarray(value).tolist() for name, value in jax.device_get(values).items()}


def _check_runs(name: str, loader: Any, step: Callable[..., Any], *args: Any) -> None:
  """Traces `step(*args, batch)` on `loader`'s batch shapes; a failure names the loader."""
  spec = loader.spec
  try:
    jax.eval_shape(step, *args, (spec.data, spec.mask))
  except Exception as err:  # pylint: disable=broad-except
    shapes = jax.tree.map(lambda s: f"{s.dtype}{list(s.shape)}", spec.data)
    raise ValueError(
      f"The model, loss or metrics cannot run on the batches of {name} (data {shapes}): {type(err).__name__}: {err}"
    ) from err


def _check_loader(name: str, loader: Any, placement: Placement) -> Any:
  """`loader` as the loop uses it (`data_sources.as_loader`), checked against `placement`.

  A streamed loader that is not process-local is refused with several processes: its
  batches cannot be checked to be the same whole data on each.
  """
  loader = as_loader(name, loader)
  if isinstance(loader, IterableLoader) and jax.process_count() > 1 and not loader.process_local:
    raise ValueError(
      f"{name}: with {jax.process_count()} processes, a streamed loader must be IterableLoader(source, "
      "process_local=True), each process's source yielding its own share of every global batch."
    )
  placement.check_loader(name, loader)
  return loader


def _length(loader: Any) -> Optional[int]:
  """Batches per epoch, or None when a streamed loader does not know it."""
  return loader.length if isinstance(loader, IterableLoader) else len(loader)


def _with_last(items: Iterator[Any]) -> Iterator[tuple[Any, bool]]:
  """`(item, is_last)` for each item, reading one item ahead."""
  it = iter(items)
  try:
    current = next(it)
  except StopIteration:
    return
  for following in it:
    yield current, False
    current = following
  yield current, True


def _stack_host(batches: list[Any]) -> tuple[PyTree, np.ndarray]:
  """Batches stacked on a new leading axis on the host: a compiled stretch of a streamed loader."""
  data = jax.tree.map(lambda *leaves: np.stack(leaves), *[batch.data for batch in batches])
  return data, np.stack([batch.mask for batch in batches])


def _model_options(seed: Any, mode_flags: Any, rng_streams: Any, mutable: Any) -> ModelOptions:
  """`fit`'s model arguments, checked (the model-specific checks are `adapt`'s)."""
  if seed is not None:
    seed = _check_int("seed", seed, minimum=0)
  return ModelOptions(
    mode_flags=mode_flags,
    seed=seed,
    rng_streams=_names("rng_streams", rng_streams),
    mutable=_names("mutable", mutable),
  )


def _names(name: str, value: Any) -> Optional[tuple[str, ...]]:
  """A sequence of strings as a tuple (None stays None); a bare string is refused, not split."""
  if value is None:
    return None
  if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
    raise ValueError(f"{name} must be a list of names, e.g. ['batch_stats'], or None; got {value!r}.")
  return tuple(value)


def _check_bool(name: str, value: Any) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{name} must be True or False, got {value!r}.")
  return bool(value)


def _step_options(clip_global_norm: Any, on_nonfinite: Any) -> StepOptions:
  if clip_global_norm is not None:
    valid = isinstance(clip_global_norm, numbers.Real) and not isinstance(clip_global_norm, bool)
    if not valid or not 0 < float(clip_global_norm) < math.inf:
      raise ValueError(f"clip_global_norm must be a positive finite number or None, got {clip_global_norm!r}.")
    clip_global_norm = float(clip_global_norm)
  if on_nonfinite not in ON_NONFINITE:
    raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}.")
  return StepOptions(clip_global_norm=clip_global_norm, on_nonfinite=on_nonfinite)


def _check_metrics(metrics: Optional[Mapping[str, metrics_lib.Metric]]) -> dict[str, metrics_lib.Metric]:
  if metrics is None:
    return {}
  if not isinstance(metrics, Mapping) or not all(isinstance(m, metrics_lib.Metric) for m in metrics.values()):
    raise ValueError("metrics must be a dict {name: gradcore_jax.metrics.Metric}, e.g. {'acc': metrics.accuracy()}.")
  for reserved in ("loss", "learning_rate"):
    if reserved in metrics:
      raise ValueError(f"metrics must not use the name {reserved!r}: it is reserved for the {reserved} figure.")
  return dict(metrics)
