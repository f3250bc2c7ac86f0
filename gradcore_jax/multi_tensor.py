"""`multi_tensor(tx)`: runs an elementwise optimizer on a few flat buffers instead of many leaves.

A model with hundreds of small leaves (biases, norm scales, small kernels) pays for every
leaf: each one adds its own fused loops to the compiled update (three for Adam), its own
launches at run time, and its own Python tracing. `multi_tensor(tx)` groups the small
leaves by dtype, concatenates each group into one flat buffer, runs `tx` once on the flat
buffers, and slices the updates back into the gradient's tree. Large leaves (more than
`max_leaf_size` elements) are passed to `tx` as they are: for them a concatenation would
add a full copy and save nothing.

Semantics. `init` and `update` keep `tx`'s semantics: same updates, tree in, tree out,
params only passed on when given. This holds for transformations that act on each
element independently, given scalars shared by the whole tree (step counts, learning
rates, bias corrections, global norms): every `gradcore_jax` optimizer and Optax's
`adam`, `sgd`, `clip_by_global_norm`, ... In a jitted step the updates of every
`gradcore_jax` optimizer are bitwise equal to `tx`'s (each element goes through the same
float operations; tested on a 130-leaf tree over 25 steps). They agree to float rounding
only (a rare last bit) when hyperparameters are arrays (`optax.inject_hyperparams`), as
XLA then compiles short and long loops a little differently, and when `tx` reduces over
the tree (a global norm sums in another order), and op by op outside `jit`, where XLA
rewrites some operations by operand shape (a division by a scalar becomes a
multiplication by its reciprocal, except on 0-d arrays). Transformations
with per-leaf reductions (LAMB/LARS trust ratios, per-leaf clipping) or with masks that
name the tree's leaves (`optax.masked`, `adamw(mask=...)`) would see the flat buffers
instead: wrap such masks *around* `multi_tensor`, not inside it. Two gradcore_jax
optimizers are not elementwise and are refused with a ValueError naming them:
`adafactor` (second moments factored over each leaf's last two axes, a step scaled by each
leaf's RMS) and `muon` (each leaf orthogonalised as a matrix); packing would change their
math, and they have no small leaves to gain from it (Muon takes 2-D leaves only, and
Adafactor's state for a vector is as small as the vector).

State layout (differs from `tx`'s). `MultiTensorState(inner, offsets, params_signature)`:

* `inner` is `tx`'s state for the packed tree `(flat_buffers, large_leaves)`: a tuple of
  one 1-D buffer per group, then a tuple of the large leaves in tree order. Adam's
  `mu`, for example, is `((flat_f32,), (w1, w2))`.
* `offsets` holds, for each group, one int32 scalar per packed leaf: where the leaf
  starts in its group's buffer. They are data, not Python constants, on purpose: XLA's
  CPU compiler reuses one compiled kernel for all same-shaped slicing loops only when
  their offsets are runtime values; with constant offsets every leaf gets a kernel of
  its own, which costs more compile time than the packing saves.
* `params_signature` is static (a pytree node without leaves): the shapes and dtypes of
  the leaves of the params `init` was given, in tree order.

The layout is a pure function of the tree structure, shapes and dtypes, recomputed from
the params in `init` and from the gradients in `update`; they must agree. `update` checks
what the wrapped optimizer checks, before packing (where a `(4, 1)` gradient and a
`(1, 4)` param would fill the same 4 slots, and `tx` could no longer see the difference):
the gradients (and the params, when given) must have the leaves, shapes and dtypes
recorded in `params_signature`, or a ValueError names the first leaf path that differs,
at trace time. A state that is not a `MultiTensorState` (e.g. the wrapped optimizer's own) is a
TypeError naming `state`.

`None` gradients and masks: `optax.MaskedNode` leaves (from `optax.masked`) are empty
subtrees and pass through; `None` leaves are never packed and reach `tx` as they are,
so a `None` gradient of a large leaf gets `tx`'s own treatment (a `None` update and an
untouched state for `gradcore_jax` optimizers). A `None` gradient for a small leaf
cannot be cut out of its group's buffer without changing the other leaves' results: it
raises a ValueError naming the leaf (freeze leaves with `optax.masked` or
`optax.multi_transform` around `multi_tensor`). Leaves with an explicit sharding in
their type (`jax.sharding.AxisType.Explicit`) are never packed; with shardings that
the type does not show (automatic mode), keep sharded leaves above `max_leaf_size`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any
from typing import Hashable
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradcore_jax import transforms
from gradcore_jax._typing import Array
from gradcore_jax._typing import PyTree

__all__ = ["DEFAULT_MAX_LEAF_SIZE", "MultiTensorState", "ParamsSignature", "multi_tensor"]

DEFAULT_MAX_LEAF_SIZE = 1 << 13
"""Leaves with more elements are left as they are: measured on CPU (`benchmarks`' packing
sweep), packing pays at run time up to between 4K and 16K elements per leaf, and at
compile time beyond."""


# States of blocks whose rule depends on each leaf's shape or reduces over whole leaves.
_LEAF_SHAPED_STATES: dict[type, str] = {
  transforms.ScaleByAdafactorState: (
    "gcj.adafactor (transforms.scale_by_adafactor): it factors each leaf's second moment over the "
    "leaf's last two axes and scales each leaf's step by that leaf's RMS"
  ),
  transforms.ScaleByMuonState: "gcj.muon (transforms.scale_by_muon): it orthogonalises each leaf as a matrix",
}


def _refuse_leaf_shaped(state: Any) -> None:
  """Raises a ValueError naming the first block in `state` whose math packing would change."""
  kinds = tuple(_LEAF_SHAPED_STATES)
  for node in jax.tree.leaves(state, is_leaf=lambda node: isinstance(node, kinds)):
    if isinstance(node, kinds):
      raise ValueError(
        f"multi_tensor cannot wrap {_LEAF_SHAPED_STATES[type(node)]}: packing leaves into flat buffers "
        "would change the result. Use that optimizer without multi_tensor."
      )


@jax.tree_util.register_static
class ParamsSignature:
  """The shapes and dtypes of the params' leaves that `init` was given, in tree order (static: no leaves).

  Compared at trace time with the gradients and params of every `update`. Only the
  sequence of leaves counts, not the containers: Flax NNX's `Optimizer` initialises with
  `Variable`-wrapped params and updates with plain arrays. The leaf paths are kept for
  error messages only. The hash is computed once, as `jit` hashes the state's tree
  structure on every call.

  Attributes:
    leaves: one `(shape, dtype name)` pair per leaf, in tree order; `((), "None")` for a
      `None` leaf.
    paths: each leaf's path as `jax.tree_util.keystr` writes it (`"<root>"` for a bare leaf).

  Args:
    tree: the params (arrays, tracers or `jax.ShapeDtypeStruct`s; `None` leaves count).
  """

  __slots__ = ("_hash", "leaves", "paths")

  def __init__(self, tree: PyTree) -> None:
    with_paths = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)[0]
    self.paths = tuple(jax.tree_util.keystr(path) or "<root>" for path, _ in with_paths)
    self.leaves = tuple(_shape_and_dtype(leaf) for _, leaf in with_paths)
    self._hash = hash(self.leaves)

  def __eq__(self, other: object) -> bool:
    if self is other:
      return True
    return isinstance(other, ParamsSignature) and self._hash == other._hash and self.leaves == other.leaves

  def __hash__(self) -> int:
    return self._hash

  def __repr__(self) -> str:
    return f"ParamsSignature({len(self.leaves)} leaves)"


def _shape_and_dtype(leaf: Any) -> tuple[tuple[int, ...], str]:
  if leaf is None:
    return (), "None"
  aval = jax.typeof(leaf)
  return tuple(aval.shape), str(aval.dtype)


class MultiTensorState(NamedTuple):
  """`tx`'s state over the packed tree, each packed leaf's offset in its group's buffer, the params' signature.

  Attributes:
    inner: the wrapped optimizer's state for the packed tree `(flat_buffers, large_leaves)`.
    offsets: per dtype group, one int32 scalar per packed leaf: where the leaf starts in the
      group's flat buffer.
    params_signature: the `ParamsSignature` of the params `init` was given (static).
  """

  inner: optax.OptState
  offsets: tuple[tuple[Array, ...], ...]
  params_signature: Any  # a ParamsSignature: typed Any so that the state stays an optax.OptState (an array tree)


@dataclasses.dataclass(frozen=True)
class _Group:
  """Leaves of one dtype packed into one flat buffer, in tree order."""

  indices: tuple[int, ...]  # positions among the tree's leaves
  shapes: tuple[tuple[int, ...], ...]
  offsets: tuple[int, ...]
  size: int


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Where every leaf of a tree goes: into a group's buffer, or through as a large leaf."""

  treedef: Any
  groups: tuple[_Group, ...]
  large: tuple[int, ...]  # positions of the leaves passed through unchanged

  def pack(self, leaves: list[Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The packed tree `(flat_buffers, large_leaves)` of `leaves` (arrays or shape structs)."""
    flats = tuple(_concatenate([leaves[i] for i in group.indices], group.size) for group in self.groups)
    return flats, tuple(leaves[i] for i in self.large)

  def unpack(self, packed: PyTree, offsets: tuple[tuple[Array, ...], ...]) -> PyTree:
    """The inverse of `pack` (`packed`: a tree shaped as `pack` returns), slicing buffers at the runtime `offsets`."""
    flats, large = packed
    leaves: list[Any] = [None] * self.size
    for group, flat, starts in zip(self.groups, flats, offsets, strict=True):
      for index, shape, start in zip(group.indices, group.shapes, starts, strict=True):
        part = jax.lax.dynamic_slice(flat, (start,), (math.prod(shape),), allow_negative_indices=False)
        leaves[index] = jax.lax.reshape(part, shape)
    for index, leaf in zip(self.large, large, strict=True):
      leaves[index] = leaf
    return jax.tree.unflatten(self.treedef, leaves)

  @property
  def size(self) -> int:
    return self.treedef.num_leaves

  def group_sizes(self) -> list[int]:
    return [len(group.indices) for group in self.groups]


def _concatenate(leaves: list[Any], size: int) -> Any:
  """One flat buffer holding `leaves` raveled; a shape struct if any leaf is only a shape."""
  if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves):
    return jax.ShapeDtypeStruct((size,), leaves[0].dtype)
  return jax.lax.concatenate([jax.lax.reshape(leaf, (math.prod(leaf.shape),)) for leaf in leaves], 0)


def _group_key(leaf: Any, max_leaf_size: int) -> Optional[Hashable]:
  """The group a leaf packs into, or None for a leaf passed through unchanged."""
  if leaf is None:
    return None
  aval = jax.typeof(leaf)
  if math.prod(aval.shape) > max_leaf_size or _explicitly_sharded(aval):
    return None
  return np.dtype(aval.dtype)


def _explicitly_sharded(aval: Any) -> bool:
  sharding = getattr(aval, "sharding", None)
  spec = getattr(sharding, "spec", None)
  return spec is not None and any(axis is not None for axis in spec)


def _is_none(x: Any) -> bool:
  return x is None


def _layout(tree: PyTree, max_leaf_size: int) -> tuple[_Layout, list[Any]]:
  """The layout of `tree` and its leaves (`None` counts as a leaf; groups ordered by first leaf)."""
  leaves, treedef = jax.tree.flatten(tree, is_leaf=_is_none)
  members: dict[Hashable, list[int]] = {}
  large = []
  for index, leaf in enumerate(leaves):
    key = _group_key(leaf, max_leaf_size)
    if key is None:
      large.append(index)
    else:
      members.setdefault(key, []).append(index)
  groups = tuple(_make_group(indices, leaves) for indices in members.values())
  return _Layout(treedef, groups, tuple(large)), leaves


def _make_group(indices: list[int], leaves: list[Any]) -> _Group:
  shapes = tuple(tuple(jax.typeof(leaves[i]).shape) for i in indices)
  sizes = [math.prod(shape) for shape in shapes]
  offsets = tuple(int(start) for start in np.cumsum([0] + sizes[:-1]))
  return _Group(tuple(indices), shapes, offsets, sum(sizes))


def _offset_arrays(layout: _Layout) -> tuple[tuple[Array, ...], ...]:
  return tuple(tuple(jnp.asarray(start, jnp.int32) for start in group.offsets) for group in layout.groups)


def _none_hint(updates: PyTree) -> str:
  """Names the first `None` gradient, the usual reason for a packing mismatch."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(updates, is_leaf=_is_none)[0]:
    if leaf is None:
      return (
        f" The gradient at {jax.tree_util.keystr(path) or '<root>'} is None: packed leaves share one "
        "buffer and one update, so a small leaf cannot be skipped; freeze leaves with optax.masked "
        "or optax.multi_transform around multi_tensor(tx) instead."
      )
  return ""


def _check_against_signature(tree: PyTree, signature: ParamsSignature, what: str) -> None:
  """`tree` (the gradients or the params) must have the leaves, shapes and dtypes recorded at `init`.

  Raises a ValueError naming the first leaf path that differs (a `None` gradient passes).
  """
  leaves = jax.tree.leaves(tree, is_leaf=_is_none)
  if len(leaves) == len(signature.leaves) and all(
    leaf is None or _shape_and_dtype(leaf) == recorded for leaf, recorded in zip(leaves, signature.leaves, strict=True)
  ):
    return
  where = "the params that multi_tensor(tx).init was given"
  with_paths = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)[0]
  paths = [jax.tree_util.keystr(path) or "<root>" for path, _ in with_paths]
  if len(leaves) != len(signature.leaves):
    extra = [path for path in paths if path not in signature.paths]
    missing = [path for path in signature.paths if path not in paths]
    raise ValueError(
      f"multi_tensor: the {what}s have {len(leaves)} leaves, but {where} had {len(signature.leaves)}"
      + (f"; only in the {what}s: {', '.join(extra[:3])}" if extra else "")
      + (f"; only in the params: {', '.join(missing[:3])}" if missing else "")
      + f". The {what}s must match those params' leaves, shapes and dtypes."
    )
  for (path, leaf), (shape, dtype), recorded_path in zip(with_paths, signature.leaves, signature.paths, strict=True):
    if leaf is None or _shape_and_dtype(leaf) == (shape, dtype):
      continue
    raise ValueError(
      f"multi_tensor: the {what} at {jax.tree_util.keystr(path) or '<root>'} is {jax.typeof(leaf).str_short()}, "
      f"but {where} had {dtype}[{','.join(map(str, shape))}] there ({recorded_path}). Packing groups leaves "
      f"by dtype and slices them by shape, so the {what}s must match those params' leaves, shapes and dtypes."
    )


def _check_layouts(grads: _Layout, params: Optional[_Layout], offsets: tuple, updates: PyTree) -> None:
  """The gradients must pack as the params (when given) and as the state was initialized."""
  if params is not None and params != grads:
    raise ValueError(
      "multi_tensor: the gradients and the params pack differently; they must have the same tree, "
      "shapes and dtypes." + _none_hint(updates)
    )
  state_sizes = [len(group) for group in offsets]
  if state_sizes != grads.group_sizes():
    raise ValueError(
      f"multi_tensor: the gradients pack into groups of {grads.group_sizes()} leaves, but the state "
      f"was initialized for groups of {state_sizes}; gradients must have the params' tree, shapes "
      "and dtypes." + _none_hint(updates)
    )


def multi_tensor(
  tx: optax.GradientTransformation, *, max_leaf_size: int = DEFAULT_MAX_LEAF_SIZE
) -> optax.GradientTransformationExtraArgs:
  """Wraps an elementwise `tx` so that its small leaves are updated as a few flat buffers.

  Args:
    tx: the transformation to run, e.g. `gcj.adam(1e-3)`; see the module docstring for
      which transformations keep their results.
    max_leaf_size: leaves with more elements are passed to `tx` unchanged (0 packs
      nothing; a huge value packs everything that is not explicitly sharded).

  Returns:
    A `GradientTransformationExtraArgs` whose state is a `MultiTensorState`; extra
    keyword arguments of `update` are passed on to `tx`.
  """
  if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
    raise TypeError(
      f"tx must be an optax GradientTransformation (e.g. gcj.adam(1e-3)), got {type(tx).__name__} {tx!r}."
    )
  if isinstance(max_leaf_size, bool) or not isinstance(max_leaf_size, int) or max_leaf_size < 0:
    raise ValueError(f"max_leaf_size must be an int >= 0, got {max_leaf_size!r}.")
  tx = optax.with_extra_args_support(tx)

  def init_fn(params: PyTree) -> MultiTensorState:
    _refuse_leaf_shaped(jax.eval_shape(tx.init, params))
    layout, leaves = _layout(params, max_leaf_size)
    return MultiTensorState(
      inner=tx.init(layout.pack(leaves)), offsets=_offset_arrays(layout), params_signature=ParamsSignature(params)
    )

  def update_fn(
    updates: PyTree, state: optax.OptState, params: PyTree = None, **extra_args: Any
  ) -> tuple[PyTree, MultiTensorState]:
    if not isinstance(state, MultiTensorState):
      raise TypeError(
        "multi_tensor: state must be the MultiTensorState that multi_tensor(tx).init(params) returned, got "
        f"{type(state).__name__} (a state of the wrapped optimizer itself does not fit: its buffers are not packed)."
      )
    _refuse_leaf_shaped(state.inner)
    _check_against_signature(updates, state.params_signature, "gradient")
    if params is not None:
      _check_against_signature(params, state.params_signature, "param")
    layout, grads = _layout(updates, max_leaf_size)
    param_layout, param_leaves = (None, None) if params is None else _layout(params, max_leaf_size)
    _check_layouts(layout, param_layout, state.offsets, updates)
    packed_params = None if param_leaves is None else layout.pack(param_leaves)
    packed_updates, inner = tx.update(layout.pack(grads), state.inner, packed_params, **extra_args)
    new_state = MultiTensorState(inner=inner, offsets=state.offsets, params_signature=state.params_signature)
    return layout.unpack(packed_updates, state.offsets), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
