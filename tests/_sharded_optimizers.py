"""Trains every optimizer FSDP-style on 8 virtual CPU devices and prints a JSON report.

Run by `tests/test_sharding.py` in a subprocess (`python tests/_sharded_optimizers.py`),
so that only this process sees 8 devices and the rest of the suite keeps one.

It runs twice, on `jax.make_mesh((8,), ("fsdp",), axis_types=(t,))` with `t` first
`AxisType.Explicit` (inside `jax.set_mesh`, which Explicit axes need) and then
`AxisType.Auto` (no mesh context, as classic `Mesh` + `NamedSharding` code is written).
Params are sharded FSDP-style over the one axis (one weight along its rows, one along
its columns, a sharded bias, a small bias and a scalar replicated); each batch is split
along the same axis, and the loss all-gathers every weight before use.

For each optimizer the report lists, stage by stage, the leaves whose sharding is not
the expected one (a state leaf shaped like a param must carry that param's sharding, a
row or column statistic of a matrix (Adafactor's `(m, 1)`/`(1, n)`) that sharding over
the axis it keeps; every other leaf must be a replicated scalar), how many leaves of each
kind it saw, and
the largest relative difference between the sharded run and the same run on one device.
The test asserts on these.
"""

from __future__ import annotations

import contextlib
import json
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must follow the XLA_FLAGS above)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import gradcore_jax as gcj  # noqa: E402

STEPS = 20
BATCH = 64
AXIS = "fsdp"

# (path, shape, partition spec): rows, columns, a replicated bias and a replicated scalar.
LAYOUT = {
    "dense": {"kernel": ((16, 32), P(AXIS, None)), "bias": ((32,), P(AXIS))},
    "head": [((32, 8), P(None, AXIS)), ((3,), P())],
    "temperature": ((), P()),
}

# (id, optimizer); together they build every state leaf kind: momentum buffers, moments,
# amsgrad maxima, centered averages, accumulators, counts, NAdam's float product, the
# count of a learning-rate schedule, Rprop's step sizes, ASGD's average and float scalars,
# Adafactor's factored statistics and Muon's momentum (orthogonalised in bfloat16).
CASES = [
    ("sgd-nesterov-wd", gcj.sgd(0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    ("sgd_ema", gcj.sgd_ema(0.1, beta=0.9)),
    ("rmsprop-centered-momentum-wd", gcj.rmsprop(1e-3, momentum=0.9, centered=True, weight_decay=1e-2)),
    ("adam-amsgrad", gcj.adam(1e-2, amsgrad=True)),
    ("adamw-schedule", gcj.adamw(optax.exponential_decay(1e-2, 5, 0.5), weight_decay=0.1)),
    ("adagrad-lr-decay", gcj.adagrad(0.05, lr_decay=1e-2, initial_accumulator_value=0.1)),
    ("adadelta", gcj.adadelta(1.0)),
    ("adamax", gcj.adamax(1e-2)),
    ("nadam", gcj.nadam(1e-2)),
    ("radam", gcj.radam(1e-2)),
    ("rprop", gcj.rprop(1e-2)),
    ("asgd-averaging-wd", gcj.asgd(0.05, t0=5.0, weight_decay=1e-2)),
    ("adafactor-wd", gcj.adafactor(0.1, weight_decay=0.1)),
    # Muon takes matrices only: the documented partition, Muon for the two weights and AdamW for the rest.
    (
        "muon+adamw",
        optax.partition(
            {"muon": gcj.muon(0.05), "adamw": gcj.adamw(1e-2)},
            lambda params: jax.tree.map(lambda p: "muon" if p.ndim == 2 else "adamw", params),
        ),
    ),
]


def _is_pair(x) -> bool:
  return isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], P)


def _loss(params, x, y, gather):
  w1, b1 = gather(params["dense"]["kernel"]), gather(params["dense"]["bias"])
  w2, b2 = gather(params["head"][0]), gather(params["head"][1])
  hidden = jnp.tanh(x @ w1 + b1)
  pred = params["temperature"] * (hidden @ w2) + jnp.sum(b2)
  return jnp.mean((pred - y) ** 2) + 1e-3 * jnp.sum(w1**2)


def _train_side_by_side(txs, params, xs, ys, gather):
  """`STEPS` updates of each of `txs` from `tx.init(params)`, in one jitted `lax.scan` (one compilation for all)."""

  def step(carry, batch):
    stepped = []
    for tx, (params, state) in zip(txs, carry, strict=True):
      grads = jax.grad(_loss)(params, *batch, gather)
      updates, state = tx.update(grads, state, params)
      stepped.append((optax.apply_updates(params, updates), state))
    return stepped, None

  @jax.jit
  def train(carry, xs, ys):
    return jax.lax.scan(step, carry, (xs, ys))[0]

  return train([(params, tx.init(params)) for tx in txs], xs, ys)


def _owner(path, param_paths):
  """The param path that ends `path` (the state leaf is shaped like that param), or None."""
  for param_path in param_paths:
    if len(path) >= len(param_path) and tuple(path[len(path) - len(param_path):]) == param_path:
      return param_path
  return None


def _reduced_axis(shape, param_shape) -> int | None:
  """-1 for the row statistic `(..., m, 1)` of a param `(..., m, n)` (n > 1), -2 for its column
  statistic `(..., 1, n)` (m > 1), None for any other shape."""
  if len(param_shape) < 2 or len(shape) != len(param_shape):
    return None
  for axis in (-1, -2):
    reduced = list(param_shape)
    reduced[axis] = 1
    if param_shape[axis] > 1 and tuple(shape) == tuple(reduced):
      return axis
  return None


def _same_layout(sharding, want, ndim: int) -> bool:
  """`sharding` lays an array out as `want` does; an abstract mesh (eval_shape) counts as its mesh."""
  if sharding is None:
    return False
  if isinstance(sharding, NamedSharding) and sharding.mesh == want.mesh.abstract_mesh:
    sharding = NamedSharding(want.mesh, sharding.spec)
  return sharding.is_equivalent_to(want, ndim)


class ShardingCheck:
  """The expected layout of every leaf of a state (or params) tree on one mesh."""

  def __init__(self, mesh):
    flat = jax.tree_util.tree_flatten_with_path(LAYOUT, is_leaf=_is_pair)[0]
    self.expected = {tuple(path): (shape, NamedSharding(mesh, spec)) for path, (shape, spec) in flat}

  def kinds(self, tree) -> dict[str, int]:
    """How many leaves of `tree` are shaped like a param, like a param's row or column statistic, or neither."""
    counts = {"param_like": 0, "factored": 0, "scalars": 0}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      owner = _owner(tuple(path), self.expected)
      if owner is None:
        counts["scalars"] += 1
      else:
        counts["factored" if _reduced_axis(leaf.shape, self.expected[owner][0]) is not None else "param_like"] += 1
    return counts

  def problems(self, tree, *, abstract: bool = False) -> list[str]:
    """A leaf shaped like a param must carry its sharding, a row (column) statistic of a matrix
    its sharding over the rows (columns); every other leaf is a replicated scalar.

    `abstract`: `jax.eval_shape` output, where a fresh scalar's sharding may be unspecified.
    """
    found = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      name, owner, sharding = jax.tree_util.keystr(path), _owner(tuple(path), self.expected), leaf.sharding
      if owner is not None:
        shape, want = self.expected[owner]
        axis = _reduced_axis(leaf.shape, shape)
        if axis is not None:
          spec = [*want.spec, *([None] * (len(shape) - len(want.spec)))]
          spec[axis] = None
          want, shape = NamedSharding(want.mesh, P(*spec)), leaf.shape
        if leaf.shape != shape or not _same_layout(sharding, want, len(shape)):
          found.append(f"{name}: {leaf.shape} {sharding}, but the param is {shape} {want}")
      elif leaf.shape != ():
        found.append(f"{name}: shape {leaf.shape} matches no param")
      elif not (sharding is None and abstract) and not (sharding is not None and sharding.is_fully_replicated):
        found.append(f"{name}: scalar sharded as {sharding}")
    return found


def _max_relative_difference(ours, reference) -> float:
  """Largest |ours - reference| over each leaf, relative to that leaf's largest magnitude."""
  worst = 0.0
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(float(np.max(np.abs(b))), 1e-30)
    worst = max(worst, float(np.max(np.abs(a - b))) / scale)
  return worst


def run_on_mesh(mode: str, values, xs, ys) -> dict:
  """Every case on an 8-device mesh whose axis has the type `mode`; final (params, state) kept."""
  axis_type = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}[mode]
  mesh = jax.make_mesh((8,), (AXIS,), axis_types=(axis_type,))
  check = ShardingCheck(mesh)
  shardings = jax.tree.map(lambda pair: NamedSharding(mesh, pair[1]), LAYOUT, is_leaf=_is_pair)
  replicated = NamedSharding(mesh, P())
  report = {"cases": {}}
  with jax.set_mesh(mesh) if mode == "explicit" else contextlib.nullcontext():
    params = jax.device_put(values, shardings)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), params)
    batches = jax.device_put((xs, ys), NamedSharding(mesh, P(None, AXIS, None)))
    report["param_problems"] = check.problems(params)
    report["sharded_params"] = sum(not a.sharding.is_fully_replicated for a in jax.tree.leaves(params))
    # Negative control: an Adam state moved onto one replicated layout must be flagged.
    report["control_problems"] = len(check.problems(jax.device_put(gcj.adam().init(params), replicated)))

    txs = [tx for _, tx in CASES]
    # One program trains every case (and one initialises them all): a compilation per mode, not per case.
    finals = _train_side_by_side(txs, params, *batches, gather=lambda a: jax.sharding.reshard(a, replicated))
    jitted_inits = jax.jit(lambda p: [tx.init(p) for tx in txs])(params) if mode == "explicit" else None
    for index, ((name, tx), (final_params, final_state)) in enumerate(zip(CASES, finals, strict=True)):
      stages = {"init": tx.init(params), "init(ShapeDtypeStruct)": tx.init(abstract)}
      stages["params after jitted updates"] = final_params
      stages["state after jitted updates"] = final_state
      mismatches = []
      if mode == "explicit":
        # Under Auto axes the compiler chooses the layout of a state made inside `jit`, and
        # `eval_shape` reports no shardings at all (see the README); Explicit axes carry them.
        stages["jit(init)"] = jitted_inits[index]
        mismatches += [f"eval_shape(init): {p}" for p in check.problems(jax.eval_shape(tx.init, abstract), abstract=True)]
      mismatches += [f"{stage}: {p}" for stage, tree in stages.items() for p in check.problems(tree)]
      report["cases"][name] = {
          **check.kinds(stages["init"]),
          "mismatches": mismatches,
          "final": (final_params, final_state),
      }
  return report


def main() -> dict:
  rng = np.random.default_rng(0)
  values = jax.tree.map(lambda pair: (0.5 * rng.standard_normal(pair[0])).astype(np.float32), LAYOUT, is_leaf=_is_pair)
  xs = rng.standard_normal((STEPS, BATCH, 16)).astype(np.float32)
  ys = np.tanh(xs @ rng.standard_normal((16, 8))).astype(np.float32)
  report = {"devices": jax.device_count(), "param_leaves": len(jax.tree.leaves(values))}
  report["modes"] = {mode: run_on_mesh(mode, values, xs, ys) for mode in ("explicit", "auto")}
  one_device = jax.devices()[0]
  # The reference runs need no sharding checks, so they share one compilation.
  singles = _train_side_by_side([tx for _, tx in CASES], *jax.device_put((values, xs, ys), one_device), lambda a: a)
  for (name, _), single in zip(CASES, singles, strict=True):
    for mode in report["modes"].values():
      case = mode["cases"][name]
      case["max_relative_difference"] = _max_relative_difference(case.pop("final"), single)
    report.setdefault("moved", {})[name] = _max_relative_difference(single[0], values)
  return report


if __name__ == "__main__":
  print(json.dumps(main()))
