"""Bad input to the optimizers: clear errors that name the leaf, and nothing half-updated.

* A gradient tree unlike the state's (or the params') raises a ValueError naming a path
  found on one side only, or the path whose leaf has another shape (such a leaf would
  otherwise broadcast and silently reshape the state and the params).
* Integer, boolean and complex leaves are not supported: `init` rejects such params and
  `update` such gradients with a TypeError naming the leaf. Leaves kept out with
  `optax.masked` are never seen, so integer buffers can live in the same tree.
* States are immutable NamedTuples of immutable arrays and `update` returns a new one, so
  a failed update leaves the caller's state as it was, even with donated buffers under
  `jit` (the checks run at trace time, before anything is donated).
"""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradcore_jax as gcj

NAMES = gcj.optimizers.names()
# Muon takes 2-D leaves only (as torch's Muon): for it the biases are 1 x n rows and the scale 1 x 1.
MATRICES_ONLY = frozenset({"muon"})


def make_optimizer(name: str) -> optax.GradientTransformation:
  """Each optimizer with state (SGD with momentum); defaults otherwise."""
  return gcj.sgd(1e-2, momentum=0.9) if name == "sgd" else gcj.optimizers.get(name)(1e-2)


def make_params(dtype=jnp.float32, name=None):
  """Two layers and a scale; for the optimizers in `MATRICES_ONLY` every leaf is a matrix."""
  rows = name in MATRICES_ONLY
  vector = lambda n: (1, n) if rows else (n,)  # noqa: E731
  return {
      "layers": [
          {"w": jnp.full((3, 2), 0.5, dtype), "b": jnp.zeros(vector(2), dtype)},
          {"w": jnp.full((2, 1), -0.5, dtype), "b": jnp.zeros(vector(1), dtype)},
      ],
      "scale": jnp.asarray(2.0, dtype).reshape((1, 1) if rows else ()),
  }


def make_grads(name=None):
  return jax.tree.map(lambda p: jnp.full_like(p, 0.25), make_params(name=name))


def _drop_bias(grads):
  del grads["layers"][1]["b"]
  return grads


def _rename_bias(grads):
  grads["layers"][1]["bias"] = grads["layers"][1].pop("b")
  return grads


def _extra_layer(grads):
  grads["layers"].append({"w": jnp.ones((1, 1)), "b": jnp.ones((1,))})
  return grads


def _tuple_for_list(grads):
  grads["layers"] = tuple(grads["layers"])
  return grads


def _transposed_weight(grads):
  grads["layers"][0]["w"] = grads["layers"][0]["w"].T
  return grads


def _broadcastable_bias(grads):
  grads["layers"][0]["b"] = grads["layers"][0]["b"][..., :1]  # (1,) broadcasts against (2,), (1, 1) against (1, 2)
  return grads


# (id, how the gradients are spoiled, a regex the message must match: {bias} is the shape of the
# first bias, {one} the shape the spoiled one has, as `make_params` builds them for the optimizer)
MISMATCHES = [
    ("missing-leaf", _drop_bias, r"\['layers'\]\[1\]\['b'\] with no gradient"),
    ("renamed-leaf", _rename_bias, r"gradient path \['layers'\]\[1\]\['bias'\] has no counterpart"),
    ("extra-subtree", _extra_layer, r"gradient path \['layers'\]\[2\]\['b'\] has no counterpart"),
    ("container-type", _tuple_for_list, r"same paths, different container types"),
    ("transposed", _transposed_weight, r"gradient at \['layers'\]\[0\]\['w'\] has shape \(2, 3\).*\(3, 2\)"),
    ("broadcastable", _broadcastable_bias, r"gradient at \['layers'\]\[0\]\['b'\] has shape {one}.*{bias}"),
]
MISMATCH_IDS = [m[0] for m in MISMATCHES]


def _message(template: str, name: str) -> str:
  bias = make_params(name=name)["layers"][0]["b"].shape
  one = (*bias[:-1], 1)
  return template.format(bias=re.escape(str(bias)), one=re.escape(str(one)))


@pytest.mark.parametrize("mismatch", MISMATCHES, ids=MISMATCH_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_mismatched_gradients_name_the_path_against_the_state(name, mismatch):
  _, spoil, message = mismatch
  tx = make_optimizer(name)
  state = tx.init(make_params(name=name))
  with pytest.raises(ValueError, match=_message(message, name)):
    tx.update(spoil(make_grads(name)), state)


@pytest.mark.parametrize("mismatch", MISMATCHES, ids=MISMATCH_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_mismatched_gradients_name_the_path_against_the_params(name, mismatch):
  """Also for plain SGD, which has no state to compare with."""
  _, spoil, message = mismatch
  tx = gcj.optimizers.get(name)(1e-2)
  params = make_params(name=name)
  with pytest.raises(ValueError, match=r"does not match the params: .*" + _message(message, name)):
    tx.update(spoil(make_grads(name)), tx.init(params), params)


def test_a_broadcastable_gradient_would_otherwise_reshape_the_params():
  """Why shapes are checked: without the check this bias would have become (2, 2)."""
  params = {"b": jnp.zeros((2,))}
  assert optax.apply_updates(params, {"b": jnp.ones((2, 1))})["b"].shape == (2, 2)
  tx = gcj.adam()
  with pytest.raises(ValueError, match=r"\['b'\] has shape \(2, 1\)"):
    tx.update({"b": jnp.ones((2, 1))}, tx.init(params), params)


UNSUPPORTED = [jnp.int32, jnp.uint8, jnp.bool_, jnp.complex64]


@pytest.mark.parametrize("dtype", UNSUPPORTED, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", NAMES)
def test_integer_bool_and_complex_params_are_rejected_at_init(name, dtype):
  params = make_params(name=name)
  params["layers"][1]["w"] = jnp.ones((2, 1), dtype)
  with pytest.raises(TypeError, match=rf"param at \['layers'\]\[1\]\['w'\] has dtype {jnp.dtype(dtype).name}"):
    make_optimizer(name).init(params)


def test_a_python_int_param_is_rejected_and_a_python_float_accepted():
  tx = gcj.adam()
  with pytest.raises(TypeError, match=r"param at \['n'\] has dtype int"):
    tx.init({"n": 3, "x": 1.0})
  chex.assert_trees_all_equal(tx.init({"x": 1.0})[0].mu, {"x": jnp.zeros(())})


@pytest.mark.parametrize("name", NAMES)
def test_integer_and_float0_gradients_are_rejected_at_update(name):
  tx = make_optimizer(name)
  params = make_params(name=name)
  state = tx.init(params)
  grads = make_grads(name)
  grads["scale"] = jnp.asarray(1, jnp.int32)
  with pytest.raises(TypeError, match=r"gradient at \['scale'\] has dtype int32"):
    tx.update(grads, state, params)
  # What `jax.grad(..., allow_int=True)` returns for an integer input.
  grads["scale"] = np.zeros((), jax.dtypes.float0)
  with pytest.raises(TypeError, match=r"gradient at \['scale'\] has dtype"):
    tx.update(grads, state, params)


def test_integer_leaves_masked_out_of_the_optimizer_are_never_seen():
  params = {**make_params(), "steps_seen": jnp.asarray(7, jnp.int32)}
  is_float = {**jax.tree.map(lambda _: True, make_params()), "steps_seen": False}
  tx = optax.masked(gcj.adam(0.1), is_float)
  grads = {**make_grads(), "steps_seen": jnp.asarray(0, jnp.int32)}
  updates, _ = tx.update(grads, tx.init(params), params)
  alone = gcj.adam(0.1)
  expected, _ = alone.update(make_grads(), alone.init(make_params()), make_params())
  chex.assert_trees_all_equal({k: v for k, v in updates.items() if k != "steps_seen"}, expected)


# ----------------------------------------------------------------- nothing half-updated


def _snapshot(tree):
  return jax.tree.map(np.array, tree)


def _spoiled_calls(tx, params, name):
  """Updates that fail: a missing leaf, a wrong shape, an integer gradient."""
  bad_dtype = make_grads(name)
  bad_dtype["scale"] = jnp.asarray(1, jnp.int32)
  return [
      lambda state: tx.update(_drop_bias(make_grads(name)), state, params),
      lambda state: tx.update(_transposed_weight(make_grads(name)), state, params),
      lambda state: tx.update(bad_dtype, state, params),
  ]


@pytest.mark.parametrize("name", NAMES)
def test_a_failed_update_leaves_the_state_as_it_was(name):
  tx = make_optimizer(name)
  params = make_params(name=name)
  grads = make_grads(name)
  _, state = tx.update(grads, tx.init(params), params)  # a state that is not all zeros
  before = _snapshot(state)
  leaves_before = jax.tree.leaves(state)
  for call in _spoiled_calls(tx, params, name):
    with pytest.raises((ValueError, TypeError)):
      call(state)
  assert all(a is b for a, b in zip(jax.tree.leaves(state), leaves_before, strict=True))
  chex.assert_trees_all_equal(_snapshot(state), before)
  # ... and it still takes the step it would have taken without the failures.
  fresh_state = tx.update(grads, tx.init(params), params)[1]
  chex.assert_trees_all_equal(tx.update(grads, state, params), tx.update(grads, fresh_state, params))


def test_a_chain_failing_in_its_last_block_returns_no_partial_state():
  """AdamW's decoupled decay needs params; it runs after the Adam block has made new moments."""
  tx = gcj.adamw(1e-2, weight_decay=0.1)
  params = make_params()
  state = tx.init(params)
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update(make_grads(), state)
  assert int(state[0].count) == 0
  chex.assert_trees_all_equal(state[0].mu, jax.tree.map(jnp.zeros_like, params))
  with pytest.raises(AttributeError):
    state[0].count = 5  # NamedTuple fields cannot be reassigned


@pytest.mark.parametrize("name", NAMES)
def test_a_failed_donating_jitted_update_consumes_no_buffers(name):
  tx = make_optimizer(name)
  params = make_params(name=name)
  state = tx.init(params)
  step = jax.jit(tx.update, donate_argnums=1)
  with pytest.raises(ValueError, match=r"\['layers'\]\[0\]\['w'\]"):
    step(_transposed_weight(make_grads(name)), state, params)
  assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(state))
  chex.assert_trees_all_equal(state, tx.init(params))
  updates, _ = step(make_grads(name), state, params)  # the same state can still be donated
  chex.assert_tree_all_finite(updates)


# --------------------------------------------------------------------------------------
# Array hyperparameters: validated like numbers when concrete, and always required to be scalars.


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: gcj.adam(1e-3, b1=jnp.array([[[0.9]]])), r"b1 must be a scalar, got an array of shape \(1, 1, 1\)"),
        (lambda: gcj.sgd(jnp.array([1e-3])), r"learning_rate must be a scalar, got an array of shape \(1,\)"),
        (lambda: gcj.rmsprop(alpha=np.float32(1.5)), r"alpha must be in \[0, 1\)"),
        (lambda: gcj.adam(jnp.array(-1.0)), "learning_rate must be a non-negative number"),
        (lambda: gcj.sgd(0.1, momentum=jnp.array(-0.5)), "momentum must be >= 0"),
        (lambda: optax.inject_hyperparams(gcj.adam)(learning_rate=-0.1).init({"w": jnp.ones(2)}),
         "learning_rate must be a non-negative number"),
    ],
)
def test_array_hyperparameters_are_checked_and_must_be_scalars(make, match) -> None:
  with pytest.raises(ValueError, match=match):
    make()


def test_a_missing_learning_rate_is_named() -> None:
  with pytest.raises(TypeError, match="learning_rate must be a number, a scalar array or a schedule, got None"):
    gcj.adam(learning_rate=None)


def test_traced_scalar_hyperparameters_still_work_under_inject_hyperparams() -> None:
  params = {"w": jnp.ones(3)}
  tx = optax.inject_hyperparams(gcj.adam)(learning_rate=1e-2, b1=0.8)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)({"w": jnp.ones(3)}, state, params)
  assert updates["w"].shape == (3,) and np.all(np.isfinite(updates["w"]))


# --------------------------------------------------------------------------------------
# A state of another optimizer (or of another configuration) names `state` and the optimizer.

OTHER_STATE = {  # name -> an optimizer whose state has another structure
    "sgd": lambda: gcj.adam(1e-2),
    "adam": lambda: gcj.adam(1e-2, amsgrad=True),
    "adamw": lambda: gcj.adam(1e-2),
}


@pytest.mark.parametrize("with_params", [True, False], ids=["with_params", "without_params"])
@pytest.mark.parametrize("name", NAMES)
def test_a_state_of_another_optimizer_names_state_and_the_optimizer(name, with_params):
  """Every optimizer, fed a state `init` would not have built, raises at trace time naming `state`."""
  params, grads = make_params(name=name), make_grads(name=name)
  tx = make_optimizer(name)
  other = OTHER_STATE.get(name, lambda: gcj.sgd(1e-2, momentum=0.9) if name != "sgd" else gcj.adam())()
  state = other.init(params)
  assert jax.tree.structure(state) != jax.tree.structure(tx.init(params))
  expected = rf"state is not a state of {re.escape(name)}\b.* for these params: at state"
  with pytest.raises(ValueError, match=expected):
    jax.jit(tx.update)(grads, state, params) if with_params else jax.jit(tx.update)(grads, state)


def test_adam_and_amsgrad_states_are_told_apart_by_the_buffer_they_lack():
  params, grads = make_params(), make_grads()
  adam, amsgrad = gcj.adam(1e-2), gcj.adam(1e-2, amsgrad=True)
  with pytest.raises(ValueError, match=r"adam\(amsgrad=True\) .* at state\[0\]\.nu_max .* has a dict.* given state has None"):
    amsgrad.update(grads, adam.init(params))
  with pytest.raises(ValueError, match=r"not a state of adam for .* at state\[0\]\.nu_max adam has None"):
    adam.update(grads, amsgrad.init(params), params)  # without the check the max buffer would be dropped silently
  with pytest.raises(ValueError, match=r"at state\[0\]\.mu adam has a dict with keys \['other'\], but the given .*"):
    adam.update({"other": jnp.ones(2)}, adam.init(params), {"other": jnp.ones(2)})  # a state for other params


def test_wrappers_name_a_state_that_is_not_theirs():
  params, grads = make_params(), make_grads()
  groups = gcj.no_decay_groups(gcj.adamw, learning_rate=1e-2)
  with pytest.raises(TypeError, match=r"param_groups: state must be the optax.PartitionState .* got tuple"):
    groups.update(grads, gcj.adamw().init(params), params)
  other = gcj.param_groups(gcj.sgd, lambda p: jax.tree.map(lambda _: "all", p), {"all": {}})
  with pytest.raises(ValueError, match=r"state holds the groups 'all', but this transformation has the groups 'decay'"):
    groups.update(grads, other.init(params), params)
  with pytest.raises(TypeError, match=r"multi_tensor: state must be the MultiTensorState .* got tuple"):
    gcj.multi_tensor(gcj.adam()).update(grads, gcj.adam().init(params), params)
  packed_adam = gcj.multi_tensor(gcj.adam()).init(params)
  with pytest.raises(ValueError, match=r"state is not a state of adam\(amsgrad=True\)"):
    gcj.multi_tensor(gcj.adam(amsgrad=True)).update(grads, packed_adam, params)


@pytest.mark.parametrize("make, error, match", [
    (lambda: gcj.adam("0.1"), TypeError, r"learning_rate must be a real number .* got str '0.1'"),
    (lambda: gcj.adam(b1=None), TypeError, "b1 must be a number or a scalar array, got None"),
    (lambda: gcj.adam(eps=[1e-8]), TypeError, "eps must be a real number .* got list"),
    (lambda: gcj.sgd(momentum="0.9"), TypeError, "momentum must be a real number"),
    (lambda: gcj.adam(weight_decay=None), TypeError, "weight_decay must be a number or a scalar array, got None"),
    (lambda: gcj.adam(amsgrad="no"), TypeError, "amsgrad must be True or False, got 'no'"),
    (lambda: gcj.adam(maximize="no"), TypeError, "maximize must be True or False"),
    (lambda: gcj.nadam(decoupled_weight_decay=1), TypeError, "decoupled_weight_decay must be True or False"),
    (lambda: gcj.sgd(momentum=0.9, nesterov="yes"), TypeError, "nesterov must be True or False"),
    (lambda: gcj.rmsprop(centered="no"), TypeError, "centered must be True or False"),
    (lambda: gcj.muon(nesterov=None), TypeError, "nesterov must be True or False"),
    (lambda: gcj.transforms.clip_grad_norm("1.0"), TypeError, "max_norm must be a real number"),
    (lambda: gcj.multi_tensor("adam"), TypeError, "tx must be an optax GradientTransformation"),
], ids=["string_lr", "none_b1", "list_eps", "string_momentum", "none_weight_decay", "string_amsgrad",
        "string_maximize", "int_decoupled", "string_nesterov", "string_centered", "none_muon_nesterov",
        "string_max_norm", "string_tx"])
def test_hyperparameters_of_the_wrong_type_are_named(make, error, match):
  """A string flag would count as True (amsgrad="no" turned amsgrad on); a string number failed at the first update."""
  with pytest.raises(error, match=match):
    make()


def test_a_gradient_leaf_that_is_not_an_array_is_named():
  params = make_params()
  grads = make_grads()
  grads["layers"][0]["w"] = "x"
  with pytest.raises(TypeError, match=r"gradient at \['layers'\]\[0\]\['w'\] has type str"):
    gcj.adam().update(grads, gcj.adam().init(params), params)
