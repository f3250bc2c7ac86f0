"""Command line: `python -m benchmarks [update|loop|threads|all] [--quick] [--json PATH]`.

Runs the chosen suites, prints their tables (Markdown) and writes one JSON record with
the machine's description and every figure: by default `benchmarks/results/cpu.json`
(`cpu-quick.json` with `--quick`, so a smoke run never replaces a full one).
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from benchmarks import common
from benchmarks import loop
from benchmarks import update_step
from benchmarks import xla_threads

RESULTS = Path(__file__).resolve().parent / "results"
Suite = tuple[Callable[[common.Settings], dict[str, Any]], Callable[[dict[str, Any]], str]]
SUITES: dict[str, Suite] = {
    "update": (update_step.run, update_step.report),
    "threads": (xla_threads.run, xla_threads.report),
    "loop": (loop.run, loop.report),
}


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
  parser.add_argument("suite", nargs="?", default="all", choices=(*SUITES, "all"), help="what to run (default: all)")
  parser.add_argument("--quick", action="store_true", help="tiny sizes and few rounds: a smoke test, not figures")
  parser.add_argument("--json", type=Path, default=None, help="where to write the results (default: benchmarks/results/)")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse(argv)
  settings = common.Settings.make(args.quick)
  names = list(SUITES) if args.suite == "all" else [args.suite]
  record: dict[str, Any] = {
      "suite": args.suite,
      "quick": args.quick,
      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": common.machine(),
  }
  started = time.perf_counter()
  for name in names:
    run, report = SUITES[name]
    result = run(settings)
    record.update(result)
    print(f"## {name}\n\n{report(result)}\n", flush=True)
  record["seconds"] = time.perf_counter() - started
  record["load_average_at_end"] = list(os.getloadavg())
  path = args.json or RESULTS / ("cpu-quick.json" if args.quick else "cpu.json")
  common.write_json(path, record)
  print(f"Results written to {path}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
