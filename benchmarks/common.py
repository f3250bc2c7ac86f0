"""Shared pieces of the suite: interleaved timing, the machine's description, tables and JSON.

Timing rules every benchmark follows: warm up each case first (compilation and first
touches of memory happen there), block on the results of every sample, run the cases of
one comparison in turn within each round, in a new random order each round (so a noisy
neighbour, a frequency change or the threads a previous case left spinning hit all of
them alike), and report the median over rounds.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any
from typing import Callable
from typing import Mapping
from typing import Sequence

Runner = Callable[[], object]
"""One unit of work that returns only when the work is done (results blocked on); its value is ignored."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """How hard a run measures: `--quick` shrinks every size and count."""

  quick: bool
  rounds: int  # samples per case, taken in interleaved rounds
  sample_seconds: float  # each sample repeats the work until it lasts about this long

  @classmethod
  def make(cls, quick: bool) -> "Settings":
    return cls(quick=quick, rounds=3 if quick else 15, sample_seconds=0.002 if quick else 0.05)


def seconds(run: Runner) -> float:
  start = time.perf_counter()
  run()
  return time.perf_counter() - start


def repeats_for(run: Runner, sample_seconds: float) -> int:
  """How many calls of `run` make one sample of about `sample_seconds` (at least one)."""
  once = seconds(run)
  return max(1, min(1000, math.ceil(sample_seconds / max(once, 1e-7))))


def interleaved(runners: Mapping[str, Runner], settings: Settings, warmup: int = 2) -> dict[str, float]:
  """Median seconds per call of each runner, sampled in interleaved rounds."""
  for run in runners.values():
    for _ in range(warmup):
      run()
  repeats = {name: repeats_for(run, settings.sample_seconds) for name, run in runners.items()}
  samples: dict[str, list[float]] = {name: [] for name in runners}
  for names in shuffled_rounds(list(runners), settings.rounds):
    for name in names:
      run, count = runners[name], repeats[name]
      samples[name].append(seconds(functools.partial(_repeat, run, count)) / count)
  return {name: statistics.median(values) for name, values in samples.items()}


def _repeat(run: Runner, count: int) -> None:
  for _ in range(count):
    run()


def shuffled_rounds(names: list[str], rounds: int, seed: int = 0) -> list[list[str]]:
  """`rounds` orders of `names`, each a seeded random permutation."""
  rng = random.Random(seed)
  return [rng.sample(names, len(names)) for _ in range(rounds)]


def machine() -> dict[str, Any]:
  """What the figures were measured on, and how busy the machine was at the start."""
  import jax
  import numpy as np
  import optax
  import torch

  return {
    "cpu": _cpu_model(),
    "logical_cpus": os.cpu_count(),
    "memory_gib": round(_memory_bytes() / 2**30, 1),
    "platform": platform.platform(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jax_backend": jax.default_backend(),
    "jax_devices": [str(device) for device in jax.devices()],
    "optax": optax.__version__,
    "numpy": np.__version__,
    "torch": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "load_average": list(os.getloadavg()),
  }


def _cpu_model() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _memory_bytes() -> int:
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError):
    return 0


def resident_kib(field: str = "VmRSS") -> int:
  """A memory figure of this process from `/proc/self/status`, in KiB (0 where there is none).

  Args:
    field: `VmRSS` (resident now), `VmHWM` (the high-water mark of `VmRSS`), `RssAnon`
      (resident heap and other anonymous memory) or `RssFile` (resident pages of mapped
      files: the code of the shared libraries, shared and reclaimable).
  """
  try:
    for line in Path("/proc/self/status").read_text().splitlines():
      if line.startswith(field + ":"):
        return int(line.split()[1])
  except OSError:
    pass
  return 0


def reset_peak() -> None:
  """Resets this process's high-water mark `VmHWM` to its resident set now (Linux `clear_refs`)."""
  try:
    Path("/proc/self/clear_refs").write_text("5")
  except OSError:
    pass


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
  """A Markdown table of `rows` (floats to three significant digits; missing cells blank)."""
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for row in rows:
    lines.append("| " + " | ".join(_cell(row.get(column)) for column in columns) + " |")
  return "\n".join(lines)


def _cell(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:.3g}"
  return str(value)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
  if numerator is None or not denominator:
    return None
  return numerator / denominator


def write_json(path: Path, record: Mapping[str, Any]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n")
