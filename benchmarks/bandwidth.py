"""The machine's memory bandwidth, measured in the same run as the optimizers.

An optimizer step is memory bound, so its time is judged against what simple streaming
kernels reach on the same arrays and threads: a STREAM-style triad `a = b + s*c` into a
third array and an in-place axpy `a += s*b` (each reads two arrays and writes one: 12
bytes per float32 element, the triad's write-allocate traffic not counted), and a copy
(8 bytes), in PyTorch with PyTorch's thread count (the threads its fused optimizers
use), NumPy's single-threaded add, and JAX's donated in-place axpy. The reference, the
"machine's bandwidth" of the reports, is the best of them all: on a busy machine
PyTorch's OpenMP threads can fall well below what XLA's thread pool reaches, and a
lower reference would flatter the percentages. (A JAX kernel that does not read its donated buffer
cannot reuse it: jit drops the unused argument and every call writes fresh pages, at a
fraction of the bandwidth.)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import common

BYTES_PER_ELEMENT = {
  "torch_triad": 12,
  "torch_axpy_in_place": 12,
  "torch_copy": 8,
  "numpy_add_1_thread": 12,
  "jax_axpy_donated": 12,
}


def elements(settings: common.Settings) -> int:
  """Arrays well beyond the last-level cache (32 MiB here) in a full run."""
  return 1_000_000 if settings.quick else 25_000_000


def measure(settings: common.Settings) -> dict[str, Any]:
  """Bandwidths in GB/s (1e9 bytes) of the streaming kernels, and the reference figure."""
  n = elements(settings)
  times = common.interleaved(_runners(n), settings)
  gbps = {name: BYTES_PER_ELEMENT[name] * n / t / 1e9 for name, t in times.items()}
  reference = max(gbps, key=gbps.__getitem__)
  return {
    "elements": n,
    "torch_threads": torch.get_num_threads(),
    "gbps": gbps,
    "reference": reference,
    "reference_gbps": gbps[reference],
  }


def _runners(n: int) -> dict[str, common.Runner]:
  rng = np.random.default_rng(0)
  b_np, c_np = rng.random(n, dtype=np.float32), rng.random(n, dtype=np.float32)
  a_np = np.empty_like(b_np)
  b_t, c_t = torch.from_numpy(b_np.copy()), torch.from_numpy(c_np.copy())
  a_t = torch.empty_like(b_t)
  return {
    "torch_triad": lambda: torch.add(b_t, c_t, alpha=3.0, out=a_t),
    "torch_axpy_in_place": lambda: a_t.add_(b_t, alpha=1e-3),
    "torch_copy": lambda: a_t.copy_(b_t),
    "numpy_add_1_thread": lambda: np.add(b_np, c_np, out=a_np),
    "jax_axpy_donated": _jax_axpy(b_np),
  }


def _jax_axpy(b_np: np.ndarray) -> common.Runner:
  """`a <- a + s*b`, written into the donated buffer of `a`."""
  axpy = jax.jit(lambda a, b: a + 1e-3 * b, donate_argnums=0)
  b = jnp.asarray(b_np)
  state = {"a": jnp.zeros_like(b)}

  def run() -> None:
    state["a"] = axpy(state["a"], b)
    state["a"].block_until_ready()

  return run
