"""`fit(lr_plateau=...)` against live `torch.optim.lr_scheduler.ReduceLROnPlateau`.

The plateau is stepped once per epoch on the monitored figure, and its learning rate is
written into the injected `learning_rate`. The reference is torch's scheduler fed the same
per-epoch figures that `fit` recorded; the training itself is checked against a
hand-written loop of one-epoch `fit` calls that sets the learning rate between them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import gradcore_jax as gcj
from gradcore_jax import losses
from gradcore_jax.data import DataLoader
from gradcore_jax.training import fit

EPOCHS = 8
LR = 0.5


def linear(params, x):
  return x @ params["w"] + params["b"]


def _data():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((120, 3)).astype(np.float32)
  y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3 * rng.standard_normal((120, 1))).astype(np.float32)
  params = {"w": np.zeros((3, 1), np.float32), "b": np.zeros((1,), np.float32)}
  return x, y, params


def _plateau():
  return gcj.schedules.reduce_lr_on_plateau(LR, factor=0.5, patience=1, threshold=0.05)


def _torch_lrs(figures: list[float]) -> list[float]:
  """The lr torch's ReduceLROnPlateau gives after each epoch's `step(figure)`."""
  opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
  scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1, threshold=0.05)
  lrs = []
  for figure in figures:
    scheduler.step(figure)
    lrs.append(opt.param_groups[0]["lr"])
  return lrs


def test_fit_steps_the_plateau_like_torch_and_trains_like_a_hand_written_loop() -> None:
  x, y, params = _data()
  train, test = DataLoader((x[:96], y[:96]), batch_size=16, shuffle=True, seed=0), DataLoader((x[96:], y[96:]), batch_size=24)
  tx = optax.inject_hyperparams(gcj.sgd)(learning_rate=LR)
  result = fit(linear, tx, params=params, loss=losses.mse, train_loader=train, eval_loader=test, epochs=EPOCHS,
               lr_plateau=_plateau(), progress=False)
  figures = [m["loss"] for m in result.stats.eval_metrics]
  want = _torch_lrs(figures)
  assert want[-1] < LR  # the run does reach a plateau, so the test can fail
  np.testing.assert_allclose(float(result.opt_state.hyperparams["learning_rate"]), want[-1], rtol=1e-7)

  # The same run by hand: one epoch at a time, the torch lr set between epochs.
  current, opt_state, lr = params, None, LR
  for epoch in range(EPOCHS):
    if opt_state is not None:
      opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    step = fit(linear, tx, params=current, opt_state=opt_state, loss=losses.mse, train_loader=train,
               eval_loader=test, epochs=1, start_epoch=epoch, progress=False)
    current, opt_state, lr = step.model, step.opt_state, want[epoch]
    assert step.stats.eval_metrics[0]["loss"] == pytest.approx(figures[epoch], rel=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), result.model, current)


def test_monitoring_a_training_metric_and_bad_options_are_named() -> None:
  x, y, params = _data()
  train = DataLoader((x, y), batch_size=20, shuffle=True, seed=1)
  tx = optax.inject_hyperparams(gcj.sgd)(learning_rate=LR)
  result = fit(linear, tx, params=params, loss=losses.mse, train_loader=train, epochs=4, progress=False,
               metrics={"mae": gcj.metrics.mean_absolute_error()}, lr_plateau=_plateau(), plateau_monitor="mae")
  want = _torch_lrs([m["mae"] for m in result.stats.train_metrics])
  np.testing.assert_allclose(float(result.opt_state.hyperparams["learning_rate"]), want[-1], rtol=1e-7)
  with pytest.raises(ValueError, match=r"plateau_monitor 'eval_loss' is not a figure this run records"):
    fit(linear, tx, params=params, loss=losses.mse, train_loader=train, epochs=1, progress=False,
        lr_plateau=_plateau(), plateau_monitor="eval_loss")
  with pytest.raises(ValueError, match="exactly one injected learning_rate"):
    fit(linear, gcj.sgd(LR), params=params, loss=losses.mse, train_loader=train, epochs=1, progress=False,
        lr_plateau=_plateau())
  with pytest.raises(TypeError, match="lr_plateau must be a gradcore_jax.schedules.reduce_lr_on_plateau"):
    fit(linear, tx, params=params, loss=losses.mse, train_loader=train, epochs=1, progress=False, lr_plateau=0.1)
  with pytest.raises(ValueError, match="plateau_monitor needs lr_plateau"):
    fit(linear, tx, params=params, loss=losses.mse, train_loader=train, epochs=1, progress=False, plateau_monitor="loss")


def test_a_resumed_run_continues_with_the_same_learning_rate(tmp_path) -> None:
  x, y, params = _data()
  train, test = DataLoader((x[:96], y[:96]), batch_size=16, shuffle=True, seed=0), DataLoader((x[96:], y[96:]), batch_size=24)
  tx = optax.inject_hyperparams(gcj.sgd)(learning_rate=LR)
  options = dict(params=params, loss=losses.mse, train_loader=train, eval_loader=test, lr_plateau=_plateau(), progress=False)
  whole = fit(linear, tx, epochs=EPOCHS, **options)
  fit(linear, tx, epochs=EPOCHS // 2, checkpoint_dir=str(tmp_path / "run"), **options)
  resumed = fit(linear, tx, epochs=EPOCHS, checkpoint_dir=str(tmp_path / "run"), resume=True, **options)
  jax.tree.map(np.testing.assert_array_equal, whole.model, resumed.model)
  assert float(whole.opt_state.hyperparams["learning_rate"]) == float(resumed.opt_state.hyperparams["learning_rate"])
