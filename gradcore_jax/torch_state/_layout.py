"""How a leaf is laid out relative to torch's tensor: `Layout`, `flax_kernel_layout`, the `layouts` argument.

torch `Linear.weight` is `(out, in)`, Flax `Dense.kernel` `(in, out)`: the same numbers
with the axes moved. A `Layout` is the pair of functions between the two; the bridge
applies it to every per-parameter tensor of that leaf.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any
from typing import Callable
from typing import Optional
from typing import Sequence

import jax
import numpy as np

from gradcore_jax._typing import PyTree


class LayoutError(ValueError):
  """A layout applied to a tensor it does not fit (the bridge re-raises it naming the leaf)."""


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

    def check_rank(x: np.ndarray, direction: str) -> None:
      if x.ndim != len(axes):
        raise LayoutError(
          f"the axes permutation {axes} is for {len(axes)}-D tensors, but the {direction} has shape {x.shape}"
        )

    def to_jax(x):
      check_rank(x, "torch tensor")
      return np.transpose(x, axes)

    def to_torch(x):
      check_rank(x, "leaf")
      return np.transpose(x, inverse)

    return cls(to_jax, to_torch, name=f"axes {axes}")


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
  """The name in one entry of a JAX key path (dict key, attribute name or sequence index)."""
  for attribute in ("key", "name", "idx"):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def leaf_layouts(layouts: Any, params: PyTree, treedef: Any, paths: list[str]) -> list[Optional[Layout]]:
  """The `layouts` argument resolved to one `Layout` (or None: torch's layout) per leaf of `params`.

  Args:
    layouts: None, a pytree with the params' structure, or a function `(path, leaf) -> entry`;
      each entry None, a tuple of axes or a `Layout`.
    params: the parameters.
    treedef: the params' tree structure.
    paths: the leaves' key paths as strings, for messages.

  Returns:
    One entry per leaf, in `jax.tree.leaves(params)` order.

  Raises:
    ValueError: `layouts` does not have the params' structure, or axes that are no permutation.
    TypeError: an entry of another kind.
  """
  if layouts is None:
    return [None] * len(paths)
  if callable(layouts) and not isinstance(layouts, Layout):
    entries = [layouts(path, leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
  else:
    try:
      entries = treedef.flatten_up_to(layouts)
    except (ValueError, TypeError) as err:
      raise ValueError(
        f"layouts must have the params' structure (or be a function (path, leaf) -> layout): {err}"
      ) from None
  result = []
  for path, entry in zip(paths, entries, strict=True):
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
