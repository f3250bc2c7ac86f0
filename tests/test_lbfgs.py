"""`gcj.lbfgs` against live `torch.optim.LBFGS` (PyTorch 2.13, the reference) stepping with a closure.

The combinations are torch's own (`optim_inputs_func_lbfgs` in
`torch/testing/_internal/common_optimizers.py`: default, non-default lr, Tensor lr,
tolerance_grad, strong_wolfe), plus a few of ours that reach what torch's five do not: a
history shorter than the iterations (the circular buffer wraps), an explicit `max_eval`, and
`max_iter=1` (where `max_eval` is 1: no evaluation after the step, a line search cut after its
first trial). They run on three objectives written the same way in torch and JAX: the 2-D
Rosenbrock function (start (-1.2, 1)), a 10-D one, and an L2-regularised logistic regression
on generated data with two leaves (a weight vector and a 0-d bias, flattened as torch does).
One `update` is one `step(closure)`; each side evaluates its own objective.

Tolerance: float64 to 1e-10 relative (to the largest magnitude of torch's params), float32
to 1e-5; counters (`func_evals`, `n_iter`) exactly. Why some runs are compared update by update:
L-BFGS branches on comparisons (tolerances, `y.s > 1e-10`, the Wolfe conditions), and its
fixed-step iteration on Rosenbrock amplifies rounding. The two frameworks round some
operations differently (XLA fuses `a*b + c` into one rounding where torch rounds twice, MKL's
`dot` sums in another order than XLA), so values differ in the last bit from the first
iteration on, and torch's own trajectory moves as much when its start moves by one ulp:
measured (one run each, 40 updates, fixed step, 2-D from (-1.5, 2)), torch against torch started
one ulp away / gcj against torch: lr 1, 2-D: 6.1e-5 / 8.5e-5; lr 0.01, 2-D: 5.1e-3 / 0.17;
history 3, 10-D: 9.4e-3 / 4.5e-3 (and the counters part). No implementation that rounds
differently can follow such a run to 1e-10. So:

- `test_trajectory_matches_torch`: free runs of `STEPS` updates for the runs torch itself
  reproduces (logistic regression, every combination; Rosenbrock with the strong-Wolfe line
  search or lr 0.001): params, counters, gradient and value after every update. Measured (one
  run): 5.9e-11 (10-D Rosenbrock, strong Wolfe), 4.2e-11 (logistic regression, lr 0.01), the
  others at most 4.4e-13.
- `test_each_update_matches_torch_step`: the fixed-step Rosenbrock runs (and the rest of torch's
  matrix on Rosenbrock, the history-3 runs): before every update gcj's params and state are set
  to torch's, so each update is compared with torch's step from the same point, the whole state
  included. Measured: params at most 3.9e-12 (2-D, lr 0.01), state at most 6.6e-12.
"""

from __future__ import annotations

import collections
import copy
import functools
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from _torch_reference import precision

import gradcore_jax as gcj
from gradcore_jax.optimizers import LBFGSState

common_optimizers = pytest.importorskip("torch.testing._internal.common_optimizers", reason="needs expecttest")

torch.set_num_threads(1)

STEPS = 20
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}

# torch's matrix for LBFGS, by description.
MATRIX = {entry.desc: dict(entry.kwargs) for entry in common_optimizers.optim_inputs_func_lbfgs(device="cpu")}
OURS = {
  "history 3, max_iter 5": {"history_size": 3, "max_iter": 5},
  "strong_wolfe, history 3, max_iter 5": {"line_search_fn": "strong_wolfe", "history_size": 3, "max_iter": 5},
  "strong_wolfe, max_iter 7, max_eval 9, history 3": {
    "line_search_fn": "strong_wolfe",
    "max_iter": 7,
    "max_eval": 9,
    "history_size": 3,
  },
  "max_iter 1": {"max_iter": 1},
  "strong_wolfe, max_iter 1": {"line_search_fn": "strong_wolfe", "max_iter": 1},
  "tolerance_change 1e-5, lr 0.5": {"tolerance_change": 1e-5, "lr": 0.5},
}
COMBINATIONS = {**MATRIX, **OURS}


# ---- the objectives, written identically for both frameworks ---------------------------------------------------------


def rosenbrock(x, xp):
  return xp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


_rng = np.random.default_rng(0)
FEATURES = _rng.standard_normal((200, 5))
LABELS = (FEATURES @ _rng.standard_normal(5) + 0.5 * _rng.standard_normal(200) > 0).astype(np.float64)


def logistic(w, b, xp, dtype):
  """Mean logistic loss plus 0.005 |w|^2; softplus written out (the libraries' own differ in the last bit)."""
  z = xp.asarray(FEATURES.astype(dtype)) @ w + b
  y = xp.asarray(LABELS.astype(dtype))
  softplus = xp.maximum(z, 0 * z) + xp.log1p(xp.exp(-xp.abs(z)))
  return xp.mean(softplus - y * z) + 0.005 * xp.sum(w * w)


class Problem(NamedTuple):
  start: tuple[np.ndarray, ...]  # float64 leaves, in torch's parameter order
  torch_loss: Any  # (list of torch params, dtype) -> loss
  jax_loss: Any  # (tuple of leaves, dtype) -> loss


PROBLEMS = {
  "rosenbrock-2d": Problem(
    (np.array([-1.2, 1.0]),), lambda p, dt: rosenbrock(p[0], torch), lambda p, dt: rosenbrock(p[0], jnp)
  ),
  "rosenbrock-10d": Problem(
    (np.random.default_rng(1).uniform(-2.0, 2.0, 10),),
    lambda p, dt: rosenbrock(p[0], torch),
    lambda p, dt: rosenbrock(p[0], jnp),
  ),
  # Started away from w = 0, where max(z, 0) and |z| have kinks whose derivative torch and JAX define differently.
  "logistic": Problem(
    (np.random.default_rng(2).standard_normal(5), np.asarray(0.3)),
    lambda p, dt: logistic(p[0], p[1], _TorchNamespace, dt),
    lambda p, dt: logistic(p[0], p[1], jnp, dt),
  ),
}


class _TorchNamespace:
  """The few array functions `logistic` uses, for torch tensors."""

  asarray = staticmethod(torch.as_tensor)
  maximum = staticmethod(torch.maximum)
  log1p = staticmethod(torch.log1p)
  exp = staticmethod(torch.exp)
  abs = staticmethod(torch.abs)
  mean = staticmethod(torch.mean)
  sum = staticmethod(torch.sum)


# ---- running both sides ----------------------------------------------------------------------------------------------


def _ours_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
  """torch's LBFGS kwargs -> gcj.lbfgs kwargs (a Tensor lr becomes a jax scalar of its value)."""
  ours = {("learning_rate" if k == "lr" else k): v for k, v in kwargs.items()}
  if isinstance(ours.get("learning_rate"), torch.Tensor):
    ours["learning_rate"] = jnp.asarray(ours["learning_rate"].numpy())
  return ours


TRACES: collections.Counter = collections.Counter()  # traces of `_step_fn`'s steps, per program


@functools.cache
def _step_fn(problem: str, dtype_name: str, line_search_fn: str | None):
  """One jitted `update` per objective and line search (and history size, the state's shape).

  The numeric hyperparameters are traced arguments, so torch's combinations share the compilation.
  """
  dtype = np.dtype(dtype_name).type
  loss = functools.partial(_jax_loss, problem, dtype)

  @jax.jit
  def step(params, state, hyperparams):
    TRACES[problem, dtype_name, line_search_fn, state.old_dirs.shape[0]] += 1
    tx = gcj.lbfgs(line_search_fn=line_search_fn, **hyperparams)
    value, grad = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grad, state, params, value=value, value_fn=loss)
    return optax.apply_updates(params, updates), state

  return step


def _jax_loss(problem: str, dtype, params):
  return PROBLEMS[problem].jax_loss(params, dtype)


@functools.cache
def _jitted_loss(problem: str):
  return jax.jit(functools.partial(_jax_loss, problem, np.float64))


def _hyperparams(group: dict[str, Any], dtype) -> dict[str, Any]:
  """torch's group values of the numeric arguments, as traced arguments of `_step_fn`'s step.

  `max_eval` is torch's resolved value (`max_iter * 5 // 4` when not given); gcj's own default
  is compared with torch in `test_schedule_under_inject_hyperparams_matches_torch_lr_changes`.
  """
  lr = group["lr"]
  return {
    "learning_rate": jnp.asarray(lr.item() if isinstance(lr, torch.Tensor) else lr, dtype),
    "max_iter": jnp.asarray(group["max_iter"]),
    "max_eval": jnp.asarray(group["max_eval"]),
    "tolerance_grad": jnp.asarray(group["tolerance_grad"], dtype),
    "tolerance_change": jnp.asarray(group["tolerance_change"], dtype),
  }


class TorchRun:
  """torch.optim.LBFGS on one problem, stepping with a closure."""

  def __init__(self, problem: str, kwargs: dict[str, Any], dtype):
    self.problem = PROBLEMS[problem]
    self.dtype = dtype
    self.params = [torch.tensor(leaf.astype(dtype), requires_grad=True) for leaf in self.problem.start]
    self.optimizer = torch.optim.LBFGS(self.params, **kwargs)
    self.scales = {"loss": 0.0, "grad": 0.0, "param": 0.0}

  def closure(self):
    self.optimizer.zero_grad()
    loss = self.problem.torch_loss(self.params, self.dtype)
    loss.backward()
    # The largest loss, gradient entry and param seen: the scales the state's quantities are compared at.
    self.scales["loss"] = max(self.scales["loss"], abs(loss.item()))
    self.scales["grad"] = max(self.scales["grad"], max(float(p.grad.abs().max()) for p in self.params))
    self.scales["param"] = max(self.scales["param"], float(np.max(np.abs(self.flat_params()))))
    return loss

  def step(self) -> None:
    self.optimizer.step(self.closure)

  def flat_params(self) -> np.ndarray:
    return np.concatenate([p.detach().numpy().ravel() for p in self.params])

  @property
  def state(self) -> dict[str, Any]:
    return self.optimizer.state[self.params[0]]


class Recorded(NamedTuple):
  """A float64 torch run recorded after every step: the params, a copy of its state, the scales seen so far."""

  params: list[tuple[np.ndarray, ...]]
  states: list[dict[str, Any]]
  scales: list[dict[str, float]]
  group: dict[str, Any]


@functools.cache
def torch_run(problem: str, desc: str) -> Recorded:
  """`STEPS` torch steps of one combination, run once for the tests that compare with it."""
  with precision(np.float64):
    run = TorchRun(problem, COMBINATIONS[desc], np.float64)
    recorded = Recorded([], [], [], dict(run.optimizer.param_groups[0]))
    for _ in range(STEPS):
      run.step()
      recorded.params.append(tuple(p.detach().numpy().copy() for p in run.params))
      recorded.states.append(copy.deepcopy(run.state))
      recorded.scales.append(dict(run.scales))
  return recorded


def _number(value: Any) -> float:
  return float(value.item() if isinstance(value, torch.Tensor) else value)


def state_from_torch(torch_state: dict[str, Any], like: LBFGSState, count: int) -> LBFGSState:
  """torch's LBFGS state as an `LBFGSState` shaped like `like` (the pairs in rows 0.., oldest first)."""
  dtype = like.d.dtype
  m, n = like.old_dirs.shape
  dirs, stps = np.zeros((m, n), dtype), np.zeros((m, n), dtype)
  ro, al = np.zeros(m, dtype), np.zeros(m, dtype)
  pairs = len(torch_state.get("old_dirs") or [])
  for i in range(pairs):
    dirs[i] = torch_state["old_dirs"][i].numpy()
    stps[i] = torch_state["old_stps"][i].numpy()
    ro[i] = _number(torch_state["ro"][i])
  for i, a in enumerate(torch_state.get("al") or []):
    al[i] = 0.0 if a is None else _number(a)

  def vector(key):
    value = torch_state.get(key)
    return jnp.zeros(n, dtype) if value is None else jnp.asarray(value.numpy())

  def scalar(key, default):
    value = torch_state.get(key)
    return jnp.asarray(default if value is None else _number(value), dtype)

  return like._replace(
    count=jnp.asarray(count, jnp.int32),
    func_evals=jnp.asarray(torch_state.get("func_evals", 0), jnp.int32),
    n_iter=jnp.asarray(torch_state.get("n_iter", 0), jnp.int32),
    d=vector("d"),
    t=scalar("t", 0.0),
    old_dirs=jnp.asarray(dirs),
    old_stps=jnp.asarray(stps),
    ro=jnp.asarray(ro),
    al=jnp.asarray(al),
    history_start=jnp.asarray(0, jnp.int32),
    history_len=jnp.asarray(pairs, jnp.int32),
    h_diag=scalar("H_diag", 1.0),
    prev_flat_grad=vector("prev_flat_grad"),
    prev_loss=scalar("prev_loss", 0.0),
  )


def _close(name: str, ours: Any, theirs: Any, tol: float, scale: float | None = None) -> float:
  """Asserts `|ours - theirs| <= tol * scale` (default scale: `theirs`' largest magnitude); returns the relative gap."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, name
  if scale is None:
    scale = float(np.max(np.abs(theirs), initial=0.0))
  gap = float(np.max(np.abs(ours - theirs), initial=0.0)) / max(scale, np.finfo(np.float64).tiny)
  assert gap <= tol, f"{name}: {gap:.3g} relative (tolerance {tol:g})"
  return gap


def assert_state_matches(
  ours: LBFGSState, theirs: dict[str, Any], scales: dict[str, float], tol: float, *, history: bool = True
) -> None:
  """torch's LBFGS state, each entry at the scale of what it measures; the pairs read from the buffer oldest first.

  Steps (`old_stps`, `t*d`) are compared relative to the largest param, gradient differences
  (`old_dirs`) and gradients to the largest gradient entry, the value to the largest value, as
  the params are: relative to its own size a gradient difference near the optimum is all
  rounding. `ro`, `H_diag` and `al` are ratios of such differences; the direction built from
  them is compared through `t*d`. `history=False` leaves out the single steps (`old_stps`,
  `old_dirs`, `t*d`): over a free run they differ from torch's more than the params do
  (measured up to 7e-9 against 6e-11), because the iteration corrects a step's error in the next ones.
  """
  assert (int(ours.func_evals), int(ours.n_iter)) == (theirs["func_evals"], theirs["n_iter"])
  if "d" not in theirs:  # every update so far stopped at once on a small gradient
    return
  pairs = len(theirs["old_dirs"])
  assert int(ours.history_len) == pairs
  _close("prev_flat_grad", ours.prev_flat_grad, theirs["prev_flat_grad"].numpy(), tol, scales["grad"])
  _close("prev_loss", ours.prev_loss, _number(theirs["prev_loss"]), tol, scales["loss"])
  if not history:
    return
  rows = (int(ours.history_start) + np.arange(pairs)) % ours.old_dirs.shape[0]
  if pairs:
    y = np.stack([y.numpy() for y in theirs["old_dirs"]])
    s = np.stack([s.numpy() for s in theirs["old_stps"]])
    _close("old_dirs", np.asarray(ours.old_dirs)[rows], y, tol, scales["grad"])
    _close("old_stps", np.asarray(ours.old_stps)[rows], s, tol, scales["param"])
  _close("t*d", ours.t * ours.d, _number(theirs["t"]) * theirs["d"].numpy(), tol, scales["param"])


def _start(problem: str, kwargs: dict[str, Any], dtype) -> tuple[tuple, LBFGSState]:
  params = tuple(jnp.asarray(leaf.astype(dtype)) for leaf in PROBLEMS[problem].start)
  return params, gcj.lbfgs(**_ours_kwargs(kwargs)).init(params)


def _flat(params) -> np.ndarray:
  return np.concatenate([np.asarray(p).ravel() for p in params])


# ---- parity tests ----------------------------------------------------------------------------------------------------

FREE_RUNS = [("logistic", desc) for desc in COMBINATIONS] + [
  (problem, desc)
  for problem in ("rosenbrock-2d", "rosenbrock-10d")
  for desc in ("strong_wolfe", "Tensor lr", "strong_wolfe, max_iter 1")
]
STEPWISE_RUNS = [
  *[("rosenbrock-2d", desc) for desc in (*MATRIX, "max_iter 1", "tolerance_change 1e-5, lr 0.5")],
  *[("rosenbrock-10d", desc) for desc in ("default", "non-default lr", "Tensor lr", "strong_wolfe")],
  ("logistic", "history 3, max_iter 5"),  # the buffer wraps inside each update
  ("logistic", "strong_wolfe, history 3, max_iter 5"),
  ("logistic", "strong_wolfe, max_iter 7, max_eval 9, history 3"),
]


@pytest.mark.parametrize("problem,desc", FREE_RUNS, ids=[f"{p}: {d}" for p, d in FREE_RUNS])
def test_trajectory_matches_torch(problem: str, desc: str):
  """`STEPS` consecutive updates against as many torch steps: params, counters and state after each one."""
  dtype = np.float64
  kwargs = COMBINATIONS[desc]
  reference = torch_run(problem, desc)
  with precision(dtype):
    params, state = _start(problem, kwargs, dtype)
    step = _step_fn(problem, "float64", kwargs.get("line_search_fn"))
    hyperparams = _hyperparams(reference.group, dtype)
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    for t in range(STEPS):
      n_iter = int(state.n_iter)
      params, state = step(params, state, hyperparams)
      _close(f"params after update {t + 1}", _flat(params), _flat(reference.params[t]), TOLERANCE[dtype])
      assert_state_matches(state, reference.states[t], reference.scales[t], TOLERANCE[dtype], history=False)
      # The state keeps its shapes and dtypes (the history buffer does not grow). The value kept
      # for `optax.value_and_grad_from_state` is the objective at the new params, or `inf` after
      # an update that ended with a fixed step torch does not evaluate (its next closure call does).
      assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == shapes
      if np.isinf(state.value):
        assert kwargs.get("line_search_fn") is None
        assert int(state.n_iter) - n_iter == reference.group["max_iter"]
      else:
        _close("value", state.value, _jitted_loss(problem)(params), 1e-13)
  # One compilation for all the updates (and for every combination sharing the objective, line search and history size).
  assert TRACES[problem, "float64", kwargs.get("line_search_fn"), state.old_dirs.shape[0]] == 1


@pytest.mark.parametrize("problem,desc", STEPWISE_RUNS, ids=[f"{p}: {d}" for p, d in STEPWISE_RUNS])
def test_each_update_matches_torch_step(problem: str, desc: str):
  """Each update, from torch's params and state, equals torch's step (the runs torch cannot reproduce itself)."""
  dtype = np.float64
  kwargs = COMBINATIONS[desc]
  reference = torch_run(problem, desc)
  with precision(dtype):
    params, state = _start(problem, kwargs, dtype)
    step = _step_fn(problem, "float64", kwargs.get("line_search_fn"))
    hyperparams = _hyperparams(reference.group, dtype)
    for t in range(STEPS):
      if t:
        params = tuple(jnp.asarray(leaf) for leaf in reference.params[t - 1])
        state = state_from_torch(reference.states[t - 1], state, t)
      params, state = step(params, state, hyperparams)
      _close(f"params after update {t + 1}", _flat(params), _flat(reference.params[t]), TOLERANCE[dtype])
      assert_state_matches(state, reference.states[t], reference.scales[t], TOLERANCE[dtype])


def test_float32_trajectory_is_close_to_torch():
  """float32 logistic regression with torch's strong_wolfe entry, 20 updates, to 1e-5, with `value_and_grad_from_state`.

  Only the params are compared: the default tolerances (1e-7, 1e-9) lie below float32's
  resolution, so when to stop near the optimum depends on last-bit rounding (the counters can
  part), and torch compares values as Python doubles. Measured: 1.0e-7 (3.8e-8 for the default,
  fixed-step entry).

  `value_and_grad_from_state` returns the value and gradient the update left in the state when
  it evaluated them at the new params (a strong-Wolfe update always does, as torch's line search
  ends there) instead of evaluating the objective again, and evaluates when the state holds `inf`.
  """
  dtype = np.float32
  kwargs = MATRIX["strong_wolfe"]
  loss = functools.partial(_jax_loss, "logistic", dtype)
  value_and_grad = optax.value_and_grad_from_state(loss)
  exact = jax.jit(jax.value_and_grad(loss))
  tx = gcj.lbfgs(**_ours_kwargs(kwargs))

  @jax.jit
  def step(params, state):
    value, grad = value_and_grad(params, state=state)
    updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(params, updates), state

  with precision(dtype):
    reference = TorchRun("logistic", kwargs, dtype)
    params, state = _start("logistic", kwargs, dtype)
    assert np.isinf(state.value)
    for t in range(20):
      reference.step()
      params, state = step(params, state)
      assert all(p.dtype == jnp.float32 for p in params)
      _close(f"params after update {t + 1}", _flat(params), reference.flat_params(), TOLERANCE[dtype])
      value, grad = exact(params)  # a strong-Wolfe update ends where torch's line search evaluated last
      np.testing.assert_allclose(state.value, value, rtol=1e-6)
      for ours, expected in zip(state.grad, grad, strict=True):
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-7)


def test_schedule_under_inject_hyperparams_matches_torch_lr_changes():
  """A schedule injected with `optax.inject_hyperparams`, against torch's group lr set before each step."""
  dtype = np.float64
  schedule = optax.exponential_decay(0.8, transition_steps=1, decay_rate=0.9)
  with precision(dtype):
    reference = TorchRun("logistic", {"max_iter": 4, "history_size": 5}, dtype)
    tx = optax.inject_hyperparams(gcj.lbfgs)(learning_rate=schedule, max_iter=4, history_size=5)
    direct = gcj.lbfgs(learning_rate=schedule, max_iter=4, history_size=5)
    params = tuple(jnp.asarray(leaf) for leaf in PROBLEMS["logistic"].start)
    loss = functools.partial(_jax_loss, "logistic", dtype)

    @jax.jit
    def step(params, state, direct_params, direct_state):
      value, grad = jax.value_and_grad(loss)(params)
      updates, state = tx.update(grad, state, params, value=value, value_fn=loss)
      value, grad = jax.value_and_grad(loss)(direct_params)
      direct_updates, direct_state = direct.update(grad, direct_state, direct_params, value=value, value_fn=loss)
      return (
        optax.apply_updates(params, updates),
        state,
        optax.apply_updates(direct_params, direct_updates),
        direct_state,
      )

    state, direct_params, direct_state = tx.init(params), params, direct.init(params)
    for t in range(10):
      # The value the schedule gives the int32 step count (as the optimizer calls it), not a Python int.
      reference.optimizer.param_groups[0]["lr"] = float(schedule(jnp.asarray(t, jnp.int32)))
      reference.step()
      params, state, direct_params, direct_state = step(params, state, direct_params, direct_state)
      _close(f"params after update {t + 1}", _flat(params), reference.flat_params(), TOLERANCE[dtype])
      np.testing.assert_array_equal(_flat(direct_params), _flat(params))  # the schedule passed directly: the same


# ---- compilation, state shapes, the Optax convention -----------------------------------------------------------------


def test_state_memory_is_fixed():
  """Two `(history_size, n)` buffers and three `n`-vectors, from `init` on (it takes shapes too)."""
  tx = gcj.lbfgs(history_size=3)
  params = {"w": jax.ShapeDtypeStruct((1000,), jnp.float32)}  # the few scalars are 1.5 % here
  memory = gcj.state_memory(jax.eval_shape(tx.init, params), params)
  assert memory.multiple == pytest.approx(2 * 3 + 3, abs=0.02)


def test_history_buffer_wraps_around():
  """The fixed-step history-3 run fills the buffer in its first update and then overwrites the oldest pair."""
  reference = torch_run("logistic", "history 3, max_iter 5")
  assert len(reference.states[-1]["old_dirs"]) == 3
  with precision(np.float64):
    params, state = _start("logistic", COMBINATIONS["history 3, max_iter 5"], np.float64)
    step = _step_fn("logistic", "float64", None)
    starts = set()
    for _ in range(4):
      params, state = step(params, state, _hyperparams(reference.group, np.float64))
      starts.add(int(state.history_start))
  assert int(state.history_len) == 3 and len(starts) > 1


# ---- bad input -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kwargs,error,match",
  [
    ({"learning_rate": -1.0}, ValueError, "learning_rate"),
    ({"learning_rate": float("nan")}, ValueError, "learning_rate"),
    ({"max_iter": 0}, ValueError, "max_iter"),
    ({"max_iter": 2.5}, TypeError, "max_iter"),
    ({"max_iter": True}, TypeError, "max_iter"),
    ({"max_eval": 0}, ValueError, "max_eval"),
    ({"max_eval": 3.0}, TypeError, "max_eval"),
    ({"tolerance_grad": -1e-7}, ValueError, "tolerance_grad"),
    ({"tolerance_grad": None}, TypeError, "tolerance_grad"),
    ({"tolerance_change": float("nan")}, ValueError, "tolerance_change"),
    ({"tolerance_change": "1e-9"}, TypeError, "tolerance_change"),
    ({"history_size": 0}, ValueError, "history_size"),
    ({"history_size": jnp.ones((2,), jnp.int32)}, ValueError, "history_size"),
    ({"line_search_fn": "wolfe"}, ValueError, "line_search_fn"),
    ({"line_search_fn": 1}, ValueError, "line_search_fn"),
  ],
)
def test_bad_arguments_are_rejected_by_name(kwargs, error, match):
  with pytest.raises(error, match=match):
    gcj.lbfgs(**kwargs)


def test_bad_update_calls_are_rejected():
  tx = gcj.lbfgs()
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  loss = lambda p: jnp.sum(p["w"] ** 2)  # noqa: E731
  grads = jax.grad(loss)(params)
  with pytest.raises(TypeError, match="value_fn"):
    tx.update(grads, state, params, value=loss(params))
  with pytest.raises(ValueError, match="parameters"):
    tx.update(grads, state, None, value_fn=loss)
  with pytest.raises(ValueError, match=r"\['v'\]"):
    tx.update({"v": jnp.ones(3)}, state, params, value_fn=loss)
  with pytest.raises(TypeError, match="one dtype"):
    tx.init({"a": jnp.ones(2, jnp.float32), "b": jnp.ones(2, jnp.bfloat16)})
  with pytest.raises(TypeError, match="dtype int32"):
    tx.init({"a": jnp.ones(2, jnp.int32)})
  with pytest.raises(ValueError, match="built for 3"):
    tx.update({"w": jnp.ones(4)}, state, {"w": jnp.ones(4)}, value_fn=lambda p: jnp.sum(p["w"]))


def test_torch_state_dict_bridge_refuses_lbfgs_clearly():
  tx = gcj.lbfgs()
  params = {"w": jnp.ones(3)}
  with pytest.raises(TypeError, match="L-BFGS state .* not supported"):
    gcj.to_torch_state_dict(tx.init(params), tx, params, as_numpy=True)
  weight = torch.nn.Parameter(torch.ones(3))
  optimizer = torch.optim.LBFGS([weight])

  def closure():
    optimizer.zero_grad()
    loss = (weight**2).sum()
    loss.backward()
    return loss

  optimizer.step(closure)
  with pytest.raises(TypeError, match="L-BFGS state .* not supported"):
    gcj.from_torch_state_dict(optimizer.state_dict(), tx, params)
