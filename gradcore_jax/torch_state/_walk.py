"""Walking the (nested) Optax state to find the block states, wherever they sit in `tx`'s chain.

The walk descends through tuples of `optax.chain`, `MaskedState`, `PartitionState` (the
groups of `gcj.param_groups`) and the `optax.inject_hyperparams` states, and recognises
block states by their type through the registry.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import Callable
from typing import Hashable
from typing import Mapping
from typing import Optional

import jax
import optax

from gradcore_jax.torch_state._registry import StateConverter
from gradcore_jax.torch_state._registry import converter_of
from gradcore_jax.torch_state._registry import is_registered
from gradcore_jax.torch_state._registry import registered_type_names

_INJECT_TYPES = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)


@dataclasses.dataclass
class LocatedState:
  """A block state (or an `inject_hyperparams` state) and where it sits.

  Attributes:
    where: its position in the Optax state (the keys and indices leading to it).
    state: the state itself.
    group: the name of the param group holding it (None: outside any group).
  """

  where: tuple
  state: Any
  group: Optional[Hashable]

  @property
  def converter(self) -> StateConverter:
    """The registered converter of a block state."""
    return converter_of(self.state)

  def present_trees(self) -> list[tuple[str, str]]:
    """(field, torch key) of the params-shaped fields the block holds (not None; `nu_max` is None without amsgrad)."""
    return [(field, key) for field, key in self.converter.trees.items() if getattr(self.state, field) is not None]

  def field_name(self, field: str) -> str:
    """`"TypeName.field"`, for messages."""
    return f"{type(self.state).__name__}.{field}"


def walk_state(node: Any, visit: Callable[[str, Any, tuple, Any], Any], where: tuple = (), group: Any = None) -> Any:
  """Rebuilds `node`, passing every block state and injected-hyperparameter state through `visit`.

  Args:
    node: the (sub)state.
    visit: `(kind, node, where, group) -> replacement`, called with kind `"block"` (a
      registered state), `"inject"` (an `inject_hyperparams` state, after its inner state)
      or `"partition"` (the `PartitionState` of the param groups; its return is ignored).
    where: `node`'s position in the whole state.
    group: the param group holding `node` (None: outside any group).

  Returns:
    The rebuilt state.

  Raises:
    TypeError: a state with leaves and no registered converter, nested or several partitions.
  """
  if node is None or isinstance(node, optax.MaskedNode):
    return node
  if is_registered(node):
    return visit("block", node, where, group)
  if isinstance(node, _INJECT_TYPES):
    inner = walk_state(node.inner_state, visit, where + ("inner_state",), group)
    return visit("inject", node._replace(inner_state=inner), where, group)
  if isinstance(node, optax.PartitionState):
    if group is not None:
      raise TypeError("torch_state: nested param groups (a partition inside a partition) have no torch counterpart.")
    visit("partition", node, where, group)
    return type(node)(
      {name: walk_state(sub, visit, where + ("inner_states", name), name) for name, sub in node.inner_states.items()}
    )
  if isinstance(node, optax.MaskedState):
    return node._replace(inner_state=walk_state(node.inner_state, visit, where + ("inner_state",), group))
  if hasattr(type(node), "_fields"):
    if not jax.tree.leaves(node):  # EmptyState and other stateless blocks
      return node
    unsupported = getattr(type(node), "_torch_state_unsupported", None)  # a state type that says why it cannot convert
    if unsupported is not None:
      raise TypeError(f"torch_state: {unsupported}")
    raise TypeError(
      f"torch_state: the optimizer state holds a {type(node).__module__}.{type(node).__qualname__}, which has no "
      "torch counterpart registered "
      "(gcj.torch_state.register_state_converter). The bridge knows: "
      f"{', '.join(registered_type_names())}."
    )
  if isinstance(node, (tuple, list)):
    return type(node)(walk_state(x, visit, where + (i,), group) for i, x in enumerate(node))
  if isinstance(node, dict):
    return {k: walk_state(v, visit, where + (k,), group) for k, v in node.items()}
  raise TypeError(f"torch_state: unexpected {type(node).__name__} in the optimizer state at {where}.")


def collect_states(state: Any) -> tuple[list[LocatedState], list[LocatedState], Optional[list[Hashable]]]:
  """(block states, inject states, the group names of the partition or None) of an Optax state.

  Raises:
    TypeError: see `walk_state`; several partitions.
  """
  blocks: list[LocatedState] = []
  injects: list[LocatedState] = []
  partitions: list[list[Hashable]] = []

  def visit(kind, node, where, group):
    if kind == "block":
      blocks.append(LocatedState(where, node, group))
    elif kind == "inject":
      injects.append(LocatedState(where, node, group))
    else:
      partitions.append(list(node.inner_states))
    return node

  walk_state(state, visit)
  if len(partitions) > 1:
    raise TypeError("torch_state: the optimizer state holds several partitions; torch has one list of param groups.")
  return blocks, injects, (partitions[0] if partitions else None)


def replace_states(state: Any, changes: Mapping[tuple, Mapping[str, Any]]) -> Any:
  """`state` with the fields of the block/inject states at the positions of `changes` replaced."""
  return walk_state(
    state, lambda kind, node, where, group: node._replace(**changes[where]) if where in changes else node
  )
