"""One process of a 2-process run, or the 1-process reference; writes its results into a folder.

Run by `tests/test_multihost.py` (with `tests/` on PYTHONPATH):

    python tests/_multihost_worker.py OUT PROCESSES PROCESS_ID PORT

With PROCESSES=2, each of the two processes has 4 virtual CPU devices and joins the other
with `jax.distributed.initialize("localhost:PORT", ...)` over gloo CPU collectives, so
`jax.devices()` lists 8; with PROCESSES=1 the one process has 8 devices (the reference).
Both run the same scenarios on a mesh of the 8 devices, each process feeding only its
own rows of the data:

* `optimizers`: two optimizers of `tests/_sharded_optimizers.py` (Adam's moments with the
  AMSGrad maximum, Adafactor's factored statistics), 20 steps with params sharded
  FSDP-style, in one compiled program; each process builds only its half of every batch
  (`jax.make_array_from_process_local_data`).
* `data_parallel`: `fit` of the MLP of `tests/_sharded_fit.py` (Adam, clipping, accuracy),
  params replicated, as compiled epochs, on `DataLoader(..., process_local=True)` loaders
  over each process's half of the examples (training shuffled, plus an evaluation loader).
* `evaluate`: `evaluate` of the trained params sharded FSDP-style, with a loader over all
  the examples on every process (each process places its own devices' rows).
* `fsdp`: `fit` with FSDP params on the process-local loaders, step by step (synced every
  3 steps). On 2 processes it checkpoints every 5 steps, and `resumed` continues it from
  its mid-epoch checkpoint at step 10 after process 0 deleted the final one; then `errors`
  holds how `fit` refuses a process-local loader without a mesh and process-local
  loaders that differ between the processes.

The reference (one process) reads the same examples in the same global batches: its
loaders (`Interleaved`) visit, batch by batch, the first process's rows, then the
second's. Each process compiles into a persistent cache in OUT, so the resumed run
reuses what the first one compiled.

Each process writes `OUT/process<i>.npz` (final arrays, gathered over the processes) and
`OUT/process<i>.json` (figures, counts, the files of the checkpoint folder); exit status
77 says the installed jax has no gloo CPU collectives.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

OUT, PROCESSES, PROCESS_ID, PORT = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
DEVICES = 8
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES // PROCESSES}"
os.environ["JAX_PLATFORMS"] = "cpu"
NO_GLOO = 77

import jax  # noqa: E402  (must follow the XLA_FLAGS above)

jax.config.update("jax_compilation_cache_dir", os.path.join(OUT, "compilation_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
if PROCESSES > 1:
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except Exception as err:  # noqa: BLE001  (a jax without the option, or without gloo among its values)
    print(f"gloo CPU collectives unavailable: {type(err).__name__}: {err}", file=sys.stderr)
    sys.exit(NO_GLOO)
  jax.distributed.initialize(
      f"localhost:{PORT}", num_processes=PROCESSES, process_id=PROCESS_ID, initialization_timeout=60
  )
try:
  assert jax.device_count() == DEVICES, jax.devices()  # the backend starts here, with the flags above
except AttributeError as err:  # a jaxlib without the gloo factory the option asks for
  if "gloo" not in str(err):
    raise
  print(f"gloo CPU collectives unavailable: {err}", file=sys.stderr)
  sys.exit(NO_GLOO)

import _sharded_fit  # noqa: E402  (its XLA_FLAGS come too late to matter: the backend has started)
import _sharded_optimizers  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import AxisType  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import gradcore_jax as gcj  # noqa: E402

AXIS = "data"
MESH = jax.make_mesh((DEVICES,), (AXIS,), axis_types=(AxisType.Auto,))
TRAIN_BATCH, EVAL_BATCH = 16, 24  # global batches
OPTIMIZERS = ("adam-amsgrad", "adafactor-wd")
SHARES = 2  # the examples are split in two halves, one per process of the 2x4 run


class Interleaved(gcj.DataLoader):
  """The reference's loader: each global batch holds the processes' batches, one after the other.

  Over all the examples (process p's share from `p * share` on), epoch `e` visits batch `b`
  as the process-local loaders (the same settings, `share` examples each) do: the first
  process's `b`-th batch, then the second's.
  """

  def __init__(self, data, *, batch_size, **kwargs):
    super().__init__(data, batch_size=batch_size, **kwargs)
    self._share = len(data[0]) // SHARES
    self._local = gcj.DataLoader(tuple(a[: self._share] for a in data), batch_size=batch_size // SHARES, **kwargs)

  def order(self, epoch):
    local, size = self._local.order(epoch), self._local.batch_size
    return np.concatenate([
        local[start : start + size] + p * self._share for start in range(0, self._share, size) for p in range(SHARES)
    ])


def process_local_loaders(x, y):
  """(train, eval): this process's half of the examples (2x4), or their interleaved whole (1x8)."""
  if PROCESSES == 1:
    return Interleaved((x, y), batch_size=TRAIN_BATCH, shuffle=True), Interleaved((x, y), batch_size=EVAL_BATCH)
  share = len(x) // PROCESSES
  mine = tuple(a[PROCESS_ID * share : (PROCESS_ID + 1) * share] for a in (x, y))
  return (
      gcj.DataLoader(mine, batch_size=TRAIN_BATCH // PROCESSES, shuffle=True, process_local=True),
      gcj.DataLoader(mine, batch_size=EVAL_BATCH // PROCESSES, process_local=True),
  )


def gathered(tree):
  """Every leaf's global values, as NumPy arrays, on every process."""
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def flat(prefix, tree) -> dict:
  return {f"{prefix}{jax.tree_util.keystr(path)}": leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def optimizers(arrays: dict) -> None:
  """`OPTIMIZERS` on FSDP params for 20 steps; each process builds only its own rows of the batches."""
  layout, is_pair = _sharded_optimizers.LAYOUT, _sharded_optimizers._is_pair  # noqa: SLF001
  rng = np.random.default_rng(0)
  values = jax.tree.map(lambda pair: (0.5 * rng.standard_normal(pair[0])).astype(np.float32), layout, is_leaf=is_pair)
  xs = rng.standard_normal((_sharded_optimizers.STEPS, _sharded_optimizers.BATCH, 16)).astype(np.float32)
  ys = np.tanh(xs @ rng.standard_normal((16, 8))).astype(np.float32)
  rename = lambda spec: P(*(AXIS if axis == "fsdp" else axis for axis in spec))  # noqa: E731  (the layout's axis name)
  shardings = jax.tree.map(lambda pair: NamedSharding(MESH, rename(pair[1])), layout, is_leaf=is_pair)
  # Params hold the same values on every process: each builds its own devices' shards of them.
  params = jax.tree.map(lambda v, s: jax.make_array_from_callback(v.shape, s, lambda i, v=v: v[i]), values, shardings)
  rows = _sharded_optimizers.BATCH // PROCESSES
  mine = slice(PROCESS_ID * rows, (PROCESS_ID + 1) * rows)
  rows_split = NamedSharding(MESH, P(None, AXIS, None))
  batches = [jax.make_array_from_process_local_data(rows_split, a[:, mine]) for a in (xs, ys)]
  cases = dict(_sharded_optimizers.CASES)
  replicated = NamedSharding(MESH, P())
  final = _sharded_optimizers._train_side_by_side(  # noqa: SLF001
      [cases[name] for name in OPTIMIZERS], params, *batches, gather=lambda a: jax.sharding.reshard(a, replicated)
  )
  for name, result in zip(OPTIMIZERS, gathered(final), strict=True):
    arrays.update(flat(f"optimizers/{name}", result))
  arrays.update(flat("optimizers/initial", values))


def run(name, train, evaluation, params, arrays, report, **kwargs):
  result = gcj.fit(
      _sharded_fit.mlp,
      optax.adam(1e-2),
      params=params,
      loss=gcj.losses.cross_entropy,
      train_loader=train,
      eval_loader=evaluation,
      metrics={"accuracy": gcj.metrics.accuracy()},
      epochs=2,
      progress=False,
      clip_global_norm=1.0,
      mesh=MESH,
      **kwargs,
  )
  arrays.update(flat(f"{name}/params", gathered(result.model)))
  arrays.update(flat(f"{name}/opt_state", gathered(result.opt_state)))
  report[name] = {k: v for k, v in result.stats.to_dict().items() if k not in ("epoch_times", "steps_per_second")}
  return result


def main() -> None:
  os.makedirs(OUT, exist_ok=True)
  x, y, params = _sharded_fit.data()
  arrays = {}
  report = {"processes": jax.process_count(), "devices": jax.device_count(), "local_devices": jax.local_device_count()}
  train, evaluation = process_local_loaders(x, y)

  optimizers(arrays)

  trained = run("data_parallel", train, evaluation, params, arrays, report, compiled_epoch=True)
  report["evaluate"] = gcj.evaluate(
      _sharded_fit.mlp,
      gcj.DataLoader((x, y), batch_size=EVAL_BATCH),
      loss=gcj.losses.cross_entropy,
      params=trained.model,
      metrics={"accuracy": gcj.metrics.accuracy()},
      mesh=MESH,
      param_sharding=_sharded_fit.fsdp,
  )

  fsdp = {"param_sharding": _sharded_fit.fsdp, "log_interval": 3}
  if PROCESSES == 1:  # the reference writes no checkpoints: they change no figure
    run("fsdp", train, evaluation, params, arrays, report, **fsdp)
  else:
    checkpoints_and_resume(train, evaluation, params, arrays, report, fsdp)
    report["errors"] = refused(x, y, params)
  report["finished"] = time.time()  # for the test: how long the interpreter takes to exit after this
  np.savez(os.path.join(OUT, f"process{PROCESS_ID}.npz"), **arrays)
  with open(os.path.join(OUT, f"process{PROCESS_ID}.json"), "w") as f:
    json.dump(report, f)


def checkpoints_and_resume(train, evaluation, params, arrays, report, fsdp) -> None:
  """`fsdp` with a checkpoint every 5 steps, then `resumed` from its step 10 after the final one is deleted."""
  checkpoints = os.path.join(OUT, "checkpoints")
  fsdp = {**fsdp, "checkpoint_dir": checkpoints, "checkpoint_every": 5}
  run("fsdp", train, evaluation, params, arrays, report, **fsdp)
  report["saved_steps"] = sorted(int(step) for step in os.listdir(checkpoints))
  report["checkpoint_files"] = sorted(
      os.path.relpath(os.path.join(folder, name), checkpoints)
      for folder, _, names in os.walk(checkpoints)
      for name in names
  )
  multihost_utils.sync_global_devices("listed")
  if jax.process_index() == 0:  # back to step 10 (epoch 1, batch 3): one process deletes, the others wait
    shutil.rmtree(os.path.join(checkpoints, "14"))
  multihost_utils.sync_global_devices("final checkpoint deleted")
  run("resumed", train, evaluation, params, arrays, report, **fsdp, resume=True)


def refused(x, y, params) -> dict:
  """The messages of `fit` refusing process-local loaders without a mesh, and loaders that differ between processes."""
  found = {}
  uneven = 50 - PROCESS_ID  # process 1 has one example fewer: its loader would differ from process 0's
  loaders = {
      "no_mesh": (gcj.DataLoader((x[:50], y[:50]), batch_size=8, process_local=True), None),
      "different_loaders": (gcj.DataLoader((x[:uneven], y[:uneven]), batch_size=8, process_local=True), MESH),
  }
  for name, (loader, mesh) in loaders.items():
    try:
      gcj.fit(
          _sharded_fit.mlp,
          optax.sgd(0.1),
          params=params,
          loss=gcj.losses.cross_entropy,
          train_loader=loader,
          epochs=1,
          mesh=mesh,
          progress=False,
      )
      found[name] = None
    except ValueError as err:
      found[name] = str(err)
  return found


if __name__ == "__main__":
  main()
  if PROCESSES > 1:
    jax.distributed.shutdown()  # leave together: the coordinator (process 0) waits for the others
