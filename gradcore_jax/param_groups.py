"""Torch-style parameter groups: per-group hyperparameters for any gradcore_jax optimizer.

PyTorch gives one optimizer several `param_groups`, each with its own learning rate,
weight decay, betas, momentum, ...:

    torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3)

`param_groups` is the same thing in Optax form: one optimizer per group, built from the
same factory with the group's keywords over shared defaults, and combined with
`optax.partition` so that every leaf is updated by its group's optimizer:

    >>> import gradcore_jax as gcj
    >>> tx = gcj.param_groups(gcj.adamw, labels=gcj.decay_label,
    ...                       groups={"decay": {"weight_decay": 0.1}, "no_decay": {"weight_decay": 0.0}},
    ...                       learning_rate=1e-3)

Each group keeps its own state (its own step count, moments, schedule position), exactly
as torch keeps one state per parameter and steps every group once per `optimizer.step()`,
so trajectories equal torch's with the same groups.
"""

from __future__ import annotations

import dataclasses
import inspect
import weakref
from typing import Any
from typing import Callable
from typing import Hashable
from typing import Mapping
from typing import Optional
from typing import Union

import jax
import numpy as np
import optax

from gradcore_jax._typing import PyTree

GradientTransformation = optax.GradientTransformationExtraArgs
Labels = Union[PyTree, Callable[..., Any]]

__all__ = ["GroupsSpec", "decay_label", "groups_spec", "no_decay_groups", "param_groups"]


@dataclasses.dataclass(frozen=True)
class GroupsSpec:
  """What `param_groups` built: the factory, each group's full keywords, and the labels.

  Attributes:
    factory: the optimizer factory every group was built with.
    groups: group name -> the keywords its optimizer was built with (defaults, then the
      group's overrides), in the order the groups were given.
    labels: the `labels` argument, as given.
  """

  factory: Callable[..., optax.GradientTransformation]
  groups: Mapping[Hashable, Mapping[str, Any]]
  labels: Labels

  def leaf_labels(self, params: PyTree) -> list[Hashable]:
    """The group name of every leaf of `params`, in `jax.tree.leaves` order.

    Args:
      params: the parameters (or anything with their structure, shapes and dtypes).

    Returns:
      One group name per leaf.

    Raises:
      ValueError: as `param_groups`' `init` (unknown label, empty group, mismatched labels).
    """
    return [label for _, label in _labelled_leaves(_label_tree(self.labels, params), params, self.groups)]


# `param_groups` transformations and what they were built from, keyed by their `init`
# function (alive as long as the transformation is). Read by `torch_state`.
_SPECS: "weakref.WeakKeyDictionary[Callable[..., Any], GroupsSpec]" = weakref.WeakKeyDictionary()


def groups_spec(tx: optax.GradientTransformation) -> Optional[GroupsSpec]:
  """What a transformation returned by `param_groups` was built from.

  Args:
    tx: any gradient transformation.

  Returns:
    Its `GroupsSpec`, or None when `tx` was not returned by `param_groups` (wrapping it,
    e.g. in `optax.chain`, makes a new transformation without one).
  """
  try:
    return _SPECS.get(tx.init)
  except TypeError:  # an `init` that cannot be weakly referenced was never registered
    return None


def param_groups(
  factory: Callable[..., optax.GradientTransformation],
  labels: Labels,
  groups: Mapping[Hashable, Mapping[str, Any]],
  **defaults: Any,
) -> GradientTransformation:
  """One optimizer with torch-style parameter groups, on `optax.partition`.

  Group `g` is updated by `factory(**{**defaults, **groups[g]})`: the shared defaults,
  overridden by the group's own keywords. Keywords are the factory's own names
  (`learning_rate`, `b1`, `b2`, `momentum`, `weight_decay`, ...), and any of them may be
  what the factory accepts (a float, an Optax schedule, ...). Each group keeps its own
  state and step count; all groups step together, as in torch's `optimizer.step()`.

  `labels` assigns every leaf of the params to a group, in one of three forms:

  * a pytree of group names with the structure of the params (or a prefix of it: a
    name at an inner node labels its whole subtree), as in `optax.partition`;
  * a per-leaf function `(path, leaf) -> name` taking two positional arguments, where
    `path` is the leaf's JAX key path (`jax.tree_util.keystr(path)` prints it) — for
    example `gcj.decay_label`;
  * a whole-tree function `params -> pytree of names` taking one positional argument,
    as in `optax.partition`.

  Functions are told apart by how many positional arguments they take (one or two). As in
  `optax.partition`, a label function is called on the params in `init` and on the
  gradients in `update`, so it must depend on paths, shapes and dtypes only.

  Args:
    factory: an optimizer factory, e.g. `gcj.adamw`, `gcj.sgd` or
      `optax.inject_hyperparams(gcj.adam)`.
    labels: the group name of every leaf, in one of the forms above.
    groups: group name -> that group's keyword overrides (`{}` for the defaults only), in
      torch's group order (the order `gcj.to_torch_state_dict` writes the groups in).
    **defaults: keywords shared by every group (torch's optimizer-level defaults).

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is `optax.PartitionState`
    with one entry per group.

  Raises:
    TypeError: a keyword the factory does not take (naming the group and the keyword),
      `groups` not a non-empty mapping of mappings, or a label function taking neither
      one nor two positional arguments.
    ValueError: (at construction for a labels pytree, in `init` for a label function) a
      leaf labelled with a name that is no group (naming the leaf and the label), a group
      no leaf is labelled with (naming the group), or labels that do not match the params.
  """
  if not callable(factory):
    raise TypeError(f"param_groups: factory must be an optimizer factory such as gcj.adamw, got {factory!r}.")
  if not isinstance(groups, Mapping) or not groups:
    raise TypeError(f"param_groups: groups must be a non-empty mapping of group name -> keywords, got {groups!r}.")
  accepts = _keyword_checker(factory)
  for keyword in defaults:
    if not accepts(keyword):
      raise TypeError(
        f"param_groups: {_name(factory)}() has no argument {keyword!r} (given as a default for every group); "
        f"its arguments are: {_argument_names(factory)}."
      )
  full: dict[Hashable, dict[str, Any]] = {}
  for name, overrides in groups.items():
    if not isinstance(overrides, Mapping):
      raise TypeError(f"param_groups: group {name!r} must map keyword -> value, got {overrides!r}.")
    for keyword in overrides:
      if not isinstance(keyword, str) or not accepts(keyword):
        raise TypeError(
          f"param_groups: group {name!r} sets {keyword!r}, which {_name(factory)}() does not take; "
          f"its arguments are: {_argument_names(factory)}."
        )
    full[name] = {**defaults, **overrides}
  transforms = {name: _build(factory, name, kwargs) for name, kwargs in full.items()}
  label_tree_fn = _label_function(labels)
  if label_tree_fn is None:
    # A labels pytree can only be checked against params; its names can be checked now.
    for label in jax.tree.leaves(labels):
      _check_label_known(label, None, full)
    partition_labels: Labels = labels
  else:
    partition_labels = label_tree_fn
  inner = optax.partition(transforms, partition_labels)

  def init_fn(params):
    _labelled_leaves(_label_tree(labels, params), params, full)  # raises on a bad label or an empty group
    return inner.init(params)

  def update_fn(updates, state, params=None, **extra_args):
    _check_partition_state(state, full)
    return inner.update(updates, state, params, **extra_args)

  tx = GradientTransformation(init_fn, update_fn)
  _SPECS[init_fn] = GroupsSpec(factory=factory, groups=full, labels=labels)
  return tx


def decay_label(path: Any, leaf: Any) -> str:
  """The usual "no weight decay on biases and norm scales" rule as a label function.

  `"no_decay"` for leaves with at most one dimension (biases, LayerNorm/BatchNorm scales
  and offsets, scalars), `"decay"` for the others (kernels, embeddings, convolutions) —
  the split torch users write by hand with `p.ndim <= 1`.

  Args:
    path: the leaf's key path (unused: the rule looks at the shape only).
    leaf: the parameter (or gradient) leaf; anything with a `shape` or an array.

  Returns:
    `"no_decay"` or `"decay"`.
  """
  del path
  ndim = len(leaf.shape) if hasattr(leaf, "shape") else np.ndim(leaf)
  return "no_decay" if ndim <= 1 else "decay"


def no_decay_groups(
  factory: Callable[..., optax.GradientTransformation],
  *,
  labels: Labels = decay_label,
  **defaults: Any,
) -> GradientTransformation:
  """Two groups, `"decay"` and `"no_decay"` (weight_decay 0), in one line.

  `param_groups(factory, labels, {"decay": {}, "no_decay": {"weight_decay": 0.0}}, **defaults)`:
  the `"decay"` group uses `defaults` (or the factory's own `weight_decay` default, e.g.
  AdamW's 1e-2), the `"no_decay"` group the same with `weight_decay=0`. With the default
  labels, biases and norm scales (leaves with `ndim <= 1`) are not decayed. Both groups
  must receive at least one leaf.

  Args:
    factory: an optimizer factory with a `weight_decay` argument, e.g. `gcj.adamw`.
    labels: labels in any form `param_groups` accepts, naming `"decay"` and
      `"no_decay"`; default `decay_label`.
    **defaults: keywords for both groups, e.g. `learning_rate=1e-3, weight_decay=0.05`.

  Returns:
    The `param_groups` transformation (groups in the order `"decay"`, `"no_decay"`).
  """
  return param_groups(factory, labels, {"decay": {}, "no_decay": {"weight_decay": 0.0}}, **defaults)


def _build(factory: Callable[..., optax.GradientTransformation], name: Hashable, kwargs: dict[str, Any]):
  try:
    return factory(**kwargs)
  except (TypeError, ValueError) as err:
    raise type(err)(f"param group {name!r}: {err}") from err


def _keyword_checker(factory: Callable[..., Any]) -> Callable[[str], bool]:
  try:
    parameters = inspect.signature(factory).parameters
  except (TypeError, ValueError):  # no introspectable signature: let the factory decide
    return lambda keyword: True
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
    return lambda keyword: True
  by_name = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
  names = {n for n, p in parameters.items() if p.kind in by_name}
  return names.__contains__


def _argument_names(factory: Callable[..., Any]) -> str:
  try:
    return ", ".join(inspect.signature(factory).parameters)
  except (TypeError, ValueError):
    return "?"


def _name(factory: Callable[..., Any]) -> str:
  return getattr(factory, "__name__", type(factory).__name__)


def _label_function(labels: Labels) -> Optional[Callable[[PyTree], PyTree]]:
  """`params -> labels tree` for a label function, None for a labels pytree."""
  if not callable(labels):
    return None
  arity = _positional_arity(labels)
  if arity == 2:
    return lambda tree: jax.tree_util.tree_map_with_path(labels, tree)
  if arity == 1:
    return labels
  raise TypeError(
    f"param_groups: a labels function must take either two positional arguments `(path, leaf) -> name` or one "
    f"`params -> labels tree`; {labels!r} accepts {arity}. Give it exactly one or two parameters."
  )


def _positional_arity(fn: Callable[..., Any]) -> Union[int, str]:
  try:
    signature = inspect.signature(fn)
  except (TypeError, ValueError):
    return "an unknown number of arguments"
  takes = [_binds(signature, n) for n in (1, 2)]
  if takes == [False, True]:
    return 2
  if takes == [True, False]:
    return 1
  return "both one and two arguments" if all(takes) else "neither one nor two arguments"


def _binds(signature: inspect.Signature, n: int) -> bool:
  try:
    signature.bind(*([None] * n))
  except TypeError:
    return False
  return True


def _label_tree(labels: Labels, params: PyTree) -> PyTree:
  function = _label_function(labels)
  return labels if function is None else function(params)


def _labelled_leaves(label_tree: PyTree, params: PyTree, groups: Mapping[Hashable, Any]) -> list[tuple[str, Hashable]]:
  """`(path, label)` for every leaf of `params`, checking the labels against the groups."""
  label_leaves, label_def = jax.tree_util.tree_flatten_with_path(label_tree)
  try:
    subtrees = label_def.flatten_up_to(params)
  except (ValueError, TypeError) as err:
    raise ValueError(
      f"param_groups: the labels do not match the params (they must have the params' structure, or a prefix of "
      f"it): {err}"
    ) from None
  result = []
  for (label_path, label), subtree in zip(label_leaves, subtrees, strict=True):
    for leaf_path, _ in jax.tree_util.tree_flatten_with_path(subtree)[0]:
      path = jax.tree_util.keystr(tuple(label_path) + tuple(leaf_path)) or "<root>"
      _check_label_known(label, path, groups)
      result.append((path, label))
  used = {label for _, label in result}
  for name in groups:
    if name not in used:
      raise ValueError(
        f"param_groups: group {name!r} has no leaves: no leaf of the params is labelled {name!r} "
        f"(labels in use: {', '.join(sorted(map(repr, used)))}). Remove the group or fix the labels."
      )
  return result


def _check_partition_state(state: Any, groups: Mapping[Hashable, Any]) -> None:
  """`state` must be an `optax.PartitionState` with one state per group (each group's optimizer checks its own)."""
  inner_states = getattr(state, "inner_states", None)
  if not isinstance(state, optax.PartitionState) or not isinstance(inner_states, Mapping):
    raise TypeError(
      "param_groups: state must be the optax.PartitionState that this transformation's init returned (one "
      f"optimizer state per group: {', '.join(map(repr, groups))}), got {type(state).__name__}."
    )
  if set(inner_states) != set(groups):
    raise ValueError(
      f"param_groups: state holds the groups {', '.join(map(repr, inner_states))}, but this transformation has "
      f"the groups {', '.join(map(repr, groups))}; pass the state its own init returned."
    )


def _check_label_known(label: Any, path: Optional[str], groups: Mapping[Hashable, Any]) -> None:
  try:
    known = label in groups
  except TypeError:  # unhashable
    known = False
  if not known:
    where = f"the leaf at {path} is labelled" if path else "the labels contain"
    raise ValueError(
      f"param_groups: {where} {label!r}, which names no group; the groups are: {', '.join(map(repr, groups))}."
    )
