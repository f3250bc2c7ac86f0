"""A deterministic, fixed-shape batch loader over in-memory arrays.

Every batch has exactly `batch_size` rows, so a jitted training step compiles once. A
short last batch is padded with copies of real examples and carries a boolean `mask`
that is `False` on the padding: losses and metrics exclude those rows, so they count
for nothing.

The order of an epoch is a pure function of `(seed, epoch)`: the loader keeps no
random state, and its position in a run is fully described by `(seed, epoch, batch)`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any
from typing import Iterator
from typing import NamedTuple
from typing import Optional

import jax
import numpy as np

from gradcore_jax._typing import PyTree


class Batch(NamedTuple):
  """One fixed-shape batch.

  Attributes:
    data: the pytree given to the loader, every leaf cut to `batch_size` rows.
    mask: bool array of shape `(batch_size,)`; `True` on real rows, `False` on padding.
    size: the number of real rows (`mask.sum()`), as a Python int.
  """

  data: PyTree
  mask: np.ndarray
  size: int


class DataLoader:
  """Fixed-shape batches over NumPy arrays or pytrees of arrays with a shared first axis.

  Args:
    data: an array or a pytree of arrays (e.g. `(x, y)` or `{"x": x, "y": y}`); axis 0
      indexes the examples and must have the same length in every leaf.
    batch_size: rows per batch (>= 1). One larger than the dataset gives one batch of all
      its rows, as torch does (no padding to `batch_size`, and nothing is allocated per
      `batch_size`); `loader.batch_size` is then the number of examples.
    shuffle: reorder the examples each epoch (True or False).
    seed: non-negative int; epoch `e` uses the permutation drawn from
      `np.random.default_rng((seed, e))`, so every epoch differs and each is
      reproducible on its own.
    drop_last: drop the short last batch instead of padding it (True or False).
    process_local: True or False (default): whether `data` is only this process's share
      of the examples, with several JAX processes (`jax.distributed`). False: `data` is the
      whole dataset and every batch a whole (global) batch. True: `batch_size` is this
      process's share of each global batch; `fit` and `evaluate` put each process's batch
      on its own devices' rows of the global batch. Every process must then build its
      loader with the same settings and the same number of examples (checked). With one
      process both mean the same.

  `len(loader)` is the number of batches per epoch. `loader.epoch(e)` yields the batches
  of epoch `e` and is what `gradcore_jax.training.fit` uses. Iterating the loader itself
  walks epochs 0, 1, 2, ... in turn (each new `iter(loader)` is the next epoch), so a
  hand-written `for batch in loader` loop reshuffles every epoch; that counter is the
  loader's only state and `epoch(e)` never touches it.

  Arrays are kept in the dtype JAX gives them (int64/float64 become int32/float32 unless
  `jax_enable_x64` is on), so no step converts them again. Each epoch is gathered with one
  fancy index per array (one epoch-sized copy), then cut into batches without copies.
  That conversion never changes a value silently: an integer array with a value outside
  the 32-bit range (e.g. int64 ids >= 2**31, uint64 >= 2**32), or a finite float64 value
  beyond float32's range (it would become inf), raises a ValueError naming the leaf and
  the value; enable `jax_enable_x64` or store the leaf in a smaller dtype. Leaves that
  are not numbers or booleans (strings, objects) raise a TypeError naming the leaf.

  Raises:
    ValueError: an argument that is not what its entry above says, naming it.
  """

  def __init__(
    self,
    data: PyTree,
    *,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    process_local: bool = False,
  ) -> None:
    self._leaves, self._treedef = _as_example_arrays(data)
    self._num_examples = self._leaves[0].shape[0]
    self._requested_batch_size = _check_int("batch_size", batch_size, minimum=1)
    # Rows per batch: torch's one short batch when batch_size exceeds the dataset, never a
    # batch_size-sized allocation (batch_size=10**12 would otherwise need terabytes).
    self._batch_size = min(self._requested_batch_size, self._num_examples)
    self._seed = _check_int("seed", seed, minimum=0)
    self._shuffle = _check_bool("shuffle", shuffle)
    self._drop_last = _check_bool("drop_last", drop_last)
    self._process_local = _check_bool("process_local", process_local)
    self._next_epoch = 0
    if len(self) == 0:
      raise ValueError(
        f"batch_size={batch_size} with drop_last=True leaves no batch: the dataset has only "
        f"{self._num_examples} examples."
      )

  @property
  def batch_size(self) -> int:
    """Rows in every batch: the `batch_size` given, or the number of examples when that is smaller."""
    return self._batch_size

  @property
  def num_examples(self) -> int:
    """Examples in the dataset."""
    return self._num_examples

  @property
  def examples_per_epoch(self) -> int:
    """Real (unpadded) examples one epoch visits: all of them unless `drop_last` drops some."""
    if self._drop_last:
      return len(self) * self._batch_size
    return self._num_examples

  @property
  def process_local(self) -> bool:
    """True when the loader yields this process's share of each global batch (see the class)."""
    return self._process_local

  @property
  def seed(self) -> int:
    """With the epoch and the batch index, the whole position of a run in this loader."""
    return self._seed

  def __len__(self) -> int:
    if self._drop_last:
      return self._num_examples // self._requested_batch_size
    return math.ceil(self._num_examples / self._batch_size)

  def __iter__(self) -> Iterator[Batch]:
    self._next_epoch += 1
    return self.epoch(self._next_epoch - 1)

  def __repr__(self) -> str:
    return (
      f"DataLoader(num_examples={self._num_examples}, batch_size={self._requested_batch_size}, "
      f"shuffle={self._shuffle}, seed={self._seed}, drop_last={self._drop_last}"
      # Only when set, so that checkpoints recorded before the option existed still resume.
      + (", process_local=True)" if self._process_local else ")")
    )

  @property
  def spec(self) -> Batch:
    """The shape of every batch: a `Batch` of `jax.ShapeDtypeStruct`s, for `jax.eval_shape`."""
    data = [jax.ShapeDtypeStruct((self._batch_size,) + leaf.shape[1:], leaf.dtype) for leaf in self._leaves]
    mask = jax.ShapeDtypeStruct((self._batch_size,), np.bool_)
    # A Batch of shape structs, as `jax.eval_shape` would return it, not of arrays:
    return Batch(jax.tree.unflatten(self._treedef, data), mask, self._batch_size)  # pyright: ignore[reportArgumentType]

  def order(self, epoch: int) -> np.ndarray:
    """The example indices of epoch `epoch`, in visiting order (all examples, before `drop_last`)."""
    epoch = _check_int("epoch", epoch, minimum=0)
    if not self._shuffle:
      return np.arange(self._num_examples)
    return np.random.default_rng((self._seed, epoch)).permutation(self._num_examples)

  def stacked(self, epoch: int, *, start: int = 0) -> Batch:
    """All batches of `epoch` from batch `start` on, stacked on a new leading axis.

    Leaves have shape `(len(self) - start, batch_size, ...)`, `mask` has shape
    `(len(self) - start, batch_size)` and `size` counts the real rows in all of them.
    This is the epoch as one array per leaf, the form a compiled (`lax.scan`) epoch takes.
    """
    start = _check_int("start", start, minimum=0)
    if start > len(self):
      raise ValueError(f"start must be <= the number of batches ({len(self)}), got {start}.")
    index, mask = self._epoch_index(epoch)
    index, mask = index[start:], mask[start:]
    gathered = [leaf[index] for leaf in self._leaves]
    return Batch(jax.tree.unflatten(self._treedef, gathered), mask, int(mask.sum()))

  def epoch(self, epoch: int, *, start: int = 0) -> Iterator[Batch]:
    """The batches of epoch `epoch`, beginning at batch `start` (to resume mid-epoch).

    Arguments are checked and the epoch gathered at the call, not at the first `next`.
    """
    return self._unstack(self.stacked(epoch, start=start))

  def _unstack(self, stacked: Batch) -> Iterator[Batch]:
    leaves = jax.tree.leaves(stacked.data)
    sizes = stacked.mask.sum(axis=1).tolist()
    for i, (mask, size) in enumerate(zip(stacked.mask, sizes, strict=True)):
      yield Batch(jax.tree.unflatten(self._treedef, [leaf[i] for leaf in leaves]), mask, size)

  def _epoch_index(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices and mask of shape `(len(self), batch_size)`.

    The padding of a short last batch repeats the epoch's first examples (always real
    data, so a model sees finite, in-distribution values there), and is masked out.
    """
    order = self.order(epoch)[: self.examples_per_epoch]
    slots = len(self) * self._batch_size
    index = np.resize(order, slots).reshape(len(self), self._batch_size)
    mask = (np.arange(slots) < order.size).reshape(len(self), self._batch_size)
    return index, mask


def _as_example_arrays(data: PyTree) -> tuple[list[np.ndarray], Any]:
  """Flattens `data` into NumPy leaves that share a non-empty leading axis."""
  with_paths, treedef = jax.tree_util.tree_flatten_with_path(data)
  if not with_paths:
    raise ValueError("data holds no arrays: pass an array or a pytree of arrays, e.g. (x, y).")
  leaves, lengths = [], {}
  for path, leaf in with_paths:
    name = f"data{jax.tree_util.keystr(path)}"
    array = _canonical(name, np.asarray(leaf))
    if array.ndim == 0:
      hint = ""
      if isinstance(leaf, (int, float, complex)) and path:  # e.g. DataLoader([1, 2, 3]): a list is a container
        hint = " (a Python list or tuple is a container of arrays here; pass np.asarray(...) for a list of numbers)"
      raise ValueError(f"{name} is a scalar: every array in data needs a leading example axis{hint}.")
    leaves.append(array)
    lengths[name] = array.shape[0]
  if len(set(lengths.values())) > 1:
    listed = ", ".join(f"{name}: {n}" for name, n in lengths.items())
    raise ValueError(f"data arrays must have the same leading dimension (number of examples); got {listed}.")
  if leaves[0].shape[0] == 0:
    raise ValueError("data is empty: its arrays have 0 examples.")
  return leaves, treedef


def _canonical(name: str, array: np.ndarray) -> np.ndarray:
  """`array` in the dtype JAX gives it (`jax.dtypes.canonicalize_dtype`), never with a value changed.

  Raises a TypeError naming `name` for an array that is not of numbers or booleans, and a
  ValueError when the conversion (64 to 32 bits, with `jax_enable_x64` off) would change a
  value: an integer outside the 32-bit range would wrap around, a finite float beyond
  float32's range would become inf. (Rounding float64 to float32 is JAX's documented
  default and allowed.)
  """
  if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
    raise TypeError(
      f"{name} has dtype {array.dtype}: JAX takes arrays of numbers or booleans only. Encode it as numbers "
      "(e.g. class ids for strings) or keep it out of the data."
    )
  target = np.dtype(jax.dtypes.canonicalize_dtype(array.dtype))
  if target == array.dtype:
    return array
  problem = _narrowing_problem(array, target)
  if problem is not None:
    raise ValueError(
      f"{name} {problem}, so converting it from {array.dtype} to {target} (what JAX uses while jax_enable_x64 "
      "is off) would change it silently. Enable 64-bit mode (jax.config.update('jax_enable_x64', True)) or "
      "store it in a dtype that holds its values."
    )
  return array.astype(target)


def _narrowing_problem(array: np.ndarray, target: np.dtype) -> Optional[str]:
  """Why casting `array` to `target` would change a value (beyond float rounding), or None."""
  if array.size == 0:
    return None
  if np.issubdtype(target, np.integer):
    info = np.iinfo(target)
    low, high = array.min(), array.max()
    if low < info.min or high > info.max:
      value = low if low < info.min else high
      return f"holds {value.item()}, outside the range of {target} [{info.min}, {info.max}]"
    return None
  if np.issubdtype(target, np.inexact):
    limit = np.finfo(target).max
    parts = (np.real(array), np.imag(array)) if np.iscomplexobj(array) else (array,)
    for part in parts:
      with np.errstate(invalid="ignore"):
        over = (np.abs(part) > limit) & np.isfinite(part)
      if over.any():
        value = part[over][0].item()
        return f"holds {value!r}, beyond the largest finite {target.name} ({limit:.4g}: it would become inf)"
  return None


def _check_bool(name: str, value: Any) -> bool:
  """`value` as a bool, or a ValueError naming `name` (a string such as "no" would otherwise count as True)."""
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{name} must be True or False, got {value!r}.")
  return bool(value)


def _check_int(name: str, value: Any, *, minimum: int) -> int:
  """`value` as an int, or a ValueError naming `name` when it is not an integer >= `minimum`."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name} must be an integer, got {value!r}.")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}.")
  return int(value)
