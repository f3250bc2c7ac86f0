"""The optimizer state_dict bridge, against live `torch.optim` (the reference).

A torch run of `2 * HALF` steps is the reference. Its `state_dict()` after `HALF` steps,
converted with `from_torch_state_dict`, must continue in gradcore_jax exactly as torch
continued; and `HALF` gradcore_jax steps, converted with `to_torch_state_dict` and loaded
with torch's `load_state_dict`, must continue in torch exactly as well. Both sides are fed
the gradients torch's autograd computed in the reference run (the same arrays), so the
comparison isolates the state: every parameter after every step of the second half,
float64 to 1e-10 relative (float32 to 1e-5).
"""

from __future__ import annotations

import contextlib
import copy
import math
import subprocess
import sys
import textwrap
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from _torch_reference import precision

import gradcore_jax as gcj
from gradcore_jax import torch_state

HALF = 50
SHAPES = {"w1": (6, 5), "b1": (5,), "w2": (5, 3), "b2": (3,)}
NAMES = sorted(SHAPES)  # JAX's leaf order of the params dict, used as torch's parameter order
# Muon takes matrices only (torch's too): the same model with its biases as 1 x n rows.
MATRIX_SHAPES = {"w1": (6, 5), "b1": (1, 5), "w2": (5, 3), "b2": (1, 3)}
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}

torch.set_num_threads(1)


def _start(dtype, shapes=SHAPES):
  rng = np.random.default_rng(2)
  params = {k: (0.5 * rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}
  xs = rng.standard_normal((2 * HALF, 16, 6)).astype(dtype)
  ys = (np.tanh(xs @ rng.standard_normal((6, 3))) + 0.1 * rng.standard_normal((2 * HALF, 16, 3))).astype(dtype)
  return params, xs, ys


def _loss(p, x, y):
  hidden = torch.tanh(x @ p["w1"] + p["b1"])
  return torch.mean((hidden @ p["w2"] + p["b2"] - y) ** 2) + 0.01 * torch.sum(p["w1"] ** 4)


class Reference(NamedTuple):
  grads: list[dict[str, np.ndarray]]  # the gradient of every step
  history: list[dict[str, np.ndarray]]  # the params after every step
  state_dict: dict  # after HALF steps
  groups: Any  # the param groups torch was built with (for a fresh optimizer)


def reference(make_optimizer, dtype, make_scheduler=None, shapes=SHAPES) -> Reference:
  params, xs, ys = _start(dtype, shapes)
  tp = {k: torch.tensor(params[k], requires_grad=True) for k in NAMES}
  opt = make_optimizer(tp)
  sched = make_scheduler(opt) if make_scheduler else None
  grads, history, middle = [], [], None
  for t in range(2 * HALF):
    if t == HALF:
      middle = copy.deepcopy(opt.state_dict())
    values = torch.autograd.grad(_loss(tp, torch.tensor(xs[t]), torch.tensor(ys[t])), list(tp.values()))
    grads.append({k: g.numpy().copy() for k, g in zip(tp, values)})
    for (k, p), g in zip(tp.items(), values):
      p.grad = torch.from_numpy(grads[-1][k].copy())
    opt.step()
    if sched:
      sched.step()
    history.append({k: p.detach().numpy().copy() for k, p in tp.items()})
  return Reference(grads, history, middle, None)


def continue_torch(make_optimizer, params, state_dict, grads, make_scheduler=None):
  tp = {k: torch.tensor(np.asarray(params[k]), requires_grad=True) for k in NAMES}
  opt = make_optimizer(tp)
  sched = make_scheduler(opt) if make_scheduler else None
  opt.load_state_dict(state_dict)
  history = []
  for g in grads:
    for k, p in tp.items():
      p.grad = torch.from_numpy(g[k].copy())
    opt.step()
    if sched:
      sched.step()
    history.append({k: p.detach().numpy().copy() for k, p in tp.items()})
  return history


_STEPS: dict[int, Any] = {}


def run_jax(tx, params, state, grads):
  """(params after every step, final params, final state); one jitted step per `tx`, compiled once."""
  if id(tx) not in _STEPS:

    @jax.jit
    def step(params, state, g):
      updates, state = tx.update(g, state, params)
      return optax.apply_updates(params, updates), state

    _STEPS.clear()  # one transformation at a time: never reuse a step compiled for another `tx`
    _STEPS[id(tx)] = (tx, step)
  step = _STEPS[id(tx)][1]
  params = jax.tree.map(jnp.asarray, params)
  history = []
  for g in grads:
    params, state = step(params, state, g)
    history.append(jax.tree.map(np.asarray, params))
  return history, params, state


def assert_same_history(ours, theirs, dtype, what):
  tol = TOLERANCE[dtype]
  assert len(ours) == len(theirs)
  for name in NAMES:
    a = np.stack([h[name] for h in ours])
    b = np.stack([h[name] for h in theirs])
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.max(np.abs(b)), err_msg=f"{what}: {name}")


def _state_values_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert np.asarray(x).dtype == np.asarray(y).dtype


def _torch_optimizer(cls, kwargs):
  return lambda tp: cls([tp[k] for k in NAMES], **kwargs)


# (id, torch optimizer, torch kwargs, gradcore_jax factory, gradcore_jax kwargs)
CASES = [
    ("sgd", torch.optim.SGD, dict(lr=0.05), gcj.sgd, dict(learning_rate=0.05)),
    ("sgd-momentum-nesterov-wd", torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
     gcj.sgd, dict(learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd-dampening", torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3), gcj.sgd,
     dict(learning_rate=0.05, momentum=0.9, dampening=0.3)),
    ("rmsprop", torch.optim.RMSprop, dict(lr=0.01), gcj.rmsprop, dict(learning_rate=0.01)),
    ("rmsprop-centered-momentum", torch.optim.RMSprop, dict(lr=0.005, centered=True, momentum=0.5, weight_decay=0.01),
     gcj.rmsprop, dict(learning_rate=0.005, centered=True, momentum=0.5, weight_decay=0.01)),
    ("adam", torch.optim.Adam, dict(lr=0.01), gcj.adam, dict(learning_rate=0.01)),
    ("adam-amsgrad-wd", torch.optim.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1), gcj.adam,
     dict(learning_rate=0.01, amsgrad=True, weight_decay=0.1)),
    ("adamw", torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1), gcj.adamw, dict(learning_rate=0.01, weight_decay=0.1)),
    ("adagrad", torch.optim.Adagrad, dict(lr=0.05), gcj.adagrad, dict(learning_rate=0.05)),
    ("adagrad-lr-decay-accumulator", torch.optim.Adagrad, dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1),
     gcj.adagrad, dict(learning_rate=0.05, lr_decay=0.01, initial_accumulator_value=0.1)),
    ("adadelta", torch.optim.Adadelta, dict(lr=0.5, weight_decay=0.01), gcj.adadelta,
     dict(learning_rate=0.5, weight_decay=0.01)),
    ("adamax", torch.optim.Adamax, dict(lr=0.01), gcj.adamax, dict(learning_rate=0.01)),
    ("nadam", torch.optim.NAdam, dict(lr=0.01, momentum_decay=1e-2), gcj.nadam,
     dict(learning_rate=0.01, momentum_decay=1e-2)),
    ("nadam-decoupled", torch.optim.NAdam, dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True), gcj.nadam,
     dict(learning_rate=0.01, weight_decay=0.05, decoupled_weight_decay=True)),
    ("radam", torch.optim.RAdam, dict(lr=0.01), gcj.radam, dict(learning_rate=0.01)),
    # torch's single-tensor implementations (foreach=False), which gradcore_jax follows to the rounding.
    ("rprop", torch.optim.Rprop, dict(lr=0.01, foreach=False), gcj.rprop, dict(learning_rate=0.01)),
    ("rprop-etas-step-sizes", torch.optim.Rprop, dict(lr=0.02, etas=(0.4, 1.3), step_sizes=(1e-4, 0.05), foreach=False),
     gcj.rprop, dict(learning_rate=0.02, etas=(0.4, 1.3), step_sizes=(1e-4, 0.05))),
    # t0 = 20: averaging (mu < 1) from update 22 on, before the conversion at step 50.
    ("asgd-averaging", torch.optim.ASGD, dict(lr=0.05, t0=20.0, weight_decay=0.01, foreach=False), gcj.asgd,
     dict(learning_rate=0.05, t0=20.0, weight_decay=0.01)),
    # t0 = 70: ax is still a copy of the params at the conversion, and averaging starts after it.
    ("asgd-averaging-later", torch.optim.ASGD, dict(lr=0.05, lambd=0.01, alpha=0.6, t0=70.0, foreach=False), gcj.asgd,
     dict(learning_rate=0.05, lambd=0.01, alpha=0.6, t0=70.0)),
    ("adafactor", torch.optim.Adafactor, dict(lr=0.01, foreach=False), gcj.adafactor, dict(learning_rate=0.01)),
    ("adafactor-eps-d-wd", torch.optim.Adafactor,
     dict(lr=0.05, beta2_decay=-0.7, eps=(1e-6, 1e-3), d=1.2, weight_decay=0.1, foreach=False), gcj.adafactor,
     dict(learning_rate=0.05, beta2_decay=-0.7, eps=(1e-6, 1e-3), d=1.2, weight_decay=0.1)),
    # Muon: test_muon_continues_a_torch_run_both_ways.
]
# States that keep no step count although torch records one: `to_torch_state_dict` needs `step=`.
NEEDS_STEP = {"rmsprop", "adagrad", "adadelta", "rprop", "rprop-etas-step-sizes"}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_continues_a_torch_run_both_ways(case):
  name, cls, kwargs, factory, fkwargs = case
  make = _torch_optimizer(cls, kwargs)
  tx = factory(**fkwargs)
  with precision(np.float64):
    ref = reference(make, np.float64)
    theirs = ref.history[HALF:]
    # torch -> gradcore_jax: 50 torch steps, convert, 50 gradcore_jax steps.
    params = ref.history[HALF - 1]
    state = gcj.from_torch_state_dict(ref.state_dict, tx, jax.tree.map(jnp.asarray, params))
    ours, _, _ = run_jax(tx, params, state, ref.grads[HALF:])
    assert_same_history(ours, theirs, np.float64, "torch -> gradcore_jax")
    # ... and back, unchanged: torch -> gradcore_jax -> torch is the identity.
    template = ref.state_dict["param_groups"]
    back = gcj.to_torch_state_dict(state, tx, params, param_groups=template, step=HALF if name in NEEDS_STEP else None)
    assert back["param_groups"] == ref.state_dict["param_groups"]
    assert back["state"].keys() == ref.state_dict["state"].keys()
    for index, entry in ref.state_dict["state"].items():
      assert back["state"][index].keys() == entry.keys()
      for key, value in entry.items():
        np.testing.assert_array_equal(back["state"][index][key].numpy(), value.numpy(), err_msg=f"{index} {key}")
        assert back["state"][index][key].dtype == value.dtype
    # gradcore_jax -> torch: 50 gradcore_jax steps, convert, load into a fresh torch optimizer, 50 torch steps.
    start, _, _ = _start(np.float64)
    _, params, state = run_jax(tx, start, tx.init(jax.tree.map(jnp.asarray, start)), ref.grads[:HALF])
    if name in NEEDS_STEP:
      with pytest.raises(ValueError, match="pass step="):
        gcj.to_torch_state_dict(state, tx, params, param_groups=template)
    converted = gcj.to_torch_state_dict(state, tx, params, param_groups=template,
                                        step=HALF if name in NEEDS_STEP else None)
    resumed = continue_torch(make, params, converted, ref.grads[HALF:])
    assert_same_history(resumed, theirs, np.float64, "gradcore_jax -> torch")


def _same_state_dict_state(ours, theirs):
  """Torch's per-parameter entries of two state_dicts: the same keys, tensors equal bit for bit, same dtypes."""
  assert ours.keys() == theirs.keys()
  for index, entry in theirs.items():
    assert ours[index].keys() == entry.keys()
    for key, value in entry.items():
      np.testing.assert_array_equal(ours[index][key].numpy(), value.numpy(), err_msg=f"{index} {key}")
      assert ours[index][key].dtype == value.dtype


@contextlib.contextmanager
def _recording_newton_schulz(calls):
  """Wraps torch's own `_zeropower_via_newtonschulz` (still called) to record its inputs and bfloat16 outputs."""
  module = torch.optim._muon
  original = module._zeropower_via_newtonschulz

  def recorded(update, *args, **kwargs):
    out = original(update, *args, **kwargs)
    calls.append((update.detach().numpy().copy(), out.float().numpy()))
    return out

  module._zeropower_via_newtonschulz = recorded
  try:
    yield
  finally:
    module._zeropower_via_newtonschulz = original


def _muon_allowance(calls, kwargs):
  """Per param, per step of the reference run: how far torch's own bfloat16 rounding order can move two runs apart.

  Both sides are fed the same gradients, so their momentum buffers, and the matrices Newton-Schulz receives,
  are the same whatever the params. The runs can differ only where our `newton_schulz`, given the input torch's
  received, does not return torch's bfloat16 output bit for bit (an element on the other side of a rounding
  boundary: torch's CPU GEMM sums in an order of its own; see test_optimizers_more.py). Such a call moves that
  param by `lr * ratio * |O_ours - O_torch|` at most, and the weight decay only shrinks it afterwards.

  Returns:
    ({name: cumulative allowance after every step}, the number of calls that differ).
  """
  newton_schulz = jax.jit(jax.vmap(gcj.transforms.newton_schulz, in_axes=(0, None, None, None)))
  coefficients = tuple(jnp.float32(c) for c in kwargs.get("ns_coefficients", (3.4445, -4.775, 2.0315)))
  allowance, flips = {}, 0
  for index, name in enumerate(NAMES):  # torch calls it once per parameter, in the parameters' order
    inputs = np.stack([x for x, _ in calls[index::len(NAMES)]])
    theirs = np.stack([out for _, out in calls[index::len(NAMES)]])
    ours = np.asarray(newton_schulz(jnp.asarray(inputs), coefficients, jnp.int32(5), jnp.float32(1e-7)), np.float32)
    flipped = np.any(ours != theirs, axis=(1, 2))
    ratio = gcj.transforms.adjusted_lr_ratio(MATRIX_SHAPES[name], kwargs.get("adjust_lr_fn"))
    effect = np.where(flipped, kwargs["lr"] * ratio * np.max(np.abs(ours - theirs), axis=(1, 2)), 0.0)
    allowance[name] = np.cumsum(effect)
    flips += int(flipped.sum())
  return allowance, flips


def _assert_same_muon_history(ours, theirs, allowance, what):
  """`assert_same_history` in float64, plus the allowance of the reference run's second half."""
  tol = TOLERANCE[np.float64]
  for name in NAMES:
    a, b = np.stack([h[name] for h in ours]), np.stack([h[name] for h in theirs])
    excess = np.abs(a - b) - (tol * np.abs(b) + tol * np.max(np.abs(b)) + allowance[name][HALF:, None, None])
    assert np.all(excess <= 0), (what, name, float(np.max(excess)))


MUON_CASES = [
    ("muon", dict(lr=0.02)),
    ("muon-momentum-adamw-ratio",
     dict(lr=0.01, weight_decay=0.01, momentum=0.9, nesterov=False, adjust_lr_fn="match_rms_adamw")),
]


@pytest.mark.parametrize("case", MUON_CASES, ids=[c[0] for c in MUON_CASES])
def test_muon_continues_a_torch_run_both_ways(case):
  """`test_continues_a_torch_run_both_ways` for torch.optim.Muon (matrices only: the biases as 1 x n rows).

  Muon's orthogonalised update is bfloat16 on both sides, and torch's GEMM rounds in an order of its own:
  now and then one of its elements lands one bfloat16 step away from ours (see `_muon_allowance`). The
  trajectories must agree to 1e-10 plus the effect of those calls, counted on the reference run (at most
  2% of them); the states themselves convert bit for bit.
  """
  _, kwargs = case
  make = _torch_optimizer(torch.optim.Muon, kwargs)
  tx = gcj.muon(**{("learning_rate" if k == "lr" else k): v for k, v in kwargs.items()})
  calls: list = []
  with precision(np.float64):
    with _recording_newton_schulz(calls):
      ref = reference(make, np.float64, shapes=MATRIX_SHAPES)
    allowance, flips = _muon_allowance(calls, kwargs)
    assert len(calls) == 2 * HALF * len(NAMES) and flips <= 0.02 * len(calls)
    theirs = ref.history[HALF:]
    # torch -> gradcore_jax, and back unchanged.
    params = ref.history[HALF - 1]
    state = gcj.from_torch_state_dict(ref.state_dict, tx, jax.tree.map(jnp.asarray, params))
    ours, _, _ = run_jax(tx, params, state, ref.grads[HALF:])
    _assert_same_muon_history(ours, theirs, allowance, "torch -> gradcore_jax")
    template = ref.state_dict["param_groups"]
    back = gcj.to_torch_state_dict(state, tx, params, param_groups=template)
    assert back["param_groups"] == template
    _same_state_dict_state(back["state"], ref.state_dict["state"])
    # gradcore_jax -> torch. Our buffers after 50 steps are torch's bit for bit (they depend on the gradients
    # only), so torch's continuation orthogonalises what the reference run did.
    start, _, _ = _start(np.float64, MATRIX_SHAPES)
    _, params, state = run_jax(tx, start, tx.init(jax.tree.map(jnp.asarray, start)), ref.grads[:HALF])
    converted = gcj.to_torch_state_dict(state, tx, params, param_groups=template)
    _same_state_dict_state(converted["state"], ref.state_dict["state"])
    resumed = continue_torch(make, params, converted, ref.grads[HALF:])
    _assert_same_muon_history(resumed, theirs, allowance, "gradcore_jax -> torch")


def test_adafactor_param_groups_both_ways_without_a_template():
  """Two Adafactor groups recorded by `gcj.param_groups` (torch's `eps = (None, 1e-3)` included, None meaning
  the dtype's epsilon): matrices keep row/column statistics, vectors a full `variance`, and no torch template
  is needed to write the groups back."""

  def make(tp):
    return torch.optim.Adafactor(
        [{"params": _group_split(tp, {"w1", "w2"}), "weight_decay": 0.1},
         {"params": _group_split(tp, {"b1", "b2"}), "lr": 0.02, "weight_decay": 0.0, "d": 1.5}],
        lr=0.01, foreach=False,
    )

  tx = gcj.param_groups(
      gcj.adafactor, gcj.decay_label,
      {"decay": {"weight_decay": 0.1}, "no_decay": {"learning_rate": 0.02, "weight_decay": 0.0, "d": 1.5}},
      learning_rate=0.01,
  )
  with precision(np.float64):
    ref = reference(make, np.float64)
    params = ref.history[HALF - 1]
    state = gcj.from_torch_state_dict(ref.state_dict, tx, jax.tree.map(jnp.asarray, params))
    ours, _, _ = run_jax(tx, params, state, ref.grads[HALF:])
    assert_same_history(ours, ref.history[HALF:], np.float64, "torch -> gradcore_jax")
    start, _, _ = _start(np.float64)
    _, params, state = run_jax(tx, start, tx.init(jax.tree.map(jnp.asarray, start)), ref.grads[:HALF])
    converted = gcj.to_torch_state_dict(state, tx, params)
    # `foreach` is bookkeeping, written as torch's default (None); the reference ran the single-tensor path.
    assert converted["param_groups"] == [{**g, "foreach": None} for g in ref.state_dict["param_groups"]]
    # torch numbers the params through its groups: w1, w2 (matrices), then b1, b2 (vectors).
    factored, full = ["col_var", "row_var", "step"], ["step", "variance"]
    assert {k: sorted(v) for k, v in converted["state"].items()} == {0: factored, 1: factored, 2: full, 3: full}
    resumed = continue_torch(make, params, converted, ref.grads[HALF:])
    assert_same_history(resumed, ref.history[HALF:], np.float64, "gradcore_jax -> torch")


def test_adafactor_statistics_convert_only_in_torchs_layout():
  """A transposed kernel factors over other axes than torch's weight: its row/column statistics are refused, by name."""
  with precision(np.float64):
    ref = reference(_torch_optimizer(torch.optim.Adafactor, dict(lr=0.01, foreach=False)), np.float64)
    params = {k: jnp.asarray(v.T) for k, v in ref.history[HALF - 1].items()}  # w1, w2 as (in, out) kernels
    layouts = {k: (1, 0) if len(SHAPES[k]) == 2 else None for k in NAMES}
    with pytest.raises(ValueError, match=r"leaf \['w1'\], 'row_var': Adafactor's row_var .* converts only in torch's"):
      gcj.from_torch_state_dict(ref.state_dict, gcj.adafactor(0.01), params, layouts=layouts)
    tx = gcj.adafactor(0.01)
    state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)[1]
    with pytest.raises(ValueError, match=r"leaf \['w1'\], 'row_var'"):
      gcj.to_torch_state_dict(state, tx, params, layouts=layouts, param_groups=ref.state_dict["param_groups"])


def test_muon_state_is_written_whatever_the_step():
  """torch's Muon records no step and starts its momentum buffers at zero at its first step: the buffers are
  always written (zeros before the first step change nothing), and a fresh torch state_dict reads as `init`."""
  params = {k: jnp.full(s, 0.5) for k, s in MATRIX_SHAPES.items()}
  tp = [torch.nn.Parameter(torch.full(MATRIX_SHAPES[k], 0.5)) for k in NAMES]
  fresh = torch.optim.Muon(tp, lr=0.02).state_dict()
  tx = gcj.muon(0.02)
  _state_values_equal(gcj.from_torch_state_dict(fresh, tx, params), tx.init(params))
  written = gcj.to_torch_state_dict(tx.init(params), tx, params, param_groups=fresh["param_groups"])
  assert sorted(written["state"]) == [0, 1, 2, 3]
  assert all(list(entry) == ["momentum_buffer"] and not entry["momentum_buffer"].any()
             for entry in written["state"].values())
  # Loaded into torch, the zeros step exactly as torch's own fresh state does.
  grads = [torch.linspace(-1, 1, math.prod(MATRIX_SHAPES[k])).reshape(MATRIX_SHAPES[k]) for k in NAMES]
  stepped = []
  for state_dict in (fresh, written):
    copies = [torch.nn.Parameter(p.detach().clone()) for p in tp]
    optimizer = torch.optim.Muon(copies, lr=0.02)
    optimizer.load_state_dict(state_dict)
    for p, g in zip(copies, grads):
      p.grad = g.clone()
    optimizer.step()
    stepped.append([p.detach().numpy().copy() for p in copies])
  for a, b in zip(*stepped):
    np.testing.assert_array_equal(a, b)


def test_float32_nadam_continues_torch():
  make = _torch_optimizer(torch.optim.NAdam, dict(lr=0.01))
  tx = gcj.nadam(learning_rate=0.01)
  ref = reference(make, np.float32)
  params = ref.history[HALF - 1]
  state = gcj.from_torch_state_dict(ref.state_dict, tx, jax.tree.map(jnp.asarray, params))
  assert state[0].mu_product.dtype == jnp.float32
  ours, _, _ = run_jax(tx, params, state, ref.grads[HALF:])
  assert_same_history(ours, ref.history[HALF:], np.float32, "float32")


def _group_split(tp, names):
  return [tp[k] for k in NAMES if k in names]


def test_param_groups_both_ways_without_a_template():
  """Two AdamW groups; `tx` records their hyperparameters, so no torch template is needed."""

  def make(tp):
    return torch.optim.AdamW(
        [{"params": _group_split(tp, {"w1", "w2"}), "weight_decay": 0.2},
         {"params": _group_split(tp, {"b1", "b2"}), "lr": 0.02, "weight_decay": 0.0, "betas": (0.8, 0.99)}],
        lr=0.01,
    )

  tx = gcj.param_groups(
      gcj.adamw, gcj.decay_label,
      {"decay": {"weight_decay": 0.2}, "no_decay": {"learning_rate": 0.02, "weight_decay": 0.0, "b1": 0.8, "b2": 0.99}},
      learning_rate=0.01,
  )
  with precision(np.float64):
    ref = reference(make, np.float64)
    params = ref.history[HALF - 1]
    state = gcj.from_torch_state_dict(ref.state_dict, tx, jax.tree.map(jnp.asarray, params))
    ours, _, _ = run_jax(tx, params, state, ref.grads[HALF:])
    assert_same_history(ours, ref.history[HALF:], np.float64, "torch -> gradcore_jax")
    start, _, _ = _start(np.float64)
    _, params, state = run_jax(tx, start, tx.init(jax.tree.map(jnp.asarray, start)), ref.grads[:HALF])
    converted = gcj.to_torch_state_dict(state, tx, params)
    expected_groups = [{k: v for k, v in g.items()} for g in ref.state_dict["param_groups"]]
    assert converted["param_groups"] == expected_groups
    resumed = continue_torch(make, params, converted, ref.grads[HALF:])
    assert_same_history(resumed, ref.history[HALF:], np.float64, "gradcore_jax -> torch")


def test_sgd_momentum_groups_both_ways():
  def make(tp):
    return torch.optim.SGD(
        [{"params": [tp["b1"], tp["w1"]], "momentum": 0.9},
         {"params": [tp["b2"], tp["w2"]], "lr": 0.02, "momentum": 0.5, "nesterov": True}],
        lr=0.05,
    )

  labels = {"w1": "first", "b1": "first", "w2": "second", "b2": "second"}
  tx = gcj.param_groups(gcj.sgd, labels, {"first": {"momentum": 0.9},
                                          "second": {"learning_rate": 0.02, "momentum": 0.5, "nesterov": True}},
                        learning_rate=0.05)
  with precision(np.float64):
    ref = reference(make, np.float64)
    params = ref.history[HALF - 1]
    state = gcj.from_torch_state_dict(ref.state_dict, tx, jax.tree.map(jnp.asarray, params))
    ours, _, _ = run_jax(tx, params, state, ref.grads[HALF:])
    assert_same_history(ours, ref.history[HALF:], np.float64, "torch -> gradcore_jax")
    start, _, _ = _start(np.float64)
    _, params, state = run_jax(tx, start, tx.init(jax.tree.map(jnp.asarray, start)), ref.grads[:HALF])
    resumed = continue_torch(make, params, gcj.to_torch_state_dict(state, tx, params), ref.grads[HALF:])
    assert_same_history(resumed, ref.history[HALF:], np.float64, "gradcore_jax -> torch")


def test_learning_rate_schedule_counter_and_check():
  """ExponentialLR against an Optax schedule: the schedule resumes at torch's step, and its value is checked."""
  make = _torch_optimizer(torch.optim.Adam, dict(lr=0.01))
  sched = lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, 0.97)  # noqa: E731
  schedule = lambda count: 0.01 * 0.97**count  # noqa: E731
  described = gcj.param_groups(gcj.adam, "all", {"all": {}}, learning_rate=schedule)
  with precision(np.float64):
    ref = reference(make, np.float64, sched)
    params = ref.history[HALF - 1]
    for tx in (gcj.adam(learning_rate=schedule), described):
      state = gcj.from_torch_state_dict(ref.state_dict, tx, jax.tree.map(jnp.asarray, params))
      ours, _, _ = run_jax(tx, params, state, ref.grads[HALF:])
      assert_same_history(ours, ref.history[HALF:], np.float64, "schedule")
    # The recorded schedule is checked against torch's current lr (0.01 * 0.97**50).
    wrong = gcj.param_groups(gcj.adam, "all", {"all": {}}, learning_rate=lambda count: 0.01 * 0.96**count)
    with pytest.raises(ValueError, match=r"param_groups\[0\] has lr=0.0021.*at step 50"):
      gcj.from_torch_state_dict(ref.state_dict, wrong, jax.tree.map(jnp.asarray, params))
    # gradcore_jax -> torch writes the rate of the next step, torch's scheduler continues from it.
    start, _, _ = _start(np.float64)
    _, params, state = run_jax(described, start, described.init(jax.tree.map(jnp.asarray, start)), ref.grads[:HALF])
    converted = gcj.to_torch_state_dict(state, described, params)
    assert converted["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.97**HALF, rel=1e-12)
    resumed = continue_torch(make, params, converted, ref.grads[HALF:], sched)
    assert_same_history(resumed, ref.history[HALF:], np.float64, "gradcore_jax -> torch")


def test_sgd_records_no_step_so_schedules_need_it():
  make = _torch_optimizer(torch.optim.SGD, dict(lr=0.05, momentum=0.9))
  tx = gcj.sgd(learning_rate=lambda count: 0.05 * 0.99**count, momentum=0.9)
  with precision(np.float64):
    ref = reference(make, np.float64, lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, 0.99))
    params = jax.tree.map(jnp.asarray, ref.history[HALF - 1])
    with pytest.raises(ValueError, match="pass step="):
      gcj.from_torch_state_dict(ref.state_dict, tx, params)
    state = gcj.from_torch_state_dict(ref.state_dict, tx, params, step=HALF)
    ours, _, _ = run_jax(tx, ref.history[HALF - 1], state, ref.grads[HALF:])
    assert_same_history(ours, ref.history[HALF:], np.float64, "sgd schedule")
    # A plain momentum SGD needs no step: the buffers tell the first step from the others.
    plain = gcj.sgd(learning_rate=0.05, momentum=0.9)
    assert int(gcj.from_torch_state_dict(ref.state_dict, plain, params)[0].count) == 1


def test_inject_hyperparams_take_torch_group_values():
  """torch's StepLR cuts the lr at step 50; the injected learning_rate takes torch's current value."""
  make = _torch_optimizer(torch.optim.Adam, dict(lr=0.01, betas=(0.85, 0.995)))
  sched = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=HALF, gamma=0.1)  # noqa: E731
  with precision(np.float64):
    ref = reference(make, np.float64, sched)
    tx = optax.inject_hyperparams(gcj.adam)(learning_rate=0.01)  # b1, b2 wrong on purpose: injected, so loaded
    params = ref.history[HALF - 1]
    state = gcj.from_torch_state_dict(ref.state_dict, tx, jax.tree.map(jnp.asarray, params))
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.001, rel=1e-15)
    assert float(state.hyperparams["b1"]) == 0.85 and int(state.count) == HALF
    ours, _, state = run_jax(tx, params, state, ref.grads[HALF:])
    assert_same_history(ours, ref.history[HALF:], np.float64, "inject")
    # gradcore_jax -> torch: the injected values become the group's.
    tx = optax.inject_hyperparams(gcj.adam)(learning_rate=0.01, b1=0.85, b2=0.995)
    start, _, _ = _start(np.float64)
    _, params, state = run_jax(tx, start, tx.init(jax.tree.map(jnp.asarray, start)), ref.grads[:HALF])
    state.hyperparams["learning_rate"] = jnp.asarray(0.001)
    converted = gcj.to_torch_state_dict(state, tx, params, param_groups={"maximize": False, "amsgrad": False,
                                                                         "decoupled_weight_decay": False})
    assert converted["param_groups"][0]["lr"] == pytest.approx(0.001) and converted["param_groups"][0]["betas"] == (
        0.85, 0.995)
    resumed = continue_torch(lambda tp: torch.optim.Adam([tp[k] for k in NAMES]), params, converted, ref.grads[HALF:])
    assert_same_history(resumed, ref.history[HALF:], np.float64, "gradcore_jax -> torch")


def test_injected_schedule_resumes_and_writes_the_next_rate():
  schedule = lambda count: 0.01 * 0.97**count  # noqa: E731
  tx = optax.inject_hyperparams(gcj.adam)(learning_rate=schedule)
  make = _torch_optimizer(torch.optim.Adam, dict(lr=0.01))
  sched = lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, 0.97)  # noqa: E731
  with precision(np.float64):
    ref = reference(make, np.float64, sched)
    params = ref.history[HALF - 1]
    state = gcj.from_torch_state_dict(ref.state_dict, tx, jax.tree.map(jnp.asarray, params))
    assert int(state.hyperparams_states["learning_rate"].count) == HALF
    ours, _, _ = run_jax(tx, params, state, ref.grads[HALF:])
    assert_same_history(ours, ref.history[HALF:], np.float64, "inject schedule")
    converted = gcj.to_torch_state_dict(state, tx, jax.tree.map(jnp.asarray, params),
                                        param_groups=ref.state_dict["param_groups"])
    assert converted["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.97**HALF, rel=1e-12)


# A Flax-style model: {"Dense_i": {"kernel": (in, out), "bias": (out,)}}, torch's Linear(in, out) layers.
FLAX_ORDER = {"Dense_0": {"kernel": 0, "bias": 1}, "Dense_1": {"kernel": 2, "bias": 3}}


def _flax(torch_params):
  """torch's [w0, b0, w1, b1] as Flax params (kernels transposed)."""
  w0, b0, w1, b1 = torch_params
  return {"Dense_0": {"kernel": w0.T, "bias": b0}, "Dense_1": {"kernel": w1.T, "bias": b1}}


def test_order_and_layouts_for_a_flax_model():
  rng = np.random.default_rng(3)
  model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
  opt = torch.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
  xs, ys = rng.standard_normal((2 * HALF, 8, 6)), rng.standard_normal((2 * HALF, 8, 3))
  grads, history = [], []
  with precision(np.float64):
    for t in range(2 * HALF):
      if t == HALF:
        middle = copy.deepcopy(opt.state_dict())
        params = _flax([p.detach().numpy().copy() for p in model.parameters()])
      opt.zero_grad()
      torch.mean((model(torch.tensor(xs[t])) - torch.tensor(ys[t])) ** 2).backward()
      grads.append(_flax([p.grad.numpy().copy() for p in model.parameters()]))
      opt.step()
      history.append(_flax([p.detach().numpy().copy() for p in model.parameters()]))
    tx = gcj.adam(learning_rate=0.01, amsgrad=True)
    jparams = jax.tree.map(jnp.asarray, params)
    with pytest.raises(ValueError, match=r"leaf \['Dense_0'\]\['bias'\] has shape \(5,\), but torch's 'exp_avg'"):
      gcj.from_torch_state_dict(middle, tx, jparams)  # default order: Flax sorts 'bias' first
    with pytest.raises(ValueError, match=r"leaf \['Dense_0'\]\['kernel'\] has shape \(6, 5\).*\(5, 6\)"):
      gcj.from_torch_state_dict(middle, tx, jparams, order=FLAX_ORDER)  # no layout for the kernel
    state = gcj.from_torch_state_dict(middle, tx, jparams, order=FLAX_ORDER, layouts=gcj.torch_state.flax_kernel_layout)
    for t in range(HALF, 2 * HALF):
      updates, state = tx.update(jax.tree.map(jnp.asarray, grads[t]), state, jparams)
      jparams = optax.apply_updates(jparams, updates)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.max(np.abs(b))),
                   jparams, history[t])
    # And back: the same order and layouts give torch's own tensors.
    layouts = {"Dense_0": {"kernel": (1, 0), "bias": None}, "Dense_1": {"kernel": (1, 0), "bias": None}}
    back = gcj.to_torch_state_dict(state, tx, jparams, order=FLAX_ORDER, layouts=layouts,
                                   param_groups=middle["param_groups"])
    final = opt.state_dict()
    for index in range(4):
      for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        np.testing.assert_allclose(back["state"][index][key].numpy(), final["state"][index][key].numpy(), rtol=1e-9)
      assert float(back["state"][index]["step"]) == 2 * HALF


def test_flax_kernel_layout_and_permutations():
  key = jax.tree_util.DictKey
  assert gcj.torch_state.flax_kernel_layout((key("Dense_0"), key("kernel")), np.zeros((3, 4))) == (1, 0)
  assert gcj.torch_state.flax_kernel_layout((key("Conv_0"), key("kernel")), np.zeros((3, 3, 2, 8))) == (2, 3, 1, 0)
  nnx_path = (key("linear"), key("kernel"), jax.tree_util.GetAttrKey("value"))
  assert gcj.torch_state.flax_kernel_layout(nnx_path, np.zeros((3, 4))) == (1, 0)
  assert gcj.torch_state.flax_kernel_layout((key("Dense_0"), key("bias")), np.zeros(4)) is None
  # A Flax Conv kernel (H, W, in, out) is torch's Conv2d weight (out, in, H, W) with its axes moved.
  weight = np.arange(8 * 2 * 3 * 3, dtype=float).reshape(8, 2, 3, 3)
  layout = gcj.torch_state.Layout.permutation((2, 3, 1, 0))
  kernel = layout.to_jax(weight)
  assert kernel.shape == (3, 3, 2, 8) and kernel[1, 2, 0, 5] == weight[5, 0, 1, 2]
  np.testing.assert_array_equal(layout.to_torch(kernel), weight)
  with pytest.raises(ValueError, match="not a permutation"):
    gcj.torch_state.Layout.permutation((0, 0))


@pytest.fixture(scope="module")
def adam_reference():
  with precision(np.float64):
    return reference(_torch_optimizer(torch.optim.Adam, dict(lr=0.01, amsgrad=True)), np.float64)


def _params64(ref):
  return jax.tree.map(jnp.asarray, ref.history[HALF - 1])


def test_blocks_are_found_by_type_wherever_they_sit(adam_reference):
  """Adam's state inside nested chains, after a clipping block, converts as in a plain `gcj.adam`."""
  tx = optax.chain(gcj.transforms.clip_grad_norm(1e9), optax.chain(gcj.adam(learning_rate=0.01, amsgrad=True)))
  with precision(np.float64):
    params = _params64(adam_reference)
    state = gcj.from_torch_state_dict(adam_reference.state_dict, tx, params)
    grads = jax.tree.map(jnp.asarray, adam_reference.grads[HALF])
    updates, _ = tx.update(grads, state, params)
    after = optax.apply_updates(params, updates)
    for name in NAMES:
      np.testing.assert_allclose(after[name], adam_reference.history[HALF][name], rtol=1e-12, atol=1e-14)
  with pytest.raises(TypeError, match=r"optax\..*ScaleByAdamState, which has no torch counterpart"):
    gcj.from_torch_state_dict(adam_reference.state_dict, optax.adam(0.01), params)


def test_another_optimizers_state_dict_is_rejected(adam_reference):
  with precision(np.float64):
    params = _params64(adam_reference)
    with pytest.raises(ValueError, match=r"has \['amsgrad'\].*not a torch RAdam"):
      gcj.from_torch_state_dict(adam_reference.state_dict, gcj.radam(), params)
    with pytest.raises(ValueError, match=r"lacks \['momentum_decay'\].*not a torch NAdam"):
      gcj.from_torch_state_dict(adam_reference.state_dict, gcj.nadam(), params)
    with pytest.raises(ValueError, match=r"amsgrad=True, but the optimizer of tx keeps no state for it"):
      gcj.from_torch_state_dict(adam_reference.state_dict, gcj.adam(), params)
    with pytest.raises(ValueError, match=r"lacks \['momentum', 'dampening'"):
      gcj.from_torch_state_dict(adam_reference.state_dict, gcj.sgd(momentum=0.9), params)


def test_momentum_mismatch_is_rejected():
  with precision(np.float64):
    ref = reference(_torch_optimizer(torch.optim.SGD, dict(lr=0.05, momentum=0.9)), np.float64)
    with pytest.raises(ValueError, match="momentum=0.9, but the optimizer of tx keeps no state for it"):
      gcj.from_torch_state_dict(ref.state_dict, gcj.sgd(learning_rate=0.05), _params64(ref))


def test_missing_and_extra_leaves_are_named(adam_reference):
  with precision(np.float64):
    params = _params64(adam_reference)
    broken = copy.deepcopy(adam_reference.state_dict)
    del broken["state"][2]  # NAMES[2] == "w1"
    with pytest.raises(ValueError, match=r"leaf \['w1'\] has no state in the state_dict"):
      gcj.from_torch_state_dict(broken, gcj.adam(amsgrad=True), params)
    broken = copy.deepcopy(adam_reference.state_dict)
    del broken["state"][1]["max_exp_avg_sq"]
    with pytest.raises(ValueError, match=r"leaf \['b2'\]: the state_dict lacks \['max_exp_avg_sq'\]"):
      gcj.from_torch_state_dict(broken, gcj.adam(amsgrad=True), params)
    broken = copy.deepcopy(adam_reference.state_dict)
    broken["state"][3]["step"] = torch.tensor(7.0)
    with pytest.raises(ValueError, match=r"leaf \['w2'\] is at step 7"):
      gcj.from_torch_state_dict(broken, gcj.adam(amsgrad=True), params)
    extra = {**params, "z": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"leaf \['z'\] is torch parameter 4, which no param group"):
      gcj.from_torch_state_dict(adam_reference.state_dict, gcj.adam(amsgrad=True), extra)
    fewer = {k: v for k, v in params.items() if k != "w2"}
    with pytest.raises(ValueError, match="torch parameter 3 .* is no leaf's"):
      gcj.from_torch_state_dict(adam_reference.state_dict, gcj.adam(amsgrad=True), fewer)
    with pytest.raises(ValueError, match=r"leaves \['b1'\] and \['b2'\] both have torch index 0"):
      gcj.from_torch_state_dict(adam_reference.state_dict, gcj.adam(amsgrad=True), params,
                                order={"b1": 0, "b2": 0, "w1": 1, "w2": 2})
    with pytest.raises(TypeError, match=r"entry for leaf \['w1'\] must be a non-negative int"):
      gcj.from_torch_state_dict(adam_reference.state_dict, gcj.adam(amsgrad=True), params,
                                order={"b1": 0, "b2": 1, "w1": "x", "w2": 3})


def test_recorded_hyperparameters_are_checked_strict_or_warned(adam_reference):
  with precision(np.float64):
    params = _params64(adam_reference)
    tx = gcj.param_groups(gcj.adam, "all", {"all": {}}, learning_rate=0.02, amsgrad=True)
    with pytest.raises(ValueError, match=r"param_groups\[0\] has lr=0.01, but param group .all. of tx has 0.02"):
      gcj.from_torch_state_dict(adam_reference.state_dict, tx, params)
    with pytest.warns(UserWarning, match="Continuing with tx's values"):
      state = gcj.from_torch_state_dict(adam_reference.state_dict, tx, params, strict=False)
    assert int(state.inner_states["all"].inner_state[0].count) == HALF
    wrong_groups = gcj.param_groups(gcj.adam, gcj.decay_label, {"decay": {}, "no_decay": {}}, learning_rate=0.01,
                                    amsgrad=True)
    with pytest.raises(ValueError, match="leaves of param group 'decay' are spread|holds leaves of both"):
      gcj.from_torch_state_dict(adam_reference.state_dict, wrong_groups, params,
                                order={"b1": 0, "w1": 1, "b2": 2, "w2": 3})


def test_plain_optimizer_to_torch_needs_its_hyperparameters(adam_reference):
  tx = gcj.adam(learning_rate=0.01, amsgrad=True)
  with precision(np.float64):
    params = _params64(adam_reference)
    state = gcj.from_torch_state_dict(adam_reference.state_dict, tx, params)
    with pytest.raises(ValueError, match=r"\['lr', 'betas', 'eps', 'weight_decay', 'maximize', "
                                         r"'decoupled_weight_decay'\] of the optimizer are unknown"):
      gcj.to_torch_state_dict(state, tx, params)
    with pytest.raises(ValueError, match="step=7, but the optimizer counts 50 steps"):
      gcj.to_torch_state_dict(state, tx, params, step=7, param_groups=adam_reference.state_dict["param_groups"])
    with pytest.raises(ValueError, match="amsgrad=False, but the optimizer of tx keeps state for it"):
      gcj.to_torch_state_dict(state, tx, params, param_groups={**adam_reference.state_dict["param_groups"][0],
                                                               "amsgrad": False})
    with pytest.raises(ValueError, match="not have the structure of tx.init"):
      gcj.to_torch_state_dict(state, gcj.adam(), params)


def test_numpy_state_dicts_need_no_torch(adam_reference):
  """Plain dicts of NumPy arrays and floats work, and converting imports no torch."""
  tx = gcj.adam(learning_rate=0.01, amsgrad=True)
  with precision(np.float64):
    params = _params64(adam_reference)
    from_tensors = gcj.from_torch_state_dict(adam_reference.state_dict, tx, params)
    as_numpy = gcj.to_torch_state_dict(from_tensors, tx, params, param_groups=adam_reference.state_dict["param_groups"],
                                       as_numpy=True)
    assert isinstance(as_numpy["state"][0]["exp_avg"], np.ndarray)
    _state_values_equal(gcj.from_torch_state_dict(as_numpy, tx, params), from_tensors)
  script = textwrap.dedent("""
      import sys
      import numpy as np, jax, jax.numpy as jnp
      import gradcore_jax as gcj
      params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
      sd = {"state": {i: {"step": 3.0, "exp_avg": np.full(s, 0.5), "exp_avg_sq": np.full(s, 0.25)}
                      for i, s in enumerate([(3,), (2, 3)])},
            "param_groups": [{"params": [0, 1], "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}]}
      state = gcj.from_torch_state_dict(sd, gcj.adam(), params)
      back = gcj.to_torch_state_dict(state, gcj.adam(), params, param_groups=sd["param_groups"], as_numpy=True)
      assert int(state[0].count) == 3 and float(back["state"][1]["exp_avg"][0, 0]) == 0.5
      assert "torch" not in sys.modules, "torch was imported"
  """)
  subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_before_the_first_step():
  """torch keeps no state before its first step (Adagrad excepted), and neither is written."""
  params = {k: jnp.ones(s) for k, s in SHAPES.items()}
  tp = [torch.nn.Parameter(torch.ones(SHAPES[k])) for k in NAMES]
  for cls, factory in ((torch.optim.Adam, gcj.adam), (torch.optim.SGD, lambda: gcj.sgd(momentum=0.9))):
    kwargs = {"momentum": 0.9, "lr": 1e-3} if cls is torch.optim.SGD else {}
    fresh = cls(tp, **kwargs).state_dict()
    tx = factory()
    _state_values_equal(gcj.from_torch_state_dict(fresh, tx, params), tx.init(params))
    assert gcj.to_torch_state_dict(tx.init(params), tx, params, param_groups=fresh["param_groups"])["state"] == {}
  fresh = torch.optim.Adagrad(tp, initial_accumulator_value=0.3).state_dict()
  tx = gcj.adagrad(initial_accumulator_value=0.3)
  _state_values_equal(gcj.from_torch_state_dict(fresh, tx, params), tx.init(params))
  written = gcj.to_torch_state_dict(tx.init(params), tx, params, param_groups=fresh["param_groups"], step=0)
  assert float(written["state"][0]["step"]) == 0 and float(written["state"][0]["sum"][0]) == pytest.approx(0.3)


def test_states_without_a_torch_counterpart_are_type_errors():
  params = {"w": jnp.ones((2, 3))}
  sd = {"state": {}, "param_groups": [{"params": [0], "lr": 0.1, "momentum": 0.9, "dampening": 0, "weight_decay": 0}]}
  with pytest.raises(TypeError, match="EmaMomentumState, which has no torch counterpart"):
    gcj.from_torch_state_dict(sd, gcj.sgd_ema(), params)
  masked = gcj.param_groups(gcj.adamw, "all", {"all": {"mask": {"w": True}}})
  with pytest.raises(TypeError, match=r"adamw\(mask=...\) has no torch counterpart"):
    gcj.to_torch_state_dict(masked.init(params), masked, params)


class ToyState(NamedTuple):
  count: jax.Array
  trace: Any
  scalar: jax.Array


def test_a_new_block_only_registers_a_converter():
  """Growth: a new optimizer's state converts once its type is registered."""
  toy = torch_state.TorchOptimizer("Toy", keys={"lr": torch_state.REQUIRED})
  converter = torch_state.StateConverter(toy, trees={"trace": "trace"}, scalars={"scalar": "prod"}, counters=("count",))

  def init(params):
    return ToyState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params), jnp.ones([]))

  def update(updates, state, params=None):
    trace = jax.tree.map(lambda t, g: 0.5 * t + g, state.trace, updates)
    return trace, ToyState(state.count + 1, trace, state.scalar * 0.9)

  tx = optax.GradientTransformation(init, update)
  params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
  state = tx.init(params)
  for _ in range(3):
    _, state = tx.update(params, state)
  with pytest.raises(TypeError, match="ToyState, which has no torch counterpart"):
    gcj.to_torch_state_dict(state, tx, params, as_numpy=True)
  torch_state.register_state_converter(ToyState, converter)
  try:
    exported = gcj.to_torch_state_dict(state, tx, params, param_groups={"lr": 0.1}, as_numpy=True)
    assert sorted(exported["state"][0]) == ["prod", "step", "trace"] and exported["param_groups"][0]["lr"] == 0.1
    _state_values_equal(gcj.from_torch_state_dict(exported, tx, params), state)
  finally:
    del torch_state._CONVERTERS[ToyState]
