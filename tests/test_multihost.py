"""Two JAX processes of 4 CPU devices each (`jax.distributed`, gloo) equal one process of 8 devices.

One launch serves every test: `tests/_multihost_worker.py` runs as the two processes of a
2x4 run (joined through a coordinator on a free localhost port), then as the 1x8
reference; each process writes its results into a folder that these tests read.
Each process of the 2x4 run feeds only its own half of the data. The reference is
the same code on one process whose 8 devices see the same global batches (see the
worker's docstring for the scenarios).

Checked: optimizer steps on FSDP params, `fit` with replicated and with FSDP params (the
per-step loop and compiled epochs) and `evaluate`, against the reference within float32
rounding, with the exactly-counted figures (accuracies, examples, steps) equal; both
processes end with the same arrays and figures; a checkpoint written by both processes
(each its own shards, orbax's multi-process save) resumes the 2x4 run bit for bit and
restores on this process's single device bit for bit; mismatched process-local loaders
and a missing mesh are refused on every process (no hang); the processes exit cleanly.

The launch costs ~45 CPU-seconds (each process of the pair ~17, the reference ~9; mostly
compilation), so it runs once per test session even when pytest-xdist spreads these
tests over workers: the first worker to need it launches, the others wait on a lock for
its results. It is skipped (with the reason) when this jax has no gloo CPU collectives.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

import gradcore_jax as gcj

# One worker runs the files that launch multi-device subprocesses (test_sharding, test_sharded_fit,
# test_multihost; `--dist loadgroup`), one launch after another: each file's tests share one launch, the
# launches do not compete with each other for the cores, and the other worker keeps running the rest.
pytestmark = pytest.mark.xdist_group("multi_device_subprocesses")

TESTS = pathlib.Path(__file__).parent
WORKER = TESTS / "_multihost_worker.py"
NO_GLOO = 77  # the worker's exit status when gloo CPU collectives are unavailable
TIMEOUT = 240  # seconds for the whole launch: a hang fails the tests instead of blocking the suite
PORT_ATTEMPTS = 3
# What the coordinator (process 0) logs when another program took its port before it could bind it.
PORT_TAKEN = ("already in use", "failed to add port")
OPTIMIZERS = ("adam-amsgrad", "adafactor-wd")
FITS = ("data_parallel", "fsdp")
# Float32 rounding: 2x4 devices sum a batch in another order than 1x8 (as tests/test_sharding.py
# and tests/test_sharded_fit.py compare 8 devices with one).
OPTIMIZER_ROUNDING = 1e-5
FIT_ROUNDING = 2e-6


def _free_port() -> int:
  """A port the system just handed out as free (another program may still take it: the launch retries)."""
  with socket.socket() as probe:
    probe.bind(("localhost", 0))
    return probe.getsockname()[1]


def _worker_env() -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  # The repository (whether or not it is installed) and tests/ (the worker imports its neighbours).
  env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
  return env


def _start(out: pathlib.Path, name: str, args: list) -> subprocess.Popen:
  """The worker with `args`, its output into `out/<name>.log` (a file: a full pipe would block it)."""
  with open(out / f"{name}.log", "w") as log:  # the child keeps its own copy of the descriptor
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)], env=_worker_env(), stdout=log, stderr=subprocess.STDOUT
    )


def _log(out: pathlib.Path, name: str) -> str:
  return (out / f"{name}.log").read_text(errors="replace")


def _wait(processes: dict[str, subprocess.Popen], deadline: float) -> dict[str, int]:
  """Exit statuses; stops the others as soon as one fails (they would wait for it), kills all at the deadline."""
  while any(p.poll() is None for p in processes.values()):
    if time.monotonic() > deadline or any(p.returncode not in (None, 0) for p in processes.values()):
      for p in processes.values():
        if p.poll() is None:
          p.kill()
          p.wait()
      break
    time.sleep(0.05)
  return {name: p.returncode for name, p in processes.items()}


def _launch(out: pathlib.Path) -> dict:
  """Runs the 2x4 pair, then the 1x8 reference; returns their exit statuses and when the pair exited.

  One after the other: the pair has the cores to itself (a process waiting in a collective
  for its descheduled partner burns time), and a failed pair costs no reference run.
  """
  deadline = time.monotonic() + TIMEOUT
  for attempt in range(PORT_ATTEMPTS):
    port = _free_port()
    pair = {f"process{i}": _start(out, f"process{i}", [out / "2x4", 2, i, port]) for i in range(2)}
    codes = _wait(pair, deadline)
    exited = time.time()
    if NO_GLOO in codes.values():
      return {"skip": f"jax {jax.__version__} has no gloo CPU collectives: {_log(out, 'process0').strip()[-300:]}"}
    taken = any(marker in _log(out, "process0").lower() for marker in PORT_TAKEN)
    if not (taken and attempt + 1 < PORT_ATTEMPTS):
      break
  if all(code == 0 for code in codes.values()):
    codes.update(_wait({"reference": _start(out, "reference", [out / "1x8", 1, 0, 0])}, deadline))
  return {"codes": codes, "exited": exited, "timed_out": time.monotonic() > deadline}


@contextlib.contextmanager
def _once_per_session(tmp_path_factory: pytest.TempPathFactory):
  """`(folder, record)`: with xdist, the folder every worker of this session shares (held under a lock) and
  the launch's record in it; without xdist, a fresh folder and no record."""
  if "PYTEST_XDIST_WORKER" not in os.environ:
    yield tmp_path_factory.mktemp("multihost"), None
    return
  shared = tmp_path_factory.getbasetemp().parent / "multihost"  # the session's folder, above the workers'
  shared.mkdir(exist_ok=True)
  with open(shared / ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield shared, shared / "launch.json"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
  with _once_per_session(tmp_path_factory) as (out, record):
    if record is not None and record.exists():
      launch = json.loads(record.read_text())
    else:
      started = time.monotonic()
      launch = _launch(out)
      launch["seconds"] = time.monotonic() - started
      if record is not None:
        record.write_text(json.dumps(launch))
  if "skip" in launch:
    pytest.skip(launch["skip"])
  assert not launch["timed_out"], f"the launch took over {TIMEOUT} s: " + _log(out, "process0")[-3000:]
  for name, code in launch["codes"].items():
    assert code == 0, f"{name} exited with {code}:\n" + _log(out, name)[-4000:]
  found = {"launch": launch, "out": out}
  for run, processes in (("2x4", 2), ("1x8", 1)):
    found[run] = [
        (json.loads((out / run / f"process{i}.json").read_text()), dict(np.load(out / run / f"process{i}.npz")))
        for i in range(processes)
    ]
  return found


def _relative_difference(ours: np.ndarray, reference: np.ndarray) -> float:
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return float(np.max(np.abs(ours - reference))) / max(float(np.max(np.abs(reference))), 1e-30)


def _largest_difference(ours: dict, reference: dict, prefix: str) -> float:
  keys = [k for k in reference if k.startswith(prefix)]
  assert keys and all(k in ours for k in keys), prefix
  return max(_relative_difference(ours[k], reference[k]) for k in keys)


def test_two_processes_of_four_devices_and_one_of_eight(runs: dict) -> None:
  (first, _), (second, _) = runs["2x4"]
  ((reference, _),) = runs["1x8"]
  assert [first["processes"], first["devices"], first["local_devices"]] == [2, 8, 4]
  assert [second["processes"], second["devices"], second["local_devices"]] == [2, 8, 4]
  assert [reference["processes"], reference["devices"], reference["local_devices"]] == [1, 8, 8]


def test_both_processes_end_with_the_same_arrays_and_figures(runs: dict) -> None:
  (first, first_arrays), (second, second_arrays) = runs["2x4"]
  assert first_arrays.keys() == second_arrays.keys()
  assert all(np.array_equal(first_arrays[k], second_arrays[k]) for k in first_arrays)
  # "errors" quote each process's own loader; "finished" is a time.
  assert {k: v for k, v in first.items() if k not in ("errors", "finished")} == {
      k: v for k, v in second.items() if k not in ("errors", "finished")
  }


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_steps_on_two_processes_equal_one_process(runs: dict, name: str) -> None:
  (_, ours), _ = runs["2x4"]
  ((_, reference),) = runs["1x8"]
  moved = max(
      _relative_difference(reference[k], reference[k.replace(f"optimizers/{name}[0]", "optimizers/initial")])
      for k in reference
      if k.startswith(f"optimizers/{name}[0]")
  )
  assert moved > 0.1  # the 20 steps went somewhere: the comparison is not vacuous
  assert _largest_difference(ours, reference, f"optimizers/{name}") < OPTIMIZER_ROUNDING


@pytest.mark.parametrize("name", FITS)
def test_fit_on_two_processes_equals_one_process(runs: dict, name: str) -> None:
  (ours, ours_arrays), _ = runs["2x4"]
  ((reference, reference_arrays),) = runs["1x8"]
  assert _largest_difference(ours_arrays, reference_arrays, f"{name}/params") < FIT_ROUNDING
  assert _largest_difference(ours_arrays, reference_arrays, f"{name}/opt_state") < FIT_ROUNDING
  ours, reference = ours[name], reference[name]
  for figure in ("batch_losses", "running_losses", "epoch_losses"):
    assert _relative_difference(ours[figure], reference[figure]) < FIT_ROUNDING, figure
  eval_losses = [[m["loss"] for m in run["eval_metrics"]] for run in (ours, reference)]
  assert _relative_difference(*eval_losses) < FIT_ROUNDING
  # Counted exactly: each process saw 50 of the 100 examples, the figures count all 100.
  assert [ours["examples_seen"], ours["total_steps"], ours["epochs_trained"]] == [200, 14, 2]
  assert [reference["examples_seen"], reference["total_steps"]] == [200, 14]
  for metrics in ("train_metrics", "eval_metrics"):
    assert [m["accuracy"] for m in ours[metrics]] == [m["accuracy"] for m in reference[metrics]], metrics


def test_evaluate_on_two_processes_equals_one_process(runs: dict) -> None:
  (ours, _), _ = runs["2x4"]
  ((reference, _),) = runs["1x8"]
  assert ours["evaluate"]["accuracy"] == reference["evaluate"]["accuracy"]
  assert ours["evaluate"]["loss"] == pytest.approx(reference["evaluate"]["loss"], rel=FIT_ROUNDING)


def test_resuming_the_two_process_run_from_its_mid_epoch_checkpoint_is_exact(runs: dict) -> None:
  (ours, arrays), _ = runs["2x4"]
  assert ours["saved_steps"] == [5, 10, 14]
  resumed = {k.replace("resumed/", "fsdp/"): v for k, v in arrays.items() if k.startswith("resumed/")}
  assert resumed.keys() == {k for k in arrays if k.startswith("fsdp/")}
  assert all(np.array_equal(v, arrays[k]) for k, v in resumed.items())
  assert ours["resumed"] == ours["fsdp"]


def test_each_process_wrote_its_own_shards_and_one_wrote_the_record(runs: dict) -> None:
  """orbax's multi-process save: both processes call it, each writes its shards, the primary the metadata."""
  (ours, _), _ = runs["2x4"]
  for step in ours["saved_steps"]:
    files = [f.split("/", 1)[1] for f in ours["checkpoint_files"] if f.split("/", 1)[0] == str(step)]
    assert {"arrays/ocdbt.process_0/manifest.ocdbt", "arrays/ocdbt.process_1/manifest.ocdbt"} <= set(files), files
    assert files.count("record/metadata") == 1 and files.count("_CHECKPOINT_METADATA") == 1


def test_the_two_process_checkpoint_restores_on_one_device_bit_for_bit(runs: dict) -> None:
  """`fit(..., resume=True)` here, on one device, of the finished 2x4 run: nothing to train, the state restored."""
  (ours, arrays), _ = runs["2x4"]
  rng = np.random.default_rng(0)
  shape = {"hidden": {"w": (16, 32), "b": (32,)}, "out": {"w": (32, 3), "b": (3,)}}
  is_shape = lambda s: isinstance(s, tuple)  # noqa: E731
  params = jax.tree.map(lambda s: rng.standard_normal(s).astype(np.float32), shape, is_leaf=is_shape)
  x = rng.standard_normal((50, 16)).astype(np.float32)
  y = rng.integers(0, 3, 50).astype(np.int32)

  def mlp(params, inputs):  # the shapes of tests/_sharded_fit.py's model; the values come from the checkpoint
    hidden = jax.numpy.tanh(inputs @ params["hidden"]["w"] + params["hidden"]["b"])
    return hidden @ params["out"]["w"] + params["out"]["b"]

  restored = gcj.fit(
      mlp,
      optax.adam(1e-2),
      params=params,
      loss=gcj.losses.cross_entropy,
      # The same loader settings as each process of the 2x4 run had (a checkpoint records them).
      train_loader=gcj.DataLoader((x, y), batch_size=8, shuffle=True, process_local=True),
      metrics={"accuracy": gcj.metrics.accuracy()},
      epochs=2,
      progress=False,
      clip_global_norm=1.0,
      checkpoint_dir=runs["out"] / "2x4" / "checkpoints",
      resume=True,
  )
  assert restored.stats.total_steps == 14 and restored.stats.batch_losses == ours["resumed"]["batch_losses"]
  final = {
      f"resumed/{part}{jax.tree_util.keystr(path)}": leaf
      for part, tree in (("params", restored.model), ("opt_state", restored.opt_state))
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
  assert final.keys() == {k for k in arrays if k.startswith("resumed/")}
  assert all(np.array_equal(np.asarray(v), arrays[k]) for k, v in final.items())


def test_mismatched_process_local_loaders_and_a_missing_mesh_are_refused_on_every_process(runs: dict) -> None:
  for report, _ in runs["2x4"]:
    errors = report["errors"]
    assert "train_loader is process_local: pass the mesh spanning the 2 processes" in errors["no_mesh"]
    assert "every process must build it with the same settings and number of examples" in errors["different_loaders"]


def test_the_processes_exit_cleanly(runs: dict) -> None:
  launch = runs["launch"]
  for report, _ in runs["2x4"]:
    assert launch["exited"] - report["finished"] < 20  # results written to exit: shutdown took no timeout
  for name in launch["codes"]:
    log = _log(runs["out"], name)
    assert "Traceback" not in log and "Exception ignored" not in log, log[-2000:]
