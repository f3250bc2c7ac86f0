"""Values crossing the bridge: torch tensors, arrays and numbers to NumPy / Python, and onto the device.

torch is never imported here: a torch tensor is recognised by its type's module and read
through `.numpy()`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import numpy as np

# Relative tolerance when hyperparameter values of both sides are compared.
RTOL = 1e-6


def is_torch_tensor(value: Any) -> bool:
  """Whether `value` is a torch tensor (without importing torch)."""
  return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def to_numpy(value: Any) -> np.ndarray:
  """A host copy of a torch tensor, NumPy/JAX array or number (torch is not imported)."""
  if is_torch_tensor(value):
    tensor = value.detach().cpu()
    if str(tensor.dtype) == "torch.bfloat16":  # NumPy has no bfloat16; float32 holds it exactly
      tensor = tensor.float()
    return np.array(tensor.numpy(), copy=True)
  return np.array(value, copy=True)


def as_number(value: Any) -> Any:
  """A hyperparameter as a plain Python value (tensors and arrays to float or bool, tuples elementwise)."""
  if isinstance(value, (tuple, list)):
    return tuple(as_number(v) for v in value)
  if isinstance(value, (bool, str)) or value is None:
    return value
  if is_torch_tensor(value) or isinstance(value, (np.ndarray, np.generic, jax.Array)):
    array = to_numpy(value)
    return bool(array) if array.dtype == np.bool_ else float(array)
  return value


def same_value(a: Any, b: Any) -> bool:
  """Whether two hyperparameter values agree: numbers to `RTOL` relative, bools/None/tuples exactly in kind."""
  a, b = as_number(a), as_number(b)
  if isinstance(a, tuple) or isinstance(b, tuple):
    return isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) and all(map(same_value, a, b))
  if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
    return a == b
  if isinstance(a, numbers.Real) and isinstance(b, numbers.Real):
    return math.isclose(float(a), float(b), rel_tol=RTOL)
  return a == b


def as_step(value: Any, path: str) -> int:
  """torch's per-parameter `'step'` (a 0-d tensor or number) as an int, checked to be a count.

  Raises:
    ValueError: not a scalar, or not a non-negative whole number.
  """
  array = to_numpy(value)
  if array.size != 1:
    raise ValueError(f"the torch state's 'step' for leaf {path} must be a scalar, got shape {array.shape}.")
  step = float(array.reshape(()))
  if not (math.isfinite(step) and step >= 0 and step == int(step)):
    raise ValueError(f"the torch state's 'step' for leaf {path} must be a non-negative whole number, got {step!r}.")
  return int(step)


def put_like(value: np.ndarray, like: Any) -> jax.Array:
  """`value` with `like`'s dtype and placement (committed to its sharding only if `like` is, so that a
  jitted step sees the same kind of array as `tx.init`'s and does not compile again)."""
  value = np.asarray(value).astype(like.dtype)
  if getattr(like, "committed", False):
    return jax.device_put(value, like.sharding)
  return jax.device_put(value)


def step_counter(value: int, like: Any, what: str) -> jax.Array:
  """A step count as the counter leaf `like` (its integer dtype and placement).

  Raises:
    ValueError: `value` does not fit `like`'s dtype (`what` names the counter).
  """
  if value > np.iinfo(np.dtype(like.dtype)).max:
    raise ValueError(f"torch_state: the step count {value} does not fit {what} ({like.dtype}).")
  return put_like(np.asarray(value), like)
