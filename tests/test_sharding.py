"""Optimizers on a mesh of 8 virtual CPU devices keep the params' shardings and the results.

The work happens in `tests/_sharded_optimizers.py`, run once in a subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`, so that this process (and the rest
of the suite) keeps its single device. It trains every optimizer for 20 steps with params
sharded FSDP-style, on a mesh with an Explicit axis and again on one with an Auto axis,
and once on a single device; these tests read its JSON report.

Adafactor's row (column) statistic of a matrix, `(m, 1)` (`(1, n)`), carries the matrix's
sharding over the rows (columns) it keeps and is replicated along the axis it averages.
Muon runs as documented, on the two matrices with AdamW for the rest (`optax.partition`):
its momentum is sharded like the params, and each matrix is gathered for the Newton-Schulz
products (by `newton_schulz` itself on an Explicit axis, by XLA on an Auto one).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from _once import session_report

# One worker runs the files that launch multi-device subprocesses (test_sharding, test_sharded_fit,
# test_multihost; `--dist loadgroup`), one launch after another: each file's tests share one launch, the
# launches do not compete with each other for the cores, and the other worker keeps running the rest.
pytestmark = pytest.mark.xdist_group("multi_device_subprocesses")

SCRIPT = pathlib.Path(__file__).with_name("_sharded_optimizers.py")
MODES = ("explicit", "auto")
# Float32 rounding: the sharded gradients sum the batch in another order than one device does.
FLOAT32_ROUNDING = 1e-5

# Per case: (state leaves shaped like a param, in all; row/column statistics of the two
# matrices; scalar leaves), from the README's memory table. The params are 5 leaves: two
# matrices, two vectors and a scalar. Scalars are step counts, plus NAdam's momentum
# product, a schedule's count and ASGD's eta and mu.
PARAMS = 5
EXPECTED_STATE = {
    "sgd-nesterov-wd": (PARAMS, 0, 1),  # momentum buffer; count
    "sgd_ema": (PARAMS, 0, 0),  # EMA buffer
    "rmsprop-centered-momentum-wd": (3 * PARAMS, 0, 1),  # square avg, grad avg, momentum buffer; count
    "adam-amsgrad": (3 * PARAMS, 0, 1),  # mu, nu, nu_max; count
    "adamw-schedule": (2 * PARAMS, 0, 2),  # mu, nu; Adam's count and the schedule's count
    "adagrad-lr-decay": (PARAMS, 0, 1),  # sum of squares; the lr_decay schedule's count
    "adadelta": (2 * PARAMS, 0, 0),  # square avg, accumulated delta
    "adamax": (2 * PARAMS, 0, 1),  # mu, infinity norm; count
    "nadam": (2 * PARAMS, 0, 2),  # mu, nu; count and momentum product
    "radam": (2 * PARAMS, 0, 1),  # mu, nu; count
    "rprop": (2 * PARAMS, 0, 0),  # prev, step_size
    "asgd-averaging-wd": (PARAMS, 0, 3),  # ax; count, eta, mu
    # Full second moments of the 3 others; a (m, 1) row and a (1, n) column statistic per matrix; count.
    "adafactor-wd": (3, 2 * 2, 1),
    # Muon's momentum for the 2 matrices, AdamW's mu and nu for the 3 others; AdamW's count.
    "muon+adamw": (2 + 2 * 3, 0, 1),
}
CASES = [(mode, name) for mode in MODES for name in EXPECTED_STATE]


def test_every_optimizer_has_a_case():
  import gradcore_jax as gcj  # noqa: PLC0415

  assert {re.split("[-+]", name)[0] for name in EXPECTED_STATE} == set(gcj.optimizers.names())


def _run_subprocess(scratch) -> dict:
  del scratch  # the run writes nothing
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  done = subprocess.run(
      [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900, check=False
  )
  assert done.returncode == 0, done.stderr[-4000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
  """The subprocess's report, made once per session (not once per xdist worker)."""
  return session_report(tmp_path_factory, "sharding_report", _run_subprocess)


def test_the_subprocess_runs_on_eight_devices_and_this_one_on_one(report):
  import jax  # noqa: PLC0415  (imported late so the check is about this process as the suite runs it)

  assert report["devices"] == 8
  assert jax.device_count() == 1


@pytest.mark.parametrize("mode", MODES)
def test_params_are_sharded_and_a_misplaced_state_is_caught(report, mode):
  run = report["modes"][mode]
  assert run["param_problems"] == []
  assert run["sharded_params"] == 3  # kernel by rows, head weight by columns, dense bias
  assert set(run["cases"]) == set(EXPECTED_STATE)
  # An Adam state forced onto a replicated layout: mu and nu of the 3 sharded params.
  assert run["control_problems"] == 6


@pytest.mark.parametrize(("mode", "name"), CASES, ids=[f"{m}-{n}" for m, n in CASES])
def test_state_leaves_carry_their_params_shardings(report, mode, name):
  """Leaf by leaf after init on arrays and on ShapeDtypeStructs, after 20 jitted updates and,
  with Explicit axes, after a jitted init and under eval_shape."""
  case = report["modes"][mode]["cases"][name]
  assert report["param_leaves"] == PARAMS
  assert (case["param_like"], case["factored"], case["scalars"]) == EXPECTED_STATE[name]
  assert case["mismatches"] == []


@pytest.mark.parametrize(("mode", "name"), CASES, ids=[f"{m}-{n}" for m, n in CASES])
def test_sharded_training_equals_one_device(report, mode, name):
  assert report["moved"][name] > 0.1  # the 20 steps went somewhere: the comparison is not vacuous
  assert report["modes"][mode]["cases"][name]["max_relative_difference"] < FLOAT32_ROUNDING
