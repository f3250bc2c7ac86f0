"""Batches from other sources for `fit`/`evaluate`: grain, torch DataLoaders, generators, any iterable.

`IterableLoader` turns any source of `(inputs, targets)` batches into the fixed-shape,
masked `Batch`es a `gradcore_jax.data.DataLoader` yields, so a jitted step still compiles
once: every batch is padded on the host to one size (the first batch's, or the
`batch_size` given) by repeating its own rows, and the padding is masked out, so it counts
for nothing in losses, gradients and metrics. `fit` and `evaluate` wrap any non-`DataLoader`
argument in one (`IterableLoader(source, name="train_loader")`).

What one epoch is: one pass over `iter(source)` (an iterable: a list of batches, a grain
`MapDataset`/`IterDataset`/`DataLoader`, a `torch.utils.data.DataLoader`), or over
`source()` (a callable returning a new iterator each time, e.g. a generator function). A
one-shot iterator (a generator object) serves one epoch only; asking it for a second
raises ValueError: pass the generator function instead. The source is not told the
epoch number: an iterable that reshuffles does so on its own.

Resuming mid-epoch: when the source's iterator has `get_state()`/`set_state()` (grain's),
`state_at` gives its position and a checkpoint keeps it, so a resumed run continues
exactly. Other sources cannot be positioned; `fit` then restarts the interrupted epoch
from its beginning, with a warning.
"""

from __future__ import annotations

import json
from typing import Any
from typing import Callable
from typing import Iterator
from typing import Optional

import jax
import numpy as np

from gradcore_jax._typing import PyTree
from gradcore_jax.data import Batch
from gradcore_jax.data import DataLoader
from gradcore_jax.data import _canonical
from gradcore_jax.data import _check_bool
from gradcore_jax.data import _check_int


class IterableLoader:
  """Fixed-shape, masked batches from an iterable, a re-iterable or an iterator factory.

  Args:
    source: where the batches come from: an iterable, iterated once per epoch (a list, a
      grain `DataLoader`/`IterDataset`/`MapDataset`, a torch `DataLoader`); a callable with
      no arguments returning a new iterator per epoch (a generator function); or a
      one-shot iterator (a generator object), which serves one epoch only. Each batch is
      an `(inputs, targets)` tuple or list (inputs and targets may themselves be pytrees
      of arrays), or a `gradcore_jax.data.Batch` (its mask is kept). Leaves may be NumPy,
      JAX or torch arrays (torch tensors are detached and copied to NumPy); every leaf of
      a batch has the same number of rows.
    batch_size: rows every batch is padded to; None (default): the first batch's number
      of rows. A batch with more rows raises ValueError naming the loader.
    name: what errors call the loader (`fit` passes `"train_loader"` or `"eval_loader"`).
    process_local: with several JAX processes, True says each process's source yields
      that process's share of every global batch (as `DataLoader(process_local=True)`);
      every process must then yield the same number of batches per epoch. False
      (default) is refused with several processes: a stream cannot be checked to be the
      same whole data on every process. With one process both mean the same.

  `len(loader)` is `len(source)` when the source has one (a list, torch or grain
  loaders over a sized dataset), else a TypeError; `loader.length` is that or None. The
  epoch ends when the source's iterator does, whatever `len` says. Arrays get the dtype
  JAX gives them, refusing values that would change as `DataLoader` does.

  Raises:
    TypeError: `source` is neither iterable nor callable (naming `name`).
    ValueError: a bad argument, or (while iterating) a batch that is not an
      `(inputs, targets)` pair, has another structure, trailing shape or dtype than the
      first, or more rows than `batch_size`; each names the loader and the batch.
  """

  def __init__(
    self,
    source: Any,
    *,
    batch_size: Optional[int] = None,
    name: str = "loader",
    process_local: bool = False,
  ) -> None:
    if not isinstance(name, str):
      raise ValueError(f"name must be a string, got {name!r}.")
    self._name = name
    if isinstance(source, (DataLoader, IterableLoader)):
      raise TypeError(f"{name} is already a {type(source).__name__}: pass it to fit/evaluate as it is.")
    if hasattr(source, "__next__") and hasattr(source, "__iter__"):
      self._kind = "iterator"
    elif hasattr(source, "__iter__"):
      self._kind = "iterable"
    elif callable(source):
      self._kind = "factory"
    else:
      raise TypeError(
        f"{name} must be a gradcore_jax.data.DataLoader, an iterable of (inputs, targets) batches (e.g. a grain or "
        f"torch DataLoader, a list), or a function returning an iterator of them; got {type(source).__name__}."
      )
    self._source: Any = source
    self._batch_size = None if batch_size is None else _check_int("batch_size", batch_size, minimum=1)
    self._process_local = _check_bool("process_local", process_local)
    self._passes = 0  # iterators opened: a one-shot source has only one
    self._pending: Optional[tuple[Iterator[Any], Any]] = None  # the iterator opened to read the first batch
    self._spec: Optional[tuple[Any, list[tuple[tuple[int, ...], np.dtype]]]] = None
    self._resumable = False
    self._states: dict[int, Any] = {}  # batch index -> the iterator's state before it (the last two)
    self._live: Optional[Iterator[Any]] = None

  @property
  def name(self) -> str:
    """What errors call this loader."""
    return self._name

  @property
  def process_local(self) -> bool:
    """True when each process's source yields its own share of every global batch."""
    return self._process_local

  @property
  def length(self) -> Optional[int]:
    """`len(source)` when the source has a length, else None (a generator, an unsized stream)."""
    if self._kind != "iterable":
      return None
    try:
      length = len(self._source)
    except TypeError:  # no __len__, or one that refuses (a torch IterableDataset's loader)
      return None
    return length if isinstance(length, int) and length >= 0 else None

  def __len__(self) -> int:
    length = self.length
    if length is None:
      raise TypeError(f"{self._name} has no length: its source ({type(self._source).__name__}) has none.")
    return length

  @property
  def batch_size(self) -> int:
    """Rows in every batch: the `batch_size` given, or the first batch's rows (read on first use)."""
    if self._batch_size is None:
      self._peek()
    if self._batch_size is None:
      raise RuntimeError("internal error: no batch size after reading the first batch.")
    return self._batch_size

  @property
  def resumable(self) -> bool:
    """Whether the source's iterators can report and restore their position (`get_state`/`set_state`)."""
    self._peek()
    return self._resumable

  @property
  def spec(self) -> Batch:
    """The shape of every batch, as `DataLoader.spec` (read from the first batch on first use)."""
    treedef, leaves = self._peek()
    size = self.batch_size
    data = [jax.ShapeDtypeStruct((size,) + shape, dtype) for shape, dtype in leaves]
    mask = jax.ShapeDtypeStruct((size,), np.bool_)
    return Batch(jax.tree.unflatten(treedef, data), mask, size)  # pyright: ignore[reportArgumentType]

  def __repr__(self) -> str:
    size = self._batch_size if self._batch_size is not None else "first batch's"
    local = ", process_local=True" if self._process_local else ""
    return f"IterableLoader({self._kind} {type(self._source).__name__}, batch_size={size}{local})"

  def epoch(self, epoch: int, *, start: int = 0, state: Any = None) -> Iterator[Batch]:
    """One pass over the source as padded, masked `Batch`es; `epoch` only counts (the source is not told it).

    Args:
      epoch: the epoch's index (>= 0), for messages.
      start: the batch to begin at: 0, or the batch `state` (from `state_at(start)`) positions the iterator at.
      state: None, or what `state_at` returned, to resume mid-epoch.
    """
    epoch = _check_int("epoch", epoch, minimum=0)
    start = _check_int("start", start, minimum=0)
    if start and state is None:
      raise ValueError(f"{self._name} cannot start an epoch at batch {start} without its iterator's saved state.")
    self._peek()
    if state is not None or self._pending is None:
      iterator = self._open()
      if state is not None:
        iterator.set_state(_decoded(state))  # pyright: ignore[reportAttributeAccessIssue]
      pending = None
    else:
      iterator, first = self._pending
      pending = first
    self._pending = None
    self._live, self._states = iterator, {}
    return self._batches(iterator, pending, epoch, start)

  def state_at(self, batch: int) -> Any:
    """The source iterator's position before batch `batch` of the current epoch (JSON), or None if unknown."""
    return self._states.get(batch)

  def _batches(self, iterator: Iterator[Any], first: Any, epoch: int, start: int) -> Iterator[Batch]:
    index = start
    while True:
      if self._resumable:
        self._states = {k: v for k, v in self._states.items() if k >= index - 1}
        self._states[index] = _encoded(iterator.get_state()) if first is None else None  # pyright: ignore
      if first is not None:
        raw, first = first, None
      else:
        try:
          raw = next(iterator)
        except StopIteration:
          if index == start:
            raise ValueError(
              f"{self._name} yielded no batch in epoch {epoch}: an empty source, or a one-shot iterator already used."
            ) from None
          return
      yield self._convert(raw, f"{self._name} batch {index} of epoch {epoch}")
      index += 1

  def _open(self) -> Iterator[Any]:
    if self._kind == "iterator":
      if self._passes:
        raise ValueError(
          f"{self._name} is a one-shot iterator ({type(self._source).__name__}), used up after one epoch: pass a "
          "function returning a new iterator each epoch (e.g. the generator function instead of its generator)."
        )
      iterator = self._source
    elif self._kind == "factory":
      made: Any = self._source()
      if not hasattr(made, "__iter__"):
        raise TypeError(f"{self._name} is a function, so it must return an iterator of batches; it returned {made!r}.")
      iterator = made if hasattr(made, "__next__") else iter(made)
    else:
      iterator = iter(self._source)
    self._passes += 1
    return iterator

  def _peek(self) -> tuple[Any, list[tuple[tuple[int, ...], np.dtype]]]:
    """The first batch's structure and trailing shapes; reads it (once) from a fresh iterator kept for epoch 0."""
    if self._spec is not None:
      return self._spec
    iterator = self._open()
    try:
      raw = next(iterator)
    except StopIteration:
      raise ValueError(f"{self._name} yielded no batch: its source is empty.") from None
    self._resumable = callable(getattr(iterator, "get_state", None)) and callable(getattr(iterator, "set_state", None))
    data, _ = self._pair(raw, f"{self._name} batch 0")
    leaves, treedef = jax.tree.flatten(data)
    rows = leaves[0].shape[0]
    if self._batch_size is None:
      self._batch_size = rows
    self._spec = (treedef, [(leaf.shape[1:], leaf.dtype) for leaf in leaves])
    self._pending = (iterator, raw)
    return self._spec

  def _pair(self, raw: Any, where: str) -> tuple[PyTree, Optional[np.ndarray]]:
    """`raw` as `((inputs, targets), mask or None)` of NumPy arrays, checked to be a batch."""
    mask = None
    if isinstance(raw, Batch):
      raw, mask = raw.data, np.asarray(raw.mask, np.bool_)
    if not isinstance(raw, (tuple, list)) or len(raw) != 2:
      what = f"a dict with keys {sorted(raw)}" if isinstance(raw, dict) else f"a {type(raw).__name__}"
      raise ValueError(
        f"{where} is {what}: fit needs (inputs, targets) pairs; map the source to them first, e.g. "
        "dataset.map(lambda b: (b['image'], b['label']))."
      )
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(tuple(raw))
    leaves = [_canonical(f"{where}{jax.tree_util.keystr(path)}", _host(leaf)) for path, leaf in with_paths]
    rows = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
    if not leaves or len(rows) != 1 or None in rows or 0 in rows:
      shapes = [leaf.shape for leaf in leaves]
      raise ValueError(f"{where}: every array needs the same number (>= 1) of rows on axis 0; got shapes {shapes}.")
    if mask is not None and mask.shape != (leaves[0].shape[0],):
      raise ValueError(f"{where}: its mask has shape {mask.shape}, not ({leaves[0].shape[0]},).")
    return jax.tree.unflatten(treedef, leaves), mask

  def _convert(self, raw: Any, where: str) -> Batch:
    """`raw` padded to `batch_size` rows (repeating its rows) with its mask: the fixed shape the step compiled for."""
    data, mask = self._pair(raw, where)
    leaves, treedef = jax.tree.flatten(data)
    expected_tree, expected = self._peek()
    found = [(leaf.shape[1:], leaf.dtype) for leaf in leaves]
    if treedef != expected_tree or found != expected:
      raise ValueError(
        f"{where} has structure {treedef} with (shape[1:], dtype) {found}; the first batch had {expected_tree} "
        f"with {expected}. Every batch must match, so the step compiles once."
      )
    rows, size = leaves[0].shape[0], self.batch_size
    if rows > size:
      raise ValueError(
        f"{where} has {rows} rows, more than {size} (the first batch's, or the batch_size given): pass "
        f"IterableLoader(source, batch_size=<the largest batch>) as {self._name}; smaller batches are padded to it."
      )
    if mask is None:
      mask = np.ones(rows, np.bool_)
    if rows < size:
      # Padding repeats real rows (finite, in-distribution values) and is masked out.
      take = np.resize(np.arange(rows), size)
      leaves = [leaf[take] for leaf in leaves]
      mask = np.concatenate([mask, np.zeros(size - rows, np.bool_)])
    return Batch(jax.tree.unflatten(treedef, leaves), mask, int(mask.sum()))


def as_loader(name: str, loader: Any) -> Any:
  """`loader` as `fit`/`evaluate` use it: a `DataLoader` or `IterableLoader` as it is, anything else wrapped.

  Args:
    name: the argument's name, for errors.
    loader: a `DataLoader`, an `IterableLoader`, or a source `IterableLoader` accepts.
  """
  if isinstance(loader, (DataLoader, IterableLoader)):
    return loader
  return IterableLoader(loader, name=name)


def _host(leaf: Any) -> np.ndarray:
  """A leaf as a NumPy array; a torch tensor detached and moved to the host first."""
  detach: Optional[Callable[[], Any]] = getattr(leaf, "detach", None)
  if detach is not None and hasattr(leaf, "cpu"):
    return np.asarray(detach().cpu().numpy())
  return np.asarray(leaf)


def _encoded(state: Any) -> Any:
  """An iterator state as a JSON value (grain's DataLoader gives bytes of JSON), or None if it has none."""
  if isinstance(state, bytes):
    return {"bytes": state.decode("utf-8", errors="surrogateescape")}
  try:
    json.dumps(state)
  except (TypeError, ValueError):
    return None
  return {"value": state}


def _decoded(state: Any) -> Any:
  if "bytes" in state:
    return state["bytes"].encode("utf-8", errors="surrogateescape")
  return state["value"]
