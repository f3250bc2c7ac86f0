"""`gcj.param_groups`: torch's per-group hyperparameters, against live `torch.optim` (the reference).

torch builds one optimizer with several `param_groups`; gradcore_jax builds the same groups
with `gcj.param_groups` on `optax.partition`. Gradients are computed once per step with
torch's autograd at torch's current parameters and the identical arrays are fed to both
sides, so the comparison isolates the optimizers: every parameter after every one of
`STEPS` steps, float64 to 1e-10 relative, float32 to 1e-5 (to the leaf's largest magnitude).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from _torch_reference import precision

import gradcore_jax as gcj

STEPS = 120
SHAPES = {"w1": (6, 5), "b1": (5,), "w2": (5, 3), "b2": (3,), "scale": (3,)}
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}

torch.set_num_threads(1)


def _start(dtype):
  rng = np.random.default_rng(1)
  params = {k: (0.5 * rng.standard_normal(s)).astype(dtype) for k, s in SHAPES.items()}
  xs = rng.standard_normal((STEPS, 16, 6)).astype(dtype)
  ys = (np.tanh(xs @ rng.standard_normal((6, 3))) + 0.1 * rng.standard_normal((STEPS, 16, 3))).astype(dtype)
  return params, xs, ys


def _loss(p, x, y):
  hidden = torch.tanh(x @ p["w1"] + p["b1"])
  pred = (hidden @ p["w2"] + p["b2"]) * p["scale"]
  return torch.mean((pred - y) ** 2) + 0.01 * torch.sum(p["w1"] ** 4)


def run_torch(make_optimizer, dtype, make_scheduler=None):
  """torch's trajectory, and the gradients it was fed (computed once, at torch's params)."""
  params, xs, ys = _start(dtype)
  tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
  opt = make_optimizer(tp)
  sched = make_scheduler(opt) if make_scheduler else None
  grads = {k: [] for k in tp}
  history = {k: [] for k in tp}
  for t in range(STEPS):
    values = torch.autograd.grad(_loss(tp, torch.tensor(xs[t]), torch.tensor(ys[t])), list(tp.values()))
    for (k, p), g in zip(tp.items(), values):
      g = g.numpy().copy()
      grads[k].append(g)
      p.grad = torch.from_numpy(g.copy())
    opt.step()
    if sched:
      sched.step()
    for k, p in tp.items():
      history[k].append(p.detach().numpy().copy())
  return {k: np.stack(v) for k, v in grads.items()}, {k: np.stack(v) for k, v in history.items()}


def run_jax(tx, dtype, grads):
  params, _, _ = _start(dtype)
  params = jax.tree.map(jnp.asarray, params)

  @jax.jit
  def trajectory(params, grads):
    def step(carry, g):
      params, state = carry
      updates, state = tx.update(g, state, params)
      params = optax.apply_updates(params, updates)
      return (params, state), params

    return jax.lax.scan(step, (params, tx.init(params)), grads)[1]

  return jax.tree.map(np.asarray, trajectory(params, grads))


def assert_same_trajectory(ours, theirs, dtype):
  tol = TOLERANCE[dtype]
  for name in theirs:
    assert ours[name].dtype == dtype, name
    scale = np.max(np.abs(theirs[name]))
    np.testing.assert_allclose(ours[name], theirs[name], rtol=tol, atol=tol * scale, err_msg=name)


def _split(tp, names):
  return [tp[k] for k in sorted(tp) if k in names]  # JAX's leaf order within each group


MATRICES, VECTORS = {"w1", "w2"}, {"b1", "b2", "scale"}
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])


@DTYPES
def test_adamw_two_groups_with_their_own_lr_decay_and_betas_match_torch(dtype):
  def torch_optimizer(tp):
    return torch.optim.AdamW(
        [
            {"params": _split(tp, MATRICES), "weight_decay": 0.1},
            {"params": _split(tp, VECTORS), "lr": 0.02, "weight_decay": 0.0, "betas": (0.8, 0.99)},
        ],
        lr=0.01,
    )

  tx = gcj.param_groups(
      gcj.adamw,
      labels=gcj.decay_label,
      groups={"decay": {"weight_decay": 0.1}, "no_decay": {"learning_rate": 0.02, "weight_decay": 0.0, "b1": 0.8,
                                                            "b2": 0.99}},
      learning_rate=0.01,
  )
  with precision(dtype):
    grads, theirs = run_torch(torch_optimizer, dtype)
    ours = run_jax(tx, dtype, grads)
  assert_same_trajectory(ours, theirs, dtype)


@DTYPES
def test_sgd_momentum_per_group_matches_torch(dtype):
  def torch_optimizer(tp):
    return torch.optim.SGD(
        [
            {"params": [tp["b1"], tp["w1"]], "momentum": 0.9},
            {"params": [tp["b2"], tp["scale"], tp["w2"]], "lr": 0.02, "momentum": 0.5, "nesterov": True,
             "weight_decay": 0.01},
        ],
        lr=0.05,
    )

  labels = {"w1": "first", "b1": "first", "w2": "second", "b2": "second", "scale": "second"}
  tx = gcj.param_groups(
      gcj.sgd,
      labels,
      {"first": {"momentum": 0.9}, "second": {"learning_rate": 0.02, "momentum": 0.5, "nesterov": True,
                                              "weight_decay": 0.01}},
      learning_rate=0.05,
  )
  with precision(dtype):
    grads, theirs = run_torch(torch_optimizer, dtype)
    ours = run_jax(tx, dtype, grads)
  assert_same_trajectory(ours, theirs, dtype)


@DTYPES
def test_no_decay_groups_matches_torch_ndim_rule(dtype):
  def torch_optimizer(tp):
    decay = [p for _, p in sorted(tp.items()) if p.ndim > 1]
    no_decay = [p for _, p in sorted(tp.items()) if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=0.01,
                             weight_decay=0.3)

  tx = gcj.no_decay_groups(gcj.adamw, learning_rate=0.01, weight_decay=0.3)
  with precision(dtype):
    grads, theirs = run_torch(torch_optimizer, dtype)
    ours = run_jax(tx, dtype, grads)
  assert_same_trajectory(ours, theirs, dtype)


def test_per_group_schedules_match_torch_lambda_lr():
  """torch's LambdaLR with one function per group against one Optax schedule per group."""

  def torch_optimizer(tp):
    return torch.optim.Adam(
        [{"params": _split(tp, MATRICES)}, {"params": _split(tp, VECTORS), "lr": 0.02, "amsgrad": True}], lr=0.01
    )

  def scheduler(opt):
    return torch.optim.lr_scheduler.LambdaLR(opt, [lambda t: 0.98**t, lambda t: 1 / (1 + 0.05 * t)])

  tx = gcj.param_groups(
      gcj.adam,
      gcj.decay_label,
      {
          "decay": {"learning_rate": lambda c: 0.01 * 0.98**c},
          "no_decay": {"learning_rate": lambda c: 0.02 / (1 + 0.05 * c), "amsgrad": True},
      },
  )
  with precision(np.float64):
    grads, theirs = run_torch(torch_optimizer, np.float64, scheduler)
    ours = run_jax(tx, np.float64, grads)
  assert_same_trajectory(ours, theirs, np.float64)


def _params():
  return {"w1": jnp.ones((3, 2)), "b1": jnp.ones(2), "nested": {"w2": jnp.ones((2, 2)), "b2": jnp.ones(2)}}


def _groups():
  return {"decay": {"weight_decay": 0.5}, "no_decay": {"learning_rate": 0.3}}


def test_every_labels_form_gives_the_same_updates():
  params = _params()
  grads = jax.tree.map(lambda p: 0.1 * jnp.arange(p.size, dtype=p.dtype).reshape(p.shape), params)
  forms = {
      "pytree": {"w1": "decay", "b1": "no_decay", "nested": {"w2": "decay", "b2": "no_decay"}},
      "leaf function": gcj.decay_label,
      "path function": lambda path, leaf: "no_decay" if jax.tree_util.keystr(path).endswith("['b1']") or
      jax.tree_util.keystr(path).endswith("['b2']") else "decay",
      "tree function": lambda tree: jax.tree.map(lambda p: "decay" if p.ndim > 1 else "no_decay", tree),
  }
  results = []
  for labels in forms.values():
    tx = gcj.param_groups(gcj.adamw, labels, _groups(), learning_rate=0.1)
    state = tx.init(params)
    for _ in range(2):
      updates, state = tx.update(grads, state, params)
    results.append(updates)
  for name, updates in zip(forms, results[1:]):
    jax.tree.map(np.testing.assert_array_equal, updates, results[0])
  # The groups really differ: the decay group decays, the other has a larger rate.
  assert not np.allclose(results[0]["w1"], results[0]["b1"][None, :])


def test_prefix_labels_label_whole_subtrees():
  params = _params()
  tx = gcj.param_groups(gcj.sgd, {"w1": "a", "b1": "a", "nested": "b"}, {"a": {}, "b": {"learning_rate": 0.0}},
                        learning_rate=1.0)
  updates, _ = tx.update(params, tx.init(params), params)
  np.testing.assert_array_equal(updates["w1"], -1.0)
  np.testing.assert_array_equal(updates["nested"]["w2"], 0.0)
  assert gcj.param_groups(gcj.sgd, "all", {"all": {}}).init(params) is not None  # one label for the whole tree


def test_groups_keep_their_own_step_count_and_inject_hyperparams_per_group():
  params = _params()
  tx = gcj.param_groups(optax.inject_hyperparams(gcj.adam), gcj.decay_label,
                        {"decay": {}, "no_decay": {"learning_rate": 0.5}}, learning_rate=0.1)
  state = tx.init(params)
  _, state = jax.jit(tx.update)(params, state, params)
  inner = state.inner_states
  assert float(inner["decay"].inner_state.hyperparams["learning_rate"]) == pytest.approx(0.1)
  assert float(inner["no_decay"].inner_state.hyperparams["learning_rate"]) == pytest.approx(0.5)
  assert int(inner["decay"].inner_state.count) == 1


def test_unknown_keyword_is_a_type_error_naming_group_and_keyword():
  with pytest.raises(TypeError, match=r"group 'no_decay' sets 'lr'.*adamw\(\) does not take"):
    gcj.param_groups(gcj.adamw, gcj.decay_label, {"decay": {}, "no_decay": {"lr": 0.1}})
  with pytest.raises(TypeError, match=r"adamw\(\) has no argument 'betas' \(given as a default"):
    gcj.param_groups(gcj.adamw, gcj.decay_label, {"decay": {}}, betas=(0.9, 0.99))
  with pytest.raises(TypeError, match="has no argument 'weight_decay'"):
    gcj.no_decay_groups(optax.sgd, learning_rate=0.1, weight_decay=0.1)
  with pytest.raises(TypeError, match="group 'no_decay' sets 'weight_decay', which sgd"):
    gcj.no_decay_groups(optax.sgd, learning_rate=0.1)


def test_invalid_group_value_names_the_group():
  with pytest.raises(ValueError, match=r"param group 'fast': .*learning_rate"):
    gcj.param_groups(gcj.sgd, "all", {"fast": {"learning_rate": -1.0}})


def test_label_naming_no_group_names_the_leaf_and_label():
  params = _params()
  with pytest.raises(ValueError, match=r"labels contain 'bias', which names no group"):
    gcj.param_groups(gcj.sgd, {"w1": "decay", "b1": "bias", "nested": "decay"}, {"decay": {}})
  tx = gcj.param_groups(gcj.sgd, lambda path, leaf: "bias" if leaf.ndim == 1 else "decay", {"decay": {}})
  with pytest.raises(ValueError, match=r"leaf at \['b1'\] is labelled 'bias', which names no group"):
    tx.init(params)


def test_group_without_leaves_is_an_error_naming_it():
  params = {"w": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="group 'no_decay' has no leaves"):
    gcj.no_decay_groups(gcj.adamw).init(params)


def test_labels_that_do_not_match_the_params():
  with pytest.raises(ValueError, match="labels do not match the params"):
    gcj.param_groups(gcj.sgd, {"w1": "a"}, {"a": {}}).init(_params())


def test_bad_groups_and_ambiguous_label_functions():
  with pytest.raises(TypeError, match="non-empty mapping"):
    gcj.param_groups(gcj.sgd, "a", {})
  with pytest.raises(TypeError, match="group 'a' must map keyword"):
    gcj.param_groups(gcj.sgd, "a", {"a": 0.1})
  with pytest.raises(TypeError, match="both one and two arguments"):
    gcj.param_groups(gcj.sgd, lambda *args: "a", {"a": {}})
  with pytest.raises(TypeError, match="neither one nor two"):
    gcj.param_groups(gcj.sgd, lambda a, b, c: "a", {"a": {}})


def test_decay_label_rule():
  assert gcj.decay_label((), jnp.ones((3, 4))) == "decay"
  assert gcj.decay_label((), jnp.ones((2, 3, 3, 4))) == "decay"
  assert gcj.decay_label((), jnp.ones(4)) == "no_decay"
  assert gcj.decay_label((), jnp.ones(())) == "no_decay"
  assert gcj.decay_label((), jax.ShapeDtypeStruct((3,), jnp.float32)) == "no_decay"


def test_works_in_flax_nnx_optimizer():
  nnx = pytest.importorskip("flax.nnx")
  model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.LayerNorm(4, rngs=nnx.Rngs(1)))
  optimizer = nnx.Optimizer(model, gcj.no_decay_groups(gcj.adamw, learning_rate=0.1, weight_decay=0.5), wrt=nnx.Param)
  state = nnx.state(model, nnx.Param)
  before = jax.tree.map(np.array, state)  # copies: the state's variables are updated in place
  optimizer.update(model, jax.tree.map(jnp.zeros_like, state))
  after = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  # Zero gradients: only decoupled weight decay moves the weights, and only the kernel decays.
  np.testing.assert_allclose(after["layers"][0]["kernel"], before["layers"][0]["kernel"] * (1 - 0.1 * 0.5), rtol=1e-6)
  np.testing.assert_array_equal(after["layers"][0]["bias"], before["layers"][0]["bias"])
  np.testing.assert_array_equal(after["layers"][1]["scale"], before["layers"][1]["scale"])
