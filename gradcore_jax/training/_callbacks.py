"""Callbacks: your code at `fit`'s sync points, and the built-in ones (public as `gradcore_jax.callbacks`).

A callback subclasses `Callback` and overrides the hooks it needs. `fit` calls them only
where the host already holds the figures, so a callback never adds a wait for the device
inside an epoch:

- `on_train_begin`: once, before the first step (after a resume, with the restored
  stats); `run.logs` is `{}`.
- `on_epoch_begin`: before each epoch's first step (a resumed epoch's too); `{}`.
- `on_sync`: at every sync point (every `log_interval` steps, each checkpoint, the
  epoch's end; with `compiled_epoch`, the last two); `loss` (the epoch's running loss),
  `batch_loss` (the last step's) and `learning_rate` (the last step's, when recorded).
- `on_epoch_end`: after the epoch's figures, evaluation, plateau step and checkpoint;
  `loss`, each training metric, `eval_loss` and `eval_<metric>` (with an
  `eval_loader`), `learning_rate` (the epoch's last step's, when recorded).
- `on_train_end`: once, when training ends without an error (all epochs done, or
  stopped); the last epoch's logs.

Each hook receives the `Run`, a read-only view of the run, and may return True to stop
training (or set `run.stop_training = True`): training ends after the current epoch (its
figures, evaluation and checkpoint complete), so every recorded epoch is whole. Callbacks
run in list order and share one `logs` dict per hook call, so a callback may add figures
for the ones after it.

`WeightAveraging` keeps torch's SWA / EMA average (`gcj.averaging`) of the trained params.

The module imports nothing of `training` but `TrainingStats`: `fit` builds the `Run` and
calls the hooks (imports point one way).
"""

from __future__ import annotations

import csv
import importlib
import math
import numbers
import os
import warnings
from typing import Any
from typing import Callable
from typing import NamedTuple
from typing import Optional
from typing import Sequence
from typing import Union

from gradcore_jax import averaging
from gradcore_jax._typing import PyTree
from gradcore_jax.training._stats import TrainingStats

Logs = dict[str, Any]


class Snapshot(NamedTuple):
  """The trained state at a sync point, on the device.

  Attributes:
    params: the params.
    opt_state: the optimizer state.
    model_state: the non-trained model variables (NNX batch statistics, RNG counters), or None.
    step: the steps taken when it was taken (`stats.total_steps` then).
  """

  params: PyTree
  opt_state: PyTree
  model_state: PyTree
  step: int


class Run:
  """What a callback sees of a `fit` run: read-only, except `stop_training`.

  Attributes:
    epoch: the epoch being trained (`on_epoch_begin`, `on_sync`) or just finished
      (`on_epoch_end`), counted as `fit`'s `start_epoch` is (the first epoch of a run
      started at `start_epoch=0` is 0); at `on_train_begin`, the first epoch this call
      trains; at `on_train_end`, the last one it trained.
    step: steps taken so far (`stats.total_steps`).
    logs: the figures of this hook call (see the module table); a dict shared by the
      callbacks of one call.
    stats: the run's `TrainingStats` so far (the live object: read it, do not change it).
    start_epoch: `fit`'s `start_epoch`; `stats` epoch `i` is epoch `start_epoch + i`.
    end_epoch: `start_epoch + epochs`, the epoch `fit` stops before.
    steps_per_epoch: `len(train_loader)`; None for a streamed loader of unknown length.
    resumed: True when `fit` resumed from a checkpoint (`stats` then hold the epochs
      trained before it).
    stop_training: set it to True (or return True from a hook) to stop after this epoch.
  """

  def __init__(
    self,
    *,
    stats: TrainingStats,
    start_epoch: int,
    end_epoch: int,
    steps_per_epoch: Optional[int],
    resumed: bool,
    epoch: int,
    state: Callable[[], Snapshot],
    rebuild: Callable[[Snapshot], Any],
  ) -> None:
    """Built by `fit` (not by callbacks).

    Args:
      stats: the run's `TrainingStats`.
      start_epoch: `fit`'s `start_epoch`.
      end_epoch: `start_epoch + epochs`.
      steps_per_epoch: `len(train_loader)`, or None when unknown.
      resumed: whether `stats` come from a checkpoint.
      epoch: the first epoch this call trains.
      state: gives the `Snapshot` of the last sync point.
      rebuild: turns a `Snapshot` into the model in the caller's form.
    """
    self._stats, self._state, self._rebuild = stats, state, rebuild
    self._start_epoch, self._end_epoch, self._steps_per_epoch = start_epoch, end_epoch, steps_per_epoch
    self._resumed, self._epoch = resumed, epoch
    self._logs: Logs = {}
    self._at_end = False
    self._final: Optional[Snapshot] = None
    self.stop_training = False

  @property
  def epoch(self) -> int:
    return self._epoch

  @property
  def step(self) -> int:
    return self._stats.total_steps

  @property
  def logs(self) -> Logs:
    return self._logs

  @property
  def stats(self) -> TrainingStats:
    return self._stats

  @property
  def start_epoch(self) -> int:
    return self._start_epoch

  @property
  def end_epoch(self) -> int:
    return self._end_epoch

  @property
  def steps_per_epoch(self) -> Optional[int]:
    return self._steps_per_epoch

  @property
  def resumed(self) -> bool:
    return self._resumed

  def snapshot(self) -> Snapshot:
    """The params, optimizer and model state of the last sync point (which is now, in a hook).

    These are `fit`'s own checked copy of the state (see `fit`'s `partial_result`), which
    no step ever donates: taking it copies nothing, and the arrays stay valid for as long
    as they are kept.
    """
    return self._state()

  @property
  def params(self) -> PyTree:
    """The current params (`snapshot().params`)."""
    return self.snapshot().params

  @property
  def opt_state(self) -> PyTree:
    """The current optimizer state (`snapshot().opt_state`)."""
    return self.snapshot().opt_state

  @property
  def model(self) -> Any:
    """The current model in the form `fit` was given (for an NNX module: a clone holding the state)."""
    return self._rebuild(self.snapshot())

  def epoch_logs(self, index: int) -> Logs:
    """The `on_epoch_end` logs of epoch `start_epoch + index`, rebuilt from `stats`.

    `{"loss": epoch_losses[index], **train_metrics[index], "eval_loss": ..., "eval_<m>":
    ..., "learning_rate": the rate of the epoch's last step}`; the evaluation entries
    only with an `eval_loader`, the rate only when `stats.learning_rates` holds one rate
    per step (it is empty when the optimizer state has no injected rate, and short after
    resuming a checkpoint written before rates were recorded).

    Args:
      index: an epoch of `stats`, `0 <= index < stats.epochs_trained`.
    """
    stats = self._stats
    if not isinstance(index, int) or not 0 <= index < stats.epochs_trained:
      raise ValueError(f"index must be an epoch of stats, 0 <= index < {stats.epochs_trained}; got {index!r}.")
    logs: Logs = {"loss": stats.epoch_losses[index], **stats.train_metrics[index]}
    if index < len(stats.eval_metrics):  # a run without an eval_loader records no evaluations
      logs.update({f"eval_{name}": value for name, value in stats.eval_metrics[index].items()})
    per_epoch = self._steps_per_epoch  # None for a stream of unknown length: its epochs' ends are not known here
    if per_epoch is not None and len(stats.learning_rates) == stats.total_steps:  # one per step
      logs["learning_rate"] = stats.learning_rates[(index + 1) * per_epoch - 1]
    return logs

  def restore(self, snapshot: Snapshot) -> None:
    """Makes `fit` return `snapshot`'s state (model and `opt_state`) instead of the last one.

    Only in `on_train_end`; the `TrainingStats` and the checkpoints keep the whole run.

    Args:
      snapshot: a `Snapshot` from `snapshot()` of this run.
    """
    if not self._at_end:
      raise RuntimeError("run.restore(snapshot) is only possible in on_train_end.")
    if not isinstance(snapshot, Snapshot):
      raise TypeError(f"snapshot must be a Snapshot from run.snapshot(), got {type(snapshot).__name__}.")
    self._final = snapshot


class Callback:
  """The base class of `fit` callbacks: every hook does nothing.

  Override the hooks you need; each gets the `Run` and may return True to stop training
  after the current epoch (see the module docstring for when each is called and with
  which `run.logs`). A hook that raises stops `fit` with that exception, which carries
  `partial_result` like any failure once training has begun.
  """

  def on_train_begin(self, run: Run) -> Optional[bool]:
    """Before the first step (after a resume, `run.stats` hold the restored epochs).

    Args:
      run: the run.
    """
    del run
    return None

  def on_epoch_begin(self, run: Run) -> Optional[bool]:
    """Before the first step of epoch `run.epoch`.

    Args:
      run: the run.
    """
    del run
    return None

  def on_sync(self, run: Run) -> Optional[bool]:
    """At a sync point, with the steps since the last one in `run.stats`.

    Args:
      run: the run.
    """
    del run
    return None

  def on_epoch_end(self, run: Run) -> Optional[bool]:
    """After epoch `run.epoch` with its figures in `run.logs`.

    Args:
      run: the run.
    """
    del run
    return None

  def on_train_end(self, run: Run) -> Optional[bool]:
    """Once training is over (not after an error); the return value is ignored.

    Args:
      run: the run.
    """
    del run
    return None


class CallbackList:
  """`fit`'s side: calls each callback's hook in order and collects stop requests."""

  def __init__(self, callbacks: Optional[Sequence[Callback]] = None) -> None:
    """Checks `callbacks`.

    Args:
      callbacks: a list of `Callback`s, or None.
    """
    if callbacks is None:
      callbacks = []
    if not isinstance(callbacks, (list, tuple)) or not all(isinstance(c, Callback) for c in callbacks):
      raise TypeError(
        f"callbacks must be a list of gradcore_jax.callbacks.Callback objects (subclass Callback), got {callbacks!r}."
      )
    self.callbacks = list(callbacks)
    self.run: Optional[Run] = None

  def _call(self, hook: str, epoch: int, logs: Logs) -> None:
    run = self.run
    if run is None:
      return
    run._epoch, run._logs = epoch, logs
    for callback in self.callbacks:
      if getattr(callback, hook)(run) and hook != "on_train_end":
        run.stop_training = True

  @property
  def stop_training(self) -> bool:
    return self.run is not None and bool(self.run.stop_training)

  def begin(self, run: Run) -> None:
    self.run = run
    self._call("on_train_begin", run.epoch, {})

  def epoch_begin(self, epoch: int) -> None:
    self._call("on_epoch_begin", epoch, {})

  def sync(self, epoch: int) -> None:
    if not self.callbacks or self.run is None:
      return
    stats = self.run.stats
    logs: Logs = {"loss": stats.running_losses[-1], "batch_loss": stats.batch_losses[-1]}
    if stats.learning_rates:
      logs["learning_rate"] = stats.learning_rates[-1]
    self._call("on_sync", epoch, logs)

  def epoch_end(self, epoch: int) -> None:
    if self.callbacks and self.run is not None:
      self._call("on_epoch_end", epoch, self.run.epoch_logs(self.run.stats.epochs_trained - 1))

  def end(self) -> Optional[Snapshot]:
    """Calls `on_train_end`; returns the `Snapshot` a callback restored, or None."""
    run = self.run
    if run is None or not self.callbacks:
      return None
    run._at_end = True
    trained = run.stats.epochs_trained
    self._call("on_train_end", run.epoch, run.epoch_logs(trained - 1) if trained else {})
    return run._final


# ---------------------------------------------------------------------------------------
# EarlyStopping


MODES = ("auto", "min", "max")


class EarlyStopping(Callback):
  """Stops training when the monitored figure stops improving: Keras' `EarlyStopping` rule.

  After each epoch from `start_from_epoch` on, with `value = logs[monitor]`: the count of
  epochs `wait` grows by one; `value` improves on the best so far when `value + min_delta
  < best` ("min"; `value - min_delta > best` for "max"), the first value always does.
  An improvement makes it the best (and, with `restore_best`, keeps that epoch's state)
  and resets `wait` to 0 if it also improves on `baseline` (or there is none). Otherwise,
  once `wait >= patience` (and the epoch is not epoch 0), training stops after this
  epoch. So `patience=0` stops at the first epoch without improvement; with a `baseline`
  not beaten, training stops `patience` epochs in. A NaN figure never improves (Keras 3
  would take a NaN first figure as the best and then never improve on it).

  `restore_best=True` makes `fit` return the params, optimizer state and model state at
  the end of the best epoch (or of the first monitored epoch, if none improved), whether
  training stopped early or ran out of epochs, as Keras does. It holds those as device
  arrays: `fit`'s checked copy of that moment, so no copy and nothing per step.
  `TrainingStats` and checkpoints still describe the whole run.

  Resume: `on_train_begin` replays the figures of the epochs in `run.stats` (a resumed
  run's), so `wait`, `best` and a stop decided before the interruption are as in the
  uninterrupted run (a run that had stopped stops again before its first step). The best
  epoch's state is not in the checkpoint: when it lies before the resume point (and is
  not the checkpoint's own epoch end), `restore_best` cannot restore it and `fit` returns
  the last state, with a warning. A `fit` call without `resume` starts afresh, as Keras
  does.

  Attributes (after `fit`): `best` (None before the first improvement), `best_epoch`,
  `wait`, `stopped_epoch` (None when training was not stopped) and `best_state` (a
  `Snapshot`, with `restore_best`).
  """

  def __init__(
    self,
    monitor: str = "eval_loss",
    mode: str = "auto",
    patience: int = 0,
    min_delta: float = 0.0,
    baseline: Optional[float] = None,
    restore_best: bool = False,
    start_from_epoch: int = 0,
  ) -> None:
    """Checks the options (ValueError naming the argument).

    Args:
      monitor: the figure of the epoch logs to watch: `"loss"` (the epoch's training
        loss), `"eval_loss"`, `"eval_<metric>"`, a training metric's name, or a figure an
        earlier callback adds. Default `"eval_loss"` (needs an `eval_loader`).
      mode: `"min"`, `"max"`, or `"auto"` (default): `"min"` for `"loss"` and
        `"eval_loss"`; for other figures pass `"min"` or `"max"`.
      patience: epochs without improvement before stopping, an integer >= 0. Default 0.
      min_delta: the least change that counts as an improvement, >= 0. Default 0.
      baseline: a value the figure must improve on for `wait` to reset, or None (default).
      restore_best: return the best epoch's state (see above). Default False.
      start_from_epoch: epochs (counted like `fit`'s `start_epoch`) before monitoring
        starts, an integer >= 0. Default 0.
    """
    if not isinstance(monitor, str) or not monitor:
      raise ValueError(f"monitor must be the name of a figure, e.g. 'eval_loss', got {monitor!r}.")
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if mode == "auto":
      if monitor.removeprefix("eval_") != "loss":
        raise ValueError(
          f"mode='auto' cannot tell whether {monitor!r} should fall or rise: pass mode='min' or mode='max'."
        )
      mode = "min"
    self.monitor, self.mode = monitor, mode
    self.patience = _check_count("patience", patience)
    self.start_from_epoch = _check_count("start_from_epoch", start_from_epoch)
    self.min_delta = _check_real("min_delta", min_delta, minimum=0.0)
    self.baseline = None if baseline is None else _check_real("baseline", baseline)
    if not isinstance(restore_best, bool):
      raise ValueError(f"restore_best must be True or False, got {restore_best!r}.")
    self.restore_best = restore_best
    self._reset()

  def _reset(self) -> None:
    self.best: Optional[float] = None
    self.best_epoch: Optional[int] = None
    self.wait = 0
    self.stopped_epoch: Optional[int] = None
    self.best_state: Optional[Snapshot] = None

  def _improves(self, value: float, reference: Optional[float]) -> bool:
    if math.isnan(value):
      return False
    if reference is None:
      return True
    if self.mode == "min":
      return value + self.min_delta < reference
    return value - self.min_delta > reference

  def _value(self, logs: Logs, epoch: int) -> float:
    if self.monitor not in logs:
      raise ValueError(
        f"EarlyStopping monitors {self.monitor!r}, which epoch {epoch}'s logs do not have; they have {sorted(logs)}."
      )
    value = logs[self.monitor]
    if not isinstance(value, numbers.Real):
      raise TypeError(f"EarlyStopping monitors {self.monitor!r}, which must be a number; got {value!r}.")
    return float(value)

  def _update(self, epoch: int, value: float, state: Optional[Snapshot]) -> bool:
    """One epoch of the rule; `state` is that epoch's snapshot (None while replaying). True: stop."""
    if epoch < self.start_from_epoch:
      return False
    if self.best_epoch is None:  # the first monitored epoch is the best until one improves
      self.best_epoch, self.best_state = epoch, state
    self.wait += 1
    if self._improves(value, self.best):
      self.best, self.best_epoch, self.best_state = value, epoch, state
      if self.baseline is None or self._improves(value, self.baseline):
        self.wait = 0
      return False
    if self.wait >= self.patience and epoch > 0:
      self.stopped_epoch = epoch
      return True
    return False

  def on_train_begin(self, run: Run) -> Optional[bool]:
    self._reset()
    stop = False
    for index in range(run.stats.epochs_trained):  # a resumed run: the epochs before it
      epoch = run.start_epoch + index
      stop = self._update(epoch, self._value(run.epoch_logs(index), epoch), None)
    if self.restore_best and self.best_epoch is not None and self.best_state is None:
      per_epoch = run.steps_per_epoch
      at_epoch_end = per_epoch is not None and run.step == run.stats.epochs_trained * per_epoch
      if at_epoch_end and self.best_epoch == run.start_epoch + run.stats.epochs_trained - 1:
        self.best_state = run.snapshot()  # the checkpoint was written at the best epoch's end
    return stop

  def on_epoch_end(self, run: Run) -> Optional[bool]:
    value = self._value(run.logs, run.epoch)
    keep = self.restore_best and (self.best_epoch is None or self._improves(value, self.best))
    return self._update(run.epoch, value, run.snapshot() if keep else None)

  def on_train_end(self, run: Run) -> Optional[bool]:
    if not self.restore_best or self.best_epoch is None:
      return None
    if self.best_state is None:
      warnings.warn(
        f"EarlyStopping(restore_best=True): the best epoch, {self.best_epoch}, was trained before this run "
        "resumed, and its state is not in the checkpoint; fit returns the last state instead.",
        stacklevel=2,
      )
      return None
    run.restore(self.best_state)
    return None


# ---------------------------------------------------------------------------------------
# Loggers


class CSVLogger(Callback):
  """Writes one CSV row per epoch: Keras' `CSVLogger` format.

  The header is `epoch` and the sorted names of the first epoch's logs; each row is the
  epoch (counted like `start_epoch`) and its figures, `NA` for a figure it lacks. Numbers
  are written as Python prints them (`repr`, every digit of a float). The file is
  flushed after every row. With `append=False` (default) the file is rewritten when
  training begins; a resumed run first writes the rows of the epochs its restored
  `TrainingStats` hold, so the file equals the uninterrupted run's. `append=True` adds to
  an existing file (the header only if it is empty), as Keras does when continuing a run
  by hand.
  """

  def __init__(self, path: Union[str, os.PathLike], separator: str = ",", append: bool = False) -> None:
    """Checks the options.

    Args:
      path: the CSV file (its folder must exist).
      separator: the field separator, one character. Default ",".
      append: add to the file instead of rewriting it. Default False.
    """
    if not isinstance(path, (str, os.PathLike)):
      raise ValueError(f"path must be a file path, got {path!r}.")
    if not isinstance(separator, str) or len(separator) != 1:
      raise ValueError(f"separator must be one character, got {separator!r}.")
    if not isinstance(append, bool):
      raise ValueError(f"append must be True or False, got {append!r}.")
    self.path, self.separator, self.append = os.fspath(path), separator, append
    self.keys: Optional[list[str]] = None
    self._header = True

  def on_train_begin(self, run: Run) -> Optional[bool]:
    self.keys = None
    if self.append:
      self._header = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
      open(self.path, "a").close()  # a path that cannot be written fails now, before training
    else:
      self._header = True
      open(self.path, "w").close()
      for index in range(run.stats.epochs_trained):  # a resumed run: the rows before it
        self._write(run.start_epoch + index, run.epoch_logs(index))
    return None

  def on_epoch_end(self, run: Run) -> Optional[bool]:
    self._write(run.epoch, run.logs)
    return None

  def _write(self, epoch: int, logs: Logs) -> None:
    if self.keys is None:
      self.keys = sorted(logs)
    with open(self.path, "a", newline="") as file:
      writer = csv.writer(file, delimiter=self.separator)
      if self._header:
        writer.writerow(["epoch", *self.keys])
        self._header = False
      writer.writerow([epoch, *(_cell(logs.get(key, "NA")) for key in self.keys)])


def _cell(value: Any) -> Any:
  return list(value) if isinstance(value, tuple) else value


UPDATE_FREQS = ("epoch", "sync")


class TensorBoard(Callback):
  """Writes the run's figures as TensorBoard scalars with `tensorboardX` (the `tensorboard` extra).

  Every figure of the epoch logs is written at each epoch's end as `epoch/<name>` (e.g.
  `epoch/loss`, `epoch/eval_accuracy`, `epoch/learning_rate`); with `update_freq="sync"`
  also every step's batch loss and learning rate, as `batch/loss` and
  `batch/learning_rate`, at each sync point. The x axis is the step count (steps taken,
  so step `s`'s batch loss is at `s + 1`, an epoch's figures at its last step's); a
  resumed run purges what the interrupted one wrote after its checkpoint
  (`purge_step`). Non-scalar figures are skipped. The writer is flushed at each epoch's
  end and closed at `on_train_end`.
  """

  def __init__(self, log_dir: Union[str, os.PathLike], update_freq: str = "epoch") -> None:
    """Checks the options and that tensorboardX is installed.

    Args:
      log_dir: the folder of the event files (created if missing).
      update_freq: `"epoch"` (default) or `"sync"` (also per-step figures).

    Raises:
      ImportError: tensorboardX is missing (`pip install 'gradcore-jax[tensorboard]'`).
    """
    try:
      self._module = importlib.import_module("tensorboardX")
    except ImportError as err:
      raise ImportError(
        "gradcore_jax.callbacks.TensorBoard needs tensorboardX: pip install 'gradcore-jax[tensorboard]'."
      ) from err
    if not isinstance(log_dir, (str, os.PathLike)):
      raise ValueError(f"log_dir must be a folder path, got {log_dir!r}.")
    if update_freq not in UPDATE_FREQS:
      raise ValueError(f"update_freq must be one of {UPDATE_FREQS}, got {update_freq!r}.")
    self.log_dir, self.update_freq = os.fspath(log_dir), update_freq
    self.writer: Any = None
    self._written = 0

  def on_train_begin(self, run: Run) -> Optional[bool]:
    self.close()
    purge = run.step + 1 if run.resumed and run.step else None
    self.writer = self._module.SummaryWriter(self.log_dir, purge_step=purge)
    self._written = run.step
    return None

  def on_sync(self, run: Run) -> Optional[bool]:
    if self.update_freq == "sync" and self.writer is not None:
      stats = run.stats
      rates = stats.learning_rates if len(stats.learning_rates) == stats.total_steps else None
      for s in range(self._written, stats.total_steps):
        self.writer.add_scalar("batch/loss", stats.batch_losses[s], s + 1)
        if rates is not None:
          self.writer.add_scalar("batch/learning_rate", rates[s], s + 1)
      self._written = stats.total_steps
    return None

  def on_epoch_end(self, run: Run) -> Optional[bool]:
    if self.writer is not None:
      for name, value in run.logs.items():
        if isinstance(value, numbers.Real):
          self.writer.add_scalar(f"epoch/{name}", float(value), run.step)
      self.writer.flush()
    return None

  def on_train_end(self, run: Run) -> Optional[bool]:
    del run
    self.close()
    return None

  def close(self) -> None:
    """Closes the writer (also called when training begins again)."""
    if self.writer is not None:
      self.writer.close()
      self.writer = None


class WeightAveraging(Callback):
  """torch's SWA / EMA recipe from `fit`: `AveragedModel.update_parameters(model)` at epoch ends.

  From epoch `start_epoch` on (counted like `fit`'s `start_epoch`), at the end of every
  epoch (`every="epoch"`, torch's SWA recipe: `if epoch >= swa_start:
  swa_model.update_parameters(model)`) or at every sync point (`every="sync"`; with
  `fit(log_interval=1)` that is every step, the usual EMA schedule, at the cost of one
  wait for the device per step), the trained params are folded into `averaged` with
  `gcj.averaging.update`: the first fold copies them, later ones apply `avg_fn`. The
  model state (BatchNorm statistics, when the model has any) is copied, or averaged too
  with `use_buffers=True`, as in torch. Recompute BatchNorm statistics for the averaged
  params yourself if you need them (torch's `update_bn`), e.g. by a pass over the data in
  train mode.

  After `fit`, `averaged` is a `gcj.averaging.AveragedState` whose `params` are in `fit`'s
  params form (what `run.params` holds): score them with
  `gcj.evaluate(apply_fn, loader, params=callback.averaged.params, ...)`. The average lives
  on the device and costs one fold per update, never a copy per step. It is not part of
  checkpoints: a resumed run starts a new average (documented limit).

  Attributes (after `fit`): `averaged` (None before the first fold) and `folds` (how many
  folds were taken in this `fit` call).
  """

  def __init__(
    self,
    avg_fn: Optional[Callable[[Any, Any, Any], Any]] = None,
    *,
    start_epoch: int = 0,
    every: str = "epoch",
    use_buffers: bool = False,
  ) -> None:
    """Checks the options (ValueError naming the argument).

    Args:
      avg_fn: the per-leaf rule, `gcj.averaging.swa()` (default: equal weights) or
        `gcj.averaging.ema(decay)`, or your own `(averaged, current, n_averaged) -> new`.
      start_epoch: the first epoch whose params are folded in (torch's `swa_start`), an
        integer >= 0. Default 0.
      every: `"epoch"` (default: at each epoch's end) or `"sync"` (at every sync point).
      use_buffers: average the model state with `avg_fn` instead of copying it (torch's
        `use_buffers`). Default False.
    """
    if avg_fn is not None and not callable(avg_fn):
      raise ValueError(f"avg_fn must be a function (averaged, current, n_averaged) -> array, got {avg_fn!r}.")
    if every not in ("epoch", "sync"):
      raise ValueError(f"every must be 'epoch' or 'sync', got {every!r}.")
    if not isinstance(use_buffers, bool):
      raise ValueError(f"use_buffers must be True or False, got {use_buffers!r}.")
    self.avg_fn, self.every, self.use_buffers = avg_fn, every, use_buffers
    self.start_epoch = _check_count("start_epoch", start_epoch)
    self.averaged: Any = None
    self.folds = 0

  def on_train_begin(self, run: Run) -> Optional[bool]:
    self.averaged, self.folds = None, 0
    return None

  def _fold(self, run: Run) -> None:
    if run.epoch < self.start_epoch:
      return
    state = run.snapshot()
    if self.averaged is None:
      self.averaged = averaging.init(state.params, state.model_state)
    self.averaged = averaging.update(
      self.averaged, state.params, state.model_state, avg_fn=self.avg_fn, use_buffers=self.use_buffers
    )
    self.folds += 1

  def on_sync(self, run: Run) -> Optional[bool]:
    if self.every == "sync":
      self._fold(run)
    return None

  def on_epoch_end(self, run: Run) -> Optional[bool]:
    if self.every == "epoch":
      self._fold(run)
    return None


def _check_count(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
    raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
  return int(value)


def _check_real(name: str, value: Any, minimum: Optional[float] = None) -> float:
  valid = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
  if not valid or (minimum is not None and float(value) < minimum):
    bound = f" >= {minimum}" if minimum is not None else ""
    raise ValueError(f"{name} must be a finite number{bound}, got {value!r}.")
  return float(value)


__all__ = ["CSVLogger", "Callback", "EarlyStopping", "Run", "Snapshot", "TensorBoard", "WeightAveraging"]
