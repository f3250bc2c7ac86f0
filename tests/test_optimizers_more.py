"""Rprop, ASGD, Adafactor and Muon against live `torch.optim` (the reference), over torch's own test matrix.

The hyperparameter combinations are torch's: `optim_inputs_func_rprop/asgd/adafactor/muon`
in `torch/testing/_internal/common_optimizers.py` (the CPU lists), plus a few cases of
ours (ASGD averaging early, tight Rprop bounds, schedules). Both sides see the SAME
gradients: torch's single-tensor (`foreach=False`) implementation runs first, reading a
gradient computed in NumPy from its current params (a quadratic with random curvature, a
mild quartic and fresh noise every step; its negative for `maximize`, so that every run
converges); the recorded sequence is replayed, under `jit` in one `lax.scan`, to
gradcore_jax. Every param, and at the end every state entry torch keeps, is compared:
float64 to 1e-10 and float32 to 1e-5, relative to the leaf's largest magnitude, after
each of `STEPS` steps. The params hold 0-d, 1-d, 2-d and 3-d leaves (2-d only for Muon,
which takes nothing else).

Muon rounds to bfloat16 inside its Newton-Schulz iteration, and torch's CPU GEMM sums
each product in float32 in an order of its own. Now and then (2 of 300 random matrices;
1 of the 1,920 calls in this file's runs) one element lands on the other side of a
bfloat16 rounding boundary and the orthogonalised update differs by a few bfloat16 ulps.
So `test_muon_matches_torch` checks Muon in two parts: our `newton_schulz`, run on the
inputs torch's iteration received, must return torch's output bit for bit on at least 98%
of the calls, and the trajectory must match to the tolerances above plus the effect of
the calls that did not.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from _torch_reference import precision

import gradcore_jax as gcj

common_optimizers = pytest.importorskip("torch.testing._internal.common_optimizers", reason="needs expecttest")

STEPS = 120
SHAPES = {"scalar": (), "vector": (5,), "matrix": (4, 3), "tensor": (2, 3, 4)}
MUON_SHAPES = {"tall": (6, 4), "wide": (3, 5)}
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}
DTYPES = {"f64": np.float64, "f32": np.float32}

torch.set_num_threads(1)


def _problem(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
  """Start, curvature (symmetric, eigenvalues in [0.2, 2]), centre and per-step noise of each leaf, in float64."""
  rng = np.random.default_rng(0)
  problem: dict[str, Any] = {"start": {}, "curvature": {}, "centre": {}, "noise": {}}
  for key, shape in shapes.items():
    size = int(np.prod(shape))
    basis, _ = np.linalg.qr(rng.standard_normal((size, size)))
    problem["curvature"][key] = (basis * rng.uniform(0.2, 2.0, size)) @ basis.T
    problem["start"][key] = rng.standard_normal(shape)
    problem["centre"][key] = rng.standard_normal(shape)
    problem["noise"][key] = 0.3 * rng.standard_normal((STEPS, *shape))
  return problem


PROBLEMS = {"default": _problem(SHAPES), "muon": _problem(MUON_SHAPES)}


def _gradient(problem: dict[str, Any], key: str, param: np.ndarray, step: int) -> np.ndarray:
  """Gradient of `0.5 (p-c)' A (p-c) + 0.025 sum p**4` plus step noise, evaluated in float64."""
  param = param.astype(np.float64)
  quadratic = (problem["curvature"][key] @ (param - problem["centre"][key]).reshape(-1)).reshape(param.shape)
  return quadratic + 0.1 * param**3 + problem["noise"][key][step]


class TorchRun:
  """A torch trajectory: params after every step, the gradients it read, and its final optimizer state."""

  def __init__(self, torch_cls: type, kwargs: dict[str, Any], dtype, problem: str, gamma: Optional[float] = None):
    self.problem = PROBLEMS[problem]
    params = {k: torch.tensor(v.astype(dtype)) for k, v in self.problem["start"].items()}
    optimizer = torch_cls(list(params.values()), **kwargs)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma) if gamma else None
    # A maximizing optimizer is fed the gradient of -f, so that it climbs to f's minimum instead of diverging.
    sign = -1 if kwargs.get("maximize") else 1
    history: dict[str, list[np.ndarray]] = {k: [] for k in params}
    grads: dict[str, list[np.ndarray]] = {k: [] for k in params}
    for t in range(STEPS):
      for key, param in params.items():
        g = sign * _gradient(self.problem, key, param.numpy(), t).astype(dtype)
        grads[key].append(g)
        param.grad = torch.tensor(g)
      optimizer.step()
      if scheduler:
        scheduler.step()
      for key, param in params.items():
        history[key].append(param.detach().numpy().copy())
    self.history = {k: np.stack(v) for k, v in history.items()}
    self.grads = {k: np.stack(v) for k, v in grads.items()}
    self.state = {key: optimizer.state[param] for key, param in params.items()}


def run_jax(txs: list[optax.GradientTransformation], runs: list[TorchRun], dtype) -> list[tuple[dict, Any]]:
  """(trajectory, final state) of each optimizer on its torch run's gradients, all in one jitted `lax.scan`."""
  starts = [{k: jnp.asarray(v.astype(dtype)) for k, v in run.problem["start"].items()} for run in runs]

  @jax.jit
  def trajectories(grads):
    def step(carry, grads_t):
      new_carry = []
      for tx, (params, state), g in zip(txs, carry, grads_t):
        updates, state = tx.update(g, state, params)
        new_carry.append((optax.apply_updates(params, updates), state))
      return tuple(new_carry), tuple(params for params, _ in new_carry)

    init = tuple((start, tx.init(start)) for tx, start in zip(txs, starts))
    final, history = jax.lax.scan(step, init, grads)
    return history, tuple(state for _, state in final)

  history, states = trajectories(tuple(jax.tree.map(jnp.asarray, run.grads) for run in runs))
  return [(jax.tree.map(np.asarray, h), s) for h, s in zip(history, states)]


def max_relative_difference(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> float:
  return max(float(np.max(np.abs(ours[k] - theirs[k])) / np.max(np.abs(theirs[k]))) for k in theirs)


def assert_same_trajectory(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], dtype) -> None:
  tol = TOLERANCE[dtype]
  for name in theirs:
    assert ours[name].dtype == dtype, name
    scale = np.max(np.abs(theirs[name]))
    np.testing.assert_allclose(ours[name], theirs[name], rtol=tol, atol=tol * scale, err_msg=name)


def _as_jax(value: Any) -> Any:
  """A torch 0-d tensor (torch's "Tensor lr" case) becomes a jnp scalar of the same dtype."""
  return jnp.asarray(value.numpy()) if isinstance(value, torch.Tensor) else value


def _translate(kwargs: dict[str, Any]) -> dict[str, Any]:
  """Torch's keyword arguments as gradcore_jax's: `lr` is `learning_rate`, the rest keep torch's names."""
  return {("learning_rate" if k == "lr" else k): _as_jax(v) for k, v in kwargs.items()}


# name -> (gradcore_jax factory, torch class, torch's flag for the single-tensor path, problem)
OPTIMIZERS: dict[str, tuple[Callable[..., Any], type, dict[str, Any], str]] = {
    "rprop": (gcj.rprop, torch.optim.Rprop, {"foreach": False}, "default"),
    "asgd": (gcj.asgd, torch.optim.ASGD, {"foreach": False}, "default"),
    "adafactor": (gcj.adafactor, torch.optim.Adafactor, {"foreach": False}, "default"),
    "muon": (gcj.muon, torch.optim.Muon, {}, "muon"),
}

# Cases of ours on top of torch's matrix (torch's lists start ASGD's averaging at update 103 at the earliest).
EXTRA_CASES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "rprop": [("tight step sizes, lr outside them", {"lr": 0.5, "step_sizes": (1e-3, 0.2), "etas": (0.3, 1.7)})],
    "asgd": [("early averaging", {"t0": 10, "lambd": 0.01, "alpha": 0.6, "lr": 0.05, "weight_decay": 0.05})],
    "adafactor": [("eps and lr", {"lr": 0.05, "eps": (1e-4, 1e-2), "beta2_decay": -0.5, "weight_decay": 0.05})],
    "muon": [("no nesterov, match_rms_adamw", {"nesterov": False, "adjust_lr_fn": "match_rms_adamw", "momentum": 0.5})],
}


def _cases(name: str) -> list[tuple[str, dict[str, Any]]]:
  torch_cls = OPTIMIZERS[name][1]
  (info,) = [info for info in common_optimizers.optim_db if info.optim_cls is torch_cls]
  return [(entry.desc, dict(entry.kwargs)) for entry in info.optim_inputs_func(device="cpu")] + EXTRA_CASES[name]


class NewtonSchulzRecorder:
  """Wraps torch's own `_zeropower_via_newtonschulz` (still called) to record its inputs and outputs."""

  def __init__(self):
    self.calls: list[tuple[np.ndarray, np.ndarray]] = []

  @contextlib.contextmanager
  def recording(self):
    module = torch.optim._muon
    original = module._zeropower_via_newtonschulz

    def recorded(grad, *args, **kwargs):
      out = original(grad, *args, **kwargs)
      self.calls.append((grad.detach().numpy().copy(), out.float().numpy()))
      return out

    module._zeropower_via_newtonschulz = recorded
    try:
      yield self
    finally:
      module._zeropower_via_newtonschulz = original


class CaseResult(NamedTuple):
  ours: dict[str, np.ndarray]
  state: Any
  torch: TorchRun
  kwargs: dict[str, Any]


@functools.lru_cache(maxsize=None)
def results(name: str, dtype_id: str) -> dict[str, CaseResult]:
  """desc -> result of every case of `name`, all of gradcore_jax's in one jitted scan.

  The cases are built under the run's precision, so torch's "Tensor lr" is a 0-d tensor of
  the default dtype (float64 in float64 runs: torch then computes its coefficients in it).
  """
  dtype = DTYPES[dtype_id]
  factory, torch_cls, single_tensor, problem = OPTIMIZERS[name]
  with precision(dtype):
    cases = _cases(name)
    runs = []
    for _, kwargs in cases:
      with NewtonSchulzRecorder().recording() as recorder:
        run = TorchRun(torch_cls, {**kwargs, **single_tensor}, dtype, problem)
      run.newton_schulz = recorder.calls
      runs.append(run)
    ours = run_jax([factory(**_translate(kwargs)) for _, kwargs in cases], runs, dtype)
  return {
      desc: CaseResult(trajectory, state, run, kwargs)
      for (desc, kwargs), (trajectory, state), run in zip(cases, ours, runs)
  }


def _block_state(state: Any, kind: type) -> Any:
  (found,) = [node for node in jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, kind)) if isinstance(node, kind)]
  return found


# Torch's per-parameter state entries and the block state holding them (same names, per leaf or shared scalar).
STATE_FIELDS = {
    "rprop": (gcj.transforms.ScaleByRpropState, ("prev", "step_size"), ()),
    "asgd": (gcj.transforms.ScaleByAsgdState, ("ax",), ("eta", "mu")),
    "adafactor": (gcj.transforms.ScaleByAdafactorState, ("row_var", "col_var", "variance"), ()),
    "muon": (gcj.transforms.ScaleByMuonState, ("momentum_buffer",), ()),
}


def assert_same_state(name: str, result: CaseResult, dtype) -> None:
  """The final optimizer state equals torch's `optimizer.state` (same tolerances as the params)."""
  kind, per_leaf, shared = STATE_FIELDS[name]
  block = _block_state(result.state, kind)
  tol = TOLERANCE[dtype]
  for field in per_leaf:
    ours = getattr(block, field)
    for key, torch_state in result.torch.state.items():
      if field not in torch_state:
        assert ours[key] is None, (field, key)
        continue
      theirs = torch_state[field].numpy()
      np.testing.assert_allclose(
          np.asarray(ours[key]), theirs, rtol=tol, atol=tol * np.max(np.abs(theirs)), err_msg=f"{field}[{key}]"
      )
  for field in shared:
    for key, torch_state in result.torch.state.items():
      np.testing.assert_allclose(np.asarray(getattr(block, field)), torch_state[field].numpy(), rtol=tol, err_msg=field)


@pytest.mark.parametrize("dtype_id", list(DTYPES))
@pytest.mark.parametrize("name", ["rprop", "asgd", "adafactor"])
def test_matches_torch_on_its_matrix(name, dtype_id):
  """Rprop, ASGD and Adafactor equal torch.optim's single-tensor path, params and final state, for every case."""
  dtype = DTYPES[dtype_id]
  for desc, result in results(name, dtype_id).items():
    try:
      assert_same_trajectory(result.ours, result.torch.history, dtype)
      assert_same_state(name, result, dtype)
    except AssertionError as error:
      raise AssertionError(f"{name}: {desc}") from error


def test_asgd_averages_as_torch():
  """Averaging runs in the torch cases that reach it (t0=100, and ours with t0=10), and `ax` is torch's."""
  for desc in ("t0", "early averaging"):
    result = results("asgd", "f64")[desc]
    ax = gcj.transforms.asgd_average(result.state)
    assert not np.allclose(ax["matrix"], result.ours["matrix"][-1])  # a real average, not the params
    np.testing.assert_allclose(ax["matrix"], result.torch.state["matrix"]["ax"].numpy(), rtol=1e-10)


SCHEDULE_CASES = [
    ("asgd", {"lr": 0.05, "t0": 10, "lambd": 0.01}),
    ("adafactor", {"lr": 0.05, "weight_decay": 0.1}),
    ("muon", {"lr": 0.02, "ns_steps": 0}),
]


def test_exponential_lr_schedule_matches_torch():
  """torch's ExponentialLR against the same per-step learning rates as a schedule (float64).

  ASGD reads the learning rate when it computes the *next* step size, Adafactor in its relative
  step and its decay, Muon in its step and decay. (Muon runs without Newton-Schulz iterations
  here, so no bfloat16 product can round differently; `test_muon_matches_torch` covers them.)
  """
  gamma = 0.97
  with precision(np.float64):
    runs, txs = [], []
    for name, kwargs in SCHEDULE_CASES:
      factory, torch_cls, single_tensor, problem = OPTIMIZERS[name]
      runs.append(TorchRun(torch_cls, {**kwargs, **single_tensor}, np.float64, problem, gamma=gamma))
      lr0 = kwargs["lr"]
      txs.append(factory(**{**_translate(kwargs), "learning_rate": lambda count, lr0=lr0: lr0 * gamma**count}))
    for (name, _), run, (ours, _) in zip(SCHEDULE_CASES, runs, run_jax(txs, runs, np.float64)):
      try:
        assert_same_trajectory(ours, run.history, np.float64)
      except AssertionError as error:
        raise AssertionError(name) from error


def _muon_allowance(result: CaseResult, key: str, index: int, ours_ns: np.ndarray) -> tuple[np.ndarray, int]:
  """Per step, the largest param difference torch's own bfloat16 rounding flips can explain, and their count.

  A step whose orthogonalised update differs (`ours_ns` vs torch's recorded output) moves the
  param by `lr * ratio * (O_ours - O_torch)` more or less; identical gradients keep later steps apart
  by no more than that (the decay only shrinks it).
  """
  theirs = np.stack([out for _, out in result.torch.newton_schulz[index::len(MUON_SHAPES)]])
  flipped = np.any(ours_ns != theirs, axis=(1, 2))
  lr = float(result.kwargs.get("lr", 1e-3))
  ratio = gcj.transforms.adjusted_lr_ratio(MUON_SHAPES[key], result.kwargs.get("adjust_lr_fn"))
  effect = np.where(flipped, lr * ratio * np.max(np.abs(ours_ns - theirs), axis=(1, 2)), 0.0)
  return np.cumsum(effect), int(flipped.sum())


@functools.lru_cache(maxsize=None)
def _batched_newton_schulz():
  return jax.jit(jax.vmap(gcj.transforms.newton_schulz, in_axes=(0, None, None, None)))


@pytest.mark.parametrize("dtype_id", list(DTYPES))
def test_muon_matches_torch(dtype_id):
  """Muon equals torch.optim.Muon for every case of torch's matrix, up to torch's bfloat16 rounding order.

  Our `newton_schulz` is run on the inputs torch's iteration received (recorded from torch's own
  function): it must return torch's bfloat16 output bit for bit on at least 98% of the calls. The
  trajectory must then match to the usual tolerance plus, from each step on, the effect of the
  flipped calls so far (see `_muon_allowance`).
  """
  dtype = DTYPES[dtype_id]
  newton_schulz = _batched_newton_schulz()
  total_flips = total_calls = 0
  for desc, result in results("muon", dtype_id).items():
    kwargs = result.kwargs
    coefficients = tuple(jnp.float32(c) for c in kwargs.get("ns_coefficients", (3.4445, -4.775, 2.0315)))
    tol = TOLERANCE[dtype]
    for index, key in enumerate(MUON_SHAPES):
      inputs = np.stack([grad for grad, _ in result.torch.newton_schulz[index::len(MUON_SHAPES)]])
      with precision(dtype):
        ours_ns = np.asarray(
            newton_schulz(jnp.asarray(inputs), coefficients, jnp.int32(kwargs.get("ns_steps", 5)), jnp.float32(1e-7))
        ).astype(np.float32)
      allowance, flips = _muon_allowance(result, key, index, ours_ns)
      total_flips, total_calls = total_flips + flips, total_calls + len(inputs)
      theirs, ours = result.torch.history[key], result.ours[key]
      assert ours.dtype == dtype
      excess = np.abs(ours - theirs) - (tol * np.abs(theirs) + tol * np.max(np.abs(theirs)) + allowance[:, None, None])
      assert np.all(excess <= 0), (desc, key, flips, float(np.max(excess)))
    assert_same_state("muon", result, dtype)
  assert total_flips <= 0.02 * total_calls, (total_flips, total_calls)


def _params(dtype=np.float32, shapes=None) -> dict[str, jax.Array]:
  start = PROBLEMS["default"]["start"]
  return {k: jnp.asarray(v.astype(dtype)) for k, v in start.items() if shapes is None or k in shapes}


def _grads(params: dict[str, jax.Array], steps: int, seed: int = 1) -> list[dict[str, jax.Array]]:
  rng = np.random.default_rng(seed)
  return [{k: jnp.asarray(rng.standard_normal(p.shape), p.dtype) for k, p in params.items()} for _ in range(steps)]


def _run(tx: optax.GradientTransformation, params: Any, grads: list[Any], state: Any = None) -> tuple[Any, Any, list]:
  """Applies `tx` to `grads` in a jitted step; returns (params, state, updates of every step)."""
  step = jax.jit(lambda params, state, g: tx.update(g, state, params))
  state = tx.init(params) if state is None else state
  all_updates = []
  for g in grads:
    updates, state = step(params, state, g)
    params = optax.apply_updates(params, updates)
    all_updates.append(updates)
  return params, state, all_updates


MATRICES = ("matrix",)

# name -> (factory exposing every numeric hyperparameter as a scalar argument, its values, the plain optimizer, leaves)
INJECTABLE: dict[str, tuple[Callable[..., Any], dict[str, Any], Callable[[], Any], Optional[tuple[str, ...]]]] = {
    "rprop": (
        lambda learning_rate, eta_minus, eta_plus, min_step_size, max_step_size: gcj.rprop(
            learning_rate, (eta_minus, eta_plus), (min_step_size, max_step_size)
        ),
        dict(learning_rate=0.02, eta_minus=0.4, eta_plus=1.3, min_step_size=1e-4, max_step_size=1.0),
        lambda: gcj.rprop(0.02, (0.4, 1.3), (1e-4, 1.0)),
        None,
    ),
    "asgd": (
        gcj.asgd,
        dict(learning_rate=0.05, lambd=0.01, alpha=0.6, t0=2.0, weight_decay=0.1),
        lambda: gcj.asgd(0.05, 0.01, 0.6, 2.0, 0.1),
        None,
    ),
    "adafactor": (
        lambda learning_rate, beta2_decay, eps1, eps2, d, weight_decay: gcj.adafactor(
            learning_rate, beta2_decay, (eps1, eps2), d, weight_decay
        ),
        dict(learning_rate=0.05, beta2_decay=-0.7, eps1=1e-6, eps2=1e-3, d=1.2, weight_decay=0.1),
        lambda: gcj.adafactor(0.05, -0.7, (1e-6, 1e-3), 1.2, 0.1),
        None,
    ),
    "muon": (
        lambda learning_rate, weight_decay, momentum, a, b, c, eps, ns_steps: gcj.muon(
            learning_rate, weight_decay, momentum, True, (a, b, c), eps, ns_steps
        ),
        dict(learning_rate=0.02, weight_decay=0.1, momentum=0.9, a=3.4, b=-4.7, c=2.0, eps=1e-7, ns_steps=4),
        lambda: gcj.muon(0.02, 0.1, 0.9, True, (3.4, -4.7, 2.0), 1e-7, 4),
        MATRICES,
    ),
}


class Stepper(NamedTuple):
  """An optimizer with its jitted step, compiled once and shared by the tests (`traces` counts its tracings)."""

  tx: optax.GradientTransformation
  step: Callable[..., Any]
  traces: list


@functools.lru_cache(maxsize=None)
def _stepper(name: str, injected: bool) -> Stepper:
  factory, values, plain, _ = INJECTABLE[name]
  tx = optax.inject_hyperparams(factory)(**values) if injected else plain()
  traces: list = []

  def step(params, state, g):
    traces.append(None)
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state, updates

  return Stepper(tx, jax.jit(step), traces)


def _run_stepper(stepper: Stepper, params: Any, grads: list[Any], state: Any = None) -> tuple[Any, list]:
  state = stepper.tx.init(params) if state is None else state
  all_updates = []
  for g in grads:
    params, state, updates = stepper.step(params, state, g)
    all_updates.append(updates)
  return params, all_updates


@pytest.mark.parametrize("name", list(INJECTABLE))
def test_inject_hyperparams_and_jit(name):
  """Every numeric hyperparameter (tuple entries and Muon's ns_steps included) can be a traced, injected
  array; the jitted step is traced once however many steps run (counters advance as data)."""
  leaves = INJECTABLE[name][3]
  params = _params(shapes=leaves)
  grads = _grads(params, 4)
  injected, plain = _stepper(name, True), _stepper(name, False)
  assert all(isinstance(v, jax.Array) for v in injected.tx.init(params).hyperparams.values())
  ours, _ = _run_stepper(injected, params, grads)
  reference, _ = _run_stepper(plain, params, grads)
  for key in ours:
    assert bool(jnp.all(jnp.isfinite(ours[key])))
    np.testing.assert_allclose(ours[key], reference[key], rtol=TOLERANCE[np.float32], err_msg=key)
  assert len(injected.traces) == len(plain.traces) == 1


@pytest.mark.parametrize("name", list(INJECTABLE))
def test_injected_learning_rate_takes_effect_as_in_torch(name):
  """A learning rate changed after `init`: Rprop ignores it (torch reads lr once); ASGD uses it from its
  second step (torch's eta is computed one step ahead); Adafactor and Muon at once."""
  params = _params(shapes=INJECTABLE[name][3])
  injected = _stepper(name, True)
  state = injected.tx.init(params)
  state.hyperparams["learning_rate"] = jnp.zeros_like(state.hyperparams["learning_rate"])
  _, updates = _run_stepper(injected, params, _grads(params, 3), state)
  moved = [any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(step)) for step in updates]
  assert moved == {"rprop": [True] * 3, "asgd": [True, False, False]}.get(name, [False] * 3)


@pytest.mark.parametrize("name", list(INJECTABLE))
def test_multisteps_averages_gradients(name):
  """`optax.MultiSteps(every_k_schedule=2)` steps once per two gradients, on their mean (float64)."""
  _, _, plain, leaves = INJECTABLE[name]
  with jax.enable_x64(True):
    params = _params(np.float64, leaves)
    grads = _grads(params, 4)
    # MultiSteps accumulates in float32 unless told otherwise, even under x64.
    ours, _, _ = _run(optax.MultiSteps(plain(), every_k_schedule=2, accumulator_dtype=jnp.float64), params, grads)
    means = [jax.tree.map(lambda a, b: (a + b) / 2, grads[i], grads[i + 1]) for i in (0, 2)]
    reference, _, _ = _run(plain(), params, means)
    for key in ours:
      np.testing.assert_allclose(ours[key], reference[key], rtol=TOLERANCE[np.float64], err_msg=key)


BAD_ARGUMENTS = [
    (gcj.rprop, dict(learning_rate=-1.0), ValueError, "learning_rate"),
    (gcj.rprop, dict(learning_rate=optax.constant_schedule(0.1)), TypeError, "initial step size"),
    (gcj.rprop, dict(etas=(1.5, 1.2)), ValueError, "eta_minus"),
    (gcj.rprop, dict(etas=(0.5, 0.9)), ValueError, "eta_plus"),
    (gcj.rprop, dict(etas=0.5), ValueError, "etas must be a pair"),
    (gcj.rprop, dict(step_sizes=(1.0, 0.1)), ValueError, "step_sizes"),
    (gcj.rprop, dict(step_sizes=(-1.0, 1.0)), ValueError, "minimum step size"),
    (gcj.asgd, dict(learning_rate=-1.0), ValueError, "learning_rate"),
    (gcj.asgd, dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (gcj.asgd, dict(lambd=-1.0), ValueError, "lambd"),
    (gcj.asgd, dict(alpha=float("nan")), ValueError, "alpha"),
    (gcj.asgd, dict(t0=-1.0), ValueError, "t0"),
    (gcj.adafactor, dict(learning_rate=-1.0), ValueError, "learning_rate"),
    (gcj.adafactor, dict(beta2_decay=0.5), ValueError, "beta2_decay"),
    (gcj.adafactor, dict(eps=(-1.0, 1e-3)), ValueError, "eps1"),
    (gcj.adafactor, dict(eps=(None, -1.0)), ValueError, "eps2"),
    (gcj.adafactor, dict(eps=1e-3), ValueError, "eps must be a pair"),
    (gcj.adafactor, dict(d=0.5), ValueError, "clipping threshold"),
    (gcj.adafactor, dict(weight_decay=-1.0), ValueError, "weight_decay"),
    (gcj.muon, dict(learning_rate=-1.0), ValueError, "learning_rate"),
    (gcj.muon, dict(weight_decay=-1.0), ValueError, "weight_decay"),
    (gcj.muon, dict(momentum=-0.1), ValueError, "momentum"),
    (gcj.muon, dict(eps=-1.0), ValueError, "eps"),
    (gcj.muon, dict(adjust_lr_fn="bogus"), ValueError, "adjust_lr_fn"),
    (gcj.muon, dict(ns_steps=100), ValueError, "ns_steps"),
    (gcj.muon, dict(ns_steps=2.5), TypeError, "ns_steps"),
    (gcj.muon, dict(ns_coefficients=(1.0, 2.0)), ValueError, "ns_coefficients"),
]


@pytest.mark.parametrize(
    "factory, kwargs, error, match",
    BAD_ARGUMENTS,
    ids=[f"{f.__name__}-{list(k)[0]}-{m}" for f, k, _, m in BAD_ARGUMENTS],
)
def test_bad_arguments_are_rejected_by_name(factory, kwargs, error, match):
  with pytest.raises(error, match=match):
    factory(**kwargs)


def test_muon_refuses_non_matrices_naming_the_leaf():
  params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones((3,))}}
  with pytest.raises(ValueError, match=r"\['dense'\]\['bias'\] has shape \(3,\)"):
    gcj.muon().init(params)
  with pytest.raises(ValueError, match=r"shape \(\)"):
    gcj.muon().init({"scale": jnp.ones(())})
  with pytest.raises(ValueError, match="2-D"):
    gcj.transforms.newton_schulz(jnp.ones((2, 3, 4)))


def test_muon_with_adamw_for_the_other_leaves():
  """The documented one-liner: Muon on the 2-D leaves, AdamW on the rest, as two separate optimizers would."""
  params = _params()
  grads = _grads(params, 3)
  tx = optax.partition(
      {"muon": gcj.muon(0.02), "adamw": gcj.adamw(3e-4)},
      lambda params: jax.tree.map(lambda p: "muon" if p.ndim == 2 else "adamw", params),
  )
  ours, _, _ = _run(tx, params, grads)
  matrices = {k: v for k, v in params.items() if v.ndim == 2}
  others = {k: v for k, v in params.items() if v.ndim != 2}
  muon_part, _, _ = _run(gcj.muon(0.02), matrices, [{k: g[k] for k in matrices} for g in grads])
  adamw_part, _, _ = _run(gcj.adamw(3e-4), others, [{k: g[k] for k in others} for g in grads])
  for key, value in {**muon_part, **adamw_part}.items():
    np.testing.assert_allclose(ours[key], value, rtol=TOLERANCE[np.float32], err_msg=key)


def test_newton_schulz_edge_cases_match_torch():
  """A zero matrix (the eps floor, no NaN), a row and a column vector, as torch's own function returns them."""
  from torch.optim._muon import _zeropower_via_newtonschulz

  rng = np.random.default_rng(3)
  for x in (np.zeros((3, 4), np.float32), rng.standard_normal((1, 6)).astype(np.float32),
            rng.standard_normal((6, 1)).astype(np.float32)):
    theirs = _zeropower_via_newtonschulz(torch.tensor(x), (3.4445, -4.775, 2.0315), 5, 1e-7).float().numpy()
    ours = np.asarray(gcj.transforms.newton_schulz(jnp.asarray(x)).astype(jnp.float32))
    np.testing.assert_array_equal(ours, theirs)


def test_adjusted_lr_ratio_is_torchs():
  from torch.optim._muon import _adjust_lr

  for shape in ((4, 3), (3, 4), (5, 5)):
    for fn in (None, "original", "match_rms_adamw"):
      assert gcj.transforms.adjusted_lr_ratio(shape, fn) == _adjust_lr(1.0, fn, torch.Size(shape))


@pytest.mark.parametrize("factory", [gcj.adafactor, gcj.muon])
def test_multi_tensor_refuses_leaf_shaped_optimizers(factory):
  params = {"w": jnp.ones((4, 3)), "v": jnp.ones((4, 3))}
  with pytest.raises(ValueError, match=f"multi_tensor cannot wrap gcj.{factory.__name__}"):
    gcj.multi_tensor(factory()).init(params)
  with pytest.raises(ValueError, match=f"gcj.{factory.__name__}"):
    gcj.multi_tensor(optax.inject_hyperparams(factory)()).init(params)


@pytest.mark.parametrize("factory", [lambda: gcj.rprop(0.02), lambda: gcj.asgd(0.05, t0=1.0, weight_decay=0.1)])
def test_multi_tensor_keeps_elementwise_optimizers(factory):
  """Rprop and ASGD act element by element with shared scalars: packed, their jitted updates are bitwise the same."""
  params = _params()
  grads = _grads(params, 5)
  ours, state, _ = _run(gcj.multi_tensor(factory(), max_leaf_size=8), params, grads)
  reference, _, _ = _run(factory(), params, grads)
  for key in reference:
    np.testing.assert_array_equal(ours[key], reference[key], err_msg=key)


def test_asgd_average_is_found_through_wrappers():
  """`asgd_average` reaches the ASGD state inside `inject_hyperparams`, `MultiSteps` and `partition`."""
  params = _params()
  wrapped = [
      gcj.asgd(),
      optax.inject_hyperparams(gcj.asgd)(0.05, t0=1.0),
      optax.MultiSteps(gcj.asgd(), every_k_schedule=2),
      optax.partition({"a": gcj.asgd(), "b": gcj.sgd()}, lambda p: jax.tree.map(lambda x: "a" if x.ndim else "b", p)),
  ]
  for tx in wrapped:
    average = gcj.transforms.asgd_average(tx.init(params))
    assert jax.tree.structure(average, is_leaf=lambda x: isinstance(x, optax.MaskedNode)).num_leaves == len(params)
  with pytest.raises(ValueError, match="found 0"):
    gcj.transforms.asgd_average(gcj.adam().init(params))
  with pytest.raises(ValueError, match="found 2"):
    two = optax.partition({"a": gcj.asgd(), "b": gcj.asgd()}, {k: "a" if k == "matrix" else "b" for k in params})
    gcj.transforms.asgd_average(two.init(params))


def test_adafactor_state_memory_next_to_adam():
  """A (1024, 1024) matrix and a (1024,) vector in float32: Adafactor keeps 3 x 1024 numbers, Adam 2 x 1049600."""
  params = {"w": jax.ShapeDtypeStruct((1024, 1024), jnp.float32), "b": jax.ShapeDtypeStruct((1024,), jnp.float32)}
  adafactor = gcj.state_memory(jax.eval_shape(gcj.adafactor().init, params), params)
  adam = gcj.state_memory(jax.eval_shape(gcj.adam().init, params), params)
  assert adafactor.param_bytes == adam.param_bytes == 4 * (1024 * 1024 + 1024)
  assert adafactor.state_bytes == 4 * (1024 + 1024 + 1024) + 4  # row, column, vector, int32 step
  assert adam.state_bytes == 2 * 4 * (1024 * 1024 + 1024) + 4
  assert adafactor.multiple < 0.003 and adam.multiple > 2


def test_registry_and_namespace():
  for name in ("rprop", "asgd", "adafactor", "muon"):
    assert name in gcj.optimizers.names()
    assert gcj.optimizers.get(name) is getattr(gcj, name) is getattr(gcj.optimizers, name)
    assert getattr(gcj, name).__doc__.count("Args:") == 1
