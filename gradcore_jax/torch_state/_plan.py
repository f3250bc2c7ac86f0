"""What `tx` is, as torch would see it: its param groups, their leaves, blocks and torch optimizer, and the order.

torch numbers the parameters `0..n-1` through its groups in order; `torch_indices` says
which leaf is which torch index (`order`, or the groups' leaves in tree order).
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import numbers
from typing import Any
from typing import Callable
from typing import Hashable
from typing import Mapping
from typing import Optional
from typing import cast

import jax
import optax

from gradcore_jax._typing import PyTree
from gradcore_jax.param_groups import groups_spec
from gradcore_jax.torch_state._builtin_converters import SGD
from gradcore_jax.torch_state._builtin_converters import known_optimizers
from gradcore_jax.torch_state._registry import TorchOptimizer
from gradcore_jax.torch_state._walk import LocatedState
from gradcore_jax.torch_state._walk import collect_states


def group_label(name: Optional[Hashable]) -> str:
  """How messages name a group (None: the single group of an optimizer without param groups)."""
  return "the optimizer" if name is None else f"param group {name!r}"


@dataclasses.dataclass
class Group:
  """One group of `tx` (one torch param group).

  Attributes:
    name: the group's name in the partition (None: `tx` has no param groups).
    members: the indices of its leaves in `jax.tree.leaves(params)`.
    blocks: its block states.
    injects: its `inject_hyperparams` states.
    optimizer: the torch optimizer it is.
    arguments: the factory's bound arguments (`gcj.param_groups` records them), None when unknown.
    implied: torch values the factory implies without an argument (AdamW's `decoupled_weight_decay=True`).
  """

  name: Optional[Hashable]
  members: list[int]
  blocks: list[LocatedState]
  injects: list[LocatedState]
  optimizer: TorchOptimizer
  arguments: Optional[dict[str, Any]]
  implied: Mapping[str, Any]

  def label(self) -> str:
    return group_label(self.name)

  def blocks_by_type(self) -> dict[type, Any]:
    return {type(f.state): f.state for f in self.blocks}

  def has_schedules(self) -> bool:
    """Whether a described group has a schedule (momentum, b1, lr, ...): its counters must then be exact steps."""
    return self.arguments is not None and any(callable(v) for v in self.arguments.values())


@dataclasses.dataclass
class Plan:
  """The params' leaves and `tx`'s groups.

  Attributes:
    paths: every leaf's key path as a string, for messages.
    treedef: the params' tree structure.
    groups: `tx`'s groups (one when it has no param groups), in `tx`'s order.
    global_blocks: block states outside the param groups (step counters only).
  """

  paths: list[str]
  treedef: Any
  groups: list[Group]
  global_blocks: list[LocatedState]
  _leaves_cache: dict[tuple, list[Any]] = dataclasses.field(default_factory=dict)

  def leaves(self, found: LocatedState, field: str) -> list[Any]:
    """The field's tree cut at the params' leaves (arrays, or MaskedNode for a leaf outside the block)."""
    key = (found.where, field)
    if key not in self._leaves_cache:
      self._leaves_cache[key] = self.treedef.flatten_up_to(getattr(found.state, field))
    return self._leaves_cache[key]


def make_plan(tx: optax.GradientTransformation, params: PyTree, state: Any) -> Plan:
  """Finds `tx`'s groups in `state` (`tx.init(params)`'s structure) and what each one is.

  Raises:
    TypeError: a composition with no torch counterpart (nested or global injected groups,
      per-parameter state outside the groups, mixed or doubled optimizer states, ...).
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [jax.tree_util.keystr(path) or "<root>" for path, _ in flat]
  blocks, injects, partition = collect_states(state)
  spec = groups_spec(tx)
  if partition is None:
    if spec is not None:
      raise TypeError("torch_state: tx was built by gcj.param_groups, but the state holds no param groups.")
    names: list[Optional[Hashable]] = [None]
    members: dict[Optional[Hashable], list[int]] = {None: list(range(len(paths)))}
    global_blocks: list[LocatedState] = []
  else:
    if any(f.group is None for f in injects):
      raise TypeError(
        "torch_state: optax.inject_hyperparams around param groups is not supported; inject inside the groups "
        "instead: gcj.param_groups(optax.inject_hyperparams(factory), ...)."
      )
    global_blocks = [f for f in blocks if f.group is None]
    for found in global_blocks:
      if found.present_trees():
        raise TypeError(
          f"torch_state: a {type(found.state).__name__} outside the param groups keeps per-parameter state; "
          "torch keeps per-parameter state only inside its groups."
        )
    if spec is not None:
      names = list(spec.groups)
      labels = spec.leaf_labels(params)
      members = {name: [i for i, label in enumerate(labels) if label == name] for name in names}
    else:
      names = _sorted_names(partition)
      members = _infer_members(names, blocks, treedef, len(paths))
  groups = []
  for name in names:
    group_blocks = [f for f in blocks if f.group == name] if name is not None else blocks
    group_injects = [f for f in injects if f.group == name]
    described, implied, arguments = None, {}, None
    if spec is not None:
      described, implied, arguments = _describe_factory(spec.factory, spec.groups[cast(Hashable, name)])
    optimizer = _group_optimizer(name, group_blocks, described)
    groups.append(Group(name, members[name], group_blocks, group_injects, optimizer, arguments, implied))
  return Plan(paths, treedef, groups, global_blocks)


def _sorted_names(names: list[Hashable]) -> list[Hashable]:
  try:
    return sorted(cast(list[Any], names))
  except TypeError:
    return sorted(names, key=repr)


def _infer_members(
  names: list[Hashable], blocks: list[LocatedState], treedef: Any, n_leaves: int
) -> dict[Hashable, list[int]]:
  """Leaf membership of a partition not built by `gcj.param_groups`: read off its masked state trees."""
  members: dict[Hashable, Optional[list[int]]] = {}
  for name in names:
    trees = [getattr(f.state, field) for f in blocks if f.group == name for field, _ in f.present_trees()]
    members[name] = None
    if trees:  # every params-shaped tree of the group is masked the same way: read the first
      members[name] = [i for i, s in enumerate(treedef.flatten_up_to(trees[0])) if not isinstance(s, optax.MaskedNode)]
  unknown = [name for name in names if members[name] is None]
  if len(unknown) == 1:
    taken = {i for m in members.values() if m is not None for i in m}
    members[unknown[0]] = [i for i in range(n_leaves) if i not in taken]
  elif unknown:
    raise TypeError(
      f"torch_state: cannot tell which leaves belong to the stateless groups {unknown}; build tx with "
      "gcj.param_groups, which records them."
    )
  return cast(dict[Hashable, list[int]], members)  # every entry is filled in now


def _describe_factory(factory: Callable[..., Any], kwargs: Mapping[str, Any]):
  """(TorchOptimizer, implied torch values, bound factory arguments) of a known factory, else (None, {}, None)."""
  base = inspect.unwrap(factory)
  for optimizer in known_optimizers():
    if base in optimizer.factories:
      bound = inspect.signature(base).bind(**kwargs)
      bound.apply_defaults()
      arguments = dict(bound.arguments)
      for name in optimizer.no_counterpart:
        if arguments.get(name) is not None:
          raise TypeError(
            f"torch_state: {base.__name__}({name}=...) has no torch counterpart; express it with gcj.param_groups."
          )
      implied = {k: v for k, v in optimizer.factories[base].items() if k not in arguments}
      return optimizer, implied, arguments
  return None, {}, None


def _group_optimizer(
  name: Optional[Hashable], blocks: list[LocatedState], described: Optional[TorchOptimizer]
) -> TorchOptimizer:
  """The torch optimizer of a group: its factory's, else its block states' (a shared block only alone), else SGD."""
  where = group_label(name)
  doubled = [t.__name__ for t, n in collections.Counter(type(f.state) for f in blocks).items() if n > 1]
  if doubled:
    raise TypeError(f"torch_state: {where} holds more than one {doubled[0]}; torch keeps one per parameter.")
  converters = [f.converter for f in blocks]
  own = {id(c.optimizer): c.optimizer for c in converters if c.optimizer is not None and not c.shared}
  shared = {id(c.optimizer): c.optimizer for c in converters if c.optimizer is not None and c.shared}
  found = list((own or shared).values())
  if len(found) > 1:
    raise TypeError(f"torch_state: {where} mixes the states of torch {found[0].name} and {found[1].name}.")
  from_state = found[0] if found else None
  if described is not None and from_state is not None and described is not from_state:
    raise TypeError(f"torch_state: {where} is built as torch {described.name} but its state is {from_state.name}'s.")
  return described or from_state or SGD


def torch_indices(order: Optional[PyTree], plan: Plan) -> list[int]:
  """Every leaf's torch parameter index: `order`'s entries, or by default the groups' leaves numbered in turn.

  Raises:
    ValueError: `order` without the params' structure, or two leaves with one index.
    TypeError: an entry that is not a non-negative int.
  """
  if order is None:
    indices = [0] * len(plan.paths)
    counter = 0
    for group in plan.groups:
      for i in group.members:
        indices[i] = counter
        counter += 1
    return indices
  try:
    entries = plan.treedef.flatten_up_to(order)
  except (ValueError, TypeError) as err:
    raise ValueError(f"order must be a pytree of ints with the params' structure: {err}") from None
  seen: dict[int, str] = {}
  indices = []
  for path, entry in zip(plan.paths, entries, strict=True):
    if not isinstance(entry, numbers.Integral) or isinstance(entry, bool) or entry < 0:
      raise TypeError(f"order: the entry for leaf {path} must be a non-negative int (a torch index), got {entry!r}.")
    if int(entry) in seen:
      raise ValueError(f"order: leaves {seen[int(entry)]} and {path} both have torch index {int(entry)}.")
    seen[int(entry)] = path
    indices.append(int(entry))
  return indices
