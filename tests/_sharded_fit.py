"""`fit` and `evaluate` on 8 virtual CPU devices against one device; prints a JSON report.

Run by `tests/test_sharded_fit.py` in a subprocess (`python tests/_sharded_fit.py CHECKPOINT_DIR`),
so that only this process sees 8 devices and the rest of the suite keeps one.

A small MLP (16 -> 32 -> 3, cross-entropy, Adam, clipping) trains for 2 epochs on 100
examples in batches of 16, so every epoch ends with a batch of 4 real and 12 padded rows,
and is evaluated in batches of 24 (the last one 4 real rows). The runs:

* `single`: one device, the reference.
* `replicated`: an Auto-typed mesh `("data",)` of 8 devices, params replicated.
* `fsdp`: the same mesh, params sharded FSDP-style along their first axis where it
  divides by 8 (by a callable), checkpointing every 5 steps; `resumed` continues it from
  its mid-epoch checkpoint at step 10 in a second `fit` call.
* `explicit`: an Explicit-typed mesh, the same FSDP layout (the model gathers each
  weight with `jax.sharding.reshard`, as Explicit axes require), as a compiled epoch.
* `modes` (reported apart): a linen MLP with BatchNorm and Dropout (model state and
  per-step RNG keys), on one device and on the Auto mesh: BatchNorm's statistics are
  those of the global batch, and the dropout masks are the same on every layout.

For each run the report gives the largest difference from `single` (params relative to
their largest magnitude, figures relative), the exactly-counted figures, and the leaves
(params and optimizer state) whose sharding is not the expected one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must follow the XLA_FLAGS above)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import gradcore_jax as gcj  # noqa: E402
from _sharded_optimizers import _max_relative_difference as relative_difference  # noqa: E402  (tests/ is on the path)

AXIS, DEVICES = "data", 8


def data():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((100, 16)).astype(np.float32)
  y = (x @ rng.standard_normal((16, 3))).argmax(-1).astype(np.int32)
  params = {
      "hidden": {"w": (0.3 * rng.standard_normal((16, 32))).astype(np.float32), "b": np.zeros(32, np.float32)},
      "out": {"w": (0.3 * rng.standard_normal((32, 3))).astype(np.float32), "b": np.zeros(3, np.float32)},
  }
  return x, y, params


def mlp(params, x, gather=lambda a: a):
  hidden = jnp.tanh(x @ gather(params["hidden"]["w"]) + gather(params["hidden"]["b"]))
  return hidden @ gather(params["out"]["w"]) + params["out"]["b"]


def fsdp(path, leaf):
  """FSDP style: the first axis split over the devices where it divides evenly, else replicated."""
  return P(AXIS) if leaf.shape and leaf.shape[0] % DEVICES == 0 else P()


def run(x, y, params, model=mlp, **kwargs):
  return gcj.fit(
      model,
      optax.adam(1e-2),
      params=params,
      loss=gcj.losses.cross_entropy,
      train_loader=gcj.DataLoader((x, y), batch_size=16, shuffle=True),
      eval_loader=gcj.DataLoader((x, y), batch_size=24),
      metrics={"accuracy": gcj.metrics.accuracy()},
      epochs=2,
      progress=False,
      clip_global_norm=1.0,
      **kwargs,
  )


def figures(stats) -> dict:
  """The float figures of a run: batch and epoch losses, training and evaluation metrics."""
  return {
      "batch_losses": stats.batch_losses,
      "epoch_losses": stats.epoch_losses,
      "train_accuracy": [m["accuracy"] for m in stats.train_metrics],
      "eval": [[m["loss"], m["accuracy"]] for m in stats.eval_metrics],
  }


def sharding_problems(result, mesh, layout) -> list[str]:
  """Params and each Adam moment must carry the param's sharding; the count is replicated."""
  expected = jax.tree_util.tree_map_with_path(lambda path, leaf: NamedSharding(mesh, layout(path, leaf)), result.model)
  adam = result.opt_state[0]
  trees = {"params": result.model, "mu": adam.mu, "nu": adam.nu, "count": adam.count}
  wanted = {"params": expected, "mu": expected, "nu": expected, "count": NamedSharding(mesh, P())}
  found = []
  for name, tree in trees.items():
    for (path, leaf), want in zip(jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree.leaves(wanted[name]), strict=True):
      if not leaf.sharding.is_equivalent_to(want, leaf.ndim):
        found.append(f"{name}{jax.tree_util.keystr(path)}: {leaf.sharding} instead of {want}")
  return found


def report_run(result, single, mesh, layout) -> dict:
  ours, reference = figures(result.stats), figures(single.stats)
  return {
      "params_difference": relative_difference(result.model, single.model),
      "figures_difference": {k: relative_difference(ours[k], reference[k]) for k in ours},
      "counts": [result.stats.examples_seen, result.stats.total_steps],
      "sharding_problems": sharding_problems(result, mesh, layout),
      "sharded_params": sum(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(result.model)),
  }


def main(checkpoints: str) -> dict:
  x, y, params = data()
  auto = jax.make_mesh((DEVICES,), (AXIS,), axis_types=(AxisType.Auto,))
  explicit = jax.make_mesh((DEVICES,), (AXIS,), axis_types=(AxisType.Explicit,))
  replicate = lambda path, leaf: P()  # noqa: E731
  evaluation = gcj.DataLoader((x, y), batch_size=24)
  single = run(x, y, params)
  report = {"devices": jax.device_count(), "single_counts": [single.stats.examples_seen, single.stats.total_steps]}
  report["runs"] = {"replicated": report_run(run(x, y, params, mesh=auto), single, auto, replicate)}

  fsdp_run = run(x, y, params, mesh=auto, param_sharding=fsdp, checkpoint_dir=checkpoints, checkpoint_every=5)
  report["runs"]["fsdp"] = report_run(fsdp_run, single, auto, fsdp)
  shutil.rmtree(os.path.join(checkpoints, "14"))  # the final one: back to step 10 (epoch 1, batch 3)
  resumed = run(x, y, params, mesh=auto, param_sharding=fsdp, checkpoint_dir=checkpoints, checkpoint_every=5, resume=True)
  report["runs"]["resumed"] = report_run(resumed, single, auto, fsdp)
  report["resumed_equals_uninterrupted"] = bool(
      figures(resumed.stats) == figures(fsdp_run.stats)
      and all(jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(a, b), resumed.model, fsdp_run.model)))
  )

  gather = lambda a: jax.sharding.reshard(a, P())  # noqa: E731
  explicit_run = run(x, y, params, model=lambda p, inputs: mlp(p, inputs, gather), mesh=explicit, param_sharding=fsdp, compiled_epoch=True)
  report["runs"]["explicit"] = report_run(explicit_run, single, explicit, fsdp)

  one = gcj.evaluate(mlp, evaluation, loss=gcj.losses.cross_entropy, params=single.model, metrics={"accuracy": gcj.metrics.accuracy()})
  eight = gcj.evaluate(mlp, evaluation, loss=gcj.losses.cross_entropy, params=single.model, metrics={"accuracy": gcj.metrics.accuracy()}, mesh=auto, param_sharding=fsdp)
  report["evaluate"] = {"single": one, "mesh": eight}
  report["modes"] = modes_report(x, y, auto)
  report["factored"] = factored_report(x, y, params, auto)
  try:
    loader = gcj.DataLoader((x, y), batch_size=12)
    gcj.fit(mlp, optax.sgd(0.1), params=params, loss=gcj.losses.cross_entropy, train_loader=loader, epochs=1, mesh=auto)
    report["indivisible_batch_error"] = None
  except ValueError as err:
    report["indivisible_batch_error"] = str(err)
  return report


def factored_report(x, y, params, mesh) -> dict:
  """Adafactor and Muon (states not shaped like their params) on FSDP params: fit on `mesh` vs one device.

  The params are given as jax arrays on one device and checked afterwards: placing them on
  the mesh must copy them, never hand the caller's buffers to the donated step.
  """
  on_device = jax.tree.map(jnp.asarray, params)
  optimizers = {
      "adafactor": gcj.adafactor(1e-2, weight_decay=0.01),
      # Muon takes 2-D leaves only: the biases go to AdamW, torch's recommended pairing.
      "muon": optax.partition(
          {"muon": gcj.muon(1e-2), "adamw": gcj.adamw(1e-2)},
          lambda tree: jax.tree.map(lambda p: "muon" if p.ndim == 2 else "adamw", tree),
      ),
  }
  found = {}
  for name, tx in optimizers.items():
    kwargs = dict(params=on_device, loss=gcj.losses.cross_entropy, epochs=1, progress=False)
    single = gcj.fit(mlp, tx, train_loader=gcj.DataLoader((x, y), batch_size=16), **kwargs)
    sharded = gcj.fit(mlp, tx, train_loader=gcj.DataLoader((x, y), batch_size=16), mesh=mesh, param_sharding=fsdp, **kwargs)
    found[name] = {
        "params_difference": relative_difference(sharded.model, single.model),
        "state_difference": relative_difference(sharded.opt_state, single.opt_state),
        "sharded_state_leaves": sum(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(sharded.opt_state)),
    }
  found["callers_params_alive"] = not any(leaf.is_deleted() for leaf in jax.tree.leaves(on_device))
  return found


def modes_report(x, y, mesh) -> dict:
  """A linen BatchNorm/Dropout MLP trained on one device and on `mesh`: the differences."""
  from flax import linen as nn  # pylint: disable=g-import-not-at-top  (only this run needs flax)

  class Net(nn.Module):
    @nn.compact
    def __call__(self, inputs, train: bool):
      # No bias before BatchNorm: its gradient is exactly zero, in float32 rounding noise that
      # Adam scales up to full steps, different on every layout.
      hidden = nn.Dense(32, use_bias=False)(inputs)
      hidden = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(hidden))
      return nn.Dense(3)(nn.Dropout(0.25, deterministic=not train)(hidden))

  variables = Net().init(jax.random.key(0), x[:1], train=False)
  single, sharded = (
      run(x, y, variables, model=Net(), seed=5, compiled_epoch=True, **({"mesh": mesh} if on_mesh else {}))
      for on_mesh in (False, True)
  )
  ours, reference = figures(sharded.stats), figures(single.stats)
  return {
      "state_difference": relative_difference(sharded.model.variables, single.model.variables),
      "figures_difference": {k: relative_difference(ours[k], reference[k]) for k in ours},
      "steps": [int(single.model.step), int(sharded.model.step)],
  }


if __name__ == "__main__":
  print(json.dumps(main(sys.argv[1])))
