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
  """`value` as a Python float when it can be checked now, else None (a schedule, a tracer, None, a bool).

  Raises a ValueError naming `name` for an array hyperparameter that is not a scalar, or a
  TypeError for one that is not a real number, and for a value of any other type (a string,
  a list: `"0.9"` would otherwise reach the update rule and fail there, or be read as a
  sequence).
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
  raise TypeError(
    f"{name} must be a real number or a scalar array (or, where the argument accepts one, a schedule), "
    f"got {type(value).__name__} {value!r}."
  )


def check_learning_rate(learning_rate: ScalarOrSchedule) -> None:
  if learning_rate is None:
    raise TypeError("learning_rate must be a number, a scalar array or a schedule, got None.")
  value = concrete_value("learning_rate", learning_rate)
  if value is not None and not value >= 0:  # `not >=` also rejects NaN
    raise ValueError(f"learning_rate must be a non-negative number or a schedule, got {learning_rate!r}.")


def check_flag(name: str, value: Any) -> None:
  """Raises a TypeError naming `name` unless `value` is a bool (a string such as "no" would count as True)."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be True or False, got {value!r}.")


def _require_value(name: str, value: Any) -> None:
  if value is None:
    raise TypeError(f"{name} must be a number or a scalar array, got None.")


def check_non_negative(name: str, value: Any) -> None:
  _require_value(name, value)
  number = concrete_value(name, value)
  if number is not None and not number >= 0:  # `not >=` also rejects NaN
    raise ValueError(f"{name} must be >= 0, got {value!r}.")


def check_positive(name: str, value: Any) -> None:
  _require_value(name, value)
  number = concrete_value(name, value)
  if number is not None and not number > 0:  # `not >` also rejects NaN
    raise ValueError(f"{name} must be > 0, got {value!r}.")


def check_unit_interval(name: str, value: Any) -> None:
  """Decay rates live in [0, 1): a rate of 1 never forgets and never learns."""
  _require_value(name, value)
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
      kind = f"dtype {_dtype(leaf)}" if _is_array_or_number(leaf) else f"type {type(leaf).__name__}"
      raise TypeError(
        f"The {what} at {jax.tree_util.keystr(path) or '<root>'} has {kind}; the optimizers "
        "need real floating-point leaves (float16, bfloat16, float32 or float64). Cast the leaf, or keep "
        "it out of the optimizer with `optax.masked` or `optax.partition`."
      )


def _is_array_or_number(leaf: Any) -> bool:
  return hasattr(leaf, "dtype") or isinstance(leaf, (numbers.Number, np.generic))


def _dtype(leaf: Any) -> np.dtype:
  return leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)


def _is_real_floating(leaf: Any) -> bool:
  return _is_array_or_number(leaf) and jnp.issubdtype(_dtype(leaf), jnp.floating)


def _leaf_paths(tree: Any) -> list[str]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)
  return [jax.tree_util.keystr(path) for path, _ in leaves]


def require_params(params: Any, block: str) -> None:
  if params is None:
    raise ValueError(f"{block} needs the current parameters: call update(grads, state, params).")


def check_state_matches(state: Any, expected: Any, *, optimizer: str, from_gradients: bool = False) -> None:
  """Raises a ValueError when `state` has another tree structure than `expected`, naming the first difference.

  `expected` is the tree structure of what the optimizer's `init` returns for the current
  params (e.g. of `jax.eval_shape(tx.init, params)`). Only the structure is compared, at
  trace time and for free: a state of another optimizer, or of the same one with other
  options (`amsgrad`, a momentum buffer, weight decay) or for another params tree, always
  differs there, and would otherwise fail deep inside a block with a raw tree error, or
  silently drop a buffer. Leaf shapes are compared by each block against the gradients.

  Args:
    state: the state given to `update`.
    expected: the `jax.tree.structure` of the state `init` gives.
    optimizer: how the error names the optimizer, e.g. "adam(amsgrad=True)".
    from_gradients: `expected` was built from the gradients (no params were given). A
      difference inside a field of a block's state (its params-shaped buffers) is then left
      to the blocks, whose errors name the gradient path that does not match: the
      gradients, not the state, are the likelier culprit. A field that is None on one side
      only (a buffer of another configuration) is still reported here.
  """
  got = jax.tree.structure(state)
  if got == expected:
    return
  path, got_node, want_node, in_field = _first_difference(got, expected, "state", False)
  if from_gradients and in_field and not (_is_none_node(got_node) or _is_none_node(want_node)):
    return
  raise ValueError(
    f"state is not a state of {optimizer} for these params: at {path} {optimizer} has {_describe_node(want_node)}, "
    f"but the given state has {_describe_node(got_node)}. Pass the state this optimizer's init returned "
    "(tx.init(params)); a state of another optimizer, or of this one with other options (amsgrad, momentum, "
    "weight_decay, ...) or other params, has another structure."
  )


def _first_difference(got: Any, want: Any, path: str, in_field: bool) -> tuple[str, Any, Any, bool]:
  """`(path, got, wanted, in_field)` at the outermost node where two tree structures part.

  `in_field`: the node lies inside a field of a NamedTuple (a block's state).
  """
  got_node, want_node = got.node_data(), want.node_data()
  got_children, want_children = got.children(), want.children()
  if got_node is not None and got_node == want_node and len(got_children) == len(want_children):
    names = _child_names(want_node, len(want_children))
    in_field = in_field or isinstance(getattr(want_node[0], "_fields", None), tuple)
    for name, got_child, want_child in zip(names, got_children, want_children, strict=True):
      if got_child != want_child:
        return _first_difference(got_child, want_child, path + name, in_field)
  return path, got, want, in_field


def _is_none_node(structure: Any) -> bool:
  node = structure.node_data()
  return node is not None and node[0] is type(None)


def _child_names(node: tuple[type, Any], count: int) -> list[str]:
  kind, data = node
  if kind is dict and isinstance(data, list):
    return [f"[{key!r}]" for key in data]
  fields = getattr(kind, "_fields", None)
  if isinstance(fields, tuple) and len(fields) == count:
    return [f".{field}" for field in fields]
  return [f"[{i}]" for i in range(count)]


def _describe_node(structure: Any) -> str:
  """A short phrase for the root of a tree structure ("an array", "None", "ScaleByAdamState(count, mu, ...)")."""
  node = structure.node_data()
  if node is None:
    return "an array"
  kind, data = node
  children = structure.children()
  if kind is type(None):
    return "None"
  if kind is dict:
    return f"a dict with keys {list(data)}"
  fields = getattr(kind, "_fields", None)
  if isinstance(fields, tuple):
    return f"{kind.__name__}({', '.join(fields)})"
  if kind in (tuple, list):
    inner = ", ".join(_short(child) for child in children)
    return f"a {kind.__name__} of {len(children)}: ({inner})"
  return f"a {kind.__name__}"


def _short(structure: Any) -> str:
  node = structure.node_data()
  if node is None:
    return "array"
  return "None" if node[0] is type(None) else node[0].__name__
