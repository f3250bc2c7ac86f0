"""Property tests (hypothesis) for every optimizer over random trees, dtypes and hyperparameters.

Each example draws a tree (nested dicts, lists and tuples, up to 3 leaves of rank 0 to 2),
a dtype per leaf (float16, bfloat16 and float32 mixed, or float64 throughout, under
`jax.enable_x64(True)` and never globally), valid hyperparameters, params and `STEPS`
gradients, and checks:

* `init` is idempotent and depends only on shapes and dtypes;
* every update is finite, shaped and typed like its gradient;
* the state keeps its structure, shapes and dtypes across updates;
* the same steps under `jax.jit` agree with the eager ones.

The input domain is where these hold in exact arithmetic *and* in the leaf's dtype:
|values| <= `MAX_ABS` (float16's 65504 bounds `g**2` and the accumulators), and `eps > 0`
(with `eps = 0` a zero gradient gives 0/0, as in torch). When a tree holds a float16
leaf, `eps >= FLOAT16_EPS`: the second moment `(1 - b2) g**2` of a small float16 gradient
underflows to 0, and an eps that float16 cannot hold (1e-8) then divides by zero; and
`b2 >= b1` for the Adam family: with a second moment that forgets faster than the first,
`m / sqrt(v)` (Adamax: `m / u`) reaches `MAX_ABS / eps`, past float16's range. Both are
limits of keeping the state in float16, shared with torch (whose float16 Adam turns a
1e-3 gradient into -inf), not of the rules. Likewise centered RMSprop, whose variance
estimate cancels to exactly 0 for repeated gradients, takes `eps >= CENTERED_FLOAT16_EPS`
in float16 so that `MAX_ABS / eps` stays finite.

Examples are drawn deterministically (`derandomize=True`), so CI runs the same ones every
time; set GRADCORE_PROPERTY_RANDOM=1 to explore new ones. The default run takes `EXAMPLES`
per optimizer (most of their cost is eager mode compiling each operation for each new shape
and dtype); the `slow` tier (`pytest -m slow`) takes `SLOW_EXAMPLES`, and
GRADCORE_PROPERTY_EXAMPLES sets the default run's number.
"""

from __future__ import annotations

import dataclasses
import inspect
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gradcore_jax as gcj

EXAMPLES = int(os.environ.get("GRADCORE_PROPERTY_EXAMPLES", "3"))
SLOW_EXAMPLES = 30
DERANDOMIZE = os.environ.get("GRADCORE_PROPERTY_RANDOM", "") != "1"
STEPS = 7  # RAdam rectifies from step 6 on
MAX_ABS = 100.0
FLOAT16_EPS = 1e-4
ADAFACTOR_FLOAT16_EPS1 = 1e-3
CENTERED_FLOAT16_EPS = 2 * MAX_ABS / 65504  # centered RMSprop's g / eps within float16's range
# jit against eager, relative to the leaf's largest magnitude: XLA may keep excess
# precision inside a fused float16/bfloat16 computation that eager mode rounds op by op.
JIT_TOLERANCE = {jnp.float16: 1e-2, jnp.bfloat16: 4e-2, jnp.float32: 1e-5, jnp.float64: 1e-12}


@dataclasses.dataclass(frozen=True)
class Leaf:
  """A leaf's shape and dtype (not a pytree node, so a tree of them has these as leaves)."""

  shape: tuple[int, ...]
  dtype: type


# A small pool of shapes and one x64 family: eager mode compiles every primitive for every
# new (shape, dtype), and a small pool pays that once per suite rather than per example.
SHAPES = [(), (3,), (1, 3), (3, 3)]
FAMILIES = [(jnp.float16, jnp.bfloat16, jnp.float32), (jnp.float64,)]


def _leaves(family, shapes=SHAPES) -> st.SearchStrategy[Leaf]:
  return st.builds(Leaf, st.sampled_from(shapes), st.sampled_from(family))


def _trees(family, shapes=SHAPES) -> st.SearchStrategy:
  """Nested dicts, lists and tuples of up to 3 leaves, each of a dtype drawn from `family`."""
  return st.recursive(
      _leaves(family, shapes),
      lambda children: st.one_of(
          st.lists(children, min_size=1, max_size=3),
          st.lists(children, min_size=1, max_size=3).map(tuple),
          st.dictionaries(st.sampled_from("abcd"), children, min_size=1, max_size=3),
      ),
      max_leaves=3,
  )


def _values(leaf: Leaf) -> st.SearchStrategy[np.ndarray]:
  """Finite values of `leaf`'s dtype, zeros and subnormals included (bfloat16 via float32)."""
  numpy_dtype = {jnp.float16: np.float16, jnp.float64: np.float64}.get(leaf.dtype, np.float32)
  width = np.dtype(numpy_dtype).itemsize * 8
  elements = st.floats(-MAX_ABS, MAX_ABS, width=width)
  return hnp.arrays(numpy_dtype, leaf.shape, elements=elements).map(lambda a: np.asarray(a, leaf.dtype))


def _tree_of_values(draw, spec):
  return jax.tree.map(lambda leaf: draw(_values(leaf)), spec)


# ------------------------------------------------------------------ valid hyperparameters

decay = st.floats(0.0, 0.999)
weight_decay = st.one_of(st.just(0.0), st.floats(1e-4, 0.1))
constant_lr = st.one_of(st.just(0.0), st.floats(1e-4, 1.0))
learning_rate = st.one_of(
    constant_lr,
    st.builds(lambda lr, rate: optax.exponential_decay(lr, 1, rate), constant_lr, st.floats(0.5, 1.0)),
)


def _eps(half: bool) -> st.SearchStrategy[float]:
  return st.floats(FLOAT16_EPS if half else 1e-8, 1e-2)


def _sgd(half):
  del half
  return st.one_of(
      st.fixed_dictionaries({"momentum": st.floats(0.0, 0.99), "dampening": st.floats(0.0, 1.0)}),
      st.fixed_dictionaries({"momentum": st.floats(0.01, 0.99), "nesterov": st.just(True)}),
  )


@st.composite
def _adam_like(draw, half, **extra):
  """b1, b2 and eps; in float16 also `b2 >= b1` (see the module docstring)."""
  b1 = draw(decay)
  b2 = draw(st.floats(b1 if half else 0.0, 0.9999))
  return {"b1": b1, "b2": b2, "eps": draw(_eps(half)), **{k: draw(v) for k, v in extra.items()}}


HYPERPARAMETERS = {
    "sgd": _sgd,
    "sgd_ema": lambda half: st.fixed_dictionaries({"beta": decay}),
    "rmsprop": lambda half: st.one_of(
        st.fixed_dictionaries({"alpha": decay, "eps": _eps(half), "momentum": st.floats(0.0, 0.99), "centered": st.just(False)}),
        # Centered: the variance estimate E[g^2] - E[g]^2 cancels to exactly 0 for repeated
        # gradients, so the step is g / eps; in float16 that must stay under 65504.
        st.fixed_dictionaries(
            {"alpha": decay, "eps": st.floats(CENTERED_FLOAT16_EPS if half else 1e-8, 1e-2), "momentum": st.floats(0.0, 0.99), "centered": st.just(True)}
        ),
    ),
    "adam": lambda half: _adam_like(half, amsgrad=st.booleans()),
    "adamw": lambda half: _adam_like(half, amsgrad=st.booleans()),
    "adagrad": lambda half: st.fixed_dictionaries(
        {"lr_decay": st.floats(0.0, 1.0), "initial_accumulator_value": st.floats(0.0, 1.0), "eps": _eps(half)}
    ),
    "adadelta": lambda half: st.fixed_dictionaries({"rho": decay, "eps": _eps(half)}),
    "adamax": _adam_like,
    "nadam": lambda half: _adam_like(half, momentum_decay=st.floats(0.0, 0.1)),
    "radam": _adam_like,
    "rprop": lambda half: _rprop(),
    "asgd": lambda half: st.fixed_dictionaries(
        {"lambd": st.floats(0.0, 1.0), "alpha": st.floats(0.0, 1.0), "t0": st.one_of(st.floats(0.0, 8.0), st.just(1e6))}
    ),
    "adafactor": lambda half: st.fixed_dictionaries(
        {
            "beta2_decay": st.floats(-1.0, 0.0),
            "eps": st.tuples(st.one_of(st.none(), _adafactor_eps1(half)), st.floats(0.0, 1e-2)),
            "d": st.floats(1.0, 10.0),
        }
    ),
    "muon": lambda half: st.fixed_dictionaries(
        {
            "momentum": st.floats(0.0, 0.99),
            "nesterov": st.booleans(),
            "eps": st.floats(1e-8, 1e-3),
            "ns_steps": st.integers(0, 6),
            "adjust_lr_fn": st.sampled_from([None, "original", "match_rms_adamw"]),
        }
    ),
}


@st.composite
def _rprop(draw):
  """`0 < eta_minus < 1 < eta_plus` and `0 <= min <= max` step sizes."""
  low = draw(st.floats(0.0, 1e-3))
  return {
      "etas": (draw(st.floats(0.01, 0.99)), draw(st.floats(1.01, 3.0))),
      "step_sizes": (low, draw(st.floats(low, 50.0))),
  }


def _adafactor_eps1(half: bool) -> st.SearchStrategy[float]:
  """Adafactor floors the second moment at `eps1**2`: in float16 that floor must not round to 0
  (2**-24, its smallest subnormal, is 2.4e-4 squared), or a zero gradient gives 0/0, as in torch."""
  return st.floats(ADAFACTOR_FLOAT16_EPS1 if half else 1e-8, 1e-2)


# Muon orthogonalises matrices and takes 2-D leaves only, as torch's Muon does.
MATRIX_SHAPES = {"muon": [shape for shape in SHAPES if len(shape) == 2]}
# Rprop reads its learning rate once, as the initial step size, and refuses a schedule (TypeError).
CONSTANT_LEARNING_RATE = frozenset({"rprop"})


def test_every_optimizer_has_hyperparameters():
  assert set(HYPERPARAMETERS) == set(gcj.optimizers.names())


@st.composite
def problems(draw, name: str):
  """(tree of Leaf, optimizer kwargs, params, [grads] * STEPS), all valid for `name`.

  `weight_decay` and `maximize` are drawn where the optimizer has them, as torch's do
  (torch's Rprop has no weight decay, its Muon no `maximize`).
  """
  spec = draw(_trees(draw(st.sampled_from(FAMILIES)), MATRIX_SHAPES.get(name, SHAPES)))
  half = any(leaf.dtype == jnp.float16 for leaf in jax.tree.leaves(spec))
  accepted = inspect.signature(gcj.optimizers.get(name)).parameters
  kwargs = {"learning_rate": draw(constant_lr if name in CONSTANT_LEARNING_RATE else learning_rate)}
  if "weight_decay" in accepted:
    kwargs["weight_decay"] = draw(weight_decay)
  if "maximize" in accepted:
    kwargs["maximize"] = draw(st.booleans())
  kwargs.update(draw(HYPERPARAMETERS[name](half)))
  params = _tree_of_values(draw, spec)
  grads = [_tree_of_values(draw, spec) for _ in range(STEPS)]
  return spec, kwargs, params, grads


# ---------------------------------------------------------------------------- the checks


def _assert_like(tree, reference, what: str) -> None:
  """Same structure, and leaf by leaf the same shape and dtype."""
  chex.assert_trees_all_equal_structs(tree, reference)
  for (path, b), a in zip(jax.tree_util.tree_flatten_with_path(reference)[0], jax.tree.leaves(tree)):
    where = jax.tree_util.keystr(path)
    assert (a.shape, a.dtype) == (b.shape, b.dtype), f"{what} at {where}: {a.shape} {a.dtype}, not {b.shape} {b.dtype}"


def _run(tx, params, grads, update):
  """`STEPS` updates through `update`; checks every one; returns [(params, their update)] per step."""
  state0 = tx.init(params)
  state, history = state0, []
  for g in grads:
    updates, state = update(g, state, params)
    _assert_like(updates, g, "update")
    chex.assert_tree_all_finite(updates)
    _assert_like(state, state0, "state")
    history.append((params, updates))
    params = optax.apply_updates(params, updates)
  return history


# ASGD outputs `p - p_new` so that `p + update` is torch's `p_new`: a difference of two nearly
# equal params, whose rounding is that of `p`, not of the (much smaller) update. Jit and eager
# mode may round `p * (1 - lambd*eta) - eta*g` differently (a fused multiply-add), so its
# updates agree to the params' precision.
UPDATE_IS_A_PARAM_DIFFERENCE = frozenset({"asgd"})


def _assert_jit_agrees(eager, jitted, spec, name: str) -> None:
  for step, ((params, a_tree), (_, b_tree)) in enumerate(zip(eager, jitted)):
    for leaf, p, a, b in zip(jax.tree.leaves(spec), jax.tree.leaves(params), jax.tree.leaves(a_tree), jax.tree.leaves(b_tree)):
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
      tol = JIT_TOLERANCE[leaf.dtype]
      scale = np.max(np.abs(a), initial=0.0)
      if name in UPDATE_IS_A_PARAM_DIFFERENCE:
        scale = max(scale, np.max(np.abs(np.asarray(p, np.float64)), initial=0.0))
      np.testing.assert_allclose(b, a, rtol=tol, atol=tol * scale, err_msg=f"step {step}")


def _ill_conditioned(name: str, kwargs: dict) -> bool:
  """Centered RMSprop with a short memory: its variance `v - gbar**2` is the difference of two
  nearly equal numbers (with `alpha = 0` they are equal), so the last bit of rounding, which
  jit and eager mode are free to differ in (XLA fuses `v - m * m` into one multiply-add),
  moves the update anywhere between `g / eps` and `g / (sqrt(rounding) + eps)`. Both results
  are finite (checked); they need not agree."""
  return name == "rmsprop" and kwargs["centered"] and kwargs["alpha"] < 0.9


@pytest.mark.parametrize("examples", [EXAMPLES, pytest.param(SLOW_EXAMPLES, marks=pytest.mark.slow)], ids=["quick", "many"])
@pytest.mark.parametrize("name", gcj.optimizers.names())
def test_optimizer_properties(name, examples):
  @settings(max_examples=examples, deadline=None, derandomize=DERANDOMIZE, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
  @given(problem=problems(name))
  def check(problem):
    spec, kwargs, params_np, grads_np = problem
    with jax.enable_x64(any(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(spec))):
      params = jax.tree.map(jnp.asarray, params_np)
      grads = [jax.tree.map(jnp.asarray, g) for g in grads_np]
      tx = gcj.optimizers.get(name)(**kwargs)

      state = tx.init(params)
      chex.assert_trees_all_equal(tx.init(params), state)
      chex.assert_trees_all_equal(tx.init(grads[0]), state)  # other values, same shapes and dtypes

      eager = _run(tx, params, grads, tx.update)
      jitted = _run(tx, params, grads, jax.jit(tx.update))
      if not _ill_conditioned(name, kwargs):
        _assert_jit_agrees(eager, jitted, spec, name)

  check()


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_centered_rmsprop_with_a_constant_gradient_stays_finite_under_jit(alpha):
  """Found by the property test. Here `v - gbar**2` is 0 (alpha = 0) or below rounding (0.5**t),
  and the fused multiply-add XLA makes of it came out negative, NaN after the root, until the
  variance was clamped at 0."""
  tx = gcj.rmsprop(1e-2, alpha=alpha, centered=True)
  params = jnp.zeros((64,), jnp.float32)
  grads = jnp.linspace(-9.0, 9.0, 64, dtype=jnp.float32)
  step = jax.jit(tx.update)
  state = tx.init(params)
  for _ in range(50):
    updates, state = step(grads, state, params)
    chex.assert_tree_all_finite(updates)
