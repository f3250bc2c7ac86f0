"""What the tests that compare with live torch share: running both frameworks at one precision."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import numpy as np
import torch


@contextlib.contextmanager
def precision(dtype) -> Iterator[None]:
  """float64 runs: x64 in JAX and torch's default dtype float64; float32 runs: torch's float32 default.

  Torch keeps its `step` counters (and NAdam's `mu_product`, ASGD's `eta`/`mu`) in the default
  dtype. Left at float32 under float64 params, Adam's `differentiable` path computes its bias
  corrections in float32 (7.8e-6 from float64 arithmetic) and NAdam's coefficients carry
  float32 rounding (3e-10), so float64 runs set torch's default to float64.
  """
  previous = torch.get_default_dtype()
  torch.set_default_dtype(torch.float64 if dtype == np.float64 else torch.float32)
  try:
    with jax.enable_x64(True) if dtype == np.float64 else contextlib.nullcontext():
      yield
  finally:
    torch.set_default_dtype(previous)
