"""Command line: `python -m benchmarks [update|threads|loop|torchloop|memory|all] [--quick] [--json PATH]`.

Runs the chosen suites, prints their tables (Markdown) and writes one JSON record with
the machine's description and every figure: by default `benchmarks/results/cpu.json`
(`cpu-quick.json` with `--quick`, so a smoke run never replaces a full one). One suite
run alone is merged into the file's record (its figures replaced, the other suites' kept);
`runs` records when each suite ran and the load average before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any
from typing import Callable
from typing import Optional
from typing import Sequence

from benchmarks import common
from benchmarks import loop
from benchmarks import memory
from benchmarks import torch_loop
from benchmarks import update_step
from benchmarks import xla_threads

RESULTS = Path(__file__).resolve().parent / "results"
Suite = tuple[Callable[[common.Settings], dict[str, Any]], Callable[[dict[str, Any]], str]]
SUITES: dict[str, Suite] = {
  "update": (update_step.run, update_step.report),
  "threads": (xla_threads.run, xla_threads.report),
  "loop": (loop.run, loop.report),
  "torchloop": (torch_loop.run, torch_loop.report),
  "memory": (memory.run, memory.report),
}


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks", description=(__doc__ or "The benchmark suite.").splitlines()[0]
  )
  parser.add_argument("suite", nargs="?", default="all", choices=(*SUITES, "all"), help="what to run (default: all)")
  parser.add_argument("--quick", action="store_true", help="tiny sizes and few rounds: a smoke test, not figures")
  parser.add_argument(
    "--json", type=Path, default=None, help="where to write the results (default: benchmarks/results/)"
  )
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse(argv)
  settings = common.Settings.make(args.quick)
  names = list(SUITES) if args.suite == "all" else [args.suite]
  path = args.json or RESULTS / ("cpu-quick.json" if args.quick else "cpu.json")
  record = _previous(path, args) if args.suite != "all" else None
  merged = record is not None
  if record is None:
    record = {
      "suite": args.suite,
      "quick": args.quick,
      "started": _now(),
      "machine": common.machine(),
    }
  started = time.perf_counter()
  for name in names:
    run, report = SUITES[name]
    meta = {"started": _now(), "load_average_at_start": list(os.getloadavg())}
    begun = time.perf_counter()
    result = run(settings)
    meta.update(seconds=time.perf_counter() - begun, load_average_at_end=list(os.getloadavg()))
    record.update(result)
    record.setdefault("runs", {})[name] = meta
    print(f"## {name}\n\n{report(result)}\n", flush=True)
  if not merged:
    record["seconds"] = time.perf_counter() - started
    record["load_average_at_end"] = list(os.getloadavg())
  common.write_json(path, record)
  print(f"Results {'merged into' if merged else 'written to'} {path}")
  return 0


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _previous(path: Path, args: argparse.Namespace) -> Optional[dict[str, Any]]:
  """The record at `path` to merge one suite's results into: another run's, of the same `--quick`, or None.

  A single suite replaces its own figures and keeps the others', so that the file goes
  on holding a figure for every suite; `runs` says when and under what load each ran.
  """
  try:
    previous = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  if not isinstance(previous, dict) or previous.get("quick") != args.quick:
    return None
  return previous


if __name__ == "__main__":
  raise SystemExit(main())
