"""The registry: which block-state types the bridge knows, and the torch optimizer each belongs to.

A `TorchOptimizer` describes a `torch.optim` class (its param-group keys, whether it
records `'step'`, ...); a `StateConverter` maps one gradcore_jax block-state type onto
that optimizer's per-parameter state (`ScaleByAdamState.mu` <-> `'exp_avg'`, ...).
`register_state_converter` is all a new optimizer needs to do.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import Callable
from typing import Mapping
from typing import Optional

import numpy as np

from gradcore_jax.torch_state._layout import Layout


class _Required:
  def __repr__(self) -> str:
    return "REQUIRED"


REQUIRED: Any = _Required()
"""Marks a torch param-group key that has no default (every torch state_dict has it)."""

# torch param-group key -> the gradcore_jax factory arguments it is made of.
_RENAMES: Mapping[str, tuple[str, ...]] = {"lr": ("learning_rate",), "betas": ("b1", "b2")}


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
    zeros_at_first_step: torch records no step and creates the per-parameter state as
      zeros at the first step (Muon's momentum buffer), so zeros written before it change
      nothing: the state is written even when the step count is unknown.
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
  zeros_at_first_step: bool = False
  factories: Mapping[Callable[..., Any], Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  structure: Optional[Callable[[Mapping[type, Any]], Mapping[str, bool]]] = None
  renames: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=lambda: dict(_RENAMES))
  no_counterpart: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)
class StateConverter:
  """How one block-state type maps onto torch's per-parameter state.

  The default conversion copies each params-shaped field leaf by leaf to one torch key
  (through the leaf's layout); a leaf that is None in the field (Adafactor keeps a row
  statistic for matrices only) has no such key in torch. Subclass and override
  `import_leaf`/`export_leaf` for fields torch stores in another shape.

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


def is_registered(state: Any) -> bool:
  """Whether `state`'s type has a registered converter."""
  return type(state) in _CONVERTERS


def converter_of(state: Any) -> StateConverter:
  """The converter registered for `state`'s type."""
  return _CONVERTERS[type(state)]


def registered_type_names() -> list[str]:
  """The names of the registered state types, sorted (for messages)."""
  return sorted(t.__name__ for t in _CONVERTERS)


def registered_optimizers() -> list[TorchOptimizer]:
  """The distinct torch optimizers of the registered converters, in registration order."""
  found: dict[int, TorchOptimizer] = {}
  for converter in _CONVERTERS.values():
    if converter.optimizer is not None:
      found.setdefault(id(converter.optimizer), converter.optimizer)
  return list(found.values())
