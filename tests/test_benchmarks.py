"""Smoke test of the benchmark suite: `python -m benchmarks all --quick` runs and writes its JSON.

No timing is asserted (figures on a shared machine are noise at these sizes); the test
checks that every suite ran, that each figure is a positive number, that the
multi-tensor and PyTorch cases took part, that the PyTorch loop trained the same model
on the same batches as `fit` (reference: PyTorch 2.13's `torch.optim.Adam` loop, epoch
losses to float32 rounding), and the structural facts the memory suite rests on.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

# One worker runs the whole file (`--dist loadgroup`): its tests share one subprocess run, and the
# other worker keeps running the rest of the suite instead of waiting for that run.
pytestmark = [pytest.mark.xdist_group("benchmarks"), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def _run_quick(path: Path) -> None:
  done = subprocess.run(
    [sys.executable, "-m", "benchmarks", "all", "--quick", "--json", str(path)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-4000:]
  for suite in ("update", "threads", "loop", "torchloop", "memory"):
    assert f"## {suite}" in done.stdout


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
  """The quick run's JSON record: made once per pytest session, even with xdist workers.

  Each xdist worker would build a module fixture of its own and run the whole suite
  again; the workers share the session's temporary folder, so the first one runs it
  under a file lock and the others read its record (pytest-xdist's recipe for a
  fixture that runs once).
  """
  if os.environ.get("PYTEST_XDIST_WORKER") is None:
    path = tmp_path_factory.mktemp("benchmarks") / "quick.json"
    _run_quick(path)
    return json.loads(path.read_text())
  from filelock import FileLock  # a dependency of torch

  path = tmp_path_factory.getbasetemp().parent / "benchmarks_quick.json"
  with FileLock(str(path) + ".lock"):
    if not path.is_file():
      _run_quick(path)
  return json.loads(path.read_text())


def _positive(value: float) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_record_describes_the_machine(quick_run: dict) -> None:
  assert quick_run["quick"] is True and quick_run["suite"] == "all"
  assert quick_run["machine"]["logical_cpus"] >= 1 and quick_run["machine"]["torch_threads"] >= 1
  assert _positive(quick_run["bandwidth"]["reference_gbps"])


def test_update_steps_cover_every_implementation(quick_run: dict) -> None:
  steps = quick_run["steps"]
  impls = {record["impl"] for record in steps}
  assert {"gcj", "gcj_multi_tensor", "optax", "torch_for_loop", "torch_foreach", "torch_fused"} <= impls
  assert {record["tree"] for record in steps} == set(quick_run["trees"])
  for record in steps:
    assert _positive(record["step_ms"]) and _positive(record["gbps"]) and _positive(record["pct_bandwidth"])
    if not record["impl"].startswith("torch"):
      assert _positive(record["compile_s"]) and _positive(record["trace_s"])
  assert all(_positive(row["multi_tensor_ms"]) for row in quick_run["packing_sweep"])


def test_loop_and_threads_report_positive_figures(quick_run: dict) -> None:
  variants = {row["variant"] for row in quick_run["loop"]}
  assert {"handwritten_optax", "fit_optax", "fit_gcj"} <= variants
  for row in quick_run["loop"]:
    assert _positive(row["steps_per_s"]) and row["peak_growth_mib"] >= 0
  assert all(_positive(row["ours_ms"]) and _positive(row["torch_fused_ms"]) for row in quick_run["xla_threads"])


def test_torch_loop_trains_the_same_model_on_the_same_batches(quick_run: dict) -> None:
  rows = quick_run["torch_loop"]
  assert {row["workload"] for row in rows} == {"digits_mlp", "digits_cnn"}
  variants = {row["variant"] for row in rows}
  assert {"fit_gcj", "fit_gcj_compiled_epoch", "torch_eager", "torch_eager_1_thread"} <= variants
  for row in rows:
    assert _positive(row["steps_per_s"]) and _positive(row["vs_torch_eager"]) and row["peak_growth_mib"] >= 0
    if row["variant"].startswith("torch"):
      # Same initial weights, batches and Adam: the epoch losses agree to float32 rounding
      # (a wrongly transposed kernel or other batches would differ by ~1e-1).
      assert row["epoch0_loss_rel_diff_vs_fit"] < 1e-5, row


def test_memory_breakdown_compiles_a_loop_and_donates_the_carry(quick_run: dict) -> None:
  memory = quick_run["memory"]
  cases = {row["case"]: row for row in memory["compile_run"]}
  assert {"step", "scan"} <= set(cases)
  assert cases["scan"]["while_loops"] == 1  # the epoch is a loop, not unrolled
  assert cases["scan"]["input_bytes"] == memory["stacked_epoch_bytes"]  # one epoch's batches, nothing more
  for row in cases.values():
    assert row["xla_alias_kib"] > 0  # the donated carry is updated in place
    assert _positive(row["compile_peak_mib"]) and row["run_peak_mib"] >= 0
