"""`fit` and `evaluate` on a mesh of 8 virtual CPU devices equal one device's results.

The work happens in `tests/_sharded_fit.py`, run once in a subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=8` (this process keeps its single
device); these tests read its JSON report. See that script for the runs.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
from _once import session_report

# One worker runs the files that launch multi-device subprocesses (test_sharding, test_sharded_fit,
# test_multihost; `--dist loadgroup`), one launch after another: each file's tests share one launch, the
# launches do not compete with each other for the cores, and the other worker keeps running the rest.
pytestmark = pytest.mark.xdist_group("multi_device_subprocesses")

SCRIPT = pathlib.Path(__file__).with_name("_sharded_fit.py")
RUNS = ("replicated", "fsdp", "resumed", "explicit")
# Float32 rounding: 8 devices sum a batch in another order than one device does.
FLOAT32_ROUNDING = 2e-6


def _run_subprocess(checkpoints: pathlib.Path) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  done = subprocess.run(
      [sys.executable, str(SCRIPT), str(checkpoints)], env=env, capture_output=True, text=True, timeout=600, check=False
  )
  assert done.returncode == 0, done.stderr[-4000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
  """The subprocess's report, made once per session (not once per xdist worker)."""
  return session_report(tmp_path_factory, "sharded_fit_report", _run_subprocess)


def test_the_subprocess_has_eight_devices(report: dict) -> None:
  assert report["devices"] == 8


@pytest.mark.parametrize("name", RUNS)
def test_a_short_fit_on_eight_devices_equals_one_device(report: dict, name: str) -> None:
  run = report["runs"][name]
  assert run["params_difference"] < FLOAT32_ROUNDING
  assert max(run["figures_difference"].values()) < FLOAT32_ROUNDING
  # Padded rows count for nothing on every device: the same examples and steps.
  assert run["counts"] == report["single_counts"] == [200, 14]


@pytest.mark.parametrize("name", RUNS)
def test_params_and_optimizer_state_keep_their_shardings_leaf_by_leaf(report: dict, name: str) -> None:
  run = report["runs"][name]
  assert run["sharding_problems"] == []
  assert run["sharded_params"] == (0 if name == "replicated" else 3)  # both weights and the hidden bias


def test_resuming_a_sharded_run_from_a_mid_epoch_checkpoint_is_exact(report: dict) -> None:
  assert report["resumed_equals_uninterrupted"]


def test_evaluation_on_the_mesh_equals_one_device(report: dict) -> None:
  single, mesh = report["evaluate"]["single"], report["evaluate"]["mesh"]
  assert mesh["accuracy"] == single["accuracy"]
  assert mesh["loss"] == pytest.approx(single["loss"], rel=FLOAT32_ROUNDING)


def test_batchnorm_statistics_and_dropout_keys_on_the_mesh_equal_one_device(report: dict) -> None:
  """Model state (BatchNorm's running averages over the global batch) and per-step dropout keys."""
  modes = report["modes"]
  assert modes["state_difference"] < FLOAT32_ROUNDING
  assert max(modes["figures_difference"].values()) < FLOAT32_ROUNDING
  assert modes["steps"] == [14, 14]


def test_a_batch_size_that_does_not_divide_over_the_devices_is_refused(report: dict) -> None:
  message = report["indivisible_batch_error"]
  assert message is not None and "train_loader.batch_size (12) must be divisible by the 8 devices" in message


@pytest.mark.parametrize("name", ("adafactor", "muon"))
def test_states_not_shaped_like_their_params_train_on_the_mesh_as_on_one_device(report: dict, name: str) -> None:
  # Adafactor's row/column statistics and its None leaves, and Muon's partitioned state, are
  # laid out as `tx.init` lays them out for the sharded params.
  run = report["factored"][name]
  assert run["params_difference"] < FLOAT32_ROUNDING
  assert run["state_difference"] < FLOAT32_ROUNDING
  assert run["sharded_state_leaves"] > 0


def test_a_mesh_run_leaves_the_callers_params_alive(report: dict) -> None:
  # jax's device_put may reuse a one-device buffer as a replicated shard; the donated step
  # would then delete the caller's array.
  assert report["factored"]["callers_params_alive"]
