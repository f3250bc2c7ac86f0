"""How much memory an optimizer state holds, next to the parameters it optimizes."""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import numpy as np

from gradcore_jax._typing import PyTree


class StateMemory(NamedTuple):
  """Bytes of an optimizer state and of the params, and their ratio.

  `multiple` is `state_bytes / param_bytes`: 1.0 for RMSprop and Adagrad, 2.0 for
  Adam (its first and second moments), 0.0 for plain SGD, up to the few bytes of
  scalar step counters.

  Attributes:
    state_bytes: bytes of the optimizer state's array leaves.
    param_bytes: bytes of the params' array leaves.
    multiple: `state_bytes / param_bytes`.
  """

  state_bytes: int
  param_bytes: int
  multiple: float


def tree_bytes(tree: PyTree) -> int:
  """Total bytes of the array leaves of `tree` (arrays, NumPy arrays or `ShapeDtypeStruct`s)."""
  return sum(_leaf_bytes(leaf) for leaf in jax.tree.leaves(tree))


def _leaf_bytes(leaf: Any) -> int:
  if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
    return 0
  return int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize


def state_memory(opt_state: PyTree, params: PyTree) -> StateMemory:
  """Reports the memory of `opt_state` in bytes and as a multiple of `params`' memory.

  Works on concrete arrays and on `jax.eval_shape` outputs, so a large model's state
  can be sized before it is allocated:
  `state_memory(jax.eval_shape(tx.init, params), params)`.

  Args:
    opt_state: an optimizer state (arrays, NumPy arrays or `ShapeDtypeStruct`s).
    params: the params it optimizes, whose bytes are the unit of `multiple`.

  Returns:
    A `StateMemory`. Raises a ValueError when `params` holds no array leaves.
  """
  state_bytes = tree_bytes(opt_state)
  param_bytes = tree_bytes(params)
  if param_bytes == 0:
    raise ValueError("params holds no array leaves, so the state cannot be compared with it.")
  return StateMemory(state_bytes=state_bytes, param_bytes=param_bytes, multiple=state_bytes / param_bytes)
