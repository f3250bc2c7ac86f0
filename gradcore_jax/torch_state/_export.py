"""gradcore_jax -> torch: `to_torch_state_dict` (torch is imported only to build tensors)."""

from __future__ import annotations

from typing import Any
from typing import Mapping
from typing import Optional
from typing import Sequence
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradcore_jax._typing import PyTree
from gradcore_jax.torch_state._hyperparams import UNKNOWN
from gradcore_jax.torch_state._hyperparams import check_structure
from gradcore_jax.torch_state._hyperparams import described_values
from gradcore_jax.torch_state._hyperparams import injected_by_key
from gradcore_jax.torch_state._hyperparams import merge_injected
from gradcore_jax.torch_state._layout import Layout
from gradcore_jax.torch_state._layout import LayoutError
from gradcore_jax.torch_state._layout import leaf_layouts
from gradcore_jax.torch_state._plan import Group
from gradcore_jax.torch_state._plan import Plan
from gradcore_jax.torch_state._plan import make_plan
from gradcore_jax.torch_state._plan import torch_indices
from gradcore_jax.torch_state._registry import REQUIRED
from gradcore_jax.torch_state._values import as_number
from gradcore_jax.torch_state._values import to_numpy
from gradcore_jax.torch_state._walk import LocatedState
from gradcore_jax.torch_state._walk import collect_states

# A step counter's value and its name (for messages).
Count = tuple[int, str]


def to_torch_state_dict(
  opt_state: optax.OptState,
  tx: optax.GradientTransformation,
  params: PyTree,
  *,
  order: Optional[PyTree] = None,
  layouts: Any = None,
  step: Optional[int] = None,
  param_groups: Optional[Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]] = None,
  as_numpy: bool = False,
) -> dict[str, Any]:
  """Converts `tx`'s state into a torch optimizer `state_dict` for `optimizer.load_state_dict`.

  The inverse of `from_torch_state_dict` (same `order` and `layouts`): per-parameter
  state under torch's keys (`'exp_avg'`, `'momentum_buffer'`, ...) with `'step'` where
  torch records it, and one param group per group of `tx` (`gcj.param_groups`), ordered
  by their torch indices, with torch's hyperparameter keys. Before the first step torch
  keeps no state (except Adagrad's), and none is written; Muon, whose state tells no step,
  always writes its momentum buffers (zeros before the first step, as torch starts them).

  torch's `load_state_dict` takes the groups' hyperparameters from the dict, so they
  must be known. They come from, in order: `tx`'s record (a `gcj.param_groups`
  transformation of a gradcore_jax factory; a schedule is evaluated at the current step,
  torch's `'lr'` being the rate of the next step), the current values of
  `optax.inject_hyperparams` (their schedules at the next step), what the state shows
  (`amsgrad`, `centered`), then `param_groups`. A plain optimizer (`gcj.adam(...)`)
  keeps no record of its values: pass `param_groups=torch_optimizer.state_dict()["param_groups"]`
  (or build `tx` with `gcj.param_groups`). A key still unknown raises.

  Args:
    opt_state: `tx`'s state (as `tx.update` returned it).
    tx: the gradcore_jax optimizer the state belongs to.
    params: the current parameters.
    order: optional pytree of ints, each leaf's torch index (see `from_torch_state_dict`).
    layouts: optional per-leaf layouts (see `from_torch_state_dict`).
    step: the number of steps taken, for states that keep no step count (RMSprop
      without momentum, Adadelta, Adagrad at a constant rate, Rprop), where torch records one.
      Where the state has a count, it must agree.
    param_groups: torch hyperparameters to fill in what `tx` does not record: a list
      with one dict per torch group, in torch's order (e.g. the torch optimizer's
      `state_dict()["param_groups"]`; their `'params'` are ignored), or one dict for all.
    as_numpy: return NumPy arrays (0-d for `'step'` and `'mu_product'`) instead of torch
      tensors, so torch need not be installed.

  Returns:
    `{"state": {index: {key: tensor}}, "param_groups": [{..., "params": [index, ...]}]}`.

  Raises:
    ValueError: the state is not `tx`'s for `params`, counters that disagree, an unknown
      step count or hyperparameter.
    TypeError: a state type without a torch counterpart, malformed arguments.
  """
  expected_structure = jax.tree.structure(jax.eval_shape(tx.init, params))
  if jax.tree.structure(opt_state) != expected_structure:
    raise ValueError(
      "to_torch_state_dict: opt_state does not have the structure of tx.init(params): is it the state of this tx, "
      "for these params?"
    )
  plan = make_plan(tx, params, opt_state)
  indices = torch_indices(order, plan)
  layout_list = leaf_layouts(layouts, params, plan.treedef, plan.paths)
  next_values = _next_injected(tx, opt_state, params, plan)
  torch = None if as_numpy else _import_torch()
  global_counts = [_count(found, field) for found in plan.global_blocks for field in found.converter.counters]
  ordered = sorted(plan.groups, key=lambda g: min(indices[i] for i in g.members) if g.members else -1)
  templates = _templates(param_groups, len(ordered))
  state_out: dict[int, dict[str, Any]] = {}
  groups_out = []
  for group, template in zip(ordered, templates, strict=True):
    t = _export_step(group, global_counts, step)
    values = _export_values(group, t, template, next_values)
    if (t is None and group.optimizer.zeros_at_first_step) or (t is not None and (t > 0 or group.optimizer.eager)):
      for i in group.members:
        entry = _export_entry(group, i, t, plan, layout_list, torch)
        if entry:
          state_out[indices[i]] = entry
    elif group.optimizer.eager:
      raise ValueError(f"to_torch_state_dict: {group.label()} keeps no step count: pass step=.")
    groups_out.append({**values, "params": sorted(indices[i] for i in group.members)})
  return {"state": dict(sorted(state_out.items())), "param_groups": groups_out}


def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as err:
    raise ImportError(
      "to_torch_state_dict builds torch tensors and needs torch; pass as_numpy=True without it."
    ) from err
  return torch


def _templates(param_groups: Any, n: int) -> list[Mapping[str, Any]]:
  """The `param_groups` argument as one dict per group (in torch's order)."""
  if param_groups is None:
    return [{}] * n
  if isinstance(param_groups, Mapping):
    return [param_groups] * n
  templates = list(param_groups)
  if len(templates) != n or not all(isinstance(t, Mapping) for t in templates):
    raise ValueError(f"to_torch_state_dict: param_groups must be one dict or a list of {n} dicts (one per group).")
  return templates


def _next_injected(tx, opt_state, params, plan: Plan) -> dict[tuple, dict[str, Any]]:
  """The injected hyperparameters the next update will use (schedules advanced), by state position."""
  scheduled = any(getattr(f.state, "hyperparams_states", None) for g in plan.groups for f in g.injects)
  if not scheduled:
    return {f.where: dict(f.state.hyperparams) for g in plan.groups for f in g.injects}
  _, probe = tx.update(jax.tree.map(jnp.zeros_like, params), opt_state, params)
  _, injects, _ = collect_states(probe)
  return {f.where: dict(f.state.hyperparams) for f in injects}


def _count(found: LocatedState, field: str) -> Count:
  return int(getattr(found.state, field)), found.field_name(field)


def _export_step(group: Group, global_counts: list[Count], step: Optional[int]) -> Optional[int]:
  """The group's step count: its counters (which must agree), else `step`; None when neither tells it.

  A presence counter under torch SGD only tells "stepped or not" (see import): it gives the
  count only when nothing else does.
  """
  counts = list(global_counts)
  started = []  # presence counters where torch records no step
  for found in group.blocks:
    for field in found.converter.counters:
      weak = field in found.converter.presence_counters and not group.optimizer.records_step
      (started if weak else counts).append(_count(found, field))
  for found in group.injects:
    counts.append((int(found.state.count), "the inject_hyperparams count"))
  if started and not counts:
    if step is None:
      return started[0][0]
    for value, what in started:
      if (value > 0) != (step > 0):
        raise ValueError(f"to_torch_state_dict: step={step}, but {group.label()} has {what}={value}.")
    return step
  counts.extend(started)
  values = {value for value, _ in counts}
  if len(values) > 1:
    listed = ", ".join(f"{what}={value}" for value, what in counts)
    raise ValueError(f"to_torch_state_dict: the step counters of {group.label()} disagree: {listed}.")
  if values:
    t = values.pop()
    if step is not None and step != t:
      raise ValueError(f"to_torch_state_dict: step={step}, but {group.label()} counts {t} steps.")
    return t
  if step is not None:
    return step
  if group.optimizer.records_step and any(found.present_trees() for found in group.blocks):
    raise ValueError(
      f"to_torch_state_dict: {group.label()} keeps no step count, but torch {group.optimizer.name} records "
      "'step': pass step= (the number of steps taken)."
    )
  return None


def _export_values(
  group: Group, t: Optional[int], template: Mapping[str, Any], next_values: Mapping[tuple, Mapping[str, Any]]
) -> dict[str, Any]:
  """torch's param-group values of the group (without `'params'`); see `to_torch_state_dict` for their sources."""
  optimizer = group.optimizer
  values = {k: (as_number(v) if k in optimizer.keys else v) for k, v in template.items() if k != "params"}
  values.update(described_values(group, t))
  for found in group.injects:
    values = merge_injected(values, injected_by_key(next_values.get(found.where, {}), optimizer), optimizer)
  if optimizer.structure is not None:
    for key, present in optimizer.structure(group.blocks_by_type()).items():
      if key not in values and isinstance(optimizer.keys.get(key), bool):
        values[key] = present
  if template:  # torch's values: a key it lacks means torch's default, as torch's load_state_dict reads it
    for key, default in optimizer.keys.items():
      if default is not REQUIRED:
        values.setdefault(key, default)
  check_structure(group, values, "to_torch_state_dict")
  for key, value in optimizer.extras.items():
    values.setdefault(key, value)
  missing = [k for k in optimizer.keys if k not in values or (isinstance(values[k], tuple) and UNKNOWN in values[k])]
  if missing:
    raise ValueError(
      f"to_torch_state_dict: torch {optimizer.name}'s {missing} of {group.label()} are unknown: tx keeps no record "
      "of its hyperparameters. Build it with gcj.param_groups(...) or pass "
      "param_groups=torch_optimizer.state_dict()['param_groups']."
    )
  return values


def _export_entry(
  group: Group, i: int, t: Optional[int], plan: Plan, layouts: list[Optional[Layout]], torch: Any
) -> dict[str, Any]:
  """torch's per-parameter entry of leaf `i` (empty when the group keeps no state for it)."""
  entry: dict[str, Any] = {}
  for found in group.blocks:
    for field, key in found.present_trees():
      leaf = plan.leaves(found, field)[i]
      if leaf is None or isinstance(leaf, optax.MaskedNode):
        continue
      try:
        value = found.converter.export_leaf(field, to_numpy(leaf), layouts[i])
      except LayoutError as err:
        raise ValueError(f"to_torch_state_dict: leaf {plan.paths[i]}, '{key}': {err}.") from None
      entry[key] = _tensor(value, torch)
    for field, key in found.converter.scalars.items():
      entry[key] = _scalar_tensor(to_numpy(getattr(found.state, field)), torch)
  if entry and group.optimizer.records_step:
    entry["step"] = _scalar_tensor(np.asarray(float(0 if t is None else t)), torch)  # no step yet: torch's 0
  return entry


def _tensor(value: np.ndarray, torch: Any) -> Any:
  """A copy of `value` as a torch tensor (NumPy when `torch` is None)."""
  value = np.array(value, copy=True)  # torch updates its state in place: never alias a JAX buffer
  if torch is None:
    return value
  if value.dtype.name == "bfloat16":
    return torch.from_numpy(value.astype(np.float32)).to(torch.bfloat16)
  return torch.from_numpy(value)


def _scalar_tensor(value: np.ndarray, torch: Any) -> Any:
  """A 0-d float in torch's scalar dtype (the default dtype), as torch keeps 'step' and 'mu_product'."""
  if torch is None:
    return np.array(value, copy=True)
  return torch.tensor(float(value), dtype=torch.get_default_dtype())
