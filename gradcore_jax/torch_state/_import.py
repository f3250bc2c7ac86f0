"""torch -> gradcore_jax: `from_torch_state_dict`."""

from __future__ import annotations

import numbers
import warnings
from typing import Any
from typing import Mapping
from typing import Optional

import numpy as np
import optax

from gradcore_jax._typing import PyTree
from gradcore_jax.torch_state._builtin_converters import known_optimizers
from gradcore_jax.torch_state._hyperparams import check_structure
from gradcore_jax.torch_state._hyperparams import described_values
from gradcore_jax.torch_state._hyperparams import injected_by_key
from gradcore_jax.torch_state._hyperparams import torch_key_of
from gradcore_jax.torch_state._layout import Layout
from gradcore_jax.torch_state._layout import LayoutError
from gradcore_jax.torch_state._layout import leaf_layouts
from gradcore_jax.torch_state._plan import Group
from gradcore_jax.torch_state._plan import Plan
from gradcore_jax.torch_state._plan import make_plan
from gradcore_jax.torch_state._plan import torch_indices
from gradcore_jax.torch_state._registry import REQUIRED
from gradcore_jax.torch_state._values import as_number
from gradcore_jax.torch_state._values import as_step
from gradcore_jax.torch_state._values import put_like
from gradcore_jax.torch_state._values import same_value
from gradcore_jax.torch_state._values import step_counter
from gradcore_jax.torch_state._values import to_numpy
from gradcore_jax.torch_state._walk import LocatedState
from gradcore_jax.torch_state._walk import replace_states

# torch's per-parameter entries of one group: leaf index -> {torch key: tensor} (empty before its first step).
Entries = dict[int, Mapping[str, Any]]


def from_torch_state_dict(
  state_dict: Mapping[str, Any],
  tx: optax.GradientTransformation,
  params: PyTree,
  *,
  order: Optional[PyTree] = None,
  layouts: Any = None,
  step: Optional[int] = None,
  strict: bool = True,
) -> optax.OptState:
  """Converts a torch optimizer's `state_dict()` into `tx`'s state for `params`.

  The result is `tx.init(params)` with every block state filled from torch: moments and
  buffers leaf by leaf (`'exp_avg'` -> `ScaleByAdamState.mu`, ...), every step counter
  of a group (the Adam-family `count`, `ScaleByLearningRateState.count` of a schedule,
  `inject_hyperparams`' count and schedule counts) set to torch's `'step'`, and
  `optax.inject_hyperparams` values (`learning_rate`, `b1`, ...) set to the group's
  `'lr'`, `'betas'`, ... . Updating with it continues torch's run exactly.

  Leaves and torch indices: leaf `i` (in `jax.tree.leaves(params)` order) is torch's
  parameter `order`'s entry for it; by default the leaves of each group in tree order,
  the groups in `tx`'s order (`gcj.param_groups`' `groups`) — for one group,
  `model.parameters()` order. torch's groups are matched to `tx`'s by the leaves they
  hold.

  Checks (a ValueError or TypeError naming the leaf, group or key): the state_dict's
  optimizer must be `tx`'s (its param-group keys and per-parameter keys, amsgrad,
  centered, momentum on or off); every leaf must map to one torch parameter and every
  torch parameter to one leaf; shapes must agree after the layout; every leaf of a group
  must have the same step. When `tx` records its hyperparameters (built by
  `gcj.param_groups` from a gradcore_jax factory), their values are compared with torch's
  groups (relative 1e-6; a schedule at the current step): a difference raises, or only
  warns with `strict=False` (then `tx`'s values are used from now on). A plain
  optimizer (`gcj.adam(...)`) keeps no record of its values: only the structure is
  checked. Injected hyperparameters are not checked but loaded.

  Args:
    state_dict: `optimizer.state_dict()`, or the same layout with NumPy arrays / Python
      numbers: `{"state": {index: {key: value}}, "param_groups": [{"params": [index, ...], ...}]}`.
    tx: the gradcore_jax optimizer (any composition of its blocks in `optax.chain`,
      `optax.masked`, `gcj.param_groups`, `optax.inject_hyperparams`).
    params: the parameters `tx` is used with (arrays).
    order: optional pytree of ints with the params' structure: each leaf's torch index
      (the keys of `state_dict["state"]`, the entries of `param_groups[g]["params"]`).
      E.g. `{"Dense_0": {"kernel": 0, "bias": 1}}` where Flax sorts `bias` first.
    layouts: optional, how each leaf is laid out relative to torch's tensor: a pytree
      with the params' structure, or a function `(path, leaf) -> entry`, whose entries are
      None (same layout), a tuple of axes (`leaf = tensor.transpose(axes)`, e.g. `(1, 0)`
      for a Dense kernel; see `flax_kernel_layout`) or a `Layout` (any pair of functions).
    step: the number of steps taken, for what torch does not record: SGD keeps no
      `'step'`, so a schedule or `inject_hyperparams` under SGD needs it (e.g. your
      scheduler's `last_epoch`). Where torch records a step, it must agree.
    strict: raise (True) or warn (False) when `tx`'s recorded hyperparameter values
      differ from the state_dict's.

  Returns:
    The optimizer state, with `tx.init(params)`'s structure, dtypes and shardings.

  Raises:
    ValueError: any mismatch above.
    TypeError: a state type without a torch counterpart, malformed arguments.
  """
  target = tx.init(params)
  plan = make_plan(tx, params, target)
  torch_state, torch_groups = _read_state_dict(state_dict)
  indices = torch_indices(order, plan)
  layout_list = leaf_layouts(layouts, params, plan.treedef, plan.paths)
  matches = _match_groups(plan, indices, torch_groups)
  listed = set(indices)
  for index in torch_state:
    if index not in listed:
      raise ValueError(f"from_torch_state_dict: state_dict['state'] has torch index {index}, which no leaf has.")
  changes: dict[tuple, dict[str, Any]] = {}
  steps: list[int] = []
  for group, j in matches:
    torch_group = torch_groups[j]
    _check_kind(group, torch_group, j)
    check_structure(group, torch_group, f"from_torch_state_dict: param_groups[{j}]")
    entries = {i: torch_state.get(indices[i], {}) for i in group.members}
    t = _import_group(group, entries, step, plan, layout_list, changes)
    if t is not None:
      steps.append(t)
    _check_values(group, torch_group, j, t, strict)
    for found in group.injects:
      changes[found.where] = _import_inject(found, group, torch_group, t)
  if plan.global_blocks:
    t = _global_step(steps, step)
    for found in plan.global_blocks:
      changes[found.where] = {field: _counter_at(found, field, t) for field in found.converter.counters}
  return replace_states(target, changes)


def _read_state_dict(state_dict: Any) -> tuple[dict[int, Mapping[str, Any]], list[Mapping[str, Any]]]:
  """(torch index -> per-parameter entry, param groups) of a state_dict, its shape checked."""
  if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
    raise TypeError(
      "from_torch_state_dict: state_dict must be a mapping with 'state' and 'param_groups' (torch's "
      "optimizer.state_dict())."
    )
  state: dict[int, Mapping[str, Any]] = {}
  for key, entry in state_dict["state"].items():
    index = _as_index(key, "a key of state_dict['state']")
    if not isinstance(entry, Mapping):
      raise TypeError(
        f"from_torch_state_dict: state_dict['state'][{key!r}] must be a mapping, got {type(entry).__name__}."
      )
    state[index] = entry
  groups = list(state_dict["param_groups"])
  for j, group in enumerate(groups):
    if not isinstance(group, Mapping) or "params" not in group:
      raise TypeError(f"from_torch_state_dict: param_groups[{j}] must be a mapping with 'params'.")
  return state, groups


def _as_index(key: Any, what: str) -> int:
  if isinstance(key, str) and key.isdigit():
    return int(key)
  if isinstance(key, numbers.Integral) and not isinstance(key, bool):
    return int(key)
  raise TypeError(f"from_torch_state_dict: {what} must be a torch parameter index (an int), got {key!r}.")


def _match_groups(plan: Plan, indices: list[int], torch_groups: list[Mapping[str, Any]]) -> list[tuple[Group, int]]:
  """(group of tx, index of the torch param group holding exactly its leaves), for every group."""
  owner: dict[int, int] = {}
  for j, torch_group in enumerate(torch_groups):
    for key in torch_group["params"]:
      index = _as_index(key, f"an entry of param_groups[{j}]['params']")
      if index in owner:
        raise ValueError(f"from_torch_state_dict: torch index {index} is in param_groups[{owner[index]}] and [{j}].")
      owner[index] = j
  by_index = {index: i for i, index in enumerate(indices)}
  for index, j in owner.items():
    if index not in by_index:
      raise ValueError(
        f"from_torch_state_dict: torch parameter {index} (param_groups[{j}]) is no leaf's: the params have "
        f"{len(indices)} leaves; give `order` to say which leaf is which torch index."
      )
  matches = []
  taken: dict[int, Group] = {}
  for group in plan.groups:
    found = set()
    for i in group.members:
      if indices[i] not in owner:
        raise ValueError(
          f"from_torch_state_dict: leaf {plan.paths[i]} is torch parameter {indices[i]}, which no param group of "
          "the state_dict holds (a missing leaf, or a wrong `order`)."
        )
      found.add(owner[indices[i]])
    if len(found) != 1:
      raise ValueError(
        f"from_torch_state_dict: the leaves of {group.label()} are spread over torch's param_groups "
        f"{sorted(found)}; each torch group must hold exactly one group's leaves."
      )
    j = found.pop()
    if j in taken:
      raise ValueError(
        f"from_torch_state_dict: param_groups[{j}] holds leaves of both {taken[j].label()} and {group.label()}; "
        "build tx with the same groups as torch (gcj.param_groups)."
      )
    taken[j] = group
    matches.append((group, j))
  if len(taken) != len(torch_groups):
    extra = [j for j in range(len(torch_groups)) if j not in taken]
    raise ValueError(f"from_torch_state_dict: torch's param_groups {extra} match no group of tx.")
  return matches


def _check_kind(group: Group, torch_group: Mapping[str, Any], index: int) -> None:
  """Checks that a torch param group is of the group's torch optimizer (its required keys, no other's keys)."""
  optimizer = group.optimizer
  missing = [k for k, default in optimizer.keys.items() if default is REQUIRED and k not in torch_group]
  foreign = sorted(
    {k for other in known_optimizers() for k in other.keys if k not in optimizer.keys and k in torch_group}
  )
  if missing or foreign:
    problem = f"lacks {missing}" if missing else f"has {foreign}"
    raise ValueError(
      f"from_torch_state_dict: param_groups[{index}] {problem}: it is not a torch {optimizer.name} state_dict, "
      f"which {group.label()} of tx is."
    )


def _expected_keys(group: Group, i: int, plan: Plan) -> set[str]:
  """The torch per-parameter keys leaf `i` has once torch stepped, by the group's state."""
  keys = set()
  for found in group.blocks:
    for field, key in found.present_trees():
      leaf = plan.leaves(found, field)[i]
      if leaf is not None and not isinstance(leaf, optax.MaskedNode):  # None: no such statistic for this leaf
        keys.add(key)
    keys.update(found.converter.scalars.values())
  if keys and group.optimizer.records_step:
    keys.add("step")
  return keys


def _import_group(
  group: Group,
  entries: Entries,
  step: Optional[int],
  plan: Plan,
  layouts: list[Optional[Layout]],
  changes: dict[tuple, dict[str, Any]],
) -> Optional[int]:
  """Fills `changes` for the group's blocks; returns the group's step count (None if unknown)."""
  expected = {i: _expected_keys(group, i, plan) for i in group.members}
  _check_leaf_keys(group, entries, expected, plan)
  holders = [i for i in group.members if expected[i]]
  with_state = [i for i in holders if entries[i]]
  t = _group_step(group, entries, holders, with_state, step, plan)
  for found in group.blocks:
    changes[found.where] = _import_block(found, group, t, with_state, entries, plan, layouts)
  return t


def _check_leaf_keys(group: Group, entries: Entries, expected: Mapping[int, set[str]], plan: Plan) -> None:
  """Checks that every leaf's torch entry is empty or has exactly the keys the group's state keeps."""
  for i in group.members:
    present = set(entries[i])
    if not expected[i] and present:
      raise ValueError(
        f"from_torch_state_dict: the state_dict has {sorted(present)} for leaf {plan.paths[i]}, but "
        f"{group.label()} of tx keeps no state for it: another optimizer's state_dict, or other hyperparameters."
      )
    if present and present != expected[i]:
      missing, extra = sorted(expected[i] - present), sorted(present - expected[i])
      raise ValueError(
        f"from_torch_state_dict: leaf {plan.paths[i]}: "
        + (f"the state_dict lacks {missing} " if missing else "")
        + (f"the state_dict has {extra}, which tx does not keep " if extra else "")
        + f"(tx is torch {group.optimizer.name}: another optimizer's state_dict, "
        + "or amsgrad/centered/momentum differ)."
      )


def _group_step(
  group: Group, entries: Entries, holders: list[int], with_state: list[int], step: Optional[int], plan: Plan
) -> Optional[int]:
  """The group's step count: torch's `'step'` (one for all its leaves), else `step`, else 0 before the first step.

  Args:
    group: the group.
    entries: torch's per-parameter entries of its leaves.
    holders: its leaves that keep state.
    with_state: the holders torch has state for (all or none of them).
    step: the `step` argument.
    plan: the plan, for leaf names.

  Returns:
    The count, or None when neither torch nor `step` tells it (torch SGD after its first step).
  """
  if with_state and len(with_state) != len(holders):
    empty = next(i for i in holders if not entries[i])
    raise ValueError(
      f"from_torch_state_dict: leaf {plan.paths[empty]} has no state in the state_dict while other leaves of "
      f"{group.label()} have stepped; gradcore_jax keeps one step count per group (a missing leaf, or a "
      "parameter torch never saw a gradient for)."
    )
  if group.optimizer.eager and holders and not with_state:
    raise ValueError(
      f"from_torch_state_dict: leaf {plan.paths[holders[0]]} has no state, but torch {group.optimizer.name} "
      "creates its state at construction: a missing leaf."
    )
  recorded = None
  if group.optimizer.records_step and holders:
    recorded = 0
    if with_state:
      values = {i: as_step(entries[i]["step"], plan.paths[i]) for i in with_state}
      recorded = values[with_state[0]]
      for i, value in values.items():
        if value != recorded:
          raise ValueError(
            f"from_torch_state_dict: leaf {plan.paths[i]} is at step {value} but leaf "
            f"{plan.paths[with_state[0]]} at step {recorded}; gradcore_jax keeps one step count per group."
          )
    if step is not None and step != recorded:
      raise ValueError(
        f"from_torch_state_dict: step={step}, but torch's state of {group.label()} is at step {recorded}."
      )
  t = recorded if recorded is not None else step
  if t is None and holders and not with_state:
    t = 0
  if t is not None and holders and not group.optimizer.records_step and bool(with_state) != (t > 0):
    raise ValueError(
      f"from_torch_state_dict: step={t}, but torch's buffers of {group.label()} "
      f"{'exist' if with_state else 'do not exist'}."
    )
  return t


def _import_block(
  found: LocatedState,
  group: Group,
  t: Optional[int],
  with_state: list[int],
  entries: Entries,
  plan: Plan,
  layouts: list[Optional[Layout]],
) -> dict[str, Any]:
  """The new fields of one block state: its counters at `t`, its trees and scalars from torch."""
  converter = found.converter
  fields: dict[str, Any] = {}
  for field in converter.counters:
    if t is not None:
      value = t
    elif field in converter.presence_counters and not group.has_schedules():
      value = 1
    else:
      raise ValueError(
        f"from_torch_state_dict: {group.label()} keeps a step count ({found.field_name(field)}) that torch "
        f"{group.optimizer.name}'s state does not record: pass step= (e.g. the scheduler's last_epoch)."
      )
    fields[field] = _counter_at(found, field, value)
  if with_state:
    for field, key in found.present_trees():
      fields[field] = _import_tree(found, field, key, with_state, entries, plan, layouts)
    for field, key in converter.scalars.items():
      fields[field] = _import_scalar(key, getattr(found.state, field), with_state, entries, plan)
  return fields


def _counter_at(found: LocatedState, field: str, value: int) -> Any:
  """The counter `field` of a block state set to `value`."""
  return step_counter(value, getattr(found.state, field), found.field_name(field))


def _import_tree(
  found: LocatedState,
  field: str,
  key: str,
  members: list[int],
  entries: Entries,
  plan: Plan,
  layouts: list[Optional[Layout]],
) -> PyTree:
  """The params-shaped `field` with the leaves of `members` set from torch's `key`."""
  subtrees = list(plan.leaves(found, field))
  for i in members:
    like = subtrees[i]
    if like is None or isinstance(like, optax.MaskedNode):
      continue
    torch_value = to_numpy(entries[i][key])
    try:
      value = found.converter.import_leaf(field, torch_value, layouts[i], like)
    except LayoutError as err:
      raise ValueError(f"from_torch_state_dict: leaf {plan.paths[i]}, '{key}': {err}.") from None
    if value is None:
      leaf_layout = layouts[i]
      layout = "" if leaf_layout is None else f" after the layout ({leaf_layout.name})"
      raise ValueError(
        f"from_torch_state_dict: leaf {plan.paths[i]} has shape {tuple(like.shape)}, but torch's '{key}' for it has "
        f"shape {torch_value.shape}{layout}: a wrong `order`, or a layout to give in `layouts`."
      )
    subtrees[i] = put_like(value, like)
  return plan.treedef.unflatten(subtrees)


def _import_scalar(key: str, like: Any, members: list[int], entries: Entries, plan: Plan) -> Any:
  """A per-group scalar from torch's `key`, which repeats it for every parameter (it must be the same)."""
  values = {i: to_numpy(entries[i][key]).reshape(()) for i in members}
  first = members[0]
  for i, value in values.items():
    if value != values[first]:
      raise ValueError(
        f"from_torch_state_dict: '{key}' is {float(value)!r} for leaf {plan.paths[i]} but "
        f"{float(values[first])!r} for leaf {plan.paths[first]}; gradcore_jax keeps one per group."
      )
  return put_like(values[first], like)


def _import_inject(
  found: LocatedState, group: Group, torch_group: Mapping[str, Any], t: Optional[int]
) -> dict[str, Any]:
  """The new fields of an `inject_hyperparams` state: torch's group values, its counts at `t`."""
  state = found.state
  if t is None:
    raise ValueError(
      f"from_torch_state_dict: optax.inject_hyperparams in {group.label()} keeps a step count that torch "
      f"{group.optimizer.name}'s state does not record: pass step=."
    )
  hyperparams = dict(state.hyperparams)
  for name, like in state.hyperparams.items():
    key, position = torch_key_of(group.optimizer, name)
    if key not in torch_group:
      continue
    value = as_number(torch_group[key])
    if position is not None:
      value = value[position]
    hyperparams[name] = put_like(np.asarray(value), like)
  fields: dict[str, Any] = {
    "count": step_counter(t, state.count, "the inject_hyperparams count"),
    "hyperparams": hyperparams,
  }
  if hasattr(state, "hyperparams_states"):
    schedule_states = {}
    for name, schedule_state in state.hyperparams_states.items():
      if getattr(type(schedule_state), "_fields", None) != ("count",):
        raise TypeError(
          f"from_torch_state_dict: the injected schedule of {name!r} keeps a {type(schedule_state).__name__}; only "
          "step-count schedules (functions of the step) can be set from torch."
        )
      schedule_states[name] = schedule_state._replace(
        count=step_counter(t, schedule_state.count, f"the schedule count of {name!r}")
      )
    fields["hyperparams_states"] = schedule_states
  return fields


def _check_values(group: Group, torch_group: Mapping[str, Any], j: int, t: Optional[int], strict: bool) -> None:
  """Compares the group's recorded hyperparameters with torch's param group `j` (raises, or warns if not strict)."""
  if group.arguments is None:
    return
  injected = {key for found in group.injects for key in injected_by_key(found.state.hyperparams, group.optimizer)}
  for key, value in described_values(group, t).items():
    if key in injected:
      continue
    theirs = torch_group.get(key, group.optimizer.keys[key])
    if theirs is REQUIRED or same_value(value, theirs):
      continue
    message = (
      f"from_torch_state_dict: param_groups[{j}] has {key}={as_number(theirs)!r}, but {group.label()} of tx has "
      f"{value!r}" + (f" at step {t}" if key == "lr" and t is not None else "") + "."
    )
    if strict:
      raise ValueError(message + " Pass strict=False to continue with tx's values.")
    warnings.warn(message + " Continuing with tx's values.", UserWarning, stacklevel=3)


def _global_step(steps: list[int], step: Optional[int]) -> int:
  """The one step count of all groups, for the counters outside them."""
  known = sorted(set(steps) | ({step} if step is not None else set()))
  if len(known) > 1:
    raise ValueError(
      f"from_torch_state_dict: the groups are at different steps {known}, but tx keeps one step count for all."
    )
  if not known:
    raise ValueError("from_torch_state_dict: tx keeps a step count that the torch state does not record: pass step=.")
  return known[0]
