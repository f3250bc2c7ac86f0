"""`gcj.with_state_dtype`: float32 optimizer state for bfloat16/float16 params.

Reference: the contract itself, "the wrapped optimizer equals the plain optimizer run on
float32 copies of the params and gradients, its updates cast to the param dtype", checked
bitwise against `gcj.adam` (whose float32 agreement with `torch.optim.Adam` is proved in
tests/test_optimizers_torch_parity.py); and the float16 failure of plain low-precision
state, shown as the reference behaviour the wrapper removes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import gradcore_jax as gcj

STEPS = 300


def _problem():
  """Full-batch linear regression, its targets exactly linear in the inputs."""
  keys = jax.random.split(jax.random.key(0), 3)
  inputs = jax.random.normal(keys[0], (64, 8))
  true_w = 0.5 * jax.random.normal(keys[1], (8,))
  targets = inputs @ true_w + 0.5
  params = {"w": jnp.zeros(8), "b": jnp.zeros(())}
  return inputs, targets, params


def _loss(params, inputs, targets):
  """A down-weighted squared error: gradients of ~1e-3, as deep float16 models see in their lower layers.

  Adam is invariant to the scale of the loss in exact arithmetic, so the float32 run of this
  loss converges; float16 state holds `(1 - b2) * g**2 ~ 1e-9`, which underflows to 0.
  """
  prediction = inputs @ params["w"] + params["b"]
  return 1e-3 * jnp.mean((prediction - targets) ** 2)


def _train(tx, dtype):
  """`STEPS` of `tx` on params and data of `dtype`; returns the loss curve (float32) and the last state."""
  inputs, targets, params = _problem()
  inputs, targets = inputs.astype(dtype), targets.astype(dtype)
  params = jax.tree.map(lambda p: p.astype(dtype), params)

  def step(carry, _):
    params, state = carry
    loss, grads = jax.value_and_grad(_loss)(params, inputs, targets)
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss.astype(jnp.float32)

  (params, state), losses = jax.jit(lambda c: lax.scan(step, c, None, length=STEPS))((params, tx.init(params)))
  return np.asarray(losses), params, state


def _leaf_dtypes(tree):
  return {jnp.dtype(leaf.dtype) for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)}


def test_plain_float16_adam_state_breaks_down():
  """The reference failure: float16 moments underflow (eps=1e-8 is 0 in float16) and the run blows up."""
  losses, params, _ = _train(gcj.adam(2e-2, eps=1e-8), jnp.float16)
  assert np.isfinite(losses[0]) and np.isnan(losses[-1])
  assert all(np.all(np.isnan(p)) for p in jax.tree.leaves(params))
  wide_losses, _, _ = _train(gcj.with_state_dtype(gcj.adam(2e-2, eps=1e-8)), jnp.float16)
  assert np.all(np.isfinite(wide_losses))  # the same run, float32 state


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_float32_state_trains_low_precision_params_without_nan(dtype):
  tx = gcj.with_state_dtype(gcj.adam(2e-2, eps=1e-8), jnp.float32)
  losses, params, state = _train(tx, dtype)
  assert np.all(np.isfinite(losses))
  assert all(p.dtype == dtype for p in jax.tree.leaves(params))
  assert _leaf_dtypes(state) == {jnp.dtype(jnp.float32)}
  assert losses[-1] < 1e-2 * losses[0]


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize(
    "make_tx",
    [
        lambda: gcj.adam(1e-2, eps=1e-8, amsgrad=True, weight_decay=1e-2),
        lambda: gcj.sgd(1e-2, momentum=0.9, nesterov=True),
        lambda: gcj.rmsprop(1e-3, centered=True, momentum=0.5),
        lambda: gcj.adafactor(1e-2),
    ],
    ids=["adam", "sgd", "rmsprop", "adafactor"],
)
def test_equals_the_optimizer_on_float32_copies_then_cast(make_tx, dtype):
  """The contract, bitwise: same updates (after the cast) and the same float32 state at every step."""
  tx = make_tx()
  wrapped = gcj.with_state_dtype(tx, jnp.float32)
  inputs, targets, params = _problem()
  inputs, targets = inputs.astype(dtype), targets.astype(dtype)
  params = jax.tree.map(lambda p: p.astype(dtype) + 0.1, params)
  to32 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32), tree)  # noqa: E731

  def step(carry, _):
    params, state, reference_state = carry
    grads = jax.grad(_loss)(params, inputs, targets)
    updates, state = wrapped.update(grads, state, params)
    reference, reference_state = tx.update(to32(grads), reference_state, to32(params))
    reference = jax.tree.map(lambda u, p: u.astype(p.dtype), reference, params)
    same = jnp.all(jnp.stack([jnp.all(a == b) for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(reference))]))
    same_state = jnp.all(
        jnp.stack([jnp.all(a == b) for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(reference_state))])
    )
    return (optax.apply_updates(params, updates), state, reference_state), (same, same_state)

  initial = (params, wrapped.init(params), tx.init(to32(params)))
  jax.tree.map(np.testing.assert_array_equal, initial[1], initial[2])
  (_, state, _), (same, same_state) = jax.jit(lambda c: lax.scan(step, c, None, length=50))(initial)
  assert bool(np.all(same)) and bool(np.all(same_state))
  assert _leaf_dtypes(state) <= {jnp.dtype(jnp.float32)}


def test_state_dtypes_fixed_under_multisteps_and_cond():
  """Both nestings of optax.MultiSteps run (its lax.cond needs both branches' dtypes to agree)."""
  params = {"w": jnp.ones(4, jnp.bfloat16), "h": jnp.ones((2, 3), jnp.float16)}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
  inner = gcj.with_state_dtype(optax.MultiSteps(gcj.adam(1e-2), every_k_schedule=3).gradient_transformation())
  outer = optax.MultiSteps(gcj.with_state_dtype(gcj.adam(1e-2)), every_k_schedule=3).gradient_transformation()
  for tx in (inner, outer):
    state = tx.init(params)
    structure = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    step = jax.jit(tx.update)
    for _ in range(7):
      updates, state = step(grads, state, params)
      assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == structure
      assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda p: p.dtype, params)
    moments = state.inner_opt_state if tx is outer else state
    assert jnp.dtype(jnp.float32) in _leaf_dtypes(moments)

  # A lax.cond choosing between a step and no step needs identical state types in both branches.
  tx = gcj.with_state_dtype(gcj.adam(1e-2))
  state = tx.init(params)
  skip = jax.jit(lambda flag, s: lax.cond(flag, lambda s: tx.update(grads, s, params)[1], lambda s: s, s))
  assert jax.tree.map(lambda x: x.dtype, skip(True, state)) == jax.tree.map(lambda x: x.dtype, state)


def test_wide_params_are_passed_through_and_none_gradients_kept():
  tx = gcj.adam(1e-2)
  wrapped = gcj.with_state_dtype(tx)
  params = {"w": jnp.ones(3), "b": jnp.ones(2, jnp.bfloat16)}
  grads = {"w": jnp.full(3, 0.5), "b": None}
  updates, state = wrapped.update(grads, wrapped.init(params), params)
  assert updates["b"] is None
  assert updates["w"].dtype == jnp.float32
  expected, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates["w"], expected["w"])
  assert state[0].mu["b"].dtype == jnp.float32  # the chain's Adam block


def test_bad_arguments_are_named():
  with pytest.raises(TypeError, match="tx"):
    gcj.with_state_dtype(lambda g: g)
  with pytest.raises(TypeError, match="dtype"):
    gcj.with_state_dtype(gcj.adam(), jnp.int32)
  with pytest.raises(TypeError, match="dtype"):
    gcj.with_state_dtype(gcj.adam(), "not a dtype")


def test_state_memory_doubles_for_bfloat16_params():
  """`gcj.state_memory` sizes the float32 state without allocating it: Adam's two moments, 4 bytes each."""
  params = {"w": jax.ShapeDtypeStruct((256, 64), jnp.bfloat16)}
  tx = gcj.with_state_dtype(gcj.adam(1e-3))
  report = gcj.state_memory(jax.eval_shape(tx.init, params), params)
  assert report.multiple == pytest.approx(4.0, abs=1e-3)  # 2 moments x (4 bytes / 2 bytes)
  direct = tx.init(params)  # ShapeDtypeStruct leaves pass through the wrapper too
  assert gcj.state_memory(direct, params).state_bytes == report.state_bytes
