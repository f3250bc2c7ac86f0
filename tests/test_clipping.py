"""`transforms.clip_grad_norm` / `clip_grad_value` against live `torch.nn.utils.clip_grad_norm_` / `clip_grad_value_`.

The reference is torch itself: the same gradient arrays are clipped by both, and the
clipped gradients and torch's returned total norm are compared, for several norm types
(2, 1, 3.5, inf, -inf, 0), norms above and below `max_norm`, and trees with 0-d, 1-d and
2-d leaves, in float64 and float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import gradcore_jax as gcj
from gradcore_jax import transforms

SHAPES = {"scalar": (), "bias": (7,), "kernel": (5, 3)}


def _grads(seed: int, dtype, scale: float) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {k: np.asarray(scale * rng.standard_normal(s), dtype=dtype) for k, s in SHAPES.items()}


def _torch_clip(grads: dict[str, np.ndarray], max_norm: float, norm_type: float):
  params = {k: torch.zeros(v.shape, dtype=torch.from_numpy(np.asarray(v)).dtype, requires_grad=True) for k, v in grads.items()}
  for k, p in params.items():
    p.grad = torch.from_numpy(np.array(grads[k]))
  norm = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm, norm_type=norm_type, foreach=False)
  return {k: p.grad.numpy() for k, p in params.items()}, norm.item()


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-13), (np.float32, 1e-6)], ids=["f64", "f32"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.5, math.inf, -math.inf, 0.0])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_clip_grad_norm_equals_torch(dtype, rtol, norm_type, scale) -> None:
  grads = _grads(int(scale * 7) + int(norm_type if math.isfinite(norm_type) else 9), dtype, scale)
  max_norm = 0.7
  want, want_norm = _torch_clip(grads, max_norm, norm_type)
  with jax.enable_x64(dtype == np.float64):
    tx = transforms.clip_grad_norm(max_norm, norm_type=norm_type)
    jgrads = jax.tree.map(jnp.asarray, grads)
    got, state = jax.jit(tx.update)(jgrads, tx.init(jgrads))
    for k in SHAPES:
      assert got[k].dtype == dtype
      np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=rtol, atol=0, err_msg=k)
    np.testing.assert_allclose(float(state.total_norm), want_norm, rtol=rtol)


def test_clip_grad_value_equals_torch() -> None:
  grads = _grads(3, np.float64, 2.0)
  params = {k: torch.zeros(v.shape, dtype=torch.float64, requires_grad=True) for k, v in grads.items()}
  for k, p in params.items():
    p.grad = torch.from_numpy(grads[k].copy())
  torch.nn.utils.clip_grad_value_(list(params.values()), 0.5)
  with jax.enable_x64(True):
    tx = transforms.clip_grad_value(0.5)
    got, _ = tx.update(jax.tree.map(jnp.asarray, grads), tx.init(grads))
    for k, p in params.items():
      np.testing.assert_array_equal(np.asarray(got[k]), p.grad.numpy())


def test_clip_differs_from_optax_by_the_torch_epsilon() -> None:
  """Optax divides by the norm itself; torch by `norm + 1e-6` and always multiplies."""
  with jax.enable_x64(True):
    grads = {"w": jnp.array([3.0, 4.0])}  # norm 5
    ours, _ = transforms.clip_grad_norm(1.0).update(grads, transforms.clip_grad_norm(1.0).init(grads))
    theirs, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    np.testing.assert_allclose(np.asarray(ours["w"]), np.array([3.0, 4.0]) / (5 + 1e-6), rtol=1e-15)
    assert not np.array_equal(np.asarray(ours["w"]), np.asarray(theirs["w"]))


def test_non_finite_norm_raises_eagerly_and_poisons_the_update_under_jit() -> None:
  grads = {"w": jnp.array([1.0, jnp.inf])}
  tx = transforms.clip_grad_norm(1.0, error_if_nonfinite=True)
  with pytest.raises(FloatingPointError, match="total norm of order 2.0 of the gradients is inf"):
    tx.update(grads, tx.init(grads))
  updates, state = jax.jit(tx.update)(grads, tx.init(grads))
  assert np.all(np.isnan(updates["w"])) and np.isinf(state.total_norm)
  # torch's default (no error): an infinite norm scales the finite entries to 0.
  quiet = transforms.clip_grad_norm(1.0)
  updates, _ = quiet.update(grads, quiet.init(grads))
  assert float(updates["w"][0]) == 0.0


def test_chains_in_front_of_an_optimizer_and_keeps_the_norm_in_the_state() -> None:
  params = {"w": jnp.ones(3)}
  tx = optax.chain(transforms.clip_grad_norm(0.1), gcj.sgd(1.0))
  state = tx.init(params)
  updates, state = tx.update({"w": jnp.array([0.0, 3.0, 4.0])}, state, params)
  np.testing.assert_allclose(float(state[0].total_norm), 5.0, rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(updates["w"])), 0.1 * 5 / (5 + 1e-6), rtol=1e-6)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: transforms.clip_grad_norm(0.0), "max_norm must be > 0"),
        (lambda: transforms.clip_grad_norm(-1.0), "max_norm must be > 0"),
        (lambda: transforms.clip_grad_norm(1.0, norm_type="fro"), "norm_type must be a number"),
        (lambda: transforms.clip_grad_norm(1.0, norm_type=float("nan")), "norm_type must be a number"),
        (lambda: transforms.clip_grad_value(-0.5), "clip_value must be >= 0"),
    ],
)
def test_bad_arguments_are_named(make, match) -> None:
  with pytest.raises(ValueError, match=match):
    make()
