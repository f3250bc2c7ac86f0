"""`fit(callbacks=...)` and `gradcore_jax.callbacks`; `TrainingStats.learning_rates`.

References: Keras 3's `EarlyStopping` rule (`keras_early_stopping` below, a replay of its
`on_epoch_end`/`on_train_end`; checked once against keras 3.15.1's own callback on 3,000
random sequences of quarter values, where its float32 comparisons are exact), Keras'
`CSVLogger` file format, and live `torch.optim.lr_scheduler` for the recorded learning rates.
"""

from __future__ import annotations

import csv
import os
import struct
from typing import Any, Optional

import jax
import numpy as np
import optax
import pytest
import torch

import gradcore_jax as gcj
from gradcore_jax import losses
from gradcore_jax.callbacks import Callback, CSVLogger, EarlyStopping, Run, Snapshot
from gradcore_jax.data import DataLoader
from gradcore_jax.training import TrainingStats, fit
from gradcore_jax.training._callbacks import CallbackList

LR = 0.02


def linear(params, x):
  return x @ params["w"] + params["b"]


def _data():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((120, 3)).astype(np.float32)
  y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3 * rng.standard_normal((120, 1))).astype(np.float32)
  params = {"w": np.zeros((3, 1), np.float32), "b": np.zeros((1,), np.float32)}
  return x, y, params


def _run(epochs: int, tx: Any = None, **kwargs: Any) -> gcj.FitResult:
  """96 training rows in 6 batches of 16 per epoch, 24 evaluation rows."""
  x, y, params = _data()
  options = dict(
    params=params,
    loss=losses.mse,
    train_loader=DataLoader((x[:96], y[:96]), batch_size=16, shuffle=True, seed=0),
    eval_loader=DataLoader((x[96:], y[96:]), batch_size=24),
    epochs=epochs,
    progress=False,
  )
  return fit(linear, tx or optax.inject_hyperparams(gcj.sgd)(learning_rate=LR), **{**options, **kwargs})


def _figures(stats: gcj.TrainingStats) -> dict:
  """Everything but the wall-clock fields."""
  return {k: v for k, v in stats.to_dict().items() if k not in ("epoch_times", "steps_per_second")}


class Recorder(Callback):
  """Records every hook call: (hook, epoch, step, logs)."""

  def __init__(self, stop_at: Optional[tuple[str, int]] = None) -> None:
    self.calls: list[tuple[str, int, int, dict]] = []
    self.stop_at = stop_at

  def _note(self, hook: str, run: Run) -> Optional[bool]:
    self.calls.append((hook, run.epoch, run.step, dict(run.logs)))
    return self.stop_at == (hook, run.step) or None

  def on_train_begin(self, run):
    return self._note("begin", run)

  def on_epoch_begin(self, run):
    return self._note("epoch_begin", run)

  def on_sync(self, run):
    return self._note("sync", run)

  def on_epoch_end(self, run):
    return self._note("epoch_end", run)

  def on_train_end(self, run):
    return self._note("end", run)


# --------------------------------------------------------------------------------------
# Hooks


@pytest.mark.parametrize("compiled_epoch", [False, True])
def test_hooks_come_in_order_at_the_sync_points_with_the_recorded_figures(compiled_epoch: bool) -> None:
  recorder = Recorder()
  result = _run(2, log_interval=4, compiled_epoch=compiled_epoch, callbacks=[recorder],
                metrics={"mae": gcj.metrics.mean_absolute_error()})
  stats = result.stats
  syncs = [6, 12] if compiled_epoch else [4, 6, 10, 12]  # every log_interval steps and each epoch's end
  want = [("begin", 0, 0)]
  for epoch in range(2):
    want += [("epoch_begin", epoch, 6 * epoch)]
    want += [("sync", epoch, s) for s in syncs if 6 * epoch < s <= 6 * (epoch + 1)]
    want += [("epoch_end", epoch, 6 * (epoch + 1))]
  want += [("end", 1, 12)]
  assert [call[:3] for call in recorder.calls] == want
  for hook, epoch, step, logs in recorder.calls:
    if hook == "sync":
      assert logs == {"loss": stats.running_losses[step - 1], "batch_loss": stats.batch_losses[step - 1],
                      "learning_rate": stats.learning_rates[step - 1]}
    if hook in ("epoch_end", "end"):
      assert logs == {"loss": stats.epoch_losses[epoch], "mae": stats.train_metrics[epoch]["mae"],
                      "eval_loss": stats.eval_metrics[epoch]["loss"], "eval_mae": stats.eval_metrics[epoch]["mae"],
                      "learning_rate": LR_F32}
    if hook in ("begin", "epoch_begin"):
      assert logs == {}


LR_F32 = float(np.float32(LR))  # inject_hyperparams keeps the rate as a float32 array


class Stopper(Callback):
  def __init__(self, at_step: int) -> None:
    self.at_step = at_step

  def on_sync(self, run):
    if run.step == self.at_step:
      run.stop_training = True


def test_a_stop_request_ends_training_after_the_epoch_with_whole_figures() -> None:
  # Asked for mid-epoch 1 (step 8 of 6..12), by attribute or by returning True: epoch 1 still ends whole.
  tx = gcj.sgd(LR)  # no injected rate: nothing to record
  by_attribute = _run(5, tx, log_interval=2, callbacks=[Stopper(at_step=8)])
  recorder = Recorder(stop_at=("sync", 8))
  by_return = _run(5, tx, log_interval=2, callbacks=[recorder])
  two_epochs = _run(2, tx, log_interval=2)
  for result in (by_attribute, by_return):
    assert result.stats.epochs_trained == 2 and result.stats.total_steps == 12
    assert _figures(result.stats) == _figures(two_epochs.stats)
    jax.tree.map(np.testing.assert_array_equal, result.model, two_epochs.model)
  assert two_epochs.stats.learning_rates == [] and "learning_rate" not in recorder.calls[-1][3]
  # Stopping in on_train_begin trains nothing.
  none = _run(3, tx, callbacks=[Recorder(stop_at=("begin", 0))])
  assert none.stats.total_steps == 0
  jax.tree.map(np.testing.assert_array_equal, none.model, _data()[2])


def test_the_run_is_read_only_and_bad_callbacks_are_named() -> None:
  class Poke(Callback):
    def on_epoch_end(self, run):
      with pytest.raises(AttributeError):
        run.epoch = 7  # type: ignore[misc]
      with pytest.raises(RuntimeError, match="only possible in on_train_end"):
        run.restore(run.snapshot())
      self.params, self.model = run.params, run.model

  poke = Poke()
  result = _run(1, callbacks=[poke])
  jax.tree.map(np.testing.assert_array_equal, poke.params, result.model)
  jax.tree.map(np.testing.assert_array_equal, poke.model, result.model)  # an apply function's model: its params
  with pytest.raises(TypeError, match="callbacks must be a list of gradcore_jax.callbacks.Callback"):
    _run(1, callbacks=[object()])
  with pytest.raises(ValueError, match="mode='auto' cannot tell whether 'eval_mae'"):
    EarlyStopping(monitor="eval_mae")
  with pytest.raises(ValueError, match="patience must be an integer >= 0"):
    EarlyStopping(patience=-1)
  with pytest.raises(ValueError, match="min_delta must be a finite number >= 0.0"):
    EarlyStopping(min_delta=-0.1)
  with pytest.raises(ValueError, match="metrics must not use the name 'learning_rate'"):
    _run(1, metrics={"learning_rate": gcj.metrics.mean_absolute_error()})
  with pytest.raises(ValueError, match=r"monitors 'eval_mae', which epoch 0's logs do not have") as error:
    _run(2, callbacks=[EarlyStopping(monitor="eval_mae", mode="min")])
  assert error.value.partial_result.stats.epochs_trained == 1  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------
# EarlyStopping against Keras' rule


def keras_early_stopping(values, *, patience, min_delta=0.0, mode="min", baseline=None, start_from_epoch=0):
  """Keras 3's `EarlyStopping` over one figure per epoch (from epoch 0), restore_best_weights on.

  Returns (epochs run, the epoch that stopped training or None, the epoch whose weights are restored).
  """
  sign = 1.0 if mode == "min" else -1.0

  def improves(value, reference):  # Keras: monitor_op(value - min_delta, reference), min_delta negated for "min"
    return reference is None or sign * (value + sign * min_delta) < sign * reference

  best = best_epoch = None
  wait = 0
  for epoch, value in enumerate(values):
    if epoch < start_from_epoch:
      continue
    if best_epoch is None:  # restore_best_weights: the first monitored epoch's weights until one improves
      best_epoch = epoch
    wait += 1
    if improves(value, best):
      best, best_epoch = value, epoch
      if baseline is None or improves(value, baseline):
        wait = 0
      continue
    if wait >= patience and epoch > 0:
      return epoch + 1, epoch, best_epoch
  return len(values), None, best_epoch


class Crafted(Callback):
  """Puts `values[epoch]` into the epoch logs as "crafted" (before EarlyStopping reads them)."""

  def __init__(self, values: list[float]) -> None:
    self.values = values

  def on_epoch_end(self, run):
    run.logs["crafted"] = self.values[run.epoch]


def _drive(values: list[float], stopping: EarlyStopping) -> tuple[int, Optional[int], Optional[int]]:
  """`fit`'s epoch loop without training: the hooks in fit's order, one epoch per value.

  Returns (epochs run, the stopped epoch, the epoch whose state `fit` would return)."""
  stats = TrainingStats()
  run = Run(stats=stats, start_epoch=0, end_epoch=len(values), steps_per_epoch=1, resumed=False, epoch=0,
            state=lambda: Snapshot(stats.epochs_trained - 1, None, None, stats.total_steps), rebuild=lambda s: s)
  hooks = CallbackList([Crafted(values), stopping])
  hooks.begin(run)
  for epoch in range(len(values)):
    stats.epoch_losses.append(0.0)
    stats.train_metrics.append({})
    stats.eval_metrics.append({})
    stats.epochs_trained, stats.total_steps = epoch + 1, epoch + 1
    hooks.epoch_end(epoch)
    if hooks.stop_training:
      break
  restored = hooks.end()
  return stats.epochs_trained, stopping.stopped_epoch, None if restored is None else restored.params


CASES = [  # quarter values: exact in Keras' float32 comparisons too
  ([3.0, 2.0, 2.5, 2.25, 2.0, 1.0, 0.5], dict(patience=2)),
  ([3.0, 2.0, 2.5, 2.25, 2.0, 1.0, 0.5], dict(patience=0)),
  ([3.0, 2.75, 2.5, 2.25, 2.0, 1.75, 1.5], dict(patience=1, min_delta=0.25)),
  ([3.0, 2.75, 2.5, 2.25, 2.0, 1.75, 1.5], dict(patience=1, min_delta=0.5)),
  ([0.5, 0.75, 0.5, 1.0, 1.0, 1.0, 0.25], dict(patience=2, mode="max")),
  ([3.0, 2.0, 1.75, 1.5, 1.25, 1.0, 0.75], dict(patience=2, baseline=1.0)),
  ([1.0, 2.0, 3.0, 3.0, 3.0, 0.5, 0.25], dict(patience=1, start_from_epoch=2, mode="max")),
]


def test_early_stopping_follows_keras_on_crafted_and_random_sequences() -> None:
  rng = np.random.default_rng(0)
  random_cases = [
    ([float(v) for v in rng.integers(0, 16, int(rng.integers(2, 12))) / 4],
     dict(patience=int(rng.integers(0, 4)), min_delta=float(rng.choice([0.0, 0.25, 0.5])),
          mode=str(rng.choice(["min", "max"])), baseline=None if rng.random() < 0.5 else float(rng.integers(0, 16) / 4),
          start_from_epoch=int(rng.integers(0, 3))))
    for _ in range(300)
  ]
  stops = 0
  for values, options in CASES + random_cases:
    stopping = EarlyStopping(monitor="crafted", restore_best=True, **{"mode": "min", **options})
    got = _drive(values, stopping)
    assert got == keras_early_stopping(values, **options), (values, options)
    stops += got[1] is not None
  assert 100 < stops < len(CASES) + len(random_cases)  # both outcomes are exercised


def test_restore_best_returns_the_best_epochs_state_exactly() -> None:
  values = [3.0, 2.0, 2.5, 2.25, 2.0, 1.0, 0.5]  # best epoch 1, stopped at epoch 3 with patience 2
  stopping = EarlyStopping(monitor="crafted", mode="min", patience=2, restore_best=True)
  result = _run(len(values), callbacks=[Crafted(values), stopping])
  assert (result.stats.epochs_trained, stopping.stopped_epoch, stopping.best_epoch) == (4, 3, 1)
  # The best epoch's params and optimizer state, bit for bit, as a run that ended there.
  best = _run(2)
  jax.tree.map(np.testing.assert_array_equal, result.model, best.model)
  jax.tree.map(np.testing.assert_array_equal, result.opt_state, best.opt_state)
  assert result.stats.total_steps == 24  # the stats keep the whole run


# --------------------------------------------------------------------------------------
# CSVLogger and TensorBoard


def test_csv_logger_writes_keras_rows_and_appends(tmp_path) -> None:
  path = tmp_path / "log.csv"
  result = _run(3, callbacks=[CSVLogger(path)], metrics={"mae": gcj.metrics.mean_absolute_error()})
  stats = result.stats
  with open(path, newline="") as file:
    rows = list(csv.reader(file))
  assert rows[0] == ["epoch", "eval_loss", "eval_mae", "learning_rate", "loss", "mae"]  # Keras: sorted names
  for epoch, row in enumerate(rows[1:]):
    want = [stats.eval_metrics[epoch]["loss"], stats.eval_metrics[epoch]["mae"], LR_F32,
            stats.epoch_losses[epoch], stats.train_metrics[epoch]["mae"]]
    assert int(row[0]) == epoch and [float(cell) for cell in row[1:]] == want  # every digit kept
  assert len(rows) == 4
  # append=True continues the file without a second header, as a hand-continued run would.
  _run(1, start_epoch=3, callbacks=[CSVLogger(path, append=True)], metrics={"mae": gcj.metrics.mean_absolute_error()})
  with open(path, newline="") as file:
    rows = list(csv.reader(file))
  assert len(rows) == 5 and rows[-1][0] == "3" and rows[0][0] == "epoch"


def _read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
  """The scalars of every TensorBoard event file in `folder`: {tag: [(step, value), ...]}."""
  event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
  scalars: dict[str, list[tuple[int, float]]] = {}
  for name in sorted(os.listdir(folder)):
    data = (folder / name).read_bytes()
    at = 0
    while at < len(data):  # TFRecord: length (8 bytes), its CRC (4), the event, its CRC (4)
      (length,) = struct.unpack("<Q", data[at : at + 8])
      event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
      at += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_tensorboard_writes_the_epoch_and_step_figures(tmp_path) -> None:
  pytest.importorskip("tensorboardX")
  result = _run(2, log_interval=4, callbacks=[gcj.callbacks.TensorBoard(tmp_path, update_freq="sync")])
  stats, scalars = result.stats, _read_scalars(tmp_path)
  f32 = lambda values: [float(np.float32(v)) for v in values]  # noqa: E731  (TensorBoard keeps float32)
  assert scalars["epoch/loss"] == list(zip([6, 12], f32(stats.epoch_losses)))
  assert scalars["epoch/eval_loss"] == list(zip([6, 12], f32(m["loss"] for m in stats.eval_metrics)))
  assert scalars["batch/loss"] == list(zip(range(1, 13), f32(stats.batch_losses)))
  assert scalars["batch/learning_rate"] == list(zip(range(1, 13), f32(stats.learning_rates)))


# --------------------------------------------------------------------------------------
# The learning rate record


def _torch_lrs(make_scheduler, steps: int, skipped: list[int] = ()) -> list[float]:
  """The lr each optimizer step uses under a live torch scheduler stepped after every applied update."""
  opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
  scheduler = make_scheduler(opt)
  lrs = []
  for step in range(steps):
    lrs.append(opt.param_groups[0]["lr"])
    if step not in skipped and step < steps - 1:  # a skipped update is no optimizer step
      opt.step()
      scheduler.step()
  return lrs


def test_learning_rates_are_the_schedules_and_torchs_step_by_step() -> None:
  steps = 18
  cycle = gcj.schedules.one_cycle_lr(0.5, total_steps=steps)
  for compiled_epoch in (False, True):
    stats = _run(3, optax.inject_hyperparams(gcj.sgd)(learning_rate=cycle), compiled_epoch=compiled_epoch).stats
    np.testing.assert_allclose(stats.learning_rates, [float(cycle(c)) for c in range(steps)], rtol=1e-5)
    want = _torch_lrs(lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=steps), steps)
    np.testing.assert_allclose(stats.learning_rates, want, rtol=1e-5)  # float32 rates against torch's float64

  # A skipped (non-finite) step: its record is the rate it would have used, and the optimizer's
  # count does not advance, so the next step uses that rate again, as torch would not step.
  x, y, params = _data()
  y = y.copy()
  y[int(DataLoader((x[:96], y[:96]), batch_size=16, shuffle=True, seed=0).order(0)[40])] = np.inf  # batch 2
  decay = gcj.schedules.step_lr(0.5, step_size=2, gamma=0.5)
  stats = fit(linear, optax.inject_hyperparams(gcj.sgd)(learning_rate=decay), params=params, loss=losses.mse,
              train_loader=DataLoader((x[:96], y[:96]), batch_size=16, shuffle=True, seed=0), epochs=2,
              progress=False, on_nonfinite="skip").stats
  assert len(stats.skipped_steps) == 2 and stats.skipped_steps[0] == 2  # the bad row's batch, once per epoch
  applied = [c - sum(s < c for s in stats.skipped_steps) for c in range(12)]
  np.testing.assert_allclose(stats.learning_rates, [float(decay(a)) for a in applied], rtol=1e-5)
  want = _torch_lrs(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5), 12, stats.skipped_steps)
  np.testing.assert_allclose(stats.learning_rates, want, rtol=1e-5)


def test_the_plateau_rate_is_recorded_per_step() -> None:
  plateau = gcj.schedules.reduce_lr_on_plateau(0.5, factor=0.5, patience=0, threshold=0.05)
  stats = _run(6, optax.inject_hyperparams(gcj.sgd)(learning_rate=0.5), lr_plateau=plateau).stats
  opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
  scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.05)
  want = []
  for metrics in stats.eval_metrics:  # torch: the epoch trains at the lr, then scheduler.step(eval loss)
    want += [opt.param_groups[0]["lr"]] * 6
    scheduler.step(metrics["loss"])
  assert want[-1] < 0.5  # the plateau did cut the rate, so the test can fail
  np.testing.assert_allclose(stats.learning_rates, want, rtol=1e-7)


# --------------------------------------------------------------------------------------
# Resume


def test_resume_keeps_early_stopping_the_csv_and_the_rates(tmp_path) -> None:
  def callbacks(csv_path):
    return [EarlyStopping(patience=2, min_delta=0.1, restore_best=True), CSVLogger(csv_path)]

  whole_callbacks = callbacks(tmp_path / "whole.csv")
  whole = _run(20, callbacks=whole_callbacks)
  stopping = whole_callbacks[0]
  figures = [m["loss"] for m in whole.stats.eval_metrics]  # "eval_loss", mode "auto": "min"
  assert keras_early_stopping(figures, patience=2, min_delta=0.1) == (whole.stats.epochs_trained, stopping.stopped_epoch, stopping.best_epoch)
  assert stopping.stopped_epoch == 9 and stopping.best_epoch == 7 and stopping.wait == 2
  assert whole.stats.learning_rates == [LR_F32] * whole.stats.total_steps
  assert keras_early_stopping(figures[8:], patience=2, min_delta=0.1)[1] is None  # a fresh start at 8 would not stop at 9
  run = str(tmp_path / "run")
  _run(8, checkpoint_dir=run, callbacks=callbacks(tmp_path / "resumed.csv"))  # interrupted after 8 epochs
  resumed_callbacks = callbacks(tmp_path / "resumed.csv")
  resumed = _run(20, checkpoint_dir=run, resume=True, callbacks=resumed_callbacks)
  # The patience count carried over the interruption: the same stop, figures, rates, best state and CSV file.
  assert (resumed_callbacks[0].stopped_epoch, resumed_callbacks[0].best_epoch) == (stopping.stopped_epoch, stopping.best_epoch)
  assert _figures(resumed.stats) == _figures(whole.stats)
  jax.tree.map(np.testing.assert_array_equal, resumed.model, whole.model)
  assert (tmp_path / "resumed.csv").read_text() == (tmp_path / "whole.csv").read_text()
  # Resuming the stopped run again: EarlyStopping's replay stops it before any step (and the
  # best epoch, 7, lies before this resume point: restore_best warns and keeps the last state).
  with pytest.warns(UserWarning, match="the best epoch, 7, was trained before this run resumed"):
    again = _run(30, checkpoint_dir=run, resume=True, callbacks=callbacks(tmp_path / "again.csv"))
  assert again.stats.total_steps == whole.stats.total_steps
  # A best epoch before the resume point (not its checkpoint's) cannot be restored: a warning, the last state.
  late = str(tmp_path / "late")
  _run(stopping.best_epoch + 2, checkpoint_dir=late)
  with pytest.warns(UserWarning, match=f"the best epoch, {stopping.best_epoch}, was trained before this run resumed"):
    last = _run(20, checkpoint_dir=late, resume=True, callbacks=callbacks(tmp_path / "late.csv"))
  assert int(last.opt_state.count) == last.stats.total_steps == whole.stats.total_steps


# --------------------------------------------------------------------------------------
# Weight averaging (reference: torch.optim.swa_utils.AveragedModel, live)


class ParamsAtEpochEnd(Callback):
  """Keeps a host copy of the params at every epoch end: the sequence torch's average is fed."""

  def __init__(self) -> None:
    self.params: list[dict] = []

  def on_epoch_end(self, run):
    self.params.append(jax.tree.map(np.asarray, run.params))


def _torch_average(sequence: list[dict], avg_fn: Any) -> dict:
  """`AveragedModel(model, multi_avg_fn=...)` updated once per entry of `sequence`."""
  from torch.optim import swa_utils

  module = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.tensor(v)) for k, v in sequence[0].items()})
  averaged = swa_utils.AveragedModel(module, multi_avg_fn=avg_fn)
  for params in sequence:
    with torch.no_grad():
      for name, value in params.items():
        module[name].copy_(torch.tensor(value))
    averaged.update_parameters(module)
  return {name: averaged.module[name].detach().numpy() for name in sequence[0]}


@pytest.mark.parametrize("kind", ["swa", "ema"])
def test_weight_averaging_in_fit_equals_torchs_averaged_model(kind: str) -> None:
  from torch.optim import swa_utils

  avg_fn, torch_fn = {
    "swa": (gcj.averaging.swa(), None),
    "ema": (gcj.averaging.ema(0.9), swa_utils.get_ema_multi_avg_fn(0.9)),
  }[kind]
  averaging = gcj.callbacks.WeightAveraging(avg_fn, start_epoch=2)
  recorder = ParamsAtEpochEnd()
  result = _run(6, callbacks=[recorder, averaging])
  assert averaging.folds == 4 and int(averaging.averaged.n_averaged) == 4
  want = _torch_average(recorder.params[2:], torch_fn)
  for name in ("w", "b"):
    np.testing.assert_allclose(np.asarray(averaging.averaged.params[name]), want[name], rtol=1e-6, atol=1e-7)
  # The average is not the last params, and evaluate scores it like any params.
  assert not np.allclose(np.asarray(averaging.averaged.params["w"]), np.asarray(result.model["w"]))
  x, y, _ = _data()
  figures = gcj.evaluate(linear, DataLoader((x[96:], y[96:]), batch_size=24), loss=losses.mse, params=averaging.averaged.params)
  assert np.isfinite(figures["loss"])


def test_weight_averaging_every_sync_folds_each_step_and_bad_options_are_named() -> None:
  averaging = gcj.callbacks.WeightAveraging(gcj.averaging.ema(0.5), every="sync")
  _run(2, callbacks=[averaging], log_interval=1)
  assert averaging.folds == 12  # 6 steps per epoch, one sync each (the epoch-end sync included)
  for kwargs, name in (({"every": "step"}, "every"), ({"start_epoch": -1}, "start_epoch"), ({"use_buffers": 1}, "use_buffers")):
    with pytest.raises(ValueError, match=name):
      gcj.callbacks.WeightAveraging(**kwargs)
  with pytest.raises(ValueError, match="avg_fn"):
    gcj.callbacks.WeightAveraging(avg_fn=0.5)
