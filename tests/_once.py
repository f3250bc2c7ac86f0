"""Run an expensive fixture body once per pytest session, even with xdist workers.

Each xdist worker builds its own module-scoped fixtures, so a fixture that launches an
8-device subprocess would run once per worker. The workers share the session's base
temporary folder: the first to take the file lock produces the JSON report there and the
others read it (pytest-xdist's documented recipe).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import pytest


def session_report(tmp_path_factory: pytest.TempPathFactory, name: str, produce: Callable[[Path], dict]) -> dict:
  """`produce(folder)`'s JSON-able report, computed by one worker and shared with the others.

  Args:
    tmp_path_factory: pytest's session fixture.
    name: a file-name-safe name for this report.
    produce: builds the report; gets a fresh folder of its own for scratch files.
  """
  if os.environ.get("PYTEST_XDIST_WORKER") is None:
    return produce(tmp_path_factory.mktemp(name))
  from filelock import FileLock  # a dependency of torch, which the test extra installs

  shared = tmp_path_factory.getbasetemp().parent
  path = shared / f"{name}.json"
  with FileLock(str(path) + ".lock"):
    if not path.is_file():
      scratch = shared / f"{name}.scratch"
      scratch.mkdir(exist_ok=True)
      path.write_text(json.dumps(produce(scratch)))
  return json.loads(path.read_text())
