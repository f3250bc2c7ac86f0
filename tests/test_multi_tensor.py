"""Tests of `gradcore_jax.multi_tensor.multi_tensor`.

Equality is **bitwise** for every gradcore_jax optimizer it accepts (it refuses Adafactor
and Muon, whose rules depend on each leaf's shape) in jitted steps: packing changes
where an element lives, not the float operations applied to it, and the shared scalars
(bias corrections, schedules) are computed once either way. Comparisons run under `jit`
because op-by-op execution compiles every operation alone, and XLA rewrites some of them
by operand shape (a division by a scalar becomes a multiplication by its reciprocal,
except for 0-d operands). Two cases agree to float rounding instead: hyperparameters
injected as arrays (XLA then compiles short and long loops differently enough to move a
rare last bit) and reductions over the whole tree (a global norm sums in another order).
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gradcore_jax as gcj
from gradcore_jax.multi_tensor import MultiTensorState
from gradcore_jax.multi_tensor import multi_tensor

STEPS = 25
LAYERS = 16  # 32 small leaves of varied shapes; 40 leaves in all with the scalars, bfloat16 and large ones
MAX_LEAF_SIZE = 256  # small, so that the test tree has both packed and large leaves

OPTIMIZERS = {
    "sgd": lambda: gcj.sgd(1e-2, weight_decay=0.1),
    "sgd_nesterov": lambda: gcj.sgd(1e-2, momentum=0.9, nesterov=True, weight_decay=0.1),
    "sgd_ema": lambda: gcj.sgd_ema(1e-2, beta=0.9),
    "rmsprop": lambda: gcj.rmsprop(1e-2, momentum=0.9, centered=True, weight_decay=0.1),
    "adam": lambda: gcj.adam(1e-2, weight_decay=0.1, amsgrad=True),
    "adamw": lambda: gcj.adamw(optax.exponential_decay(1e-2, 10, 0.5)),
    "adagrad": lambda: gcj.adagrad(1e-2, lr_decay=0.01, initial_accumulator_value=0.1),
    "adadelta": lambda: gcj.adadelta(weight_decay=0.1),
    "adamax": lambda: gcj.adamax(maximize=True),
    "nadam": lambda: gcj.nadam(weight_decay=0.1),
    "radam": lambda: gcj.radam(),
    "rprop": lambda: gcj.rprop(1e-2, etas=(0.4, 1.3), step_sizes=(1e-4, 1.0)),
    "asgd": lambda: gcj.asgd(1e-2, t0=10.0, weight_decay=0.1),  # averaging from update 12 on
    # adafactor and muon are refused: their rules depend on each leaf's shape (test_optimizers_more.py).
}


def _tree(seed: int = 0) -> dict[str, Any]:
  """40 leaves: vectors, matrices, scalars, a bfloat16 group and leaves above MAX_LEAF_SIZE."""
  rng = np.random.default_rng(seed)
  normal = lambda shape, dtype=jnp.float32: jnp.asarray(rng.standard_normal(shape), dtype)  # noqa: E731
  tree: dict[str, Any] = {f"layer_{i:03d}": {"w": normal((i % 5 + 1, 7)), "b": normal((i % 3 + 2,))} for i in range(LAYERS)}
  tree["scales"] = [normal(()) for _ in range(4)]
  tree["half"] = {"w": normal((6, 4), jnp.bfloat16), "b": normal((4,), jnp.bfloat16)}
  tree["large"] = {"w": normal((40, 30)), "v": normal((300,))}
  return tree


def _step_fn(tx: optax.GradientTransformation):
  def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def _step(tx: optax.GradientTransformation):
  return jax.jit(_step_fn(tx))


def _train(tx: optax.GradientTransformation, params: Any, steps: int = STEPS) -> Any:
  step, state = _step(tx), tx.init(params)
  for t in range(steps):
    params, state = step(params, state, _tree(seed=100 + t))
  return params


# The default run checks the optimizers whose states differ most in kind (momentum, centered averages,
# amsgrad maxima with a count, a schedule's count, NAdam's float product, Rprop's step sizes, ASGD's
# average and float scalars); the others, whose states repeat those kinds, are the `slow` tier's.
SLOW = frozenset({"sgd", "sgd_ema", "adagrad", "adadelta", "adamax", "radam"})


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in OPTIMIZERS])
def test_bitwise_equal_to_the_wrapped_optimizer(name: str) -> None:
  params = _tree()
  assert len(jax.tree.leaves(params)) == 40
  expected = _train(OPTIMIZERS[name](), params)
  got = _train(multi_tensor(OPTIMIZERS[name](), max_leaf_size=MAX_LEAF_SIZE), params)
  chex.assert_trees_all_equal(got, expected)
  chex.assert_trees_all_equal_dtypes(got, expected)


def test_default_threshold_packs_everything_small_and_is_equal() -> None:
  params = _tree()
  chex.assert_trees_all_equal(_train(multi_tensor(gcj.adam(1e-2)), params), _train(gcj.adam(1e-2), params))


def test_global_norm_agrees_to_rounding() -> None:
  # SGD, not Adam: Adam divides by |g| and would magnify the norm's last-bit differences.
  make = lambda: optax.chain(optax.clip_by_global_norm(1.0), gcj.sgd(1e-2, momentum=0.9))  # noqa: E731
  params = _tree()
  chex.assert_trees_all_close(_train(multi_tensor(make()), params), _train(make(), params), rtol=1e-5, atol=1e-6)


def test_state_layout_groups_small_leaves_by_dtype() -> None:
  params = _tree()
  state = multi_tensor(gcj.adam(), max_leaf_size=MAX_LEAF_SIZE).init(params)
  assert isinstance(state, MultiTensorState)
  flats, large = state.inner[0].mu  # groups in the order of their first leaf: "half" sorts first
  small_f32 = [x.size for x in jax.tree.leaves(params) if x.dtype == jnp.float32 and x.size <= MAX_LEAF_SIZE]
  assert [(f.dtype, f.shape) for f in flats] == [(jnp.bfloat16, (28,)), (jnp.float32, (sum(small_f32),))]
  assert [x.shape for x in large] == [(300,), (40, 30)]
  assert [len(group) for group in state.offsets] == [2, len(small_f32)]
  assert all(o.dtype == jnp.int32 and o.shape == () for o in jax.tree.leaves(state.offsets))


def test_init_on_shape_structs_matches_init_on_arrays() -> None:
  params = _tree()
  tx = multi_tensor(gcj.adamw())
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  chex.assert_trees_all_equal_shapes_and_dtypes(tx.init(shapes), tx.init(params))
  chex.assert_trees_all_equal_shapes_and_dtypes(jax.eval_shape(tx.init, params), tx.init(params))


def test_params_are_needed_only_when_the_optimizer_needs_them() -> None:
  params, grads = _tree(), _tree(1)
  adam = multi_tensor(gcj.adam())
  updates, _ = jax.jit(adam.update)(grads, adam.init(params))
  chex.assert_trees_all_equal(updates, jax.jit(gcj.adam().update)(grads, gcj.adam().init(params))[0])
  adamw = multi_tensor(gcj.adamw())
  with pytest.raises(ValueError, match="needs the current parameters"):
    adamw.update(grads, adamw.init(params))


def test_none_gradient_of_a_packed_leaf_raises_clearly() -> None:
  params = _tree()
  grads = _tree(1)
  grads["layer_003"]["b"] = None
  tx = multi_tensor(gcj.adam())
  for args in ((grads, tx.init(params), params), (grads, tx.init(params))):
    with pytest.raises(ValueError, match=r"\['layer_003'\]\['b'\] is None"):
      tx.update(*args)


def test_none_gradient_of_a_large_leaf_is_left_to_the_optimizer() -> None:
  params, grads = _tree(), _tree(1)
  grads["large"]["w"] = None
  tx, packed = gcj.adam(1e-2), multi_tensor(gcj.adam(1e-2), max_leaf_size=MAX_LEAF_SIZE)
  updates, state = jax.jit(packed.update)(grads, packed.init(params), params)
  assert updates["large"]["w"] is None
  chex.assert_trees_all_equal(updates, jax.jit(tx.update)(grads, tx.init(params), params)[0])
  np.testing.assert_array_equal(state.inner[0].mu[1][1], 0)  # the large leaves are ("v", "w")


def test_masked_leaves_pass_through() -> None:
  params = _tree()
  mask = jax.tree.map(lambda x: x.ndim == 2, params)
  expected = _train(optax.masked(gcj.adam(1e-2), mask), params, steps=5)
  chex.assert_trees_all_equal(_train(optax.masked(multi_tensor(gcj.adam(1e-2)), mask), params, steps=5), expected)


def test_injected_hyperparams_and_extra_args_pass_through() -> None:
  params, grads = _tree(), _tree(1)
  # Hyperparameters held as arrays: XLA compiles the short per-leaf loops and the long packed
  # one differently enough that an element in a thousand may differ in its last bit.
  inject = lambda: optax.inject_hyperparams(gcj.adam)(learning_rate=1e-2)  # noqa: E731
  chex.assert_trees_all_close(_train(multi_tensor(inject()), params, steps=5), _train(inject(), params, steps=5), rtol=1e-6)
  plateau = lambda: optax.chain(gcj.adam(1e-2), optax.contrib.reduce_on_plateau(patience=1))  # noqa: E731
  tx, packed = plateau(), multi_tensor(plateau())
  expected, _ = jax.jit(tx.update)(grads, tx.init(params), params, value=jnp.float32(1.0))
  got, _ = jax.jit(packed.update)(grads, packed.init(params), params, value=jnp.float32(1.0))
  chex.assert_trees_all_equal(got, expected)


def test_flax_nnx_optimizer() -> None:
  class Model(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
      self.hidden, self.out = nnx.Linear(3, 8, rngs=rngs), nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
      return self.out(nnx.relu(self.hidden(x)))

  def train(tx: optax.GradientTransformation) -> Any:
    model = Model(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    for t in range(5):
      x = jnp.full((4, 3), t, jnp.float32)
      optimizer.update(model, nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model))
    return nnx.state(model, nnx.Param)

  chex.assert_trees_all_equal(train(multi_tensor(gcj.adamw(1e-2))), train(gcj.adamw(1e-2)))


def test_mismatched_trees_and_bad_arguments_raise() -> None:
  params = _tree()
  tx = multi_tensor(gcj.adam())
  state = tx.init({"a": jnp.ones(3)})
  with pytest.raises(ValueError, match=r"gradients have 40 leaves, but the params that .* had 1; .* only in the params: \['a'\]"):
    tx.update(params, state)
  with pytest.raises(ValueError, match=r"the param at \['a'\] is float32\[4\], but .* had float32\[3\]"):
    tx.update({"a": jnp.ones(3)}, state, {"a": jnp.ones(4)})
  for bad in (-1, 1.5, True):
    with pytest.raises(ValueError, match="max_leaf_size"):
      multi_tensor(gcj.adam(), max_leaf_size=bad)


def test_explicitly_sharded_leaves_are_not_packed() -> None:
  mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
  with jax.set_mesh(mesh):
    params = {"sharded": jax.sharding.reshard(jnp.ones((4, 3)), jax.sharding.PartitionSpec("x")), "b": jnp.ones(3)}
    state = multi_tensor(gcj.adam()).init(params)
  flats, large = state.inner[0].mu
  assert [f.shape for f in flats] == [(3,)] and [x.shape for x in large] == [(4, 3)]


# --------------------------------------------------------------------------------------
# What packing saves: traced work and compiled loops that no longer grow with the leaves.

LEAVES = 200


def _many_leaves() -> dict[str, jax.Array]:
  return {f"leaf_{i:03d}": jnp.full((64,), 0.5, jnp.float32) for i in range(LEAVES)}


def _counting(tx: optax.GradientTransformation, seen: list[int]) -> optax.GradientTransformation:
  """`tx`, recording how many leaves each traced `update` receives."""

  def update(updates: Any, state: Any, params: Any = None, **extra: Any) -> Any:
    seen.append(len(jax.tree.leaves(updates)))
    return tx.update(updates, state, params, **extra)

  return optax.GradientTransformationExtraArgs(tx.init, update)


def test_inner_optimizer_is_traced_once_on_one_buffer_and_not_retraced() -> None:
  params = _many_leaves()
  seen: list[int] = []
  tx = multi_tensor(_counting(gcj.adam(), seen))
  step, state = _step(tx), tx.init(params)
  for t in range(3):
    params, state = step(params, state, jax.tree.map(lambda x: x * t, params))
  assert seen == [1]  # traced once, on the single float32 buffer
  assert step._cache_size() == 1


def _compiled_fusions(tx: optax.GradientTransformation) -> tuple[int, int]:
  """Equations of the traced step and loop fusions of the compiled step."""
  params = _many_leaves()
  state = tx.init(params)
  equations = len(jax.make_jaxpr(_step_fn(tx))(params, state, params).jaxpr.eqns)
  hlo = _step(tx).lower(params, state, params).compile().as_text()
  return equations, hlo.split("ENTRY")[1].count(" fusion(")


def test_traced_and_compiled_work_per_leaf_shrinks() -> None:
  plain_equations, plain_fusions = _compiled_fusions(gcj.adam())
  packed_equations, packed_fusions = _compiled_fusions(multi_tensor(gcj.adam()))
  assert plain_fusions >= 3 * LEAVES  # Adam: new m, new v, then the params, for every leaf
  assert packed_fusions <= LEAVES + 10  # one loop per leaf (the params it writes) and a few flat ones
  assert packed_equations < plain_equations / 2


def test_checks_what_the_wrapped_optimizer_checks_before_packing() -> None:
  """A (4, 1) gradient for a (1, 4) param fills the same 4 slots of a buffer: the plain optimizer
  raises, and so must the wrapper (it used to return a (4, 1) update that broadcast the param to (4, 4))."""
  params = {"w": jnp.zeros((1, 4)), "b": jnp.zeros(3)}
  grads = {"w": jnp.ones((4, 1)), "b": jnp.ones(3)}
  plain, packed = gcj.adam(1e-2), multi_tensor(gcj.adam(1e-2))
  with pytest.raises(ValueError, match=r"\['w'\] has shape \(4, 1\)"):
    plain.update(grads, plain.init(params))
  for args in ((grads, packed.init(params)), (grads, packed.init(params), params)):
    with pytest.raises(ValueError, match=r"gradient at \['w'\] is float32\[4,1\], but the params .* had float32\[1,4\]"):
      jax.jit(packed.update)(*args)
  half = {"w": jnp.ones((1, 4), jnp.bfloat16), "b": jnp.ones(3)}
  with pytest.raises(ValueError, match=r"gradient at \['w'\] is bfloat16\[1,4\], but .* had float32\[1,4\]"):
    packed.update(half, packed.init(params))
  with pytest.raises(ValueError, match=r"only in the gradients: \['extra'\]"):
    packed.update({**grads, "extra": jnp.ones(2)}, packed.init(params))
