"""Hyperparameters on both sides: torch's param-group keys <-> a group's factory arguments and injected values.

torch names some keys differently (`lr` <- `learning_rate`, `betas` <- `(b1, b2)`, per
`TorchOptimizer.renames`); other keys have the same name on both sides.
"""

from __future__ import annotations

from typing import Any
from typing import Mapping
from typing import Optional
from typing import cast

import jax.numpy as jnp

from gradcore_jax.torch_state._plan import Group
from gradcore_jax.torch_state._registry import REQUIRED
from gradcore_jax.torch_state._registry import TorchOptimizer
from gradcore_jax.torch_state._values import as_number
from gradcore_jax.torch_state._values import same_value

# torch key -> {position inside it (None for a whole value, 0/1 for the two `betas`): value}.
ByKey = dict[str, dict[Optional[int], Any]]


class _Unknown:
  def __repr__(self) -> str:
    return "UNKNOWN"


UNKNOWN: Any = _Unknown()
"""An entry of a tuple key not known yet (a `betas` of which only `b1` was injected); None is a value
torch itself keeps in tuples (Adafactor's `eps = (None, 1e-3)`)."""


def torch_key_of(optimizer: TorchOptimizer, argument: str) -> tuple[str, Optional[int]]:
  """The torch key (and position inside it, for `betas`) of a factory argument."""
  for key, names in optimizer.renames.items():
    if argument in names:
      return key, (names.index(argument) if len(names) > 1 else None)
  return argument, None


def described_values(group: Group, step: Optional[int]) -> dict[str, Any]:
  """torch's group values of the significant keys, from the factory arguments (lr schedules evaluated at `step`).

  Raises:
    ValueError: a schedule to evaluate and no `step`.
  """
  if group.arguments is None:
    return {}
  values: dict[str, Any] = {}
  for key in group.optimizer.keys:
    if key in group.implied:
      values[key] = group.implied[key]
      continue
    names = group.optimizer.renames.get(key, (key,))
    if not all(n in group.arguments for n in names):
      continue
    parts = []
    for n in names:
      value = group.arguments[n]
      if callable(value):
        if step is None:
          raise ValueError(
            f"torch_state: {group.label()} has a schedule for {n!r}; its value needs the step count, which this "
            "state does not record: pass step=."
          )
        value = value(jnp.asarray(step, jnp.int32))
      parts.append(as_number(value))
    values[key] = tuple(parts) if len(parts) > 1 else parts[0]
  return values


def injected_by_key(hyperparams: Mapping[str, Any], optimizer: TorchOptimizer) -> ByKey:
  """The injected hyperparameters (factory argument -> value) by torch key and position, as Python numbers."""
  values: ByKey = {}
  for name, value in hyperparams.items():
    key, position = torch_key_of(optimizer, name)
    values.setdefault(key, {})[position] = as_number(value)
  return values


def merge_injected(values: Mapping[str, Any], injected: ByKey, optimizer: TorchOptimizer) -> dict[str, Any]:
  """`values` with the injected ones (current) put in; a described value equal to float32 rounding is kept."""
  values = dict(values)
  for key, parts in injected.items():
    if None in parts:
      if not (key in values and same_value(values[key], parts[None])):
        values[key] = parts[None]
      continue
    positions = cast(dict[int, Any], parts)  # no None key left: every part has a position
    size = len(optimizer.renames.get(key, ())) or max(positions) + 1
    current = list(values[key]) if isinstance(values.get(key), tuple) else [UNKNOWN] * size
    for position, value in positions.items():
      if position < len(current) and not (current[position] is not UNKNOWN and same_value(current[position], value)):
        current[position] = value
    values[key] = tuple(current)
  return values


def check_structure(group: Group, values: Mapping[str, Any], where: str) -> None:
  """Checks that torch's flags (`amsgrad`, `centered`, `momentum` on/off) agree with the group's state structure.

  Raises:
    ValueError: a flag says torch keeps state the group does not (or the reverse).
  """
  if group.optimizer.structure is None:
    return
  for key, present in group.optimizer.structure(group.blocks_by_type()).items():
    value = values.get(key, group.optimizer.keys.get(key))
    if value is REQUIRED or value is None:
      continue
    if bool(as_number(value)) != present:
      raise ValueError(
        f"{where}: {key}={as_number(value)!r}, but {group.label()} of tx "
        f"{'keeps' if present else 'keeps no'} state for it (built with a different {key}?)."
      )
