"""Smoke test of the benchmark suite: `python -m benchmarks all --quick` runs and writes its JSON.

No timing is asserted (figures on a shared machine are noise at these sizes); the test
checks that every suite ran, that each figure is a positive number, and that the
multi-tensor and PyTorch cases took part.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
  path = tmp_path_factory.mktemp("benchmarks") / "quick.json"
  done = subprocess.run(
      [sys.executable, "-m", "benchmarks", "all", "--quick", "--json", str(path)],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert done.returncode == 0, done.stderr[-4000:]
  assert "## update" in done.stdout and "## loop" in done.stdout and "## threads" in done.stdout
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
