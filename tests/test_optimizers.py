"""The optimizers inside the Optax/Flax ecosystem: agreement with Optax where the rules
agree, composition with Optax wrappers, dtype and structure stability, bad input."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import gradcore_jax as gcj

NAMES = gcj.optimizers.names()
# Muon orthogonalises matrices and takes 2-D leaves only (torch's Muon refuses others too):
# for it the same tree holds the bias and the scale as 1 x n rows (`make_params(name=...)`).
MATRICES_ONLY = frozenset({"muon"})


def make_params(dtype=jnp.float32, name=None):
  """The test tree: a 3 x 4 kernel, a bias of 4 and a scale of 2 (as rows for optimizers in `MATRICES_ONLY`)."""
  shape = (lambda n: (1, n)) if name in MATRICES_ONLY else (lambda n: (n,))
  return {
      "dense": {
          "kernel": jnp.linspace(-1.0, 1.0, 12, dtype=dtype).reshape(3, 4),
          "bias": jnp.full(shape(4), 0.1, dtype),
      },
      "scale": jnp.asarray([0.7, -0.3], dtype).reshape(shape(2)),
  }


def loss_fn(params):
  k = params["dense"]["kernel"]
  return jnp.sum(jnp.sin(k) ** 2) + jnp.sum((params["dense"]["bias"] - 0.5) ** 2) + jnp.sum(params["scale"] ** 4)


def run(tx, steps=100, params=None):
  """Runs `steps` jitted steps on `loss_fn`; returns the final params."""
  params = make_params() if params is None else params

  @jax.jit
  def step(params, state):
    grads = jax.grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params


def assert_close(a, b, rtol=1e-5, atol=1e-6):
  chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- Optax, where rules agree


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (gcj.adam(1e-2), optax.adam(1e-2)),
        (gcj.adamw(1e-2), optax.adamw(1e-2, weight_decay=1e-2)),
        (gcj.adamax(1e-2), optax.adamax(1e-2)),
        (gcj.sgd(1e-2, momentum=0.9), optax.sgd(1e-2, momentum=0.9)),
        (gcj.sgd(1e-2, momentum=0.9, nesterov=True), optax.sgd(1e-2, momentum=0.9, nesterov=True)),
        (gcj.rmsprop(1e-3), optax.rmsprop(1e-3, decay=0.99, eps=1e-8, eps_in_sqrt=False)),
    ],
    ids=["adam", "adamw", "adamax", "sgd-momentum", "sgd-nesterov", "rmsprop"],
)
def test_agrees_with_optax_where_the_rules_agree(ours, theirs):
  # In float64, where both libraries' scalar coefficients are exact. (In float32 Optax
  # rounds b2 = 0.999 before forming 1 - b2**t; we follow torch's double-precision value.)
  with jax.enable_x64(True):
    params = make_params(jnp.float64)
    assert_close(run(ours, params=params), run(theirs, params=params), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "ours, theirs, why",
    [
        (gcj.rmsprop(1e-3), optax.rmsprop(1e-3), "optax: decay 0.9 and eps inside the root"),
        (gcj.adamw(1e-2), optax.adamw(1e-2), "optax: weight_decay 1e-4, torch 1e-2"),
        (gcj.adagrad(1e-1), optax.adagrad(1e-1), "optax: accumulator starts at 0.1, eps inside the root"),
        (gcj.nadam(1e-2), optax.nadam(1e-2), "optax: Nesterov Adam without momentum decay"),
        (gcj.adam(1e-2, amsgrad=True), optax.amsgrad(1e-2), "optax: max over a different quantity"),
        (gcj.radam(1e-2), optax.radam(1e-2), "optax: eps placement, rho_t >= 5"),
    ],
    ids=["rmsprop", "adamw", "adagrad", "nadam", "amsgrad", "radam"],
)
def test_differs_from_optax_where_optax_differs(ours, theirs, why):
  a, b = run(ours, steps=30), run(theirs, steps=30)
  gap = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert gap > 1e-5, why


def test_optax_adadelta_default_ascends_ours_descends():
  start = loss_fn(make_params())
  assert loss_fn(run(gcj.adadelta(), steps=50)) < start
  assert loss_fn(run(optax.adadelta(), steps=50)) > start  # learning_rate=None flips the sign


# ----------------------------------------------------------------------------- composition


def test_chain_with_clip_by_global_norm_matches_manual_clipping():
  ours = optax.chain(optax.clip_by_global_norm(0.5), gcj.adam(1e-2))
  reference = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2))
  assert_close(run(ours), run(reference))


# Which of two steps still move after the injected learning rate is set to 0 right after `init`,
# where torch reads `lr` at another time than the step it applies to (the reference: torch.optim's
# sources). Rprop copies `lr` into its per-element step sizes when the state is created, so a later
# change does nothing (in torch, a scheduler has no effect); ASGD computes the step size `eta` of
# update t + 1 at the end of update t, so the first step still uses the `lr` given at `init`.
# Every other optimizer reads `lr` in the step it applies to: no step moves.
STEPS_MOVED_AFTER_LR_SET_TO_ZERO = {"rprop": [True, True], "asgd": [True, False]}


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_same_trajectory_and_lr_changeable(name):
  factory = gcj.optimizers.get(name)
  injected = optax.inject_hyperparams(factory)(learning_rate=1e-2)
  params = make_params(name=name)
  reference = run(factory(learning_rate=1e-2), steps=30, params=params)
  assert_close(run(injected, steps=30, params=params), reference, rtol=1e-4, atol=1e-5)
  state = injected.init(params)
  state.hyperparams["learning_rate"] = jnp.zeros([])
  unchanged = injected.init(params)
  moved = []
  for _ in range(2):
    grads = jax.grad(loss_fn)(params)
    updates, state = injected.update(grads, state, params)
    expected, unchanged = injected.update(grads, unchanged, params)
    moved.append(any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates)))
    if name == "rprop":  # the learning rate is not read after `init`: the very same steps
      chex.assert_trees_all_equal(updates, expected)
    params = optax.apply_updates(params, updates)
  assert moved == STEPS_MOVED_AFTER_LR_SET_TO_ZERO.get(name, [False, False])


def test_inject_hyperparams_traced_momentum_equals_static_momentum():
  injected = optax.inject_hyperparams(gcj.sgd)(learning_rate=0.05, momentum=0.9, nesterov=True)
  assert_close(run(injected), run(gcj.sgd(0.05, momentum=0.9, nesterov=True)))


def test_multisteps_accumulates_and_keeps_state_dtypes():
  k = 3
  tx = optax.MultiSteps(gcj.adam(1e-2), every_k_schedule=k)
  params = make_params()
  state = tx.init(params)
  grads = [jax.tree.map(lambda x, i=i: x * (i + 1), jax.grad(loss_fn)(params)) for i in range(k)]
  step = jax.jit(tx.update)
  for g in grads:
    updates, new_state = step(g, state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)
    state = new_state
  mean_grad = jax.tree.map(lambda *g: sum(g) / k, *grads)
  expected, _ = gcj.adam(1e-2).update(mean_grad, gcj.adam(1e-2).init(params), params)
  assert_close(updates, expected)


def test_masked_leaves_pass_through():
  mask = {"dense": {"kernel": True, "bias": False}, "scale": True}
  tx = optax.masked(gcj.adamw(1e-2, weight_decay=0.1), mask)
  params = make_params()
  grads = jax.grad(loss_fn)(params)
  updates, _ = tx.update(grads, tx.init(params), params)
  chex.assert_trees_all_close(updates["dense"]["bias"], grads["dense"]["bias"])  # untouched
  full, _ = gcj.adamw(1e-2, weight_decay=0.1).update(grads, gcj.adamw(1e-2, weight_decay=0.1).init(params), params)
  chex.assert_trees_all_close(updates["scale"], full["scale"])


def test_multi_transform_routes_leaves_to_different_optimizers():
  labels = {"dense": {"kernel": "adam", "bias": "sgd"}, "scale": "sgd"}
  tx = optax.multi_transform({"adam": gcj.adam(1e-2), "sgd": gcj.sgd(0.1, momentum=0.9)}, labels)
  params = run(tx, steps=20)
  kernel_only = run(gcj.adam(1e-2), steps=20)
  chex.assert_trees_all_close(params["dense"]["kernel"], kernel_only["dense"]["kernel"], rtol=1e-5)


def test_apply_if_finite_skips_nan_gradients_and_keeps_state():
  tx = optax.apply_if_finite(gcj.adam(1e-2), max_consecutive_errors=3)
  params = make_params()
  state = tx.init(params)
  bad = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), params)
  updates, new_state = tx.update(bad, state, params)
  chex.assert_trees_all_close(updates, optax.tree.zeros_like(params))
  chex.assert_trees_all_close(new_state.inner_state, state.inner_state)
  assert int(new_state.notfinite_count) == 1


@pytest.mark.parametrize("name", NAMES)
def test_repeated_steps_compile_once(name):
  tx = gcj.optimizers.get(name)(1e-2)
  traces = []

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state):
    traces.append(1)
    updates, state = tx.update(jax.grad(loss_fn)(params), state, params)
    return optax.apply_updates(params, updates), state

  params = make_params(name=name)
  state = tx.init(params)
  for _ in range(5):
    params, state = step(params, state)
  assert len(traces) == 1


# ----------------------------------------------------------------- dtypes and structures

# float16/bfloat16 under `lax.cond` are the `slow` tier's: the default run's property tests
# (tests/test_properties.py) already check every optimizer's state dtypes across jitted updates in them.
DTYPES = [
    pytest.param(jnp.float16, id="float16", marks=pytest.mark.slow),
    pytest.param(jnp.bfloat16, id="bfloat16", marks=pytest.mark.slow),
    pytest.param(jnp.float32, id="float32"),
    pytest.param(jnp.float64, id="float64"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_state_dtypes_stable_under_lax_cond(name, dtype):
  with jax.enable_x64(dtype == jnp.float64):
    if name == "sgd_ema":
      tx = gcj.sgd_ema(1e-3, 0.9, 0.01)
    elif name == "rprop":  # torch's Rprop has no weight decay
      tx = gcj.rprop(1e-3)
    else:
      tx = gcj.optimizers.get(name)(1e-3, weight_decay=0.01)
    params = make_params(dtype, name)
    state = tx.init(params)
    grads = jax.grad(loss_fn)(params)

    @jax.jit
    def maybe_step(pred, state):
      return jax.lax.cond(pred, lambda s: tx.update(grads, s, params), lambda s: (grads, s), state)

    updates, new_state = maybe_step(True, state)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)
    chex.assert_tree_all_finite(updates)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_params_get_bf16_updates_even_with_injected_f32_hyperparams(name):
  tx = optax.inject_hyperparams(gcj.optimizers.get(name), hyperparam_dtype=jnp.float32)(learning_rate=1e-3)
  params = make_params(jnp.bfloat16, name)
  state = tx.init(params)
  updates, new_state = jax.jit(tx.update)(jax.grad(loss_fn)(params), state, params)
  chex.assert_trees_all_equal_dtypes(updates, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)


@pytest.mark.parametrize("name", NAMES)
def test_init_on_shape_dtype_structs(name):
  tx = gcj.optimizers.get(name)()
  params = make_params(name=name)
  structs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  concrete = tx.init(params)
  chex.assert_trees_all_equal_shapes_and_dtypes(tx.init(structs), concrete)
  chex.assert_trees_all_equal_shapes_and_dtypes(jax.eval_shape(tx.init, structs), concrete)


def _is_adafactor(node):
  return isinstance(node, gcj.transforms.ScaleByAdafactorState)


@pytest.mark.parametrize("name", NAMES)
def test_init_is_idempotent_and_state_shapes_follow_params(name):
  """Every state leaf is a scalar or shaped like a param, except Adafactor's statistics, which have
  torch's shapes (the reference: torch.optim.Adafactor's state): for a leaf of 2 or more dims a row
  statistic `row_var` (..., m, 1) and a column statistic `col_var` (..., 1, n), for the others a
  full `variance` shaped like the leaf."""
  tx = gcj.optimizers.get(name)()
  params = make_params(name=name)
  state = tx.init(params)
  chex.assert_trees_all_equal(state, tx.init(params))
  nodes = jax.tree.leaves(state, is_leaf=_is_adafactor)
  factored = [node for node in nodes if _is_adafactor(node)]
  assert len(factored) == (name == "adafactor")
  for adafactor in factored:
    shapes = lambda tree: jax.tree.map(lambda leaf: leaf.shape, tree)  # noqa: E731  (a None leaf stays None)
    assert shapes(adafactor.row_var) == {"dense": {"kernel": (3, 1), "bias": None}, "scale": None}
    assert shapes(adafactor.col_var) == {"dense": {"kernel": (1, 4), "bias": None}, "scale": None}
    assert shapes(adafactor.variance) == {"dense": {"kernel": None, "bias": (4,)}, "scale": (2,)}
    assert adafactor.count.shape == ()
  for leaf in jax.tree.leaves([node for node in nodes if not _is_adafactor(node)]):
    assert leaf.ndim == 0 or any(leaf.shape == p.shape for p in jax.tree.leaves(params))


@pytest.mark.parametrize("name", NAMES)
def test_none_gradients_pass_through_and_keep_state(name):
  tx = gcj.optimizers.get(name)(1e-2)
  params = make_params(name=name)
  state = tx.init(params)
  grads = jax.grad(loss_fn)(params)
  grads["scale"] = None
  updates, new_state = tx.update(grads, state, params)
  assert updates["scale"] is None
  full, _ = tx.update(jax.grad(loss_fn)(params), state, params)
  chex.assert_trees_all_close(updates["dense"], full["dense"])


# ------------------------------------------------------------------------- Flax integration


def test_flax_train_state_apply_gradients():
  from flax.training import train_state

  params = make_params()
  state = train_state.TrainState.create(apply_fn=None, params=params, tx=gcj.rmsprop(1e-3, alpha=0.99))
  for _ in range(10):
    state = state.apply_gradients(grads=jax.grad(loss_fn)(state.params))
  assert_close(state.params, run(gcj.rmsprop(1e-3, alpha=0.99), steps=10))


def test_flax_nnx_optimizer_update():
  from flax import nnx

  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  x = jnp.linspace(-1, 1, 12).reshape(4, 3)

  def model_loss(m):
    return jnp.mean(m(x) ** 2)

  optimizer = nnx.Optimizer(model, gcj.adam(1e-2), wrt=nnx.Param)
  params = nnx.state(model, nnx.Param)
  start = jax.tree.map(jnp.copy, nnx.to_pure_dict(params))
  grads = nnx.grad(model_loss)(model)
  optimizer.update(model, grads)
  expected, _ = gcj.adam(1e-2).update(nnx.to_pure_dict(grads), gcj.adam(1e-2).init(start), start)
  assert_close(nnx.to_pure_dict(nnx.state(model, nnx.Param)), optax.apply_updates(start, expected))


# ------------------------------------------------------------------------------ bad input

INVALID = [
    (gcj.sgd, dict(learning_rate=-1.0), "learning_rate"),
    (gcj.adam, dict(learning_rate=float("nan")), "learning_rate"),
    (gcj.sgd, dict(momentum=-0.1), "momentum"),
    (gcj.sgd, dict(momentum=0.9, dampening=-0.1), "dampening"),
    (gcj.sgd, dict(dampening=-0.1), "dampening"),
    (gcj.sgd, dict(nesterov=True), "nesterov"),
    (gcj.sgd, dict(momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (gcj.sgd, dict(weight_decay=-1e-4), "weight_decay"),
    (gcj.sgd_ema, dict(beta=1.0), "beta"),
    (gcj.rmsprop, dict(alpha=1.0), "alpha"),
    (gcj.rmsprop, dict(alpha=-0.1), "alpha"),
    (gcj.rmsprop, dict(eps=-1e-8), "eps"),
    (gcj.rmsprop, dict(momentum=-0.5), "momentum"),
    (gcj.adam, dict(b1=1.0), "b1"),
    (gcj.adam, dict(b2=1.5), "b2"),
    (gcj.adam, dict(b2=float("nan")), "b2"),
    (gcj.adamw, dict(weight_decay=-0.01), "weight_decay"),
    (gcj.adagrad, dict(lr_decay=-0.1), "lr_decay"),
    (gcj.adagrad, dict(initial_accumulator_value=-1.0), "initial_accumulator_value"),
    (gcj.adagrad, dict(eps=-1.0), "eps"),
    (gcj.adadelta, dict(rho=1.0), "rho"),
    (gcj.adamax, dict(b1=-0.1), "b1"),
    (gcj.nadam, dict(momentum_decay=-1e-3), "momentum_decay"),
    (gcj.radam, dict(eps=-1.0), "eps"),
]


@pytest.mark.parametrize("factory, kwargs, name", INVALID, ids=[f"{f.__name__}-{n}" for f, _, n in INVALID])
def test_invalid_hyperparameters_raise_naming_the_argument(factory, kwargs, name):
  with pytest.raises(ValueError, match=name):
    factory(**kwargs)


def test_traced_hyperparameters_are_not_validated_at_trace_time():
  @jax.jit
  def build_and_step(lr, b2):
    tx = gcj.adam(lr, b2=b2)
    params = make_params()
    return tx.update(jax.grad(loss_fn)(params), tx.init(params), params)[0]

  chex.assert_tree_all_finite(build_and_step(1e-3, 0.999))


def test_mismatched_gradient_tree_names_the_path():
  tx = gcj.adam()
  params = make_params()
  state = tx.init(params)
  grads = jax.grad(loss_fn)(params)
  grads["dense"] = {"kernel": grads["dense"]["kernel"], "weights": grads["dense"]["bias"]}
  with pytest.raises(ValueError, match=r"gradient path \['dense'\]\['weights'\].*\['dense'\]\['bias'\] with no gradient"):
    tx.update(grads, state, params)


def test_weight_decay_without_params_says_params_are_needed():
  tx = gcj.adamw()
  params = make_params()
  with pytest.raises(ValueError, match="params"):
    tx.update(jax.grad(loss_fn)(params), tx.init(params))


def test_optimizer_registry_rejects_unknown_names():
  assert gcj.optimizers.get("adam") is gcj.adam
  with pytest.raises(ValueError, match="adamw"):
    gcj.optimizers.get("adamww")


# --------------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    "tx, multiple",
    [
        (gcj.sgd(), 0.0),
        (gcj.sgd(momentum=0.9), 1.0),
        (gcj.sgd_ema(), 1.0),
        (gcj.rmsprop(), 1.0),
        (gcj.rmsprop(centered=True), 2.0),
        (gcj.rmsprop(momentum=0.9), 2.0),
        (gcj.adam(), 2.0),
        (gcj.adam(amsgrad=True), 3.0),
        (gcj.adamw(), 2.0),
        (gcj.adagrad(), 1.0),
        (gcj.adadelta(), 2.0),
        (gcj.adamax(), 2.0),
        (gcj.nadam(), 2.0),
        (gcj.radam(), 2.0),
    ],
)
def test_state_memory_multiples_match_the_reference_table(tx, multiple):
  params = {"w": jax.ShapeDtypeStruct((512, 256), jnp.float32), "b": jax.ShapeDtypeStruct((256,), jnp.float32)}
  report = gcj.state_memory(jax.eval_shape(tx.init, params), params)
  assert report.param_bytes == (512 * 256 + 256) * 4
  assert report.multiple == pytest.approx(multiple, abs=1e-4)  # plus a few bytes of step counters
