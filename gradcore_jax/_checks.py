"""Validation of hyperparameters, gradient trees and leaf dtypes, shared by every building block.

Hyperparameters are checked when they are concrete: Python or NumPy numbers, and NumPy or
JAX arrays outside a trace (`optax.inject_hyperparams` builds its optimizer with concrete
arrays in `init`, so a bad injected value is caught there). Traced values cannot be checked
(no Python branch may depend on them), but their *shape* is known under tracing, and an
array hyperparameter must be a scalar everywhere: a `(1, 1)`-shaped `b1` would otherwise
broadcast every update, and the params, to a new shape.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from gradcore_jax._typing import ScalarOrSchedule


def is_number(value: Any) -> bool:
  """True for a concrete Python/NumPy real number (booleans excluded)."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_static_zero(value: Any) -> bool:
  """True only for a concrete number equal to zero.

  Used where a hyperparameter decides the *structure* of the state (momentum 0 needs no
  buffer): an array or traced value is treated as non-zero so that the state has the
  same structure whatever value is later injected.
  """
  return is_number(value) and value == 0


def concrete_value(name: str, value: Any) -> Any:
  """`value` as a Python float when it can be checked now, else None (a schedule, a tracer).

  Raises a ValueError naming `name` for an array hyperparameter that is not a scalar, or a
  TypeError for one that is not a real number.
  """
  if callable(value) or value is None or isinstance(value, bool):
    return None
  if is_number(value):
    return float(value)
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    if np.ndim(value) != 0:
      raise ValueError(
        f"{name} must be a scalar, got an array of shape {np.shape(value)}: it would broadcast the updates "
        "(and the params) to a new shape. Pass a 0-d array (e.g. `x.reshape(())`) or a number."
      )
    if not (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)):
      raise TypeError(f"{name} must be a real number, got an array of dtype {value.dtype}.")
    if isinstance(value, jax.core.Tracer):
      return None
    return float(value)
  return None


def check_learning_rate(learning_rate: ScalarOrSchedule) -> None:
  if learning_rate is None:
    raise TypeError("learning_rate must be a number, a scalar array or a schedule, got None.")
  value = concrete_value("learning_rate", learning_rate)
  if value is not None and not value >= 0:  # `not >=` also rejects NaN
    raise ValueError(f"learning_rate must be a non-negative number or a schedule, got {learning_rate!r}.")


def check_non_negative(name: str, value: Any) -> None:
  number = concrete_value(name, value)
  if number is not None and not number >= 0:  # `not >=` also rejects NaN
    raise ValueError(f"{name} must be >= 0, got {value!r}.")


def check_positive(name: str, value: Any) -> None:
  number = concrete_value(name, value)
  if number is not None and not number > 0:  # `not >` also rejects NaN
    raise ValueError(f"{name} must be > 0, got {value!r}.")


def check_unit_interval(name: str, value: Any) -> None:
  """Decay rates live in [0, 1): a rate of 1 never forgets and never learns."""
  number = concrete_value(name, value)
  if number is not None and not 0 <= number < 1:
    raise ValueError(f"{name} must be in [0, 1), got {value!r}.")


def _is_none(x: Any) -> bool:
  return x is None


def check_tree_matches(updates: Any, reference: Any, *, what: str) -> None:
  """Raises a ValueError naming the first path found on one side only.

  `None` gradients count as leaves, so a `None` where the reference holds an array is
  accepted (that leaf simply receives no update).
  """
  if jax.tree.structure(updates, is_leaf=_is_none) == jax.tree.structure(reference, is_leaf=_is_none):
    _check_leaf_shapes(updates, reference, what)
    return
  got, want = _leaf_paths(updates), _leaf_paths(reference)
  extra = [path for path in got if path not in set(want)]
  missing = [path for path in want if path not in set(got)]
  if extra or missing:
    parts = []
    if extra:
      parts.append(f"gradient path {extra[0] or '<root>'} has no counterpart in {what}")
    if missing:
      parts.append(f"{what} has {missing[0] or '<root>'} with no gradient")
    raise ValueError(f"The gradient tree does not match {what}: " + "; ".join(parts) + ".")
  raise ValueError(
    f"The gradient tree does not match {what}: same paths, different container types "
    f"({jax.tree.structure(updates, is_leaf=_is_none)} vs {jax.tree.structure(reference, is_leaf=_is_none)})."
  )


def _check_leaf_shapes(updates: Any, reference: Any, what: str) -> None:
  """Same tree structure: a gradient leaf shaped unlike its reference leaf would broadcast silently."""
  pairs = list(
    zip(jax.tree.leaves(updates, is_leaf=_is_none), jax.tree.leaves(reference, is_leaf=_is_none), strict=True)
  )
  if all(g is None or r is None or np.shape(g) == np.shape(r) for g, r in pairs):
    return
  path, g, r = next(
    (path, g, r)
    for path, (g, r) in zip(_leaf_paths(updates), pairs, strict=True)
    if g is not None and r is not None and np.shape(g) != np.shape(r)
  )
  raise ValueError(
    f"The gradient tree does not match {what}: the gradient at {path or '<root>'} has shape "
    f"{np.shape(g)}, but the leaf of {what} there has shape {np.shape(r)}."
  )


def check_real_floating(tree: Any, *, what: str) -> None:
  """Raises a TypeError naming the first leaf of `tree` that is not a real floating-point array.

  The update rules (square roots, moving averages, a learning rate times the gradient)
  are defined for real floats only. Integer leaves would be silently truncated; complex
  ones would need a rule for `|g|**2` and for conjugation, on which torch and JAX differ.
  `None` leaves (no gradient) and masked-out leaves are skipped.
  """
  if all(_is_real_floating(leaf) for leaf in jax.tree.leaves(tree)):
    return
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if not _is_real_floating(leaf):
      raise TypeError(
        f"The {what} at {jax.tree_util.keystr(path) or '<root>'} has dtype {_dtype(leaf)}; the optimizers "
        "need real floating-point leaves (float16, bfloat16, float32 or float64). Cast the leaf, or keep "
        "it out of the optimizer with `optax.masked` or `optax.partition`."
      )


def _dtype(leaf: Any) -> np.dtype:
  return leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)


def _is_real_floating(leaf: Any) -> bool:
  return jnp.issubdtype(_dtype(leaf), jnp.floating)


def _leaf_paths(tree: Any) -> list[str]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)
  return [jax.tree_util.keystr(path) for path, _ in leaves]


def require_params(params: Any, block: str) -> None:
  if params is None:
    raise ValueError(f"{block} needs the current parameters: call update(grads, state, params).")
