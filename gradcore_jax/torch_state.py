"""The optimizer `state_dict` bridge: torch.optim state <-> gradcore_jax optimizer state.

`from_torch_state_dict(state_dict, tx, params)` turns a torch optimizer's `state_dict()`
into `tx`'s state for `params`, so a run started in PyTorch continues in JAX exactly
(the next update equals torch's next `step()`); `to_torch_state_dict(opt_state, tx,
params)` goes the other way and returns a dict `optimizer.load_state_dict` accepts.

How the pieces are found. The bridge never relies on where a block sits in `tx`'s
chain: it walks the (nested) Optax state — tuples of `optax.chain`, `MaskedState`,
`PartitionState` (the groups of `gcj.param_groups`) and `InjectStatefulHyperparamsState`
(`optax.inject_hyperparams`) — and recognises block states by their type through a
registry, `StateConverter`s, each naming the torch per-parameter keys of its fields
(`ScaleByAdamState.mu` <-> `'exp_avg'`, ...) and the torch optimizer it belongs to
(`TorchOptimizer`: its param-group keys, whether it records `'step'`). A new optimizer
only registers its state type with `register_state_converter`.

Leaves and torch indices. torch numbers the parameters `0..n-1` through its groups in
order (`state_dict()['param_groups'][g]['params']`); `order` says which leaf is which
torch index. Tensors and leaves may be laid out differently (torch `Linear.weight` is
`(out, in)`, Flax `Dense.kernel` `(in, out)`): `layouts` says how, per leaf.

torch is not a dependency: a `state_dict` may hold torch tensors (converted through
their `.numpy()`, torch itself is never imported for that) or NumPy arrays and Python
numbers; `to_torch_state_dict` imports torch only to build tensors (`as_numpy=True`
avoids it).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import warnings
from typing import Any, Callable, Hashable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradcore_jax import optimizers
from gradcore_jax import transforms
from gradcore_jax._typing import PyTree
from gradcore_jax.param_groups import groups_spec

__all__ = [
    "Layout",
    "REQUIRED",
    "StateConverter",
    "TorchOptimizer",
    "flax_kernel_layout",
    "from_torch_state_dict",
    "register_state_converter",
    "to_torch_state_dict",
]


class _Required:
  def __repr__(self) -> str:
    return "REQUIRED"


REQUIRED: Any = _Required()
"""Marks a torch param-group key that has no default (every torch state_dict has it)."""

# torch param-group key -> the gradcore_jax factory arguments it is made of.
_RENAMES: Mapping[str, tuple[str, ...]] = {"lr": ("learning_rate",), "betas": ("b1", "b2")}
# Relative tolerance when hyperparameter values of both sides are compared.
_RTOL = 1e-6


@dataclasses.dataclass(frozen=True, eq=False)
class TorchOptimizer:
  """A `torch.optim` class as the bridge sees it.

  Attributes:
    name: the torch class name, for messages ("Adam").
    keys: the param-group keys that change the arithmetic -> the value torch assumes
      when a state_dict lacks the key (`REQUIRED`: it has no default). They are compared
      with `tx`'s hyperparameters and always written by `to_torch_state_dict`.
    extras: bookkeeping keys torch writes into each group (`foreach`, `capturable`, ...)
      and the values written for them.
    records_step: whether torch keeps a per-parameter `'step'` (all but SGD).
    eager: whether torch creates the per-parameter state at construction (Adagrad),
      so that it is present, and written, before the first step.
    factories: gradcore_jax factory -> values of torch keys the factory has no argument
      for (AdamW: `decoupled_weight_decay=True`).
    structure: `blocks -> {torch key: bool}`: what the state's structure says about a
      group (Adam's `amsgrad` is whether `nu_max` exists); `blocks` maps each block-state
      type of the group to its state.
    renames: torch key -> the factory arguments it is made of (`lr` <- `learning_rate`,
      `betas` <- `(b1, b2)`); other keys have the same name on both sides.
    no_counterpart: factory arguments torch has no equivalent for; they must be None.
  """

  name: str
  keys: Mapping[str, Any]
  extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  records_step: bool = True
  eager: bool = False
  factories: Mapping[Callable[..., Any], Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  structure: Optional[Callable[[Mapping[type, Any]], Mapping[str, bool]]] = None
  renames: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=lambda: dict(_RENAMES))
  no_counterpart: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)
class StateConverter:
  """How one block-state type maps onto torch's per-parameter state.

  The default conversion copies each params-shaped field leaf by leaf to one torch key
  (through the leaf's layout); subclass and override `import_leaf`/`export_leaf` for
  fields torch stores in another shape (factored second moments, ...).

  Attributes:
    optimizer: the torch optimizer whose state this is (None for blocks that do not
      decide it, such as the learning-rate schedule counter).
    shared: True for blocks used inside several torch optimizers (the momentum buffer of
      SGD, RMSprop): they decide the optimizer only in a group without another block.
    trees: field holding a params-shaped tree -> torch per-parameter key.
    scalars: field holding one scalar for all the block's leaves -> the torch
      per-parameter key that repeats it for every parameter (NAdam's `mu_product`).
    counters: int32 step-counter fields, set to the number of steps taken.
    presence_counters: the counters that only tell the first step from the others; when
      torch records no step (SGD), they are set to 1 if torch's buffers exist, else 0.
  """

  optimizer: Optional[TorchOptimizer] = None
  shared: bool = False
  trees: Mapping[str, str] = dataclasses.field(default_factory=dict)
  scalars: Mapping[str, str] = dataclasses.field(default_factory=dict)
  counters: tuple[str, ...] = ()
  presence_counters: tuple[str, ...] = ()

  def import_leaf(self, field: str, value: np.ndarray, layout: Optional[Layout], like: Any) -> Optional[np.ndarray]:
    """torch's tensor of `field` for one leaf -> the state leaf replacing `like`.

    The default applies the parameter's layout and accepts the result if it has `like`'s
    shape (the dtype is cast afterwards).

    Args:
      field: the state field being filled.
      value: torch's tensor for this leaf, as a NumPy array.
      layout: the parameter's layout (None: torch's).
      like: the leaf of `tx.init(params)` it replaces (shape and dtype to produce).

    Returns:
      The array, or None when its shape is not `like`'s (reported as a mismatch naming the leaf).
    """
    del field
    if layout is not None:
      value = layout.to_jax(value)
    return value if value.shape == tuple(like.shape) else None

  def export_leaf(self, field: str, value: np.ndarray, layout: Optional[Layout]) -> np.ndarray:
    """One leaf of `field` -> torch's tensor for it (the default undoes the parameter's layout).

    Args:
      field: the state field being written.
      value: the leaf's array (NumPy).
      layout: the parameter's layout (None: torch's).

    Returns:
      The array torch keeps for this parameter.
    """
    del field
    return value if layout is None else layout.to_torch(value)


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one leaf is laid out relative to torch's tensor.

  Attributes:
    to_jax: torch tensor (as a NumPy array) -> the leaf's array.
    to_torch: the leaf's array -> torch's tensor.
    name: shown in messages.
  """

  to_jax: Callable[[np.ndarray], np.ndarray]
  to_torch: Callable[[np.ndarray], np.ndarray]
  name: str = "custom layout"

  @classmethod
  def permutation(cls, axes: Sequence[int]) -> Layout:
    """The layout where the leaf is `np.transpose(torch_tensor, axes)` (e.g. `(1, 0)` for a Dense kernel).

    Args:
      axes: a permutation of `0..ndim-1`.

    Returns:
      The `Layout`; applying it to a tensor of another rank raises a ValueError.

    Raises:
      ValueError: `axes` is not a permutation.
    """
    axes = tuple(int(a) for a in axes)
    if sorted(axes) != list(range(len(axes))):
      raise ValueError(f"layouts: {axes!r} is not a permutation of the axes 0..{len(axes) - 1}.")
    inverse = tuple(int(a) for a in np.argsort(axes))

    def check(x: np.ndarray, direction: str) -> None:
      if x.ndim != len(axes):
        raise _LayoutError(
            f"the axes permutation {axes} is for {len(axes)}-D tensors, but the {direction} has shape {x.shape}"
        )

    def to_jax(x):
      check(x, "torch tensor")
      return np.transpose(x, axes)

    def to_torch(x):
      check(x, "leaf")
      return np.transpose(x, inverse)

    return cls(to_jax, to_torch, name=f"axes {axes}")


class _LayoutError(ValueError):
  pass


def flax_kernel_layout(path: Any, leaf: Any) -> Optional[tuple[int, ...]]:
  """A `layouts` function for Flax `Dense`/`Conv` kernels next to torch `Linear`/`ConvNd` weights.

  A leaf whose last key is `kernel` with `n >= 2` dimensions is torch's weight with its
  axes moved, `kernel = weight.transpose(2, ..., n-1, 1, 0)`: `(in, out)` for `(out, in)`,
  `(H, W, in, out)` for `(out, in, H, W)`. Other leaves (biases, `scale`, `embedding`)
  keep torch's layout. Not for `ConvTranspose` or `DenseGeneral`/attention kernels,
  whose torch layouts differ: give those leaves their own axes.

  Args:
    path: the leaf's JAX key path (a trailing `.value` of an `nnx.Variable` is skipped).
    leaf: the leaf.

  Returns:
    The axes for `layouts`, or None for torch's own layout.
  """
  names = [_key_name(k) for k in path]
  while names and names[-1] == "value":
    names.pop()
  ndim = len(leaf.shape) if hasattr(leaf, "shape") else np.ndim(leaf)
  if names and names[-1] == "kernel" and ndim >= 2:
    return tuple(range(2, ndim)) + (1, 0)
  return None


def _key_name(key: Any) -> str:
  for attribute in ("key", "name", "idx"):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


# ----------------------------------------------------------------------------------------------------------------------
# The registry.

_CONVERTERS: dict[type, StateConverter] = {}


def register_state_converter(state_type: type, converter: StateConverter) -> None:
  """Teaches the bridge a block-state type (what a new optimizer's block needs to do).

  Args:
    state_type: the NamedTuple type the block's `init` returns.
    converter: how its fields map to torch's per-parameter state, and which
      `TorchOptimizer` it belongs to.

  Raises:
    TypeError: `converter` is not a `StateConverter`, or names fields `state_type` lacks.
  """
  if not isinstance(converter, StateConverter):
    raise TypeError(f"register_state_converter: converter must be a StateConverter, got {converter!r}.")
  fields = getattr(state_type, "_fields", None)
  if fields is None:
    raise TypeError(f"register_state_converter: {state_type!r} is not a NamedTuple state type.")
  named = [*converter.trees, *converter.scalars, *converter.counters, *converter.presence_counters]
  unknown = [f for f in named if f not in fields]
  if unknown or not set(converter.presence_counters) <= set(converter.counters):
    raise TypeError(
        f"register_state_converter: {state_type.__name__} has fields {fields}; the converter names {unknown} "
        "(and presence_counters must be a subset of counters)."
    )
  _CONVERTERS[state_type] = converter


def _optimizers() -> list[TorchOptimizer]:
  found: dict[int, TorchOptimizer] = {}
  for converter in _CONVERTERS.values():
    if converter.optimizer is not None:
      found.setdefault(id(converter.optimizer), converter.optimizer)
  found.setdefault(id(SGD), SGD)
  return list(found.values())


def _momentum_on(blocks: Mapping[type, Any]) -> dict[str, bool]:
  return {"momentum": transforms.TorchMomentumState in blocks}


def _rmsprop_structure(blocks: Mapping[type, Any]) -> dict[str, bool]:
  rms = blocks.get(transforms.ScaleByRmsState)
  return {**_momentum_on(blocks), **({} if rms is None else {"centered": rms.grad_avg is not None})}


def _adam_structure(blocks: Mapping[type, Any]) -> dict[str, bool]:
  adam = blocks.get(transforms.ScaleByAdamState)
  return {} if adam is None else {"amsgrad": adam.nu_max is not None}


_NOT_FUSED = {"foreach": None, "differentiable": False, "fused": None}
_NOT_CAPTURED = {"foreach": None, "capturable": False, "differentiable": False}

SGD = TorchOptimizer(
    "SGD",
    keys={"lr": REQUIRED, "momentum": REQUIRED, "dampening": REQUIRED, "weight_decay": REQUIRED, "nesterov": False,
          "maximize": False},
    extras=_NOT_FUSED,
    records_step=False,
    factories={optimizers.sgd: {}},
    structure=_momentum_on,
)
RMSPROP = TorchOptimizer(
    "RMSprop",
    keys={"lr": REQUIRED, "alpha": REQUIRED, "eps": REQUIRED, "weight_decay": REQUIRED, "momentum": 0,
          "centered": False, "maximize": False},
    extras=_NOT_CAPTURED,
    factories={optimizers.rmsprop: {}},
    structure=_rmsprop_structure,
)
ADAM = TorchOptimizer(
    "Adam/AdamW",
    keys={"lr": REQUIRED, "betas": REQUIRED, "eps": REQUIRED, "weight_decay": REQUIRED, "amsgrad": False,
          "maximize": False, "decoupled_weight_decay": False},
    extras={**_NOT_CAPTURED, "fused": None},
    factories={optimizers.adam: {"decoupled_weight_decay": False}, optimizers.adamw: {"decoupled_weight_decay": True}},
    structure=_adam_structure,
    no_counterpart=("mask",),
)
ADAGRAD = TorchOptimizer(
    "Adagrad",
    keys={"lr": REQUIRED, "lr_decay": REQUIRED, "weight_decay": REQUIRED, "initial_accumulator_value": REQUIRED,
          "eps": REQUIRED, "maximize": False},
    extras=_NOT_FUSED,
    eager=True,
    factories={optimizers.adagrad: {}},
)
ADADELTA = TorchOptimizer(
    "Adadelta",
    keys={"lr": REQUIRED, "rho": REQUIRED, "eps": REQUIRED, "weight_decay": REQUIRED, "maximize": False},
    extras=_NOT_CAPTURED,
    factories={optimizers.adadelta: {}},
)
ADAMAX = TorchOptimizer(
    "Adamax",
    keys={"lr": REQUIRED, "betas": REQUIRED, "eps": REQUIRED, "weight_decay": REQUIRED, "maximize": False},
    extras=_NOT_CAPTURED,
    factories={optimizers.adamax: {}},
)
NADAM = TorchOptimizer(
    "NAdam",
    keys={"lr": REQUIRED, "betas": REQUIRED, "eps": REQUIRED, "weight_decay": REQUIRED, "momentum_decay": REQUIRED,
          "decoupled_weight_decay": False, "maximize": False},
    extras=_NOT_CAPTURED,
    factories={optimizers.nadam: {"decoupled_weight_decay": False}},
)
RADAM = TorchOptimizer(
    "RAdam",
    keys={"lr": REQUIRED, "betas": REQUIRED, "eps": REQUIRED, "weight_decay": REQUIRED,
          "decoupled_weight_decay": False, "maximize": False},
    extras=_NOT_CAPTURED,
    factories={optimizers.radam: {"decoupled_weight_decay": False}},
)

_ADAM_MOMENTS = {"mu": "exp_avg", "nu": "exp_avg_sq"}
register_state_converter(
    transforms.TorchMomentumState,
    StateConverter(SGD, shared=True, trees={"momentum_buffer": "momentum_buffer"}, counters=("count",),
                   presence_counters=("count",)),
)
register_state_converter(
    transforms.ScaleByRmsState, StateConverter(RMSPROP, trees={"square_avg": "square_avg", "grad_avg": "grad_avg"})
)
register_state_converter(
    transforms.ScaleByAdamState,
    StateConverter(ADAM, trees={**_ADAM_MOMENTS, "nu_max": "max_exp_avg_sq"}, counters=("count",)),
)
register_state_converter(
    transforms.ScaleByAdamaxState, StateConverter(ADAMAX, trees={"mu": "exp_avg", "inf_norm": "exp_inf"},
                                                  counters=("count",))
)
register_state_converter(
    transforms.ScaleByNadamState,
    StateConverter(NADAM, trees=_ADAM_MOMENTS, scalars={"mu_product": "mu_product"}, counters=("count",)),
)
register_state_converter(transforms.ScaleByRadamState, StateConverter(RADAM, trees=_ADAM_MOMENTS, counters=("count",)))
register_state_converter(transforms.ScaleByAdagradState, StateConverter(ADAGRAD, trees={"sum_of_squares": "sum"}))
register_state_converter(
    transforms.ScaleByAdadeltaState,
    StateConverter(ADADELTA, trees={"square_avg": "square_avg", "acc_delta": "acc_delta"}),
)
register_state_converter(transforms.ScaleByLearningRateState, StateConverter(counters=("count",)))
# The norm clip_grad_norm keeps for logging is no optimizer state in torch: nothing to convert.
register_state_converter(transforms.ClipGradNormState, StateConverter())


# ----------------------------------------------------------------------------------------------------------------------
# Walking the Optax state.

_INJECT_TYPES = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)


@dataclasses.dataclass
class _Found:
  where: tuple
  state: Any
  group: Optional[Hashable]


def _walk(node: Any, visit: Callable[[str, Any, tuple, Any], Any], where: tuple = (), group: Any = None) -> Any:
  """Rebuilds `node`, passing every block state and injected-hyperparameter state through `visit`."""
  if node is None or isinstance(node, optax.MaskedNode):
    return node
  if type(node) in _CONVERTERS:
    return visit("block", node, where, group)
  if isinstance(node, _INJECT_TYPES):
    inner = _walk(node.inner_state, visit, where + ("inner_state",), group)
    return visit("inject", node._replace(inner_state=inner), where, group)
  if isinstance(node, optax.PartitionState):
    if group is not None:
      raise TypeError("torch_state: nested param groups (a partition inside a partition) have no torch counterpart.")
    visit("partition", node, where, group)
    return type(node)(
        {name: _walk(sub, visit, where + ("inner_states", name), name) for name, sub in node.inner_states.items()}
    )
  if isinstance(node, optax.MaskedState):
    return node._replace(inner_state=_walk(node.inner_state, visit, where + ("inner_state",), group))
  if hasattr(type(node), "_fields"):
    if not jax.tree.leaves(node):  # EmptyState and other stateless blocks
      return node
    raise TypeError(
        f"torch_state: the optimizer state holds a {type(node).__module__}.{type(node).__qualname__}, which has no "
        "torch counterpart registered "
        "(gcj.torch_state.register_state_converter). The bridge knows: "
        f"{', '.join(sorted(t.__name__ for t in _CONVERTERS))}."
    )
  if isinstance(node, (tuple, list)):
    return type(node)(_walk(x, visit, where + (i,), group) for i, x in enumerate(node))
  if isinstance(node, dict):
    return {k: _walk(v, visit, where + (k,), group) for k, v in node.items()}
  raise TypeError(f"torch_state: unexpected {type(node).__name__} in the optimizer state at {where}.")


def _collect(state: Any) -> tuple[list[_Found], list[_Found], Optional[list[Hashable]]]:
  blocks: list[_Found] = []
  injects: list[_Found] = []
  partitions: list[list[Hashable]] = []

  def visit(kind, node, where, group):
    if kind == "block":
      blocks.append(_Found(where, node, group))
    elif kind == "inject":
      injects.append(_Found(where, node, group))
    else:
      partitions.append(list(node.inner_states))
    return node

  _walk(state, visit)
  if len(partitions) > 1:
    raise TypeError("torch_state: the optimizer state holds several partitions; torch has one list of param groups.")
  return blocks, injects, (partitions[0] if partitions else None)


def _replace(state: Any, changes: Mapping[tuple, Mapping[str, Any]]) -> Any:
  return _walk(state, lambda kind, node, where, group: node._replace(**changes[where]) if where in changes else node)


# ----------------------------------------------------------------------------------------------------------------------
# What `tx` is: its groups, their leaves, blocks and torch optimizer.


@dataclasses.dataclass
class _Group:
  name: Optional[Hashable]
  members: list[int]
  blocks: list[_Found]
  injects: list[_Found]
  optimizer: TorchOptimizer
  kwargs: Optional[dict[str, Any]]  # the factory's bound arguments, None when unknown
  fixed: Mapping[str, Any]

  def label(self) -> str:
    return "the optimizer" if self.name is None else f"param group {self.name!r}"

  def block_map(self) -> dict[type, Any]:
    return {type(f.state): f.state for f in self.blocks}


@dataclasses.dataclass
class _Plan:
  paths: list[str]
  shapes: list[tuple[int, ...]]
  treedef: Any
  groups: list[_Group]
  global_blocks: list[_Found]
  _flat: dict[tuple, list[Any]] = dataclasses.field(default_factory=dict)

  def leaves(self, found: _Found, field: str) -> list[Any]:
    """The field's tree cut at the params' leaves (arrays, or MaskedNode for a leaf outside the block)."""
    key = (found.where, field)
    if key not in self._flat:
      self._flat[key] = self.treedef.flatten_up_to(getattr(found.state, field))
    return self._flat[key]


def _plan(tx: optax.GradientTransformation, params: PyTree, state: Any) -> _Plan:
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [jax.tree_util.keystr(path) or "<root>" for path, _ in flat]
  shapes = [tuple(np.shape(leaf)) for _, leaf in flat]
  blocks, injects, partition = _collect(state)
  spec = groups_spec(tx)
  if partition is None:
    if spec is not None:
      raise TypeError("torch_state: tx was built by gcj.param_groups, but the state holds no param groups.")
    names: list[Optional[Hashable]] = [None]
    members = {None: list(range(len(paths)))}
    global_blocks: list[_Found] = []
  else:
    if any(f.group is None for f in injects):
      raise TypeError(
          "torch_state: optax.inject_hyperparams around param groups is not supported; inject inside the groups "
          "instead: gcj.param_groups(optax.inject_hyperparams(factory), ...)."
      )
    global_blocks = [f for f in blocks if f.group is None]
    for found in global_blocks:
      if any(getattr(found.state, field) is not None for field in _CONVERTERS[type(found.state)].trees):
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
      members = _infer_members(names, blocks, treedef, paths)
  groups = []
  for name in names:
    group_blocks = [f for f in blocks if f.group == name] if name is not None else blocks
    group_injects = [f for f in injects if f.group == name]
    kwargs, fixed, described = None, {}, None
    if spec is not None:
      described, fixed, kwargs = _describe(spec.factory, spec.groups[name])
    groups.append(
        _Group(name, members[name], group_blocks, group_injects, _group_optimizer(name, group_blocks, described), kwargs,
               fixed)
    )
  return _Plan(paths, shapes, treedef, groups, global_blocks)


def _sorted_names(names: list[Hashable]) -> list[Hashable]:
  try:
    return sorted(names)
  except TypeError:
    return sorted(names, key=repr)


def _infer_members(names: list[Hashable], blocks: list[_Found], treedef: Any, paths: list[str]) -> dict:
  """Leaf membership of a partition not built by `gcj.param_groups`: read off its masked state trees."""
  members: dict[Hashable, Optional[list[int]]] = {}
  for name in names:
    members[name] = None
    for found in blocks:
      if found.group != name:
        continue
      for field in _CONVERTERS[type(found.state)].trees:
        tree = getattr(found.state, field)
        if tree is not None:
          subtrees = treedef.flatten_up_to(tree)
          members[name] = [i for i, s in enumerate(subtrees) if not isinstance(s, optax.MaskedNode)]
          break
      if members[name] is not None:
        break
  unknown = [name for name in names if members[name] is None]
  if len(unknown) == 1:
    taken = {i for m in members.values() if m is not None for i in m}
    members[unknown[0]] = [i for i in range(len(paths)) if i not in taken]
  elif unknown:
    raise TypeError(
        f"torch_state: cannot tell which leaves belong to the stateless groups {unknown}; build tx with "
        "gcj.param_groups, which records them."
    )
  return members


def _describe(factory: Callable[..., Any], kwargs: Mapping[str, Any]):
  """(TorchOptimizer, fixed torch values, bound factory arguments) of a known factory, else (None, {}, None)."""
  base = inspect.unwrap(factory)
  for optimizer in _optimizers():
    if base in optimizer.factories:
      bound = inspect.signature(base).bind(**kwargs)
      bound.apply_defaults()
      arguments = dict(bound.arguments)
      for name in optimizer.no_counterpart:
        if arguments.get(name) is not None:
          raise TypeError(
              f"torch_state: {base.__name__}({name}=...) has no torch counterpart; express it with gcj.param_groups."
          )
      fixed = {k: v for k, v in optimizer.factories[base].items() if k not in arguments}
      return optimizer, fixed, arguments
  return None, {}, None


def _group_optimizer(
    name: Optional[Hashable], blocks: list[_Found], described: Optional[TorchOptimizer]
) -> TorchOptimizer:
  seen: dict[type, int] = {}
  for found in blocks:
    seen[type(found.state)] = seen.get(type(found.state), 0) + 1
  doubled = [t.__name__ for t, n in seen.items() if n > 1]
  where = "the optimizer" if name is None else f"param group {name!r}"
  if doubled:
    raise TypeError(f"torch_state: {where} holds more than one {doubled[0]}; torch keeps one per parameter.")
  converters = [_CONVERTERS[type(f.state)] for f in blocks]
  own = {id(c.optimizer): c.optimizer for c in converters if c.optimizer is not None and not c.shared}
  shared = {id(c.optimizer): c.optimizer for c in converters if c.optimizer is not None and c.shared}
  found = list((own or shared).values())
  if len(found) > 1:
    raise TypeError(f"torch_state: {where} mixes the states of torch {found[0].name} and {found[1].name}.")
  from_state = found[0] if found else None
  if described is not None and from_state is not None and described is not from_state:
    raise TypeError(
        f"torch_state: {where} is built as torch {described.name} but its state is {from_state.name}'s."
    )
  return described or from_state or SGD


# ----------------------------------------------------------------------------------------------------------------------
# Leaves <-> torch indices, layouts.


def _indices(order: Optional[PyTree], plan: _Plan) -> list[int]:
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
  for path, entry in zip(plan.paths, entries):
    if not isinstance(entry, numbers.Integral) or isinstance(entry, bool) or entry < 0:
      raise TypeError(f"order: the entry for leaf {path} must be a non-negative int (a torch index), got {entry!r}.")
    if int(entry) in seen:
      raise ValueError(f"order: leaves {seen[int(entry)]} and {path} both have torch index {int(entry)}.")
    seen[int(entry)] = path
    indices.append(int(entry))
  return indices


def _layouts(layouts: Any, params: PyTree, plan: _Plan) -> list[Optional[Layout]]:
  if layouts is None:
    return [None] * len(plan.paths)
  if callable(layouts) and not isinstance(layouts, Layout):
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    entries = [layouts(path, leaf) for path, leaf in flat]
  else:
    try:
      entries = plan.treedef.flatten_up_to(layouts)
    except (ValueError, TypeError) as err:
      raise ValueError(
          f"layouts must have the params' structure (or be a function (path, leaf) -> layout): {err}"
      ) from None
  result = []
  for path, entry in zip(plan.paths, entries):
    if entry is None or isinstance(entry, Layout):
      result.append(entry)
    elif isinstance(entry, Sequence) and all(isinstance(a, numbers.Integral) for a in entry):
      try:
        result.append(Layout.permutation(entry))
      except ValueError as err:
        raise ValueError(f"layouts: leaf {path}: {err}") from None
    else:
      raise TypeError(f"layouts: the entry for leaf {path} must be None, a tuple of axes or a Layout, got {entry!r}.")
  return result


# ----------------------------------------------------------------------------------------------------------------------
# Values.


def _is_torch_tensor(value: Any) -> bool:
  return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def _to_numpy(value: Any) -> np.ndarray:
  """A host copy of a torch tensor, NumPy/JAX array or number (torch is not imported)."""
  if _is_torch_tensor(value):
    tensor = value.detach().cpu()
    if str(tensor.dtype) == "torch.bfloat16":  # NumPy has no bfloat16; float32 holds it exactly
      tensor = tensor.float()
    return np.array(tensor.numpy(), copy=True)
  return np.array(value, copy=True)


def _number(value: Any) -> Any:
  """A hyperparameter as a plain Python value (tensors and arrays to float, tuples elementwise)."""
  if isinstance(value, (tuple, list)):
    return tuple(_number(v) for v in value)
  if isinstance(value, (bool, str)) or value is None:
    return value
  if _is_torch_tensor(value) or isinstance(value, (np.ndarray, np.generic, jax.Array)):
    array = _to_numpy(value)
    return bool(array) if array.dtype == np.bool_ else float(array)
  return value


def _same(a: Any, b: Any) -> bool:
  a, b = _number(a), _number(b)
  if isinstance(a, tuple) or isinstance(b, tuple):
    return isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) and all(map(_same, a, b))
  if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
    return a == b
  if isinstance(a, numbers.Real) and isinstance(b, numbers.Real):
    return math.isclose(float(a), float(b), rel_tol=_RTOL)
  return a == b


def _as_step(value: Any, path: str) -> int:
  array = _to_numpy(value)
  if array.size != 1:
    raise ValueError(f"the torch state's 'step' for leaf {path} must be a scalar, got shape {array.shape}.")
  step = float(array.reshape(()))
  if not (math.isfinite(step) and step >= 0 and step == int(step)):
    raise ValueError(f"the torch state's 'step' for leaf {path} must be a non-negative whole number, got {step!r}.")
  return int(step)


def _put(value: np.ndarray, like: Any) -> jax.Array:
  """`value` with `like`'s dtype and placement (committed to its sharding only if `like` is, so that a
  jitted step sees the same kind of array as `tx.init`'s and does not compile again)."""
  value = np.asarray(value).astype(like.dtype)
  if getattr(like, "committed", False):
    return jax.device_put(value, like.sharding)
  return jax.device_put(value)


def _counter(value: int, like: Any, what: str) -> jax.Array:
  if value > np.iinfo(np.dtype(like.dtype)).max:
    raise ValueError(f"torch_state: the step count {value} does not fit {what} ({like.dtype}).")
  return _put(np.asarray(value), like)


# ----------------------------------------------------------------------------------------------------------------------
# Hyperparameters.


def _torch_key_of(optimizer: TorchOptimizer, argument: str) -> tuple[str, Optional[int]]:
  """The torch key (and position inside it, for `betas`) of a factory argument."""
  for key, names in optimizer.renames.items():
    if argument in names:
      return key, (names.index(argument) if len(names) > 1 else None)
  return argument, None


def _described_values(group: _Group, step: Optional[int]) -> dict[str, Any]:
  """torch's group values of the significant keys, from the factory arguments (lr schedules evaluated at `step`)."""
  if group.kwargs is None:
    return {}
  values: dict[str, Any] = {}
  for key in group.optimizer.keys:
    if key in group.fixed:
      values[key] = group.fixed[key]
      continue
    names = group.optimizer.renames.get(key, (key,))
    if not all(n in group.kwargs for n in names):
      continue
    parts = []
    for n in names:
      value = group.kwargs[n]
      if callable(value):
        if step is None:
          raise ValueError(
              f"torch_state: {group.label()} has a schedule for {n!r}; its value needs the step count, which this "
              "state does not record: pass step=."
          )
        value = value(jnp.asarray(step, jnp.int32))
      parts.append(_number(value))
    values[key] = tuple(parts) if len(parts) > 1 else parts[0]
  return values


def _injected(found: _Found, optimizer: TorchOptimizer) -> dict[str, dict[Optional[int], Any]]:
  """torch key -> {position: value} of the injected hyperparameters of one inject state."""
  values: dict[str, dict[Optional[int], Any]] = {}
  for name, value in found.state.hyperparams.items():
    key, position = _torch_key_of(optimizer, name)
    values.setdefault(key, {})[position] = _number(value)
  return values


def _merge_injected(
    values: dict[str, Any], injected: Mapping[str, Mapping[Optional[int], Any]], optimizer: TorchOptimizer
) -> dict[str, Any]:
  """`values` with the injected ones (current) put in; a described value equal to float32 rounding is kept."""
  values = dict(values)
  for key, parts in injected.items():
    if None in parts:
      if not (key in values and _same(values[key], parts[None])):
        values[key] = parts[None]
      continue
    size = len(optimizer.renames.get(key, ())) or max(parts) + 1
    current = list(values[key]) if isinstance(values.get(key), tuple) else [None] * size
    for position, value in parts.items():
      if position < len(current) and not (current[position] is not None and _same(current[position], value)):
        current[position] = value
    values[key] = tuple(current)
  return values


def _check_kind(group: _Group, torch_group: Mapping[str, Any], index: int) -> None:
  optimizer = group.optimizer
  missing = [k for k, default in optimizer.keys.items() if default is REQUIRED and k not in torch_group]
  foreign = sorted(
      {k for other in _optimizers() for k in other.keys if k not in optimizer.keys and k in torch_group}
  )
  if missing or foreign:
    problem = f"lacks {missing}" if missing else f"has {foreign}"
    raise ValueError(
        f"from_torch_state_dict: param_groups[{index}] {problem}: it is not a torch {optimizer.name} state_dict, "
        f"which {group.label()} of tx is."
    )


def _check_structure(group: _Group, values: Mapping[str, Any], where: str) -> None:
  if group.optimizer.structure is None:
    return
  for key, present in group.optimizer.structure(group.block_map()).items():
    value = values.get(key, group.optimizer.keys.get(key))
    if value is REQUIRED or value is None:
      continue
    if bool(_number(value)) != present:
      raise ValueError(
          f"{where}: {key}={_number(value)!r}, but {group.label()} of tx "
          f"{'keeps' if present else 'keeps no'} state for it (built with a different {key}?)."
      )


# ----------------------------------------------------------------------------------------------------------------------
# torch -> gradcore_jax.


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
  plan = _plan(tx, params, target)
  torch_state, torch_groups = _read_state_dict(state_dict)
  indices = _indices(order, plan)
  layout_list = _layouts(layouts, params, plan)
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
    _check_structure(group, torch_group, f"from_torch_state_dict: param_groups[{j}]")
    entries = {i: torch_state.get(indices[i], {}) for i in group.members}
    t = _import_group(group, entries, step, plan, layout_list, changes)
    if t is not None:
      steps.append(t)
    _check_values(group, torch_group, j, t, strict)
    for found in group.injects:
      changes[found.where] = _import_inject(found, group, torch_group, t)
  if plan.global_blocks:
    t = _global_step(steps, step, "from_torch_state_dict")
    for found in plan.global_blocks:
      changes[found.where] = {f: _counter(t, getattr(found.state, f), f"{type(found.state).__name__}.{f}")
                              for f in _CONVERTERS[type(found.state)].counters}
  return _replace(target, changes)


def _read_state_dict(state_dict: Any) -> tuple[dict[int, Mapping[str, Any]], list[Mapping[str, Any]]]:
  if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
    raise TypeError("from_torch_state_dict: state_dict must be a mapping with 'state' and 'param_groups' (torch's "
                    "optimizer.state_dict()).")
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


def _match_groups(plan: _Plan, indices: list[int], torch_groups: list[Mapping[str, Any]]) -> list[tuple[_Group, int]]:
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
  taken: dict[int, _Group] = {}
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


def _expected_keys(group: _Group, i: int, plan: _Plan) -> set[str]:
  keys = set()
  for found in group.blocks:
    converter = _CONVERTERS[type(found.state)]
    for field, key in converter.trees.items():
      tree = getattr(found.state, field)
      if tree is not None and not isinstance(plan.leaves(found, field)[i], optax.MaskedNode):
        keys.add(key)
    keys.update(converter.scalars.values())
  if keys and group.optimizer.records_step:
    keys.add("step")
  return keys


def _import_group(group, entries, step, plan, layouts, changes) -> Optional[int]:
  """Fills `changes` for the group's blocks; returns the group's step count (None if unknown)."""
  expected = {i: _expected_keys(group, i, plan) for i in group.members}
  stepped = {i: bool(entries[i]) for i in group.members}
  for i in group.members:
    present = set(entries[i])
    if not expected[i] and present:
      raise ValueError(
          f"from_torch_state_dict: the state_dict has {sorted(present)} for leaf {plan.paths[i]}, but "
          f"{group.label()} of tx keeps no state for it: another optimizer's state_dict, or other hyperparameters."
      )
    if not present:
      continue
    if present != expected[i]:
      missing, extra = sorted(expected[i] - present), sorted(present - expected[i])
      raise ValueError(
          f"from_torch_state_dict: leaf {plan.paths[i]}: "
          + (f"the state_dict lacks {missing} " if missing else "")
          + (f"the state_dict has {extra}, which tx does not keep " if extra else "")
          + f"(tx is torch {group.optimizer.name}: another optimizer's state_dict, or amsgrad/centered/momentum differ)."
      )
  holders = [i for i in group.members if expected[i]]
  with_state = [i for i in holders if stepped[i]]
  if with_state and len(with_state) != len(holders):
    empty = next(i for i in holders if not stepped[i])
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
    if with_state:
      values = {i: _as_step(entries[i]["step"], plan.paths[i]) for i in with_state}
      recorded = values[with_state[0]]
      for i, value in values.items():
        if value != recorded:
          raise ValueError(
              f"from_torch_state_dict: leaf {plan.paths[i]} is at step {value} but leaf "
              f"{plan.paths[with_state[0]]} at step {recorded}; gradcore_jax keeps one step count per group."
          )
    else:
      recorded = 0
    if step is not None and step != recorded:
      raise ValueError(f"from_torch_state_dict: step={step}, but torch's state of {group.label()} is at step {recorded}.")
  t = recorded if recorded is not None else step
  presence = None
  if t is None and holders:
    presence = bool(with_state)
    if not presence:
      t = 0
  if t is not None and holders and group.optimizer.records_step is False and bool(with_state) != (t > 0):
    raise ValueError(
        f"from_torch_state_dict: step={t}, but torch's buffers of {group.label()} "
        f"{'exist' if with_state else 'do not exist'}."
    )
  for found in group.blocks:
    converter = _CONVERTERS[type(found.state)]
    fields: dict[str, Any] = {}
    for field in converter.counters:
      what = f"{type(found.state).__name__}.{field}"
      if t is not None:
        value = t
      elif field in converter.presence_counters and not _has_schedules(group):
        value = 1
      else:
        raise ValueError(
            f"from_torch_state_dict: {group.label()} keeps a step count ({what}) that torch "
            f"{group.optimizer.name}'s state does not record: pass step= (e.g. the scheduler's last_epoch)."
        )
      fields[field] = _counter(value, getattr(found.state, field), what)
    if with_state:
      for field, key in converter.trees.items():
        if getattr(found.state, field) is not None:
          fields[field] = _import_tree(converter, found, field, key, with_state, entries, plan, layouts)
      for field, key in converter.scalars.items():
        fields[field] = _import_scalar(field, key, getattr(found.state, field), with_state, entries, plan)
    changes[found.where] = fields
  return t


def _has_schedules(group: _Group) -> bool:
  """Whether a described group has a schedule (momentum, b1, lr, ...): its counters must then be exact steps."""
  return group.kwargs is not None and any(callable(v) for v in group.kwargs.values())


def _import_tree(converter, found, field, key, members, entries, plan, layouts):
  subtrees = list(plan.leaves(found, field))
  for i in members:
    like = subtrees[i]
    if isinstance(like, optax.MaskedNode):
      continue
    torch_value = _to_numpy(entries[i][key])
    try:
      value = converter.import_leaf(field, torch_value, layouts[i], like)
    except _LayoutError as err:
      raise ValueError(f"from_torch_state_dict: leaf {plan.paths[i]}, '{key}': {err}.") from None
    if value is None:
      layout = "" if layouts[i] is None else f" after the layout ({layouts[i].name})"
      raise ValueError(
          f"from_torch_state_dict: leaf {plan.paths[i]} has shape {tuple(like.shape)}, but torch's '{key}' for it has "
          f"shape {torch_value.shape}{layout}: a wrong `order`, or a layout to give in `layouts`."
      )
    subtrees[i] = _put(value, like)
  return plan.treedef.unflatten(subtrees)


def _import_scalar(field, key, like, members, entries, plan):
  values = {i: _to_numpy(entries[i][key]).reshape(()) for i in members}
  first = members[0]
  for i, value in values.items():
    if value != values[first]:
      raise ValueError(
          f"from_torch_state_dict: '{key}' is {float(value)!r} for leaf {plan.paths[i]} but "
          f"{float(values[first])!r} for leaf {plan.paths[first]}; gradcore_jax keeps one per group."
      )
  return _put(values[first], like)


def _import_inject(found: _Found, group: _Group, torch_group: Mapping[str, Any], t: Optional[int]) -> dict[str, Any]:
  state = found.state
  if t is None:
    raise ValueError(
        f"from_torch_state_dict: optax.inject_hyperparams in {group.label()} keeps a step count that torch "
        f"{group.optimizer.name}'s state does not record: pass step=."
    )
  hyperparams = dict(state.hyperparams)
  for name, like in state.hyperparams.items():
    key, position = _torch_key_of(group.optimizer, name)
    if key not in torch_group:
      continue
    value = _number(torch_group[key])
    if position is not None:
      value = value[position]
    hyperparams[name] = _put(np.asarray(value), like)
  fields: dict[str, Any] = {
      "count": _counter(t, state.count, "the inject_hyperparams count"),
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
          count=_counter(t, schedule_state.count, f"the schedule count of {name!r}")
      )
    fields["hyperparams_states"] = schedule_states
  return fields


def _check_values(group: _Group, torch_group: Mapping[str, Any], j: int, t: Optional[int], strict: bool) -> None:
  if group.kwargs is None:
    return
  injected = {key for found in group.injects for key in _injected(found, group.optimizer)}
  expected = _described_values(group, t)
  for key, value in expected.items():
    if key in injected:
      continue
    theirs = torch_group.get(key, group.optimizer.keys[key])
    if theirs is REQUIRED or _same(value, theirs):
      continue
    message = (
        f"from_torch_state_dict: param_groups[{j}] has {key}={_number(theirs)!r}, but {group.label()} of tx has "
        f"{value!r}" + (f" at step {t}" if key == "lr" and t is not None else "") + "."
    )
    if strict:
      raise ValueError(message + " Pass strict=False to continue with tx's values.")
    warnings.warn(message + " Continuing with tx's values.", UserWarning, stacklevel=3)


def _global_step(steps: list[int], step: Optional[int], where: str) -> int:
  known = sorted(set(steps) | ({step} if step is not None else set()))
  if len(known) > 1:
    raise ValueError(f"{where}: the groups are at different steps {known}, but tx keeps one step count for all.")
  if not known:
    raise ValueError(f"{where}: tx keeps a step count that the torch state does not record: pass step=.")
  return known[0]


# ----------------------------------------------------------------------------------------------------------------------
# gradcore_jax -> torch.


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
  keeps no state (except Adagrad's), and none is written.

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
      without momentum, Adadelta, Adagrad at a constant rate), where torch records one.
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
  plan = _plan(tx, params, opt_state)
  indices = _indices(order, plan)
  layout_list = _layouts(layouts, params, plan)
  next_values = _next_injected(tx, opt_state, params, plan)
  torch = None if as_numpy else _import_torch()
  global_counts = [
      (int(getattr(f.state, field)), f"{type(f.state).__name__}.{field}")
      for f in plan.global_blocks
      for field in _CONVERTERS[type(f.state)].counters
  ]
  ordered = sorted(plan.groups, key=lambda g: min(indices[i] for i in g.members) if g.members else -1)
  templates = _templates(param_groups, len(ordered))
  state_out: dict[int, dict[str, Any]] = {}
  groups_out = []
  for position, group in enumerate(ordered):
    t = _export_step(group, global_counts, step)
    values = _export_values(group, t, templates[position], next_values)
    if t is not None and (t > 0 or group.optimizer.eager):
      for i in group.members:
        entry = _export_leaf(group, i, t, plan, layout_list, torch)
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
    raise ImportError("to_torch_state_dict builds torch tensors and needs torch; pass as_numpy=True without it.") from err
  return torch


def _templates(param_groups: Any, n: int) -> list[Mapping[str, Any]]:
  if param_groups is None:
    return [{}] * n
  if isinstance(param_groups, Mapping):
    return [param_groups] * n
  templates = list(param_groups)
  if len(templates) != n or not all(isinstance(t, Mapping) for t in templates):
    raise ValueError(f"to_torch_state_dict: param_groups must be one dict or a list of {n} dicts (one per group).")
  return templates


def _next_injected(tx, opt_state, params, plan) -> dict[tuple, dict[str, Any]]:
  """The injected hyperparameters the next update will use (schedules advanced), by state position."""
  scheduled = any(getattr(f.state, "hyperparams_states", None) for g in plan.groups for f in g.injects)
  if not scheduled:
    return {f.where: dict(f.state.hyperparams) for g in plan.groups for f in g.injects}
  _, probe = tx.update(jax.tree.map(jnp.zeros_like, params), opt_state, params)
  _, injects, _ = _collect(probe)
  return {f.where: dict(f.state.hyperparams) for f in injects}


def _export_step(group: _Group, global_counts: list[tuple[int, str]], step: Optional[int]) -> Optional[int]:
  counts = list(global_counts)
  started = []  # presence counters where torch records no step: only "stepped or not" is sure (see import)
  for found in group.blocks:
    converter = _CONVERTERS[type(found.state)]
    for field in converter.counters:
      value = (int(getattr(found.state, field)), f"{type(found.state).__name__}.{field}")
      weak = field in converter.presence_counters and not group.optimizer.records_step
      (started if weak else counts).append(value)
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
  needs = group.optimizer.records_step and any(
      getattr(f.state, field) is not None for f in group.blocks for field in _CONVERTERS[type(f.state)].trees
  )
  if needs:
    raise ValueError(
        f"to_torch_state_dict: {group.label()} keeps no step count, but torch {group.optimizer.name} records "
        "'step': pass step= (the number of steps taken)."
    )
  return None


def _export_values(group: _Group, t: Optional[int], template: Mapping[str, Any], next_values) -> dict[str, Any]:
  optimizer = group.optimizer
  values = {k: (_number(v) if k in optimizer.keys else v) for k, v in template.items() if k != "params"}
  values.update(_described_values(group, t))
  for found in group.injects:
    injected: dict[str, dict[Optional[int], Any]] = {}
    for name, value in next_values.get(found.where, {}).items():
      key, position = _torch_key_of(optimizer, name)
      injected.setdefault(key, {})[position] = _number(value)
    values = _merge_injected(values, injected, optimizer)
  if optimizer.structure is not None:
    for key, present in optimizer.structure(group.block_map()).items():
      if key not in values and isinstance(optimizer.keys.get(key), bool):
        values[key] = present
  if template:  # torch's values: a key it lacks means torch's default, as torch's load_state_dict reads it
    for key, default in optimizer.keys.items():
      if default is not REQUIRED:
        values.setdefault(key, default)
  _check_structure(group, values, "to_torch_state_dict")
  for key, value in optimizer.extras.items():
    values.setdefault(key, value)
  missing = [k for k in optimizer.keys if k not in values or (isinstance(values[k], tuple) and None in values[k])]
  if missing:
    raise ValueError(
        f"to_torch_state_dict: torch {optimizer.name}'s {missing} of {group.label()} are unknown: tx keeps no record "
        "of its hyperparameters. Build it with gcj.param_groups(...) or pass "
        "param_groups=torch_optimizer.state_dict()['param_groups']."
    )
  return values


def _export_leaf(group: _Group, i: int, t: int, plan: _Plan, layouts, torch) -> dict[str, Any]:
  entry: dict[str, Any] = {}
  for found in group.blocks:
    converter = _CONVERTERS[type(found.state)]
    for field, key in converter.trees.items():
      if getattr(found.state, field) is None:
        continue
      leaf = plan.leaves(found, field)[i]
      if isinstance(leaf, optax.MaskedNode):
        continue
      try:
        value = converter.export_leaf(field, _to_numpy(leaf), layouts[i])
      except _LayoutError as err:
        raise ValueError(f"to_torch_state_dict: leaf {plan.paths[i]}, '{key}': {err}.") from None
      entry[key] = _tensor(value, torch)
    for field, key in converter.scalars.items():
      entry[key] = _scalar_tensor(_to_numpy(getattr(found.state, field)), torch)
  if entry and group.optimizer.records_step:
    entry["step"] = _scalar_tensor(np.asarray(float(t)), torch)
  return entry


def _tensor(value: np.ndarray, torch) -> Any:
  value = np.array(value, copy=True)  # torch updates its state in place: never alias a JAX buffer
  if torch is None:
    return value
  if value.dtype.name == "bfloat16":
    return torch.from_numpy(value.astype(np.float32)).to(torch.bfloat16)
  return torch.from_numpy(value)


def _scalar_tensor(value: np.ndarray, torch) -> Any:
  """A 0-d float in torch's scalar dtype (the default dtype), as torch keeps 'step' and 'mu_product'."""
  if torch is None:
    return np.array(value, copy=True)
  return torch.tensor(float(value), dtype=torch.get_default_dtype())
