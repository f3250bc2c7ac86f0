"""What the main job's experiments share: argument checks, a dense network as a pure function,
the loss curve's smoothing and the "updates to a loss threshold" measure.

Nothing here prints, plots or imports scikit-learn.
"""

from __future__ import annotations

import itertools
import math
import numbers
from typing import Any
from typing import Mapping
from typing import Optional
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gradcore_jax import optimizers
from gradcore_jax._typing import Array
from gradcore_jax._typing import ArrayLike
from gradcore_jax.data import _check_int


def check_counts(setup: Any, positive: Sequence[str]) -> None:
  """ValueError unless the fields `positive` of `setup` are integers >= 1 and its `seed` is >= 0.

  Args:
    setup: a dataclass with the fields named in `positive` and a `seed` field.
    positive: names of the fields that must be integers >= 1.
  """
  for name in positive:
    _check_int(name, getattr(setup, name), minimum=1)
  _check_int("seed", setup.seed, minimum=0)


def check_positive_number(name: str, value: Any) -> None:
  """ValueError unless `value` is a real, finite number > 0.

  Args:
    name: the argument's name, for the message.
    value: the value to check.
  """
  if isinstance(value, bool) or not (
    isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value) > 0
  ):
    raise ValueError(f"{name} must be a positive finite number, got {value!r}.")


def check_learning_rates(rates: Mapping[str, float]) -> None:
  """ValueError unless `rates` maps known optimizer names to positive finite numbers.

  Args:
    rates: `{optimizer name: learning rate}`.
  """
  if not rates:
    raise ValueError("learning_rates is empty: name at least one optimizer, e.g. {'adam': 1e-3}.")
  for name, lr in rates.items():
    optimizers.get(name)
    if isinstance(lr, bool) or not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
      raise ValueError(f"The learning rate of {name} must be a positive finite number, got {lr!r}.")


def finite_or_none(value: Optional[float]) -> Optional[float]:
  """`value` as a float, or None when it is None, NaN or infinite (which JSON cannot hold).

  Args:
    value: a number or None.
  """
  return float(value) if value is not None and math.isfinite(value) else None


# ---------------------------------------------------------------------------------------
# A dense network as a pure function.


def init_mlp(rng: np.random.Generator, sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
  """Parameters of a dense network with layer widths `sizes` (e.g. `(64, 10)`: one layer).

  Weights and biases are drawn from `rng` as in `torch.nn.Linear`: uniform in
  `±1/sqrt(fan_in)`, float32. (NumPy draws them: JAX's random bits would compile first.)

  Args:
    rng: the NumPy generator to draw from.
    sizes: the layer widths, input first; at least two positive integers.
  """
  if len(sizes) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
    raise ValueError(f"sizes must list at least two positive layer widths, got {tuple(sizes)}.")
  layers = []
  for fan_in, fan_out in itertools.pairwise(sizes):
    bound = 1.0 / math.sqrt(fan_in)
    layers.append(
      {
        "w": rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32),
        "b": rng.uniform(-bound, bound, fan_out).astype(np.float32),
      }
    )
  return layers


def mlp(params: Sequence[Mapping[str, Array]], inputs: ArrayLike) -> Array:
  """The network of `init_mlp`: dense layers with ReLU between them (none after the last).

  Args:
    params: the layers, each `{"w": (fan_in, fan_out), "b": (fan_out,)}`.
    inputs: `(..., fan_in)` features.
  """
  hidden = jnp.asarray(inputs)
  for layer in params[:-1]:
    hidden = jax.nn.relu(hidden @ layer["w"] + layer["b"])
  return hidden @ params[-1]["w"] + params[-1]["b"]


# ---------------------------------------------------------------------------------------
# Reading a loss curve.


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
  """`out[i]` = mean of `values[max(0, i - window + 1) : i + 1]` (a causal moving average).

  A non-finite value makes every mean whose window holds it non-finite, and no other.

  Args:
    values: a 1-D sequence of numbers.
    window: how many values each mean covers (at most); >= 1.
  """
  _check_int("window", window, minimum=1)
  values = np.asarray(values, np.float64)
  if values.size == 0:
    return values
  # Each window summed directly (a strided view), not as a difference of running sums: one inf
  # in a running sum would turn every later difference into NaN.
  padded = np.concatenate([np.zeros(window - 1), values])
  sums = np.lib.stride_tricks.sliding_window_view(padded, window).sum(axis=1)
  return sums / np.minimum(np.arange(1, values.size + 1), window)


def updates_to_threshold(batch_losses: np.ndarray, threshold: float, window: int) -> Optional[int]:
  """How many batches (one update each) it took until the mean loss of the last `window` was <= `threshold`.

  `batch_losses[s]` is the loss of batch `s`. Returns the smallest `s + 1` with
  `mean(batch_losses[s - window + 1 : s + 1]) <= threshold`, counting only full windows
  (`s + 1 >= window`; the whole run when it is shorter than `window`), or None if there is none.
  Full windows only: one lucky example at the start must not count as having converged.

  Args:
    batch_losses: the loss of every batch, in update order.
    threshold: the loss to reach.
    window: how many batches the mean covers; >= 1.
  """
  means = trailing_mean(batch_losses, window)
  first_full = min(window, means.size) - 1
  hits = np.flatnonzero(means[first_full:] <= threshold)
  return int(hits[0]) + first_full + 1 if hits.size else None
