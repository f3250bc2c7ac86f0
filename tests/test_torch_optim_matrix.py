"""Parity with live `torch.optim` (the reference) over PyTorch's own optimizer test matrix.

The hyperparameter combinations come from torch itself: `optim_inputs_func_<name>` in
`torch/testing/_internal/common_optimizers.py`, crossed with the implementation flags torch's
CPU tests cross them with (`differentiable`, and `fused` where torch has a CPU fused kernel),
exactly as torch's `_get_optim_inputs_including_global_cliquey_kwargs` builds them, plus the
combinations torch lists only for accelerators (CUDA/XPU and MPS). Every combination
gradcore_jax can express runs; the rest are listed, with the reason, in `EXPECTED_SKIPS`, and
`test_skipped_combinations_are_exactly_the_documented_ones` fails if torch adds one.

Both sides see the SAME gradients. Torch runs first, its for-loop implementation reading
a deterministic gradient computed in NumPy from its current params (a quadratic with
random curvature, a mild quartic and fresh noise every step, so gradients never vanish);
the gradient sequence is recorded and replayed to torch's other implementations
(`differentiable`, `fused`) and, under `jit` in one `lax.scan`, to gradcore_jax. Every param
is compared after every one of `STEPS` steps: float64 to 1e-10 and float32 to 1e-5,
relative to the leaf's largest magnitude. (Each framework's own `tanh`/`exp` differ in the
last bit, and sign-like optimizers amplify that; shared gradients isolate the optimizer.)

float64 runs agree to 1e-14 everywhere. In float32 the largest differences are torch's own
rounding, not gradcore_jax's: its `differentiable` Adam/AdamW path computes the bias
corrections from a float32 `step` tensor (up to 9.0e-6 here, 8e-6 from exact arithmetic),
and its decoupled weight decay multiplies by `1 - lr*wd` rounded to float32 (AdamW,
NAdam/RAdam `decoupled_weight_decay`: up to 2.8e-6), while gradcore_jax's Adam-family
trajectories stay within 1e-6 of float64 arithmetic on the same gradients.
"""

from __future__ import annotations

import functools
import inspect
import os
import pathlib
import pickle
from collections.abc import Callable
from typing import Any, NamedTuple

import filelock
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
SHAPES = {"matrix": (4, 3), "vector": (5,), "scalar": ()}
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}
DTYPES = {"f64": np.float64, "f32": np.float32}
IMPLEMENTATION_FLAGS = ("foreach", "fused", "differentiable")

# gradcore_jax optimizer -> its torch counterpart.
OPTIMIZERS: dict[str, tuple[Callable[..., Any], type]] = {
    "sgd": (gcj.sgd, torch.optim.SGD),
    "rmsprop": (gcj.rmsprop, torch.optim.RMSprop),
    "adam": (gcj.adam, torch.optim.Adam),
    "adamw": (gcj.adamw, torch.optim.AdamW),
    "adagrad": (gcj.adagrad, torch.optim.Adagrad),
    "adadelta": (gcj.adadelta, torch.optim.Adadelta),
    "adamax": (gcj.adamax, torch.optim.Adamax),
    "nadam": (gcj.nadam, torch.optim.NAdam),
    "radam": (gcj.radam, torch.optim.RAdam),
}

CAPTURABLE = (
    "capturable=True (listed by torch for CUDA/XPU only) keeps the step counter on the accelerator for "
    "CUDA-graph capture; torch accepts it only for accelerator tensors, so it cannot run here, and it is an "
    "execution option with no gradcore_jax counterpart (a jitted gradcore_jax step is capturable by construction)"
)

# (optimizer, torch desc) -> why the combination does not run. Everything else in torch's matrix runs.
EXPECTED_SKIPS: list[tuple[str, str, str]] = [
    ("rmsprop", "capturable", CAPTURABLE),
    ("rmsprop", "capturable, maximize", CAPTURABLE),
    ("rmsprop", "Tensor lr with capturable", CAPTURABLE),
    ("adam", "capturable", CAPTURABLE),
    ("adam", "capturable, amsgrad", CAPTURABLE),
    ("adam", "Tensor lr with capturable and amsgrad", CAPTURABLE),
    ("adam", "Tensor lr, Tensor betas, with capturable and amsgrad", CAPTURABLE),
    ("adam", "Tensor lr, Tensor betas, with capturable", CAPTURABLE),
    ("adamw", "capturable", CAPTURABLE),
    ("adamw", "capturable, amsgrad", CAPTURABLE),
    ("adamw", "Tensor lr with capturable and amsgrad", CAPTURABLE),
    ("adamw", "Tensor lr, Tensor betas, with capturable and amsgrad", CAPTURABLE),
    ("adamw", "Tensor lr, Tensor betas, with capturable", CAPTURABLE),
    ("adadelta", "capturable", CAPTURABLE),
    ("adadelta", "capturable with weight decay", CAPTURABLE),
    ("adadelta", "Tensor lr with capturable", CAPTURABLE),
    ("adamax", "capturable", CAPTURABLE),
    ("adamax", "capturable, maximize, weight_decay", CAPTURABLE),
    ("adamax", "capturable, maximize", CAPTURABLE),
    ("adamax", "capturable, weight_decay", CAPTURABLE),
    ("adamax", "capturable, weight_decay, tensor LR", CAPTURABLE),
    ("nadam", "capturable", CAPTURABLE),
    ("nadam", "weight_decay, capturable", CAPTURABLE),
    ("nadam", "decoupled_weight_decay, capturable", CAPTURABLE),
    ("nadam", "decoupled_weight_decay, capturable", CAPTURABLE),
    ("radam", "capturable", CAPTURABLE),
    ("radam", "capturable, weight_decay", CAPTURABLE),
    ("radam", "capturable, weight_decay, decoupled_weight_decay", CAPTURABLE),
    ("radam", "capturable, weight_decay, decoupled_weight_decay, tensor LR", CAPTURABLE),
]

torch.set_num_threads(1)


class Combination(NamedTuple):
  """One entry of torch's matrix: `kwargs` are torch's, `implementation` the torch flag set to True."""

  optimizer: str
  desc: str
  kwargs: dict[str, Any]
  implementation: str | None
  base_desc: str


def _optimizer_info(torch_cls: type) -> Any:
  """Torch's `OptimizerInfo` entry (matrix function, supported implementations) for `torch_cls`."""
  (info,) = [info for info in common_optimizers.optim_db if info.optim_cls is torch_cls]
  return info


def _torch_matrix() -> list[Combination]:
  """Torch's CPU matrix (with its implementation flags), then the accelerator-only entries."""
  combinations = []
  for name, (_, torch_cls) in OPTIMIZERS.items():
    info = _optimizer_info(torch_cls)
    for entry in common_optimizers._get_optim_inputs_including_global_cliquey_kwargs("cpu", None, info):
      kwargs = {k: v for k, v in entry.kwargs.items() if k not in IMPLEMENTATION_FLAGS}
      flags = [flag for flag in IMPLEMENTATION_FLAGS if entry.kwargs.get(flag)]
      implementation = flags[0] if flags else None
      base_desc = entry.desc[: -len(f" & {implementation}")] if implementation else entry.desc
      combinations.append(Combination(name, entry.desc, kwargs, implementation, base_desc))
    cpu = {(entry.desc, repr(entry.kwargs)) for entry in info.optim_inputs_func(device="cpu")}
    for device in ("cuda", "mps"):
      for entry in info.optim_inputs_func(device=device):
        if (entry.desc, repr(entry.kwargs)) not in cpu:
          cpu.add((entry.desc, repr(entry.kwargs)))
          combinations.append(Combination(name, entry.desc, dict(entry.kwargs), None, entry.desc))
  return combinations


def _as_jax_scalar(value: Any) -> Any:
  """A torch 0-d tensor becomes a jnp scalar of the same dtype; numbers pass through."""
  if isinstance(value, torch.Tensor):
    return jnp.asarray(value.numpy())
  return value


def translate(name: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
  """Torch kwargs -> (gradcore_jax kwargs, None), or (None, why it cannot be expressed)."""
  if kwargs.get("capturable"):
    return None, CAPTURABLE
  accepted = inspect.signature(OPTIMIZERS[name][0]).parameters
  ours: dict[str, Any] = {}
  for key, value in kwargs.items():
    if key == "capturable":
      continue
    if isinstance(value, torch.Tensor) and value.ndim != 0:
      return None, f"{key} is a {value.ndim}-d tensor; gradcore_jax hyperparameters are scalars"
    if key == "lr":
      ours["learning_rate"] = value
    elif key == "betas":
      ours["b1"], ours["b2"] = value
    elif key in accepted:
      ours[key] = value
    else:
      return None, f"gradcore_jax.{name} has no argument {key!r}"
  return ours, None


MATRIX = _torch_matrix()
RUN = [c for c in MATRIX if translate(c.optimizer, c.kwargs)[1] is None]
SKIPPED = [(c.optimizer, c.desc, reason) for c in MATRIX if (reason := translate(c.optimizer, c.kwargs)[1]) is not None]


def _problem() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Start, curvature (symmetric, eigenvalues in [0.2, 2]), centre and per-step noise of each leaf, in float64."""
  rng = np.random.default_rng(0)
  start, curvature, centre, noise = {}, {}, {}, {}
  for key, shape in SHAPES.items():
    size = int(np.prod(shape))
    basis, _ = np.linalg.qr(rng.standard_normal((size, size)))
    curvature[key] = (basis * rng.uniform(0.2, 2.0, size)) @ basis.T
    start[key] = rng.standard_normal(shape)
    centre[key] = rng.standard_normal(shape)
    noise[key] = 0.3 * rng.standard_normal((STEPS, *shape))
  return start, curvature, centre, noise


START, CURVATURE, CENTRE, NOISE = _problem()


def gradient(key: str, param: np.ndarray, step: int) -> np.ndarray:
  """Gradient of `0.5 (p-c)' A (p-c) + 0.025 sum p**4` plus step noise, evaluated in float64."""
  param = param.astype(np.float64)
  quadratic = (CURVATURE[key] @ (param - CENTRE[key]).reshape(-1)).reshape(param.shape)
  return quadratic + 0.1 * param**3 + NOISE[key][step]


def run_torch(
    torch_cls: type, kwargs: dict[str, Any], dtype, grads: dict[str, np.ndarray] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(param trajectory, gradient sequence); gradients are computed from the params unless `grads` replays some."""
  params = {k: torch.tensor(v.astype(dtype)) for k, v in START.items()}
  optimizer = torch_cls(list(params.values()), **kwargs)
  history: dict[str, list[np.ndarray]] = {k: [] for k in params}
  seen: dict[str, list[np.ndarray]] = {k: [] for k in params}
  for t in range(STEPS):
    for key, param in params.items():
      g = grads[key][t] if grads is not None else gradient(key, param.detach().numpy(), t).astype(dtype)
      seen[key].append(g)
      param.grad = torch.tensor(g)
    optimizer.step()
    for key, param in params.items():
      history[key].append(param.detach().numpy().copy())
  return {k: np.stack(v) for k, v in history.items()}, {k: np.stack(v) for k, v in seen.items()}


def run_jax(txs: list[optax.GradientTransformation], grads: list[dict[str, np.ndarray]], dtype) -> list[dict]:
  """The trajectories of several optimizers, each on its own gradient sequence, in one jitted `lax.scan`."""
  start = {k: jnp.asarray(v.astype(dtype)) for k, v in START.items()}

  @jax.jit
  def trajectories(grads):
    def step(carry, grads_t):
      new_carry = []
      for tx, (params, state), g in zip(txs, carry, grads_t):
        updates, state = tx.update(g, state, params)
        new_carry.append((optax.apply_updates(params, updates), state))
      return tuple(new_carry), tuple(params for params, _ in new_carry)

    _, history = jax.lax.scan(step, tuple((start, tx.init(start)) for tx in txs), tuple(grads))
    return history

  return [jax.tree.map(np.asarray, h) for h in trajectories([jax.tree.map(jnp.asarray, g) for g in grads])]


def assert_same_trajectory(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], dtype) -> None:
  """Every leaf after every step, to `TOLERANCE` relative to the leaf's largest magnitude."""
  tol = TOLERANCE[dtype]
  for name, expected in theirs.items():
    assert ours[name].dtype == dtype, name
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(ours[name], expected, rtol=tol, atol=tol * scale, err_msg=name)


@functools.cache
def matrix_under(dtype_id: str) -> dict[tuple[str, str, str | None], Combination]:
  """Torch's matrix evaluated under the run's default dtype, keyed by (optimizer, desc, implementation).

  Torch builds its tensor hyperparameters (`torch.tensor(0.001)` learning rates) with the
  default dtype. Built under float32 and used on float64 params, torch evaluates
  `lr / bias_correction1` in the tensor's float32 (Adam's for-loop path), which puts
  float32 rounding into its float64 trajectory; a float64 run therefore builds them as float64.
  """
  with precision(DTYPES[dtype_id]):
    return {(c.optimizer, c.desc, c.implementation): c for c in _torch_matrix()}


@functools.cache
def optimizer_results(name: str, dtype_id: str) -> dict[str, tuple[dict, dict, dict]]:
  """base desc -> (gradcore_jax trajectory, torch trajectory, gradients) for the base combinations of `name`.

  Torch's for-loop implementation computes the gradients of each base combination (no
  implementation flag set); gradcore_jax replays them, all of `name`'s in one jit.
  """
  dtype = DTYPES[dtype_id]
  factory, torch_cls = OPTIMIZERS[name]
  matrix = matrix_under(dtype_id)
  base = [matrix[c.optimizer, c.desc, None] for c in RUN if c.optimizer == name and c.implementation is None]
  with precision(dtype):
    torch_runs = [run_torch(torch_cls, c.kwargs, dtype) for c in base]
    txs = [factory(**{k: _as_jax_scalar(v) for k, v in translate(name, c.kwargs)[0].items()}) for c in base]
    ours = run_jax(txs, [grads for _, grads in torch_runs], dtype)
  return {c.desc: (o, *t) for c, o, t in zip(base, ours, torch_runs)}


def shared_results(name: str, dtype_id: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
  """`optimizer_results`, computed once per test run even when pytest-xdist spreads the tests over workers.

  xdist hands each worker short runs of consecutive tests, so most optimizers' tests land on
  several workers; the first to need a batch computes it under a file lock in the run's
  shared temporary directory (keyed by xdist's per-run id), the others read it.
  """
  run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  if os.environ.get("PYTEST_XDIST_WORKER") is None or run_id is None:
    return optimizer_results(name, dtype_id)
  directory = pathlib.Path(tmp_path_factory.getbasetemp().parent) / f"torch-optim-matrix-{run_id}"
  directory.mkdir(exist_ok=True)
  path = directory / f"{name}-{dtype_id}.pickle"
  with filelock.FileLock(f"{path}.lock"):
    if path.is_file():
      return _load(path)
    results = optimizer_results(name, dtype_id)
    path.write_bytes(pickle.dumps(results))
  return results


@functools.cache
def _load(path: pathlib.Path) -> dict[str, tuple]:
  """A batch another worker pickled, unpickled once per worker."""
  return pickle.loads(path.read_bytes())


# dtype-major, then optimizer: consecutive tests share one cached torch + jitted gradcore_jax batch (xdist
# hands each worker consecutive chunks).
# float64 (1e-10) runs every combination in the default run; the float32 twins (1e-5) are the `slow`
# tier's (`pytest -m slow`): float32 parity with torch for every optimizer stays in the default run
# through tests/test_optimizers_torch_parity.py.
SLOW_DTYPES = frozenset({"f32"})
CASES = [
    pytest.param(dtype_id, c, id=f"{c.optimizer}: {c.desc}-{dtype_id}", marks=[pytest.mark.slow] if dtype_id in SLOW_DTYPES else [])
    for dtype_id in DTYPES
    for c in RUN
]


@pytest.mark.parametrize("dtype_id,combo", CASES)
def test_torch_matrix_combination_matches_torch(dtype_id: str, combo: Combination, tmp_path_factory):
  """gradcore_jax against live torch.optim on one entry of torch's own test matrix.

  An entry with an implementation flag (`differentiable`, `fused`) replays the gradients of
  its base entry through that torch implementation; gradcore_jax's trajectory is the base's.
  """
  dtype = DTYPES[dtype_id]
  ours, theirs, grads = shared_results(combo.optimizer, dtype_id, tmp_path_factory)[combo.base_desc]
  if combo.implementation is not None:
    entry = matrix_under(dtype_id)[combo.optimizer, combo.desc, combo.implementation]
    with precision(dtype):
      theirs, _ = run_torch(OPTIMIZERS[combo.optimizer][1], {**entry.kwargs, combo.implementation: True}, dtype, grads)
  assert_same_trajectory(ours, theirs, dtype)


def test_skipped_combinations_are_exactly_the_documented_ones():
  """A combination torch adds to its matrix either runs above or has to be documented here."""
  assert sorted(SKIPPED) == sorted(EXPECTED_SKIPS)


def test_matrix_covers_every_optimizer():
  """Guards against torch renaming or emptying a matrix function: every optimizer runs combinations."""
  counts = {name: sum(c.optimizer == name for c in RUN) for name in OPTIMIZERS}
  assert all(count > 0 for count in counts.values()), counts
