"""Suite-wide setup: one persistent XLA compilation cache shared by every process of a run.

Much of the suite's time is XLA compiling the same programs again: each xdist worker, each
example subprocess and the docs test (whose README blocks reappear in `docs/`) compile
their own copies of the same training steps. A shared on-disk cache lets the second one
load the first one's executable. Entries are keyed by the program and the jax/XLA
versions, so a stale cache is never used, only missed. The cache lives in `.jax_cache/`
at the repository root (ignored by git); a fresh clone starts empty.

The settings go into the environment before jax is imported, so subprocesses that inherit
it share the cache too (those that must start clean, such as the 8-device runs, drop
every `JAX_*` variable). A size limit turns on jax's file lock, which keeps concurrent
writers from exposing half-written entries.
"""

from __future__ import annotations

import os
import pathlib

_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 * 2**30))
