"""Building blocks and optimizers checked against closed-form first steps.

Reference for each formula: the update rule in PyTorch's `torch.optim` documentation
(and the cited paper), evaluated by hand at step 1 from zero state.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradcore_jax as gcj
from gradcore_jax import transforms

G = jnp.array([0.5, -2.0, 3.0, -1e-3])
P = jnp.array([1.0, 2.0, -0.5, 0.25])


def first_update(tx, grads=G, params=P):
  updates, _ = tx.update(grads, tx.init(params), params)
  return np.asarray(updates)


def close(actual, expected):
  np.testing.assert_allclose(actual, np.asarray(expected), rtol=2e-6, atol=1e-9)


def test_sgd_first_step_is_minus_lr_g():
  close(first_update(gcj.sgd(0.1)), -0.1 * G)


def test_sgd_momentum_first_step_buffer_is_the_gradient_even_with_dampening():
  # torch: buf = g on the first step (dampening is not applied to it).
  close(first_update(gcj.sgd(0.1, momentum=0.9, dampening=0.5)), -0.1 * G)


def test_nesterov_first_step_is_g_plus_momentum_g():
  close(first_update(gcj.sgd(0.1, momentum=0.9, nesterov=True)), -0.1 * (G + 0.9 * G))


def test_sgd_coupled_weight_decay_adds_wd_p_to_gradient():
  close(first_update(gcj.sgd(0.1, weight_decay=0.01)), -0.1 * (G + 0.01 * P))


def test_maximize_negates_the_gradient():
  close(first_update(gcj.sgd(0.1, maximize=True)), 0.1 * G)


def test_sgd_ema_first_step_is_one_minus_beta_g():
  # The article: step = 0.9 * prev + 0.1 * grad with prev = 0.
  close(first_update(gcj.sgd_ema(0.1, beta=0.9)), -0.1 * 0.1 * G)


def test_rmsprop_first_step():
  # v = (1 - alpha) g^2; p -= lr g / (sqrt(v) + eps)  (eps outside the root).
  v = 0.01 * G**2
  close(first_update(gcj.rmsprop(0.01)), -0.01 * G / (jnp.sqrt(v) + 1e-8))


def test_centered_rmsprop_first_step():
  v, gbar = 0.1 * G**2, 0.1 * G
  close(first_update(gcj.rmsprop(0.01, alpha=0.9, centered=True)), -0.01 * G / (jnp.sqrt(v - gbar**2) + 1e-8))


def test_adam_first_step_is_lr_times_normalised_gradient():
  # m_hat = g, v_hat = g^2: p -= lr g / (|g| + eps).
  close(first_update(gcj.adam(1e-3)), -1e-3 * G / (jnp.abs(G) + 1e-8))


def test_adamw_first_step_adds_decoupled_decay():
  close(first_update(gcj.adamw(1e-3, weight_decay=0.1)), -1e-3 * (G / (jnp.abs(G) + 1e-8) + 0.1 * P))


def test_adam_coupled_weight_decay_is_normalised_away_on_first_step():
  g = G + 0.1 * P
  close(first_update(gcj.adam(1e-3, weight_decay=0.1)), -1e-3 * g / (jnp.abs(g) + 1e-8))


def test_adagrad_first_step_with_initial_accumulator():
  s = 0.1 + G**2
  close(first_update(gcj.adagrad(0.01, initial_accumulator_value=0.1)), -0.01 * G / (jnp.sqrt(s) + 1e-10))


def test_adagrad_lr_decay_applies_from_second_step():
  tx = gcj.adagrad(0.01, lr_decay=0.5)
  state = tx.init(P)
  u1, state = tx.update(G, state, P)
  u2, _ = tx.update(G, state, P)
  s2 = 2 * G**2
  close(u1, -0.01 * G / (jnp.abs(G) + 1e-10))
  close(u2, -(0.01 / 1.5) * G / (jnp.sqrt(s2) + 1e-10))


def test_adadelta_first_step():
  v = 0.1 * G**2
  delta = jnp.sqrt(1e-6) / jnp.sqrt(v + 1e-6) * G
  close(first_update(gcj.adadelta()), -1.0 * delta)


def test_adamax_first_step():
  # m = (1-b1) g, u = |g| + eps, bc1 = 1 - b1.
  close(first_update(gcj.adamax()), -2e-3 * G / (jnp.abs(G) + 1e-8))


def test_nadam_first_step():
  b1, psi = 0.9, 4e-3
  mu1 = b1 * (1 - 0.5 * 0.96 ** (1 * psi))
  mu2 = b1 * (1 - 0.5 * 0.96 ** (2 * psi))
  denom = jnp.sqrt(0.001 * G**2 / 0.001) + 1e-8
  expected = -2e-3 * (1 - mu1) / (1 - mu1) * G / denom - 2e-3 * mu2 / (1 - mu1 * mu2) * (0.1 * G) / denom
  close(first_update(gcj.nadam()), expected)


def test_radam_first_steps_are_plain_momentum():
  # rho_1 = 1 <= 5: p -= lr * m_hat = lr * g.
  close(first_update(gcj.radam(1e-3)), -1e-3 * G)


def test_radam_switches_to_rectified_step_after_rho_exceeds_five():
  b2, lr = 0.999, 1e-3
  tx = gcj.radam(lr)
  state = tx.init(P)
  rho_inf = 2 / (1 - b2) - 1
  for t in range(1, 8):
    u, state = tx.update(G, state, P)
    rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
    if rho_t > 5:
      rect = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
      expected = -lr * G * rect * np.sqrt(1 - b2**t) / (np.sqrt(1 - b2**t) * np.abs(G) + 1e-8)
    else:
      expected = -lr * G
    close(u, expected)


def test_schedule_is_evaluated_at_the_number_of_steps_taken():
  tx = gcj.sgd(lambda count: 0.1 * (count + 1))
  state = tx.init(P)
  for k in range(3):
    u, state = tx.update(G, state, P)
    close(u, -0.1 * (k + 1) * G)


def test_rms_denominator_keeps_eps_outside_the_root():
  v = jnp.array([0.0, 4.0])
  close(transforms.rms_denominator(v, 1e-3), [1e-3, 2.001])
  close(transforms.rms_denominator(v, 1e-3, bias_correction=jnp.asarray(0.25)), [1e-3, 4.001])


def test_bias_correction_is_one_minus_decay_to_the_t():
  for t in (1, 2, 10, 1000):
    close(transforms.bias_correction(0.999, jnp.asarray(t, jnp.int32)), 1 - 0.999**t)


def test_decoupled_weight_decay_mask_limits_decay_to_selected_leaves():
  params = {"w": jnp.ones(3), "b": jnp.ones(2)}
  grads = optax.tree.zeros_like(params)
  tx = gcj.adamw(0.1, weight_decay=0.5, mask={"w": True, "b": False})
  updates, _ = tx.update(grads, tx.init(params), params)
  close(updates["w"], -0.1 * 0.5 * np.ones(3))
  close(updates["b"], np.zeros(2))
  callable_mask = gcj.adamw(0.1, weight_decay=0.5, mask=lambda p: {"w": False, "b": True})
  updates, _ = callable_mask.update(grads, callable_mask.init(params), params)
  close(updates["w"], np.zeros(3))


@pytest.mark.parametrize("name", gcj.optimizers.names())
def test_every_optimizer_descends_a_simple_quadratic(name):
  tx = gcj.optimizers.get(name)(0.05) if name != "adadelta" else gcj.adadelta(1.0)
  params = jnp.array([1.0, -2.0])
  if name == "muon":  # it takes matrices only: the same two numbers as a 1 x 2 row
    params = params.reshape(1, 2)
  state = tx.init(params)
  for _ in range(50):
    updates, state = tx.update(params, state, params)  # gradient of |p|^2 / 2
    params = optax.apply_updates(params, updates)
  assert float(jnp.sum(params**2)) < 0.99 * 5.0


@pytest.mark.parametrize(
    ("mask", "error", "match"),
    [
        ("abc", TypeError, "mask must be a pytree of booleans .* got the string 'abc'"),
        ({"w": "yes", "b": "no"}, TypeError, r"got str 'no' at \['b'\]"),
        ({"w": 1, "b": 0}, TypeError, r"got int 0 at \['b'\]"),
        (3, TypeError, "got int 3"),
        ({"w": True}, ValueError, "mask does not fit the params"),
        (lambda p: "x", TypeError, "got str 'x'"),
    ],
    ids=["string", "string_leaves", "int_leaves", "number", "partial_tree", "callable_returning_a_string"],
)
def test_a_bad_decay_mask_is_refused_naming_mask(mask, error, match):
  """A string mask used to decay every leaf silently (optax.masked reads any non-empty string as True)."""
  params = {"w": jnp.ones(3), "b": jnp.ones(2)}
  makers = [lambda: gcj.adamw(0.1, mask=mask), lambda: transforms.decoupled_weight_decay(0.1, mask)]
  if not (callable(mask) or isinstance(mask, dict) and len(mask) == 1):
    # Checked when built, even without decay to mask; trees that need the params, in init and update.
    makers.append(lambda: gcj.adamw(0.1, weight_decay=0.0, mask=mask))
  for make in makers:
    with pytest.raises(error, match=match):
      tx = make()
      tx.update(params, tx.init(params), params)
