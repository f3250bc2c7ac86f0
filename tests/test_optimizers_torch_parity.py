"""Parity with live `torch.optim` (the reference), trajectory by trajectory.

Both frameworks train the same small multi-leaf nonlinear model from the same start on
the same sequence of minibatches, each computing its own gradients; every parameter is
compared after every one of `STEPS` steps: float64 to 1e-10 relative, float32 to 1e-5
relative (to the leaf's largest magnitude). Fresh minibatches keep the gradients noisy,
as in real training: a full-batch problem drives some gradients to zero, where the
adaptive optimizers divide rounding noise by rounding noise and any two correct
implementations part ways.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from _torch_reference import precision

import gradcore_jax as gcj

STEPS = 120
SHAPES = {"w1": (6, 5), "b1": (5,), "w2": (5, 3), "b2": (3,)}
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}

torch.set_num_threads(1)


def _problem(dtype):
  rng = np.random.default_rng(0)
  params = {k: (0.5 * rng.standard_normal(s)).astype(dtype) for k, s in SHAPES.items()}
  xs = rng.standard_normal((STEPS, 16, 6)).astype(dtype)
  ys = (np.tanh(xs @ rng.standard_normal((6, 3))) + 0.1 * rng.standard_normal((STEPS, 16, 3))).astype(dtype)
  return params, xs, ys


def _jax_loss(params, x, y):
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  pred = hidden @ params["w2"] + params["b2"]
  return jnp.mean((pred - y) ** 2) + 0.01 * jnp.sum(params["w1"] ** 4)


def _torch_loss(params, x, y):
  hidden = torch.tanh(x @ params["w1"] + params["b1"])
  pred = hidden @ params["w2"] + params["b2"]
  return torch.mean((pred - y) ** 2) + 0.01 * torch.sum(params["w1"] ** 4)


def run_torch(torch_cls, kwargs, dtype, steps=STEPS, gamma=None, before_step=None):
  """`before_step(optimizer, t)`, if given, may change the param group before step t (0-based)."""
  params, xs, ys = _problem(dtype)
  tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
  opt = torch_cls(list(tp.values()), **kwargs)
  sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma) if gamma else None
  history = {k: [] for k in tp}
  for t in range(steps):
    if before_step is not None:
      before_step(opt, t)
    opt.zero_grad()
    _torch_loss(tp, torch.tensor(xs[t]), torch.tensor(ys[t])).backward()
    opt.step()
    if sched:
      sched.step()
    for k, v in tp.items():
      history[k].append(v.detach().numpy().copy())
  return {k: np.stack(v) for k, v in history.items()}


def run_jax(tx: optax.GradientTransformation, dtype, steps=STEPS):
  params, xs, ys = _problem(dtype)
  params = jax.tree.map(jnp.asarray, params)

  @jax.jit
  def trajectory(params):
    def step(carry, batch):
      params, state = carry
      grads = jax.grad(_jax_loss)(params, *batch)
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      return (params, state), params

    _, history = jax.lax.scan(step, (params, tx.init(params)), (xs[:steps], ys[:steps]))
    return history

  return jax.tree.map(np.asarray, trajectory(params))


def assert_same_trajectory(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], dtype) -> None:
  tol = TOLERANCE[dtype]
  for name in theirs:
    assert ours[name].dtype == dtype, name
    scale = np.max(np.abs(theirs[name]))
    np.testing.assert_allclose(ours[name], theirs[name], rtol=tol, atol=tol * scale, err_msg=name)


# (id, torch optimizer, torch kwargs, gradcore_jax factory, gradcore_jax kwargs)
CASES: list[tuple[str, Any, dict, Any, dict]] = [
    ("sgd", torch.optim.SGD, dict(lr=0.05), gcj.sgd, dict(learning_rate=0.05)),
    ("sgd-momentum", torch.optim.SGD, dict(lr=0.05, momentum=0.9), gcj.sgd, dict(learning_rate=0.05, momentum=0.9)),
    (
        "sgd-dampening",
        torch.optim.SGD,
        dict(lr=0.05, momentum=0.9, dampening=0.5),
        gcj.sgd,
        dict(learning_rate=0.05, momentum=0.9, dampening=0.5),
    ),
    (
        "sgd-nesterov-wd",
        torch.optim.SGD,
        dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
        gcj.sgd,
        dict(learning_rate=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
    ),
    (
        "sgd-maximize",
        torch.optim.SGD,
        dict(lr=0.01, momentum=0.5, maximize=True),
        gcj.sgd,
        dict(learning_rate=0.01, momentum=0.5, maximize=True),
    ),
    ("rmsprop", torch.optim.RMSprop, dict(lr=0.01), gcj.rmsprop, dict(learning_rate=0.01)),
    (
        "rmsprop-centered",
        torch.optim.RMSprop,
        dict(lr=0.01, alpha=0.9, centered=True),
        gcj.rmsprop,
        dict(learning_rate=0.01, alpha=0.9, centered=True),
    ),
    (
        "rmsprop-momentum-wd",
        torch.optim.RMSprop,
        dict(lr=0.005, momentum=0.9, weight_decay=0.05),
        gcj.rmsprop,
        dict(learning_rate=0.005, momentum=0.9, weight_decay=0.05),
    ),
    (
        "rmsprop-centered-momentum-maximize",
        torch.optim.RMSprop,
        dict(lr=0.002, momentum=0.5, centered=True, maximize=True),
        gcj.rmsprop,
        dict(learning_rate=0.002, momentum=0.5, centered=True, maximize=True),
    ),
    ("adam", torch.optim.Adam, dict(lr=0.01), gcj.adam, dict(learning_rate=0.01)),
    (
        "adam-amsgrad-wd",
        torch.optim.Adam,
        dict(lr=0.01, amsgrad=True, weight_decay=0.1),
        gcj.adam,
        dict(learning_rate=0.01, amsgrad=True, weight_decay=0.1),
    ),
    (
        "adam-betas-maximize",
        torch.optim.Adam,
        dict(lr=0.003, betas=(0.8, 0.99), eps=1e-6, maximize=True),
        gcj.adam,
        dict(learning_rate=0.003, b1=0.8, b2=0.99, eps=1e-6, maximize=True),
    ),
    ("adamw", torch.optim.AdamW, dict(lr=0.01), gcj.adamw, dict(learning_rate=0.01)),
    (
        "adamw-amsgrad-strong-decay",
        torch.optim.AdamW,
        dict(lr=0.01, weight_decay=0.5, amsgrad=True),
        gcj.adamw,
        dict(learning_rate=0.01, weight_decay=0.5, amsgrad=True),
    ),
    ("adagrad", torch.optim.Adagrad, dict(lr=0.05), gcj.adagrad, dict(learning_rate=0.05)),
    (
        "adagrad-lr-decay-accumulator-wd",
        torch.optim.Adagrad,
        dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.01),
        gcj.adagrad,
        dict(learning_rate=0.05, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.01),
    ),
    ("adadelta", torch.optim.Adadelta, dict(), gcj.adadelta, dict()),
    (
        "adadelta-wd-maximize",
        torch.optim.Adadelta,
        dict(lr=0.5, rho=0.95, weight_decay=0.01, maximize=True),
        gcj.adadelta,
        dict(learning_rate=0.5, rho=0.95, weight_decay=0.01, maximize=True),
    ),
    ("adamax", torch.optim.Adamax, dict(), gcj.adamax, dict()),
    (
        "adamax-wd",
        torch.optim.Adamax,
        dict(lr=0.01, weight_decay=0.05, betas=(0.85, 0.99)),
        gcj.adamax,
        dict(learning_rate=0.01, weight_decay=0.05, b1=0.85, b2=0.99),
    ),
    ("nadam", torch.optim.NAdam, dict(), gcj.nadam, dict()),
    (
        "nadam-wd-decay",
        torch.optim.NAdam,
        dict(lr=0.01, weight_decay=0.05, momentum_decay=1e-2),
        gcj.nadam,
        dict(learning_rate=0.01, weight_decay=0.05, momentum_decay=1e-2),
    ),
    ("radam", torch.optim.RAdam, dict(lr=0.01), gcj.radam, dict(learning_rate=0.01)),
    (
        "radam-wd-maximize",
        torch.optim.RAdam,
        dict(lr=0.005, weight_decay=0.05, maximize=True),
        gcj.radam,
        dict(learning_rate=0.005, weight_decay=0.05, maximize=True),
    ),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_trajectory_matches_torch_optim(case, dtype):
  _, torch_cls, torch_kwargs, factory, kwargs = case
  with precision(dtype):
    theirs = run_torch(torch_cls, torch_kwargs, dtype)
    ours = run_jax(factory(**kwargs), dtype)
  assert_same_trajectory(ours, theirs, dtype)


# One case per optimizer, with a learning rate that changes every step: torch's
# ExponentialLR against `optax.exponential_decay` with the same per-step values.
SCHEDULE_CASES = [c for c in CASES if c[0] in {
    "sgd-momentum", "rmsprop-momentum-wd", "adam-amsgrad-wd", "adamw", "adagrad-lr-decay-accumulator-wd",
    "adadelta", "adamax", "nadam", "radam",
}]


@pytest.mark.parametrize("case", SCHEDULE_CASES, ids=[c[0] for c in SCHEDULE_CASES])
def test_exponential_lr_schedule_matches_torch(case):
  _, torch_cls, torch_kwargs, factory, kwargs = case
  gamma, lr0 = 0.97, torch_kwargs.get("lr", factory.__defaults__[0])
  # Written out rather than `optax.exponential_decay`, which evaluates in float32 even under x64.
  schedule = lambda count: lr0 * gamma**count  # noqa: E731
  with precision(np.float64):
    theirs = run_torch(torch_cls, torch_kwargs, np.float64, gamma=gamma)
    ours = run_jax(factory(**{**kwargs, "learning_rate": schedule}), np.float64)
  assert_same_trajectory(ours, theirs, np.float64)


def _numpy_sgd_ema(lr_at, beta, steps, dtype):
  """A direct NumPy transcription of the article's rule: step = b*step + (1-b)*g, zero start.

  `lr_at(t)` is the learning rate of the 0-based step t.
  """
  params, xs, ys = _problem(dtype)
  grad_fn = jax.jit(jax.grad(_jax_loss))
  step = {k: np.zeros_like(v) for k, v in params.items()}
  history = {k: [] for k in params}
  for t in range(steps):
    grads = {k: np.asarray(v) for k, v in grad_fn(params, xs[t], ys[t]).items()}
    for k in params:
      step[k] = beta * step[k] + (1 - beta) * grads[k]
      params[k] = params[k] - lr_at(t) * step[k]
      history[k].append(params[k])
  return {k: np.stack(v) for k, v in history.items()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("schedule", [False, True], ids=["constant", "exponential"])
def test_sgd_ema_matches_article_rule(schedule, dtype):
  lr = (lambda count: 0.05 * 0.97**count) if schedule else 0.05
  with precision(dtype):
    theirs = _numpy_sgd_ema(lambda t: 0.05 * 0.97**t if schedule else 0.05, 0.9, STEPS, dtype)
    ours = run_jax(gcj.sgd_ema(lr, beta=0.9), dtype)
  assert_same_trajectory(ours, theirs, dtype)


def test_sgd_ema_differs_from_torch_momentum_only_by_its_zero_start():
  """torch SGD(momentum=b, dampening=b) sets buf=g on step 1; the article's EMA starts at 0."""
  with precision(np.float64):
    torch_traj = run_torch(torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.9), np.float64, steps=3)
    ours = run_jax(gcj.sgd_ema(0.05, beta=0.9), np.float64, steps=3)
  params, _, _ = _problem(np.float64)
  first_torch = params["b2"] - torch_traj["b2"][0]
  first_ours = params["b2"] - ours["b2"][0]
  np.testing.assert_allclose(first_ours, 0.1 * first_torch, rtol=1e-12)


# Momentum and b1 changing every step, as torch's OneCycleLR/CyclicLR change a param group's
# `momentum` / `betas[0]` between steps: the torch side sets the group directly, the
# gradcore_jax side gets the same values as a schedule `count -> value`.
MOMENTUM_VALUES = 0.5 + 0.45 * np.abs(np.sin(0.37 * np.arange(STEPS)))
MOMENTUM_CASES = [
    ("sgd-momentum", torch.optim.SGD, dict(lr=0.05, momentum=0.9), gcj.sgd, dict(learning_rate=0.05), "momentum"),
    (
        "sgd-nesterov-dampening-wd",
        torch.optim.SGD,
        dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
        gcj.sgd,
        dict(learning_rate=0.05, nesterov=True, weight_decay=0.01),
        "momentum",
    ),
    (
        "rmsprop-momentum-centered",
        torch.optim.RMSprop,
        dict(lr=0.005, momentum=0.9, centered=True),
        gcj.rmsprop,
        dict(learning_rate=0.005, centered=True),
        "momentum",
    ),
    ("adam-amsgrad", torch.optim.Adam, dict(lr=0.01, amsgrad=True), gcj.adam, dict(learning_rate=0.01, amsgrad=True), "b1"),
    ("adamw", torch.optim.AdamW, dict(lr=0.01), gcj.adamw, dict(learning_rate=0.01), "b1"),
    ("adamax", torch.optim.Adamax, dict(lr=0.01), gcj.adamax, dict(learning_rate=0.01), "b1"),
    ("nadam", torch.optim.NAdam, dict(lr=0.01), gcj.nadam, dict(learning_rate=0.01), "b1"),
    ("radam", torch.optim.RAdam, dict(lr=0.01), gcj.radam, dict(learning_rate=0.01), "b1"),
]


def _set_group_momentum(name):
  def before_step(opt, t):
    for group in opt.param_groups:
      if name == "momentum":
        group["momentum"] = float(MOMENTUM_VALUES[t])
      else:
        group["betas"] = (float(MOMENTUM_VALUES[t]), group["betas"][1])

  return before_step


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", MOMENTUM_CASES, ids=[c[0] for c in MOMENTUM_CASES])
def test_momentum_and_b1_schedules_match_torch_param_group_changes(case, dtype):
  _, torch_cls, torch_kwargs, factory, kwargs, name = case
  with precision(dtype):
    theirs = run_torch(torch_cls, torch_kwargs, dtype, before_step=_set_group_momentum(name))
    values = jnp.asarray(MOMENTUM_VALUES, dtype=jnp.result_type(float))
    ours = run_jax(factory(**kwargs, **{name: lambda count: values[count]}), dtype)
  assert_same_trajectory(ours, theirs, dtype)
