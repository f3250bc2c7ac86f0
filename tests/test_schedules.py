"""`gradcore_jax.schedules` against live `torch.optim.lr_scheduler` (the reference, torch 2.13).

Every schedule is compared with torch's own scheduler driven the way a training loop
drives it: a dummy optimizer over one float64 scalar parameter (SGD with momentum, or
Adam), `optimizer.step(); scheduler.step()` repeated, and after `count` steps torch's
`get_last_lr()[0]` must equal `schedule(count)`; for the schedulers that cycle momentum,
torch's `param_groups[0]["momentum"]` (SGD) or `["betas"][0]` (Adam) must equal
`schedule.momentum(count)`. Arguments are drawn at random (seeded numpy generators,
several draws per scheduler), and every run goes well past the schedule's end: several
cycles, or a few hundred steps past `T_max` / `total_iters` / the last milestone.

Tolerance: float64 (`jax.enable_x64`), relative 1e-12. The closed forms differ from
torch's step-by-step recursion by about one rounding per step (measured: < 5e-15 over
5000 steps). One larger difference is torch's own: past the first minimum of
CosineAnnealingLR with eta_min > 0, torch's recursion rounds the small `lr - eta_min` and
scales it up by ~4 T_max**2 / pi**2 (see `cosine_annealing_lr`), 1.4e-13 at the drawn
T_max <= 80, which is why T_max is drawn below 80 (at 400 it reaches 2e-12). An absolute
floor of 1e-15 times the schedule's largest lr is added for one reason only: where the
exact lr is zero (LinearLR with end_factor 0, PolynomialLR and cosine minima with
eta_min 0) torch's recursion may leave a rounding residue of ~1e-18, whose relative
difference means nothing. float32 runs are checked to 1e-5 relative (plus 1e-6 of the
largest lr: float32 rounds OneCycleLR's `min_lr + (max_lr - min_lr) * ...` to max_lr's ulp).

ReduceLROnPlateau is compared with torch's fed the same random metric sequences; the
error tests check that bad arguments raise where torch raises, with a message naming
the argument.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from jax import lax
from torch.optim import lr_scheduler as L
from torch.optim.swa_utils import SWALR

import gradcore_jax as gcj
from gradcore_jax import schedules as S

torch.set_num_threads(1)
RTOL = 1e-12
ATOL_FACTOR = 1e-15
SEEDS = range(4)


def _optimizer(lr: float, kind: str = "sgd") -> torch.optim.Optimizer:
  param = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
  if kind == "sgd":
    return torch.optim.SGD([param], lr=lr, momentum=0.9)
  return torch.optim.Adam([param], lr=lr)


def _torch_run(make: Callable[[torch.optim.Optimizer], Any], steps: int, lr: float, kind: str):
  """torch's lr and momentum after 0, 1, ..., steps calls of `scheduler.step()`."""
  optimizer = _optimizer(lr, kind)
  group = optimizer.param_groups[0]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    scheduler = make(optimizer)
    lrs, momenta = [scheduler.get_last_lr()[0]], [group["momentum"] if kind == "sgd" else group["betas"][0]]
    for _ in range(steps):
      optimizer.step()
      scheduler.step()
      lrs.append(scheduler.get_last_lr()[0])
      momenta.append(group["momentum"] if kind == "sgd" else group["betas"][0])
  return np.asarray(lrs, np.float64), np.asarray(momenta, np.float64)


def _evaluate(schedules: list, steps: int) -> list[tuple[np.ndarray, Any]]:
  """(lr, momentum or None) of each schedule at counts 0..steps, in float64.

  One compiled `lax.map` over the counts evaluates every schedule at a scalar traced
  count, exactly as a jitted training step does (and compiles once for all of them).
  """

  def at(count):
    return [(s(count), s.momentum(count) if s.momentum is not None else jnp.zeros([])) for s in schedules]

  with jax.enable_x64(True):
    values = jax.jit(lambda counts: lax.map(at, counts))(jnp.arange(steps + 1, dtype=jnp.int32))
  out = []
  for s, (lr, momentum) in zip(schedules, values):
    assert lr.dtype == jnp.float64
    out.append((np.asarray(lr), None if s.momentum is None else np.asarray(momentum)))
  return out


def _check(got, expected, what: str) -> None:
  """`got` (lr, momentum) against torch's, over torch's steps."""
  (got_lr, got_momentum), (expected_lr, expected_momentum) = got, expected
  n = len(expected_lr)
  atol = ATOL_FACTOR * np.max(np.abs(expected_lr))
  np.testing.assert_allclose(got_lr[:n], expected_lr, rtol=RTOL, atol=atol, err_msg=f"lr of {what}")
  if got_momentum is not None:
    np.testing.assert_allclose(got_momentum[:n], expected_momentum, rtol=RTOL, err_msg=f"momentum of {what}")


def _assert_all_match(cases: list, what: str) -> None:
  """cases: (our schedule, torch constructor, steps, optimizer lr, optimizer kind) tuples."""
  got = _evaluate([case[0] for case in cases], max(case[2] for case in cases))
  for i, ((schedule, make, steps, lr, kind), values) in enumerate(zip(cases, got)):
    _check(values, _torch_run(make, steps, lr, kind), f"{what} #{i} ({schedule.name})")


def _assert_matches(schedule, make, steps: int, lr: float, kind: str = "sgd") -> None:
  _assert_all_match([(schedule, make, steps, lr, kind)], schedule.name)


# ------------------------------------------------------------------------------- random draws
# Each draw returns (our schedule, a function building torch's scheduler on an optimizer, steps).


def _lambda(rng, lr):
  a, b = rng.uniform(0.9, 1.0), rng.uniform(0.0, 0.2)
  fn = [lambda t: a**t, lambda t: 1.0 / (1.0 + b * t), lambda t: a**t * (1 + b * (t % 7))][rng.integers(3)]
  return S.lambda_lr(lr, fn), lambda o: L.LambdaLR(o, fn), 300


def _multiplicative(rng, lr):
  c, d, p = rng.uniform(0.9, 1.0), rng.uniform(0.0, 0.1), int(rng.integers(1, 9))
  fn = lambda t: c + d * ((t % p) == 0)  # noqa: E731
  return S.multiplicative_lr(lr, fn), lambda o: L.MultiplicativeLR(o, fn), 300


def _step(rng, lr):
  size, gamma = int(rng.integers(1, 30)), rng.uniform(0.3, 0.99)
  return S.step_lr(lr, size, gamma), lambda o: L.StepLR(o, size, gamma), 300


def _multi_step(rng, lr):
  milestones = [int(m) for m in rng.integers(0, 200, size=rng.integers(1, 6))]
  milestones += milestones[:1] * int(rng.integers(0, 2))  # sometimes a repeated milestone
  gamma = rng.uniform(0.3, 0.99)
  return S.multi_step_lr(lr, milestones, gamma), lambda o: L.MultiStepLR(o, milestones, gamma), 300


def _constant(rng, lr):
  factor, total = rng.uniform(0.01, 1.0), int(rng.integers(0, 60))
  return S.constant_lr(lr, factor, total), lambda o: L.ConstantLR(o, factor, total), 300


def _linear(rng, lr):
  start, end = rng.uniform(0.01, 1.0), [0.0, 1.0, rng.uniform(0.0, 1.0)][rng.integers(3)]
  total = int(rng.integers(0, 120))
  return S.linear_lr(lr, start, end, total), lambda o: L.LinearLR(o, start, end, total), 300


def _exponential(rng, lr):
  gamma = rng.uniform(0.95, 1.005)
  return S.exponential_lr(lr, gamma), lambda o: L.ExponentialLR(o, gamma), 300


def _polynomial(rng, lr):
  total, power = int(rng.integers(0, 150)), rng.uniform(0.3, 3.0)
  return S.polynomial_lr(lr, total, power), lambda o: L.PolynomialLR(o, total, power), 300


def _cosine(rng, lr):
  t_max, eta_min = int(rng.integers(1, 80)), [0.0, rng.uniform(0.0, lr)][rng.integers(2)]
  steps = max(300, 7 * t_max)
  return S.cosine_annealing_lr(lr, t_max, eta_min), lambda o: L.CosineAnnealingLR(o, t_max, eta_min), steps


def _warm_restarts(rng, lr):
  t_0, t_mult, eta_min = int(rng.integers(1, 30)), int(rng.integers(1, 4)), rng.uniform(0.0, lr / 2)
  steps = max(300, 3 * t_0 * t_mult**2)
  return (S.cosine_annealing_warm_restarts(lr, t_0, t_mult, eta_min),
          lambda o: L.CosineAnnealingWarmRestarts(o, t_0, t_mult, eta_min), steps)


def _cyclic(rng, lr):
  base = rng.uniform(1e-3, lr)
  up = [int(rng.integers(1, 30)), float(rng.uniform(1.0, 20.0))][rng.integers(2)]
  down = [None, int(rng.integers(0, 30))][rng.integers(2)]
  kwargs = dict(mode=["triangular", "triangular2", "exp_range"][rng.integers(3)], gamma=rng.uniform(0.98, 1.0),
                base_momentum=rng.uniform(0.5, 0.85), max_momentum=rng.uniform(0.86, 0.99))
  if rng.integers(3) == 0:
    kwargs["scale_fn"] = lambda x: 1.0 / (1.0 + 0.1 * x)
    kwargs["scale_mode"] = ["cycle", "iterations"][rng.integers(2)]
  steps = max(300, int(4 * (up + (up if down is None else down))))
  return (S.cyclic_lr(base, lr, up, down, **kwargs), lambda o: L.CyclicLR(o, base, lr, up, down, **kwargs), steps)


def _one_cycle(rng, lr):
  total = int(rng.integers(30, 400))
  kwargs = dict(pct_start=float(rng.uniform(0.05, 0.95)), anneal_strategy=["cos", "linear"][rng.integers(2)],
                base_momentum=rng.uniform(0.5, 0.85), max_momentum=rng.uniform(0.86, 0.99),
                div_factor=rng.uniform(5.0, 50.0), final_div_factor=rng.uniform(10.0, 1e4),
                three_phase=bool(rng.integers(2)))
  return S.one_cycle_lr(lr, total, **kwargs), lambda o: L.OneCycleLR(o, lr, total, **kwargs), total


def _swa(rng, lr):
  target, epochs, strategy = rng.uniform(0.0, lr), int(rng.integers(0, 40)), ["cos", "linear"][rng.integers(2)]
  return S.swa_lr(lr, target, epochs, strategy), lambda o: SWALR(o, target, epochs, strategy), 300


DRAWS = {
    "lambda_lr": _lambda,
    "multiplicative_lr": _multiplicative,
    "step_lr": _step,
    "multi_step_lr": _multi_step,
    "constant_lr": _constant,
    "linear_lr": _linear,
    "exponential_lr": _exponential,
    "polynomial_lr": _polynomial,
    "cosine_annealing_lr": _cosine,
    "cosine_annealing_warm_restarts": _warm_restarts,
    "cyclic_lr": _cyclic,
    "one_cycle_lr": _one_cycle,
    "swa_lr": _swa,
}


@pytest.mark.parametrize("name", sorted(DRAWS))
def test_scheduler_matches_torch(name):
  cases = []
  for seed in SEEDS:
    rng = np.random.default_rng([seed, sorted(DRAWS).index(name)])
    lr = float(rng.uniform(1e-3, 1.0))
    schedule, make, steps = DRAWS[name](rng, lr)
    cases.append((schedule, make, steps, lr, ["sgd", "adam"][seed % 2]))
  _assert_all_match(cases, name)


def test_cosine_annealing_keeps_oscillating_past_t_max_like_torch():
  # Torch's recursion climbs back to base_lr after T_max (it is not clamped at eta_min).
  schedule = S.cosine_annealing_lr(0.1, 10, 0.01)
  with jax.enable_x64(True):
    values = np.asarray(schedule(jnp.asarray([0, 10, 20, 30, 40])))
  np.testing.assert_allclose(values, [0.1, 0.01, 0.1, 0.01, 0.1], rtol=1e-12)
  _assert_matches(schedule, lambda o: L.CosineAnnealingLR(o, 10, 0.01), 1000, 0.1)


def test_long_runs_stay_within_1e_12_of_torchs_recursion():
  lr = 0.3
  _assert_matches(S.exponential_lr(lr, 0.999), lambda o: L.ExponentialLR(o, 0.999), 5000, lr)
  _assert_matches(S.cosine_annealing_lr(lr, 200, 1e-4), lambda o: L.CosineAnnealingLR(o, 200, 1e-4), 3000, lr)
  _assert_matches(S.linear_lr(lr, 0.01, 1.0, 1000), lambda o: L.LinearLR(o, 0.01, 1.0, 1000), 1500, lr)


# ------------------------------------------------------------------------------- composites
# Sub-schedulers drawn from a pool, each built (as torch requires) on the optimizer's lr.

POOL = ["lambda", "multiplicative", "step", "multi_step", "constant", "linear", "exponential", "polynomial",
        "cosine", "warm_restarts", "cyclic", "swa"]


def _sub(kind: str, rng, lr: float):
  """(our sub-schedule, torch constructor) of one randomly parameterised scheduler on lr."""
  if kind == "lambda":
    a = rng.uniform(0.95, 1.0)
    return S.lambda_lr(lr, lambda t: a**t), lambda o: L.LambdaLR(o, lambda t: a**t)
  if kind == "multiplicative":
    c = rng.uniform(0.95, 1.0)
    factor = lambda t: c + 0.01 * (t % 2)  # noqa: E731
    return S.multiplicative_lr(lr, factor), lambda o: L.MultiplicativeLR(o, factor)
  if kind == "step":
    size, gamma = int(rng.integers(1, 20)), rng.uniform(0.5, 0.95)
    return S.step_lr(lr, size, gamma), lambda o: L.StepLR(o, size, gamma)
  if kind == "multi_step":
    milestones, gamma = [0] + [int(m) for m in rng.integers(1, 100, size=3)], rng.uniform(0.5, 0.95)
    return S.multi_step_lr(lr, milestones, gamma), lambda o: L.MultiStepLR(o, milestones, gamma)
  if kind == "constant":
    factor, total = rng.uniform(0.1, 1.0), int(rng.integers(1, 30))
    return S.constant_lr(lr, factor, total), lambda o: L.ConstantLR(o, factor, total)
  if kind == "linear":
    start, end, total = rng.uniform(0.1, 1.0), rng.uniform(0.0, 1.0), int(rng.integers(1, 40))
    return S.linear_lr(lr, start, end, total), lambda o: L.LinearLR(o, start, end, total)
  if kind == "exponential":
    gamma = rng.uniform(0.97, 1.0)
    return S.exponential_lr(lr, gamma), lambda o: L.ExponentialLR(o, gamma)
  if kind == "polynomial":
    total, power = int(rng.integers(1, 150)), rng.uniform(0.5, 2.0)
    return S.polynomial_lr(lr, total, power), lambda o: L.PolynomialLR(o, total, power)
  if kind == "cosine":
    t_max, eta_min = int(rng.integers(1, 40)), rng.uniform(0.0, lr / 4)
    return S.cosine_annealing_lr(lr, t_max, eta_min), lambda o: L.CosineAnnealingLR(o, t_max, eta_min)
  if kind == "warm_restarts":
    t_0, t_mult = int(rng.integers(1, 20)), int(rng.integers(1, 3))
    return S.cosine_annealing_warm_restarts(lr, t_0, t_mult), lambda o: L.CosineAnnealingWarmRestarts(o, t_0, t_mult)
  if kind == "cyclic":  # from the optimizer's lr up (a CyclicLR built first sets the shared initial_lr)
    top, up = lr * rng.uniform(1.5, 5.0), int(rng.integers(1, 20))
    return S.cyclic_lr(lr, top, up, mode="triangular2"), lambda o: L.CyclicLR(o, lr, top, up, mode="triangular2")
  target, epochs = rng.uniform(0.0, lr), int(rng.integers(0, 20))
  return S.swa_lr(lr, target, epochs), lambda o: SWALR(o, target, epochs)


def _subs(rng, lr: float, n: int):
  kinds = [POOL[i] for i in rng.integers(len(POOL), size=n)]
  return kinds, [_sub(kind, rng, lr) for kind in kinds]


def test_sequential_lr_matches_torch():
  cases = []
  for seed in range(8):
    rng = np.random.default_rng([seed, 100])
    lr = float(rng.uniform(1e-3, 1.0))
    _, subs = _subs(rng, lr, int(rng.integers(2, 5)))
    milestones = sorted(int(m) for m in rng.integers(0 if seed % 4 == 0 else 1, 150, size=len(subs) - 1))
    ours = S.sequential_lr([s for s, _ in subs], milestones)
    make = lambda o, subs=subs, ms=milestones: L.SequentialLR(o, [m(o) for _, m in subs], ms)  # noqa: E731
    cases.append((ours, make, 300, lr, ["sgd", "adam"][seed % 2]))
  _assert_all_match(cases, "sequential_lr")


def test_chained_scheduler_matches_torch():
  cases = []
  for seed in range(8):
    rng = np.random.default_rng([seed, 200])
    lr = float(rng.uniform(1e-3, 1.0))
    _, subs = _subs(rng, lr, int(rng.integers(2, 4)))
    ours = S.chained_scheduler([s for s, _ in subs])
    make = lambda o, subs=subs: L.ChainedScheduler([m(o) for _, m in subs])  # noqa: E731
    cases.append((ours, make, 300, lr, ["sgd", "adam"][seed % 2]))
  _assert_all_match(cases, "chained_scheduler")


def test_composite_quirks_match_torch():
  lr = 0.1
  cases = [
      # Two warm-up factors multiply in a chain (each constructor's first step acts on the other's lr).
      ([S.constant_lr(lr, 0.5, 4), S.linear_lr(lr, 0.5, 1.0, 6)], None,
       lambda o: [L.ConstantLR(o, 0.5, 4), L.LinearLR(o, 0.5, 1.0, 6)]),
      # A non-chainable scheduler overwrites the lr: only the schedulers after it still act.
      ([S.exponential_lr(lr, 0.9), S.lambda_lr(lr, lambda t: 1 / (1 + t)), S.step_lr(lr, 5, 0.5)], None,
       lambda o: [L.ExponentialLR(o, 0.9), L.LambdaLR(o, lambda t: 1 / (1 + t)), L.StepLR(o, 5, 0.5)]),
      # Additive cosine steps: torch's recursion in a loop.
      ([S.exponential_lr(lr, 0.99), S.cosine_annealing_lr(lr, 20, 0.001)], None,
       lambda o: [L.ExponentialLR(o, 0.99), L.CosineAnnealingLR(o, 20, 0.001)]),
      # MultiplicativeLR and SWALR at a milestone map the lr the previous scheduler left.
      ([S.cosine_annealing_lr(lr, 20), S.multiplicative_lr(lr, lambda t: 0.97), S.swa_lr(lr, 0.01, 7)], [13, 50],
       lambda o: [L.CosineAnnealingLR(o, 20), L.MultiplicativeLR(o, lambda t: 0.97), SWALR(o, 0.01, 7)]),
      # A milestone at 0 skips the first scheduler; repeated milestones skip the one between.
      ([S.exponential_lr(lr, 0.5), S.linear_lr(lr, 0.5, 1.0, 8), S.polynomial_lr(lr, 30, 2.0)], [0, 20],
       lambda o: [L.ExponentialLR(o, 0.5), L.LinearLR(o, 0.5, 1.0, 8), L.PolynomialLR(o, 30, 2.0)]),
      ([S.exponential_lr(lr, 0.9), S.linear_lr(lr, 0.5, 1.0, 8), S.multi_step_lr(lr, [0, 3, 30], 0.5)], [10, 10],
       lambda o: [L.ExponentialLR(o, 0.9), L.LinearLR(o, 0.5, 1.0, 8), L.MultiStepLR(o, [0, 3, 30], 0.5)]),
  ]
  batch = []
  for ours, milestones, make in cases:
    if milestones is None:
      batch.append((S.chained_scheduler(ours), lambda o, make=make: L.ChainedScheduler(make(o)), 200, lr, "sgd"))
    else:
      batch.append((S.sequential_lr(ours, milestones),
                    lambda o, make=make, m=milestones: L.SequentialLR(o, make(o), m), 200, lr, "sgd"))
  _assert_all_match(batch, "composite quirk")


def test_composites_with_momentum_cycling_schedulers_match_torch():
  cases = [
      ("seq", [S.cyclic_lr(0.01, 0.1, 5, 5), S.one_cycle_lr(0.2, 100), S.lambda_lr(0.008, lambda e: 0.99**e)],
       [25, 125],
       lambda o: [L.CyclicLR(o, 0.01, 0.1, 5, 5), L.OneCycleLR(o, 0.2, 100), L.LambdaLR(o, lambda e: 0.99**e)]),
      ("seq", [S.linear_lr(0.1, 0.2, 1.0, 5), S.cyclic_lr(0.01, 0.1, 5, 5), S.exponential_lr(0.1, 0.98)], [25, 100],
       lambda o: [L.LinearLR(o, 0.2, 1.0, 5), L.CyclicLR(o, 0.01, 0.1, 5, 5), L.ExponentialLR(o, 0.98)]),
      ("chain", [S.linear_lr(0.1, 0.3, 1.0, 10), S.cyclic_lr(0.01, 0.1, 6, 4), S.exponential_lr(0.1, 0.99)], None,
       lambda o: [L.LinearLR(o, 0.3, 1.0, 10), L.CyclicLR(o, 0.01, 0.1, 6, 4), L.ExponentialLR(o, 0.99)]),
      ("chain", [S.one_cycle_lr(0.1, 300), S.multi_step_lr(0.004, [0, 100], 0.5)], None,
       lambda o: [L.OneCycleLR(o, 0.1, 300), L.MultiStepLR(o, [0, 100], 0.5)]),
  ]
  batch = []
  for kind, (how, ours, milestones, make) in zip(["sgd", "adam", "sgd", "adam"], cases):
    if how == "chain":
      schedule, build = S.chained_scheduler(ours), lambda o, make=make: L.ChainedScheduler(make(o))
    else:
      schedule = S.sequential_lr(ours, milestones)
      build = lambda o, make=make, m=milestones: L.SequentialLR(o, make(o), m)  # noqa: E731
    assert schedule.momentum is not None
    batch.append((schedule, build, 300, 0.1, kind))
  _assert_all_match(batch, "composite with momentum")


def test_per_epoch_steps_the_scheduler_once_per_epoch():
  schedule = S.per_epoch(S.one_cycle_lr(0.1, 20), 7)
  expected_lr, expected_momentum = _torch_run(lambda o: L.OneCycleLR(o, 0.1, 20), 20, 0.1, "sgd")
  (got_lr, got_momentum), = _evaluate([schedule], 7 * 21 - 1)  # the last epoch still uses the lr after 20 steps
  epochs = np.arange(7 * 21) // 7
  np.testing.assert_allclose(got_lr, expected_lr[epochs], rtol=RTOL)
  np.testing.assert_allclose(got_momentum, expected_momentum[epochs], rtol=RTOL)
  with pytest.raises(ValueError, match="Tried to step 21 times"):
    schedule(7 * 21)
  plain = S.per_epoch(optax.exponential_decay(1.0, 1, 0.5), 2)
  assert plain.momentum is None and float(plain(5)) == 0.25


# ------------------------------------------------------------------------------- plateau


def _metrics(rng, n: int) -> np.ndarray:
  """A noisy random walk with plateaus, repeats and the occasional NaN."""
  steps = rng.normal(0.0, 1.0, n) * (rng.random(n) < 0.6) + rng.choice([0.0, -0.3, 0.3], n)
  values = 5.0 + np.cumsum(steps) * 0.1
  values[rng.random(n) < 0.05] = np.nan
  repeat = rng.random(n) < 0.2
  values[1:][repeat[1:]] = values[:-1][repeat[1:]]
  return values


PLATEAU_CASES = [
    dict(mode="min", threshold_mode="rel", patience=2),
    dict(mode="max", threshold_mode="rel", patience=2),
    dict(mode="min", threshold_mode="abs", threshold=0.05, patience=2),
    dict(mode="max", threshold_mode="abs", threshold=0.05, patience=2),
    dict(mode="min", patience=0, cooldown=3),
    dict(mode="max", patience=2, cooldown=1, factor=0.5, min_lr=0.004),
    dict(mode="min", patience=1, factor=0.7, min_lr=0.01, eps=2e-3),
    dict(mode="min", patience=3, threshold=0.0, eps=0.0),
]


def test_reduce_lr_on_plateau_matches_torch():
  """Torch's ReduceLROnPlateau and ours fed the same metrics: same lr and counters after every epoch."""
  for case, kwargs in enumerate(PLATEAU_CASES):
    metrics = _metrics(np.random.default_rng([case, 300]), 150)
    reference = L.ReduceLROnPlateau(_optimizer(0.1), **kwargs)
    expected = []
    for metric in metrics:
      reference.step(float(metric))
      expected.append((reference.get_last_lr()[0], reference.best, reference.num_bad_epochs,
                       reference.cooldown_counter, reference.last_epoch))
    expected = [np.asarray(column) for column in zip(*expected)]
    with jax.enable_x64(True):
      plateau = S.reduce_lr_on_plateau(0.1, **kwargs)

      def one_epoch(state, metric, plateau=plateau):
        state = plateau.step(state, metric)
        return state, (plateau.lr(state), *state[1:])

      _, got = jax.jit(lambda m, plateau=plateau, f=one_epoch: lax.scan(f, plateau.init(), m))(jnp.asarray(metrics))
    for name, g, e in zip(("lr", "best", "num_bad_epochs", "cooldown_counter", "last_epoch"), got, expected):
      np.testing.assert_array_equal(np.asarray(g), e, err_msg=f"{name} in case {kwargs}")
    assert np.any(np.diff(expected[0]) < 0), kwargs  # every case does reduce the lr


def test_reduce_lr_on_plateau_drives_inject_hyperparams_like_torch():
  """The README recipe: an `inject_hyperparams` Adam whose lr the plateau rule sets after each epoch."""
  target = np.array([1.0, -2.0, 0.5])
  with jax.enable_x64(True):
    plateau = S.reduce_lr_on_plateau(0.3, patience=1, factor=0.5)
    tx = optax.inject_hyperparams(gcj.adam)(learning_rate=0.3)
    params = jnp.zeros(3)
    opt_state, plateau_state = tx.init(params), plateau.init()

    @jax.jit
    def epoch(params, opt_state, plateau_state):
      loss = lambda p: jnp.sum((p - target) ** 2)  # noqa: E731
      updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
      params = optax.apply_updates(params, updates)
      plateau_state = plateau.step(plateau_state, loss(params))
      opt_state.hyperparams["learning_rate"] = plateau.lr(plateau_state)
      return params, opt_state, plateau_state

    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    optimizer = torch.optim.Adam([p], lr=0.3)
    reference = L.ReduceLROnPlateau(optimizer, patience=1, factor=0.5)
    lrs = []
    for _ in range(40):
      params, opt_state, plateau_state = epoch(params, opt_state, plateau_state)
      optimizer.zero_grad()
      torch.sum((p - torch.tensor(target)) ** 2).backward()
      optimizer.step()
      reference.step(float(torch.sum((p.detach() - torch.tensor(target)) ** 2)))
      lrs.append(reference.get_last_lr()[0])
      np.testing.assert_allclose(np.asarray(params), p.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert float(opt_state.hyperparams["learning_rate"]) == lrs[-1] < 0.3  # the rule did reduce the lr


# ------------------------------------------------------------------------------- jit, dtypes, errors


def _every_schedule():
  one_cycle = S.one_cycle_lr(0.1, 1000)
  return [
      S.lambda_lr(0.1, lambda t: 0.99**t), S.multiplicative_lr(0.1, lambda t: 0.99), S.step_lr(0.1, 5),
      S.multi_step_lr(0.1, [3, 9]), S.constant_lr(0.1), S.linear_lr(0.1), S.exponential_lr(0.1, 0.9),
      S.polynomial_lr(0.1), S.cosine_annealing_lr(0.1, 10), S.cosine_annealing_warm_restarts(0.1, 5, 2),
      S.cyclic_lr(0.01, 0.1, 4), one_cycle, S.swa_lr(0.1, 0.05),
      S.sequential_lr([S.linear_lr(0.1), S.cosine_annealing_lr(0.1, 10), S.swa_lr(0.1, 0.01)], [5, 20]),
      S.chained_scheduler([S.exponential_lr(0.1, 0.99), S.cosine_annealing_lr(0.1, 10)]),
      S.per_epoch(one_cycle, 3),
  ]


def test_no_schedule_retraces_as_the_count_advances():
  """A jitted step that reads every schedule (lr and momentum) at a traced count traces once."""
  schedules, traces = _every_schedule(), []

  @jax.jit
  def lookup(count):
    traces.append(None)
    return [(s(count), s.momentum(count) if s.momentum is not None else 0.0) for s in schedules]

  values = [lookup(jnp.asarray(c, jnp.int32)) for c in range(40)]
  assert len(traces) == 1
  assert np.all(np.isfinite(np.asarray(jax.tree.leaves(values))))
  eager = [(float(s(39)), None if s.momentum is None else float(s.momentum(39))) for s in schedules[::5]]
  for (lr, momentum), (jit_lr, jit_momentum) in zip(eager, values[-1][::5]):
    assert lr == pytest.approx(float(jit_lr), rel=1e-6)
    assert momentum is None or momentum == pytest.approx(float(jit_momentum), rel=1e-6)


def test_optimizers_take_the_schedules_and_trace_once():
  schedule = S.one_cycle_lr(0.1, 100)
  for tx in (gcj.sgd(schedule, momentum=schedule.momentum), gcj.adamw(schedule, b1=schedule.momentum)):
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    traces = []

    @jax.jit
    def step(params, state, tx=tx):
      traces.append(None)
      updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
      return optax.apply_updates(params, updates), state

    for _ in range(10):
      params, state = step(params, state)
    assert len(traces) == 1
    assert np.all(np.isfinite(np.asarray(params["w"])))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_one_cycle_trajectory_matches_torch_with_cycled_momentum(kind):
  """End to end: the optimizer fed `schedule` and `schedule.momentum` follows torch's OneCycleLR run."""
  steps, target, weights = 60, np.array([1.0, -2.0, 0.5, 3.0]), np.arange(1.0, 5.0)
  p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
  optimizer = torch.optim.SGD([p], lr=0.05, momentum=0.9) if kind == "sgd" else torch.optim.Adam([p], lr=0.05)
  reference = L.OneCycleLR(optimizer, 0.05, steps, pct_start=0.25)
  expected = []
  for _ in range(steps):
    optimizer.zero_grad()
    torch.sum((p - torch.tensor(target)) ** 2 * torch.tensor(weights)).backward()
    optimizer.step()
    reference.step()
    expected.append(p.detach().numpy().copy())
  with jax.enable_x64(True):
    schedule = S.one_cycle_lr(0.05, steps, pct_start=0.25)
    tx = gcj.sgd(schedule, momentum=schedule.momentum) if kind == "sgd" else gcj.adam(schedule, b1=schedule.momentum)

    def one_step(carry, _):
      params, state = carry
      grads = jax.grad(lambda w: jnp.sum((w - target) ** 2 * weights))(params)
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      return (params, state), params

    params = jnp.zeros(4)
    _, trajectory = jax.jit(lambda c: lax.scan(one_step, c, None, length=steps))((params, tx.init(params)))
  np.testing.assert_allclose(np.asarray(trajectory), np.asarray(expected), rtol=1e-10, atol=1e-12)


def test_float32_schedules_match_torch_to_float32_precision():
  # float32 rounds each lr to 6e-8 of the largest one (OneCycleLR's annealing subtracts max_lr
  # from terms of its size), hence the absolute part.
  cases = [(S.cosine_annealing_lr(0.1, 30, 0.001), lambda o: L.CosineAnnealingLR(o, 30, 0.001)),
           (S.one_cycle_lr(0.1, 200), lambda o: L.OneCycleLR(o, 0.1, 200))]
  schedules = [case[0] for case in cases]
  with jax.enable_x64(False):
    got = jax.jit(lambda c: lax.map(lambda k: [(s(k), s.momentum(k) if s.momentum else 0.0) for s in schedules], c))(
        jnp.arange(201))
  for (schedule, make), (lr, momentum) in zip(cases, got):
    expected_lr, expected_momentum = _torch_run(make, 200, 0.1, "sgd")
    assert lr.dtype == jnp.float32
    np.testing.assert_allclose(lr, expected_lr, rtol=1e-5, atol=1e-6 * expected_lr.max(), err_msg=schedule.name)
    if schedule.momentum is not None:
      np.testing.assert_allclose(momentum, expected_momentum, rtol=1e-5)


def test_one_cycle_past_total_steps_raises_eagerly_and_is_nan_under_jit():
  schedule = S.one_cycle_lr(0.1, 50)
  optimizer = _optimizer(0.1)
  reference = L.OneCycleLR(optimizer, 0.1, 50)
  for _ in range(50):
    optimizer.step()
    reference.step()
  with pytest.raises(ValueError, match="Tried to step 51 times"):
    reference.step()
  with pytest.raises(ValueError, match="Tried to step 51 times. The specified number of total steps is 50"):
    schedule(51)
  with pytest.raises(ValueError, match="Tried to step 51 times"):
    schedule.momentum(jnp.arange(60))
  sequential = S.sequential_lr([S.constant_lr(0.004, 0.5, 3), S.one_cycle_lr(0.1, 50)], [10])
  with pytest.raises(ValueError, match="Tried to step 51 times"):
    sequential(61)
  with pytest.raises(ValueError, match="count must be"):
    schedule(-1)
  with pytest.raises(TypeError, match="count must be an integer"):
    schedule(1.5)
  lookup = jax.jit(lambda c: (schedule(c), schedule.momentum(c), sequential(c + 10)))
  assert np.all(np.isfinite(lookup(50)))
  assert np.all(np.isnan(lookup(51)))


def test_api_details():
  with jax.enable_x64(True):
    by_epochs, by_total = S.one_cycle_lr(0.1, epochs=3, steps_per_epoch=7), S.one_cycle_lr(0.1, 21)
    counts = jnp.arange(22)
    np.testing.assert_array_equal(by_epochs(counts), by_total(counts))
    np.testing.assert_array_equal(by_epochs.momentum(counts), by_total.momentum(counts))
    assert S.cyclic_lr(0.01, 0.1, cycle_momentum=False).momentum is None
    assert S.one_cycle_lr(0.1, 10, cycle_momentum=False).momentum is None
    assert S.exponential_lr(0.1, 0.5).momentum is None
    # Integer arrays of any shape, one value per count; Python ints and NumPy ints alike.
    schedule = S.step_lr(0.1, 2, 0.5)
    np.testing.assert_array_equal(schedule(np.array([[0, 1], [2, 5]])), [[0.1, 0.1], [0.05, 0.025]])
    assert float(schedule(np.int64(4))) == 0.025
    # A schedule is an ordinary Optax schedule: inject_hyperparams calls it with the count.
    tx = optax.inject_hyperparams(gcj.sgd)(learning_rate=schedule)
    state, update = tx.init(jnp.zeros(2)), jax.jit(tx.update)
    for _ in range(3):
      _, state = update(jnp.ones(2), state, jnp.zeros(2))
    assert float(state.hyperparams["learning_rate"]) == 0.05


def _raises(ours: Callable[[], Any], theirs: Callable[[], Any], argument: str, torch_error=ValueError) -> None:
  with pytest.raises(torch_error):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      theirs()
  with pytest.raises(ValueError) as error:
    ours()
  assert argument in str(error.value), (argument, str(error.value))


def test_bad_arguments_raise_like_torch_and_name_the_argument():
  o = _optimizer(0.1)
  _raises(lambda: S.constant_lr(0.1, factor=1.5), lambda: L.ConstantLR(o, factor=1.5), "factor")
  _raises(lambda: S.linear_lr(0.1, start_factor=0.0), lambda: L.LinearLR(o, start_factor=0.0), "start_factor")
  _raises(lambda: S.linear_lr(0.1, end_factor=1.5), lambda: L.LinearLR(o, end_factor=1.5), "end_factor")
  _raises(lambda: S.cosine_annealing_warm_restarts(0.1, 0), lambda: L.CosineAnnealingWarmRestarts(o, 0), "T_0")
  _raises(lambda: S.cosine_annealing_warm_restarts(0.1, 5, 0), lambda: L.CosineAnnealingWarmRestarts(o, 5, 0), "T_mult")
  _raises(lambda: S.cosine_annealing_warm_restarts(0.1, 5, eta_min="0"),
          lambda: L.CosineAnnealingWarmRestarts(o, 5, eta_min="0"), "eta_min")
  _raises(lambda: S.one_cycle_lr(0.1, 0), lambda: L.OneCycleLR(o, 0.1, 0), "total_steps")
  _raises(lambda: S.one_cycle_lr(0.1), lambda: L.OneCycleLR(o, 0.1), "total_steps")
  _raises(lambda: S.one_cycle_lr(0.1, epochs=0, steps_per_epoch=3),
          lambda: L.OneCycleLR(o, 0.1, epochs=0, steps_per_epoch=3), "epochs")
  _raises(lambda: S.one_cycle_lr(0.1, 10, pct_start=1), lambda: L.OneCycleLR(o, 0.1, 10, pct_start=1), "pct_start")
  _raises(lambda: S.one_cycle_lr(0.1, 10, anneal_strategy="exp"),
          lambda: L.OneCycleLR(o, 0.1, 10, anneal_strategy="exp"), "anneal_strategy")
  _raises(lambda: S.one_cycle_lr(0.1, 10, pct_start=0.1), lambda: L.OneCycleLR(o, 0.1, 10, pct_start=0.1),
          "pct_start", torch_error=ZeroDivisionError)
  _raises(lambda: S.cyclic_lr(0.01, 0.1, mode="square"), lambda: L.CyclicLR(o, 0.01, 0.1, mode="square"), "mode")
  _raises(lambda: S.cyclic_lr(0.01, 0.1, step_size_up=0), lambda: L.CyclicLR(o, 0.01, 0.1, step_size_up=0),
          "step_size_up", torch_error=ZeroDivisionError)
  _raises(lambda: S.swa_lr(0.1, 0.01, anneal_strategy="exp"), lambda: SWALR(o, 0.01, anneal_strategy="exp"),
          "anneal_strategy")
  _raises(lambda: S.swa_lr(0.1, 0.01, anneal_epochs=-1), lambda: SWALR(o, 0.01, anneal_epochs=-1), "anneal_epochs")
  _raises(lambda: S.reduce_lr_on_plateau(0.1, factor=1.0), lambda: L.ReduceLROnPlateau(o, factor=1.0), "actor")
  _raises(lambda: S.reduce_lr_on_plateau(0.1, mode="avg"), lambda: L.ReduceLROnPlateau(o, mode="avg"), "mode")
  _raises(lambda: S.reduce_lr_on_plateau(0.1, threshold_mode="pct"),
          lambda: L.ReduceLROnPlateau(o, threshold_mode="pct"), "threshold_mode")
  _raises(lambda: S.sequential_lr([], []), lambda: L.SequentialLR(o, [], []), "no scheduler")
  _raises(lambda: S.sequential_lr([S.step_lr(0.1, 3), S.step_lr(0.1, 4)], []),
          lambda: L.SequentialLR(o, [L.StepLR(o, 3), L.StepLR(o, 4)], []), "milestones")
  _raises(lambda: S.chained_scheduler([]), lambda: L.ChainedScheduler([]), "no scheduler")
  with pytest.raises(TypeError, match="lr_lambda"):
    S.multiplicative_lr(0.1, 0.9)
  with pytest.raises(TypeError):
    L.MultiplicativeLR(o, 0.9)
  with pytest.raises(ValueError, match="ZeroDivisionError"):  # torch raises at the milestone
    S.sequential_lr([S.step_lr(0.1, 3), S.linear_lr(0.1, total_iters=0)], [5])
  with pytest.raises(ValueError, match="base_lr"):  # torch's sub-schedulers all share the optimizer's lr
    S.sequential_lr([S.step_lr(0.1, 3), S.step_lr(0.2, 4)], [5])
  with pytest.raises(TypeError, match="composite"):  # torch's SequentialLR cannot restart a nested composite
    S.sequential_lr([S.step_lr(0.1, 3), S.chained_scheduler([S.step_lr(0.1, 4)])], [5])
  for bad in (dict(step_size=0), dict(step_size=2.5)):
    with pytest.raises(ValueError, match="step_size"):
      S.step_lr(0.1, **bad)
  with pytest.raises(ValueError, match="T_max"):
    S.cosine_annealing_lr(0.1, 0)
  with pytest.raises(ValueError, match="base_lr"):
    S.exponential_lr(-0.1, 0.9)
