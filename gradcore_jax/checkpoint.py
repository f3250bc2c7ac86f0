"""Atomic, keep-the-last-N checkpoints of a whole training state, with orbax-checkpoint.

    with Checkpointer("runs/mlp", keep=3) as checkpoints:
      checkpoints.save(step, state, record={"epoch": 2, "batch": 17})
      state, record = checkpoints.restore(like=state)          # the latest step

A checkpoint is a pytree of arrays (`state`: params, optimizer state, model state,
metric statistics, ...) plus a JSON `record` (positions, counters, `TrainingStats`). Both
are written into one orbax step directory, which orbax first writes as
`<step>.orbax-checkpoint-tmp-<time>` and renames to `<step>` only once everything is on
disk. A process killed mid-write therefore leaves a temporary directory that is never
listed, never restored, and is deleted the next time a `Checkpointer` opens the folder.

Every leaf is stored with its tree path, shape and dtype. `restore` compares them with the
tree it restores into and refuses a checkpoint of another model or optimizer with a
`CheckpointMismatchError` that lists the paths that differ. `save` refuses a state with
a NaN or infinite value (`NonFiniteStateError`), so a checkpoint is always a state
training can continue from. Arrays are saved exactly (restoring is bit for bit) and
restored onto the shardings of the tree restored into, so a checkpoint of a sharded run
comes back sharded. Typed PRNG keys (e.g. Flax NNX `Rngs`) are saved as their key data.
Python numbers in the state (`{"step": 3, "params": ...}`) are saved in the JSON header
and restored as the same Python `int`, `float` or `bool`, exactly; NumPy 64-bit arrays
are refused when JAX would change their values (`jax_enable_x64` off: an int64 beyond
the int32 range, a float64 beyond float32's). An empty state (`{}`, `None`) saves only
the record. Any other leaf (a string, an object) raises a TypeError naming its path, and
a `record` that JSON cannot hold as given (not a dict, a key that is not a string, a
value that is not a JSON number, string, bool, None, list or dict) a ValueError naming
its path; tuples come back as lists.

A checkpoint damaged after it was written (files emptied or cut short, a step folder left
empty, its record missing) raises `UnreadableCheckpointError` naming its folder and what
failed. `restore()` without a step falls back to the newest checkpoint that restores and
warns (`UnreadableCheckpointWarning`) naming each one it passed over; reading never
deletes anything. `set_aside(step)` renames an unreadable checkpoint out of the way
(`<step>.unreadable-<time>`), so it is no longer listed, restored, overwritten or counted
(nor deleted) by `keep`.

When an orbax read or write fails, orbax closes the private asyncio event loop it ran the
operation on while tensorstore still has sibling reads or writes of that operation in
flight (its `asyncio.gather` returns at the first error). When those finish, tensorstore
reports their callbacks' `RuntimeError: Event loop is closed` through `sys.unraisablehook`
(often at interpreter exit), and asyncio may log "Future exception was never retrieved"
for their own tensorstore errors. The failure itself is raised as an exception here, so
from the first `Checkpointer` on (the reports can come before the exception is caught)
this module drops exactly those reports: a RuntimeError "Event loop is closed" raised in
`call_soon_threadsafe` with no object, and asyncio's log records of tensorstore errors
nobody awaited. Every other report still reaches its hook or log handler.

orbax-checkpoint is an optional dependency: `pip install 'gradcore-jax[checkpoint]'`.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import warnings
from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from gradcore_jax._typing import PyTree
from gradcore_jax.data import _canonical
from gradcore_jax.data import _check_int

__all__ = [
  "CheckpointMismatchError",
  "Checkpointer",
  "NonFiniteStateError",
  "UnreadableCheckpointError",
  "UnreadableCheckpointWarning",
]

_LISTED = 8  # differences named in an error message before "... and N more"
_REASON_CHARS = 600  # an underlying error's message is cut (in the middle) to this length in a reason
Failure = tuple[str, str]  # (a checkpoint's folder, why it cannot be read)


class CheckpointMismatchError(ValueError):
  """A checkpoint's arrays do not match the tree it is restored into (paths, shapes or dtypes)."""


class NonFiniteStateError(ValueError):
  """`Checkpointer.save` was given a state with NaN or infinite values; nothing was written."""


class UnreadableCheckpointError(OSError):
  """One or more checkpoints cannot be read (files missing, empty, cut short or corrupt).

  Attributes:
    failures: `[(folder, reason), ...]`, one per checkpoint that could not be read, newest
      first. Nothing was deleted or renamed.

  Args:
    message: the error message.
    failures: the `(folder, reason)` pairs, stored as a new list in `failures`.
  """

  def __init__(self, message: str, failures: list[Failure]) -> None:
    super().__init__(message)
    self.failures = list(failures)


class UnreadableCheckpointWarning(UserWarning):
  """A restore passed over unreadable checkpoints and used an older one (named in the message)."""


class Checkpointer:
  """Checkpoints of one training run in `directory`, one per step, the last `keep` kept.

  Args:
    directory: the folder (created if missing; ValueError naming it when it is a file or
      cannot be created). Temporary directories of unfinished writes found there are
      deleted.
    keep: how many checkpoints to keep (>= 1); saving one more deletes the oldest.

  Writes are synchronous: `save` returns when the checkpoint is complete on disk.
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3) -> None:
    try:
      import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    except ImportError as err:  # pragma: no cover - depends on the environment
      raise ImportError("Checkpoints need orbax-checkpoint: pip install 'gradcore-jax[checkpoint]'.") from err
    self._ocp = ocp
    _quiet_closed_loop_reports()
    directory = _folder(directory, "directory")
    options = ocp.CheckpointManagerOptions(
      max_to_keep=_check_int("keep", keep, minimum=1),
      create=True,
      cleanup_tmp_directories=True,
      enable_async_checkpointing=False,
    )
    self._manager = ocp.CheckpointManager(directory, options=options)

  @property
  def directory(self) -> str:
    return os.fspath(self._manager.directory)

  def steps(self) -> list[int]:
    """The steps of the complete checkpoints in the folder, oldest first."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    """The newest complete checkpoint's step, or None when there is none."""
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: PyTree, record: Optional[dict[str, Any]] = None) -> None:
    """Writes `state` and `record` as checkpoint `step`.

    Args:
      step: the checkpoint's number, an int >= 0 not saved yet.
      state: a pytree of arrays (JAX or NumPy; typed PRNG keys included) and Python
        numbers; it may be empty (then only `record` is saved).
      record: None or a dict of JSON values with string keys (positions, counters,
        `TrainingStats.to_dict()`).

    Raises:
      NonFiniteStateError: naming the leaves with NaN/Inf values (nothing is written).
      TypeError: naming the path of a leaf that is neither an array nor a Python number.
      ValueError: `step` negative or already saved; a NumPy leaf whose values JAX would
        change (64-bit values out of 32-bit range with `jax_enable_x64` off); a `record`
        that is not a dict of JSON values, naming the path of the first bad entry.
    """
    step = _check_int("step", step, minimum=0)
    if step in self.steps():
      raise ValueError(f"step {step} is already saved in {self.directory}.")
    paths, leaves = _flatten(state)
    leaves = [_checked_leaf(path, leaf) for path, leaf in zip(paths, leaves, strict=True)]
    _check_record(record)
    bad = _non_finite(paths, leaves)
    if bad:
      raise NonFiniteStateError(
        f"Refusing to save a checkpoint at step {step}: non-finite values in {_listed(bad)}. "
        "A checkpoint must be a state training can continue from."
      )
    stored = {
      str(i): jax.random.key_data(leaf) if _is_key(leaf) else leaf
      for i, leaf in enumerate(leaves)
      if not _is_python_number(leaf)
    }
    header = {
      "signature": [_describe(leaf) for leaf in leaves],
      "paths": paths,
      "key_impls": {str(i): str(jax.random.key_impl(leaf)) for i, leaf in enumerate(leaves) if _is_key(leaf)},
      "scalars": {str(i): leaf for i, leaf in enumerate(leaves) if _is_python_number(leaf)},
      "record": record or {},
    }
    ocp = self._ocp
    items: dict[str, Any] = {"record": ocp.args.JsonSave(header)}
    if stored:  # orbax refuses an empty tree of arrays: a state of Python numbers only (or none) is all header
      items["arrays"] = ocp.args.StandardSave(stored)
    saved = self._manager.save(step, args=ocp.args.Composite(**items))
    self._manager.wait_until_finished()
    if not saved:
      raise RuntimeError(
        f"orbax declined to save step {step} in {self.directory} (its latest is {self.latest_step()})."
      )

  def restore(self, like: PyTree, step: Optional[int] = None) -> tuple[PyTree, dict[str, Any]]:
    """`(state, record)` of checkpoint `step` (default: the newest that restores), in the structure of `like`.

    `like` is the tree to restore into: arrays or `jax.ShapeDtypeStruct`s with the
    checkpoint's paths, shapes and dtypes (e.g. the freshly initialised state); the
    restored arrays get its leaves' shardings. Without `step`, checkpoints that cannot be
    read are passed over, newest first, with an `UnreadableCheckpointWarning` naming each
    folder and why; none is deleted.

    Raises:
      FileNotFoundError: there is no such checkpoint (or none at all).
      CheckpointMismatchError: naming every path whose presence, shape or dtype differs.
      UnreadableCheckpointError: checkpoint `step` (without `step`: every checkpoint)
        cannot be read, because its files are missing, empty, cut short or corrupt, or it
        holds non-finite values; it lists each folder and the reason.
    """
    if step is not None:
      return self._read(like, self._existing(step))
    found, state, record, passed = self.restore_newest(like)
    if passed:
      warnings.warn(UnreadableCheckpointWarning(_passed_over(passed, self.directory, found)), stacklevel=2)
    return state, record

  def restore_newest(
    self, like: PyTree, check: Optional[Callable[[dict[str, Any]], Optional[str]]] = None
  ) -> tuple[int, PyTree, dict[str, Any], list[Failure]]:
    """The newest checkpoint that restores, as `(step, state, record, passed_over)`; no warning.

    Tries the checkpoints newest first. One that raises `UnreadableCheckpointError`, or
    whose record `check` objects to, is passed over and listed in `passed_over` as
    `(folder, reason)`. Nothing is deleted or renamed.

    Args:
      like: the tree to restore into, as in `restore`.
      check: `check(record)` returns None, or why the record cannot be used (e.g. it was
        not written by the program reading it); such a checkpoint counts as unreadable.

    Raises:
      FileNotFoundError: the folder holds no checkpoint.
      CheckpointMismatchError: the newest readable checkpoint does not fit `like`.
      UnreadableCheckpointError: no checkpoint can be read; it lists every one and why.
    """
    passed: list[Failure] = []
    for step in reversed(self.steps()):
      try:
        state, record = self._read(like, step)
        problem = None if check is None else check(record)
        if problem is not None:
          raise UnreadableCheckpointError(problem, [(self._path(step), problem)])
      except UnreadableCheckpointError as err:
        passed.extend(err.failures)
        continue
      return step, state, record, passed
    if not passed:
      raise FileNotFoundError(f"No complete checkpoint in {self.directory}.")
    listed = "".join(f"\n  {path}: {reason}" for path, reason in passed)
    raise UnreadableCheckpointError(
      f"None of the {len(passed)} checkpoints in {self.directory} can be read (nothing was deleted):{listed}", passed
    )

  def record(self, step: Optional[int] = None) -> dict[str, Any]:
    """The JSON record saved with checkpoint `step` (default: the latest), without reading its arrays.

    Raises FileNotFoundError when there is no such checkpoint and `UnreadableCheckpointError`
    when its record cannot be read.
    """
    return self._header(self._existing(step))["record"]

  def set_aside(self, step: int) -> str:
    """Renames checkpoint `step`'s folder to `<step>.unreadable-<time>`; returns the new path.

    The folder keeps all its files but is no longer a checkpoint: it is not listed,
    restored, overwritten by a new checkpoint of the same step, nor counted (or deleted)
    by `keep`. Meant for a checkpoint that cannot be read, so that a run resumed from an
    older one can write its own. With several processes, every one must call it; process 0
    renames (the path returned is its), the others wait for it.
    """
    path = self._path(self._existing(step))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = f"{path}.unreadable-{stamp}", 1
    while os.path.lexists(target):
      n += 1
      target = f"{path}.unreadable-{stamp}-{n}"
    if jax.process_index() == 0:
      os.rename(path, target)
    if jax.process_count() > 1:
      self._ocp.multihost.sync_global_processes(f"gradcore_jax_set_aside_{step}")
    self._manager.reload()
    return target

  def _existing(self, step: Optional[int]) -> int:
    """`step`, or the latest when None; FileNotFoundError when there is no such complete checkpoint."""
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"No complete checkpoint in {self.directory}.")
    elif _check_int("step", step, minimum=0) not in self.steps():
      raise FileNotFoundError(f"No complete checkpoint of step {step} in {self.directory} (it has {self.steps()}).")
    return step

  def _path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _read(self, like: PyTree, step: int) -> tuple[PyTree, dict[str, Any]]:
    """Checkpoint `step` restored into `like`; `UnreadableCheckpointError` when it cannot be read."""
    header = self._header(step)
    paths, leaves = _flatten(like)
    _check_matches(header, paths, leaves, self._path(step))
    targets = {str(i): _stored_shape(leaf) for i, leaf in enumerate(leaves) if not _is_python_number(leaf)}
    ocp = self._ocp
    arrays: dict[str, Any] = {}
    if targets:
      try:
        restore = ocp.args.Composite(arrays=ocp.args.StandardRestore(targets))
        arrays = self._manager.restore(step, args=restore)["arrays"]
      except Exception as err:  # pylint: disable=broad-except  (orbax and tensorstore raise many kinds)
        raise self._unreadable(step, "its arrays", err) from err
    impls, scalars = header["key_impls"], header.get("scalars", {})  # no "scalars" in older checkpoints
    restored = [
      type(leaf)(scalars[i])
      if i in scalars
      else jax.random.wrap_key_data(arrays[i], impl=impls[i])
      if i in impls
      else arrays[i]
      for i, leaf in zip(map(str, range(len(leaves))), leaves, strict=True)
    ]
    bad = _non_finite(paths, restored)
    if bad:
      reason = f"non-finite values in {_listed(bad)} (save writes finite states only: the data changed since)"
      path = self._path(step)
      raise UnreadableCheckpointError(f"Checkpoint {path} cannot be used: {reason}.", [(path, reason)])
    return jax.tree.unflatten(jax.tree.structure(like), restored), header["record"]

  def _header(self, step: int) -> dict[str, Any]:
    """The JSON header of checkpoint `step`; `UnreadableCheckpointError` when it is missing or malformed."""
    path = self._path(step)
    try:
      empty = not os.listdir(path)
    except OSError as err:
      raise self._unreadable(step, "its folder", err) from err
    if empty:
      reason = "the folder is empty"
      raise UnreadableCheckpointError(f"Checkpoint {path} cannot be read: {reason}.", [(path, reason)])
    ocp = self._ocp
    try:
      header = self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]
    except Exception as err:  # pylint: disable=broad-except  (JSONDecodeError, KeyError, OSError, ...)
      raise self._unreadable(step, "its record", err) from err
    problem = _header_problem(header)
    if problem is not None:
      raise UnreadableCheckpointError(f"Checkpoint {path} cannot be read: {problem}.", [(path, problem)])
    return header

  def _unreadable(self, step: int, what: str, err: BaseException) -> UnreadableCheckpointError:
    """The error for checkpoint `step`, whose `what` raised `err`; names any empty files in it."""
    path = self._path(step)
    reason = f"{what}: {_reason(err)}"
    empty = _empty_files(path)
    if empty:
      reason += f" (empty files: {_listed(empty)})"
    return UnreadableCheckpointError(f"Checkpoint {path} cannot be read: {reason}", [(path, reason)])

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def _folder(directory: Any, name: str, *, writable: bool = False) -> str:
  """`directory` as an absolute path to a folder, created if missing.

  Raises ValueError naming `name` when it is not a path, is a file, cannot be created or
  (with `writable`) cannot be written: a temporary file is created in it to find out.
  """
  if not isinstance(directory, (str, os.PathLike)):
    raise ValueError(f"{name} must be a folder path (str or os.PathLike), got {type(directory).__name__}.")
  path = os.path.abspath(os.fspath(directory))
  if os.path.lexists(path) and not os.path.isdir(path):
    raise ValueError(f"{name} {path} is not a folder (a file of that name exists).")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as err:
    raise ValueError(f"{name} {path} cannot be created: {err.strerror or err}.") from err
  if writable:
    try:
      with tempfile.TemporaryFile(dir=path, prefix=".write-check-"):
        pass
    except OSError as err:
      raise ValueError(f"{name} {path} is not writable: {err.strerror or err}.") from err
  return path


def _header_problem(header: Any) -> Optional[str]:
  """None when `header` is the JSON `save` writes, else what is wrong with it."""
  if not isinstance(header, dict):
    return f"its record is a {type(header).__name__}, not the JSON object gradcore_jax writes"
  for key, kind in (("signature", list), ("paths", list), ("key_impls", dict), ("record", dict)):
    if not isinstance(header.get(key), kind):
      return f"its record has no {key!r} {kind.__name__} (damaged, or not written by gradcore_jax)"
  if len(header["signature"]) != len(header["paths"]):
    return "its record lists different numbers of paths and signatures"
  return None


def _reason(err: BaseException) -> str:
  """`Type: message` on one line, without tensorstore's JSON spec; a longer one than `_REASON_CHARS`
  loses its middle (tensorstore's chain of contexts), keeping its start and its root cause."""
  text = " ".join((str(err) or repr(err)).split(" [tensorstore_spec")[0].split())
  if len(text) > _REASON_CHARS:
    half = (_REASON_CHARS - 5) // 2
    text = f"{text[:half]} ... {text[-half:]}"
  return f"{type(err).__name__}: {text}"


def _empty_files(path: str) -> list[str]:
  """The files of 0 bytes under `path` (as relative paths)."""
  empty = []
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      if os.path.isfile(full) and os.path.getsize(full) == 0:
        empty.append(os.path.relpath(full, path))
  return sorted(empty)


def _passed_over(passed: list[Failure], directory: str, step: int) -> str:
  listed = "".join(f"\n  {path}: {reason}" for path, reason in passed)
  return (
    f"Passed over {len(passed)} unreadable checkpoint(s) in {directory} and restored step {step}; "
    f"nothing was deleted:{listed}"
  )


_QUIETED = False


def _quiet_closed_loop_reports() -> None:
  """From now on, drops the reports of a failed orbax operation's orphaned I/O (see the module docstring)."""
  global _QUIETED
  if _QUIETED:
    return
  previous = sys.unraisablehook

  def hook(report: Any) -> None:
    if not _is_closed_loop_report(report):
      previous(report)

  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_orphaned_tensorstore_error)
  _QUIETED = True


def _is_closed_loop_report(report: Any) -> bool:
  """A callback of a failed orbax operation's tensorstore I/O, finding its event loop closed."""
  error, trace = report.exc_value, report.exc_traceback
  if report.object is not None or not isinstance(error, RuntimeError) or str(error) != "Event loop is closed":
    return False
  return trace is not None and trace.tb_frame.f_code.co_name == "call_soon_threadsafe"


def _orphaned_tensorstore_error(record: logging.LogRecord) -> bool:
  """False (drop) for asyncio's "... exception was never retrieved" about a tensorstore error."""
  error = record.exc_info[1] if record.exc_info else None
  orphaned = record.getMessage().startswith(("Future exception was never", "Task exception was never"))
  return not (orphaned and error is not None and "tensorstore" in str(error))


def _flatten(tree: PyTree) -> tuple[list[str], list[Any]]:
  with_paths = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [jax.tree_util.keystr(path) for path, _ in with_paths], [leaf for _, leaf in with_paths]


def _is_key(leaf: Any) -> bool:
  return not _is_python_number(leaf) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _is_python_number(leaf: Any) -> bool:
  """A Python `int`, `float` or `bool` (saved in the header, restored as the same type)."""
  return type(leaf) in (int, float, bool)


def _checked_leaf(path: str, leaf: Any) -> Any:
  """`leaf` if a checkpoint can hold it exactly; NumPy leaves as JAX will restore them.

  Raises a TypeError naming `state{path}` for a leaf that is neither an array nor a
  Python number, and a ValueError for a NumPy array whose values JAX would change.
  """
  name = f"state{path}"
  if _is_python_number(leaf) or isinstance(leaf, jax.Array):
    return leaf
  if isinstance(leaf, (np.ndarray, np.generic)):
    return _canonical(name, np.asarray(leaf))
  raise TypeError(
    f"{name} holds a value of type {type(leaf).__name__}: a checkpoint's state holds arrays and Python numbers "
    "(int, float, bool). Convert it, or put JSON values in `record`."
  )


def _check_record(record: Any, path: str = "record") -> None:
  """Raises a ValueError naming the first entry of `record` that JSON does not hold as given."""
  if path == "record":
    if record is None:
      return
    if not isinstance(record, dict):
      raise ValueError(f"record must be None or a dict of JSON values, got {type(record).__name__}.")
  if isinstance(record, dict):
    for key, value in record.items():
      if not isinstance(key, str):
        raise ValueError(f"{path} has the key {key!r}: record keys must be strings (JSON would turn it into one).")
      _check_record(value, f"{path}[{key!r}]")
  elif isinstance(record, (list, tuple)):
    for index, value in enumerate(record):
      _check_record(value, f"{path}[{index}]")
  elif not (record is None or isinstance(record, (str, int, float, bool))):  # NumPy's float64 is a float
    raise ValueError(
      f"{path} holds a value of type {type(record).__name__}: a record holds JSON values only (str, int, float, "
      "bool, None, lists and dicts); convert it, e.g. float(x) for a NumPy or JAX number."
    )


def _describe(leaf: Any) -> str:
  """`float32[64,10]`-style shape and dtype of a leaf (for keys, the key type; `python int` for numbers)."""
  if _is_python_number(leaf):
    return f"python {type(leaf).__name__}"
  dtype = leaf.dtype if _is_key(leaf) else jax.dtypes.canonicalize_dtype(leaf.dtype)  # NumPy int64: int32 w/o x64
  return f"{dtype}[{','.join(map(str, np.shape(leaf)))}]"


def _non_finite(paths: list[str], leaves: list[Any]) -> list[str]:
  """The paths of the inexact leaves that hold a NaN or an infinity (one transfer for the JAX arrays)."""
  bad = {path for path, leaf in zip(paths, leaves, strict=True) if _host_non_finite(leaf)}
  inexact = [
    (path, leaf)
    for path, leaf in zip(paths, leaves, strict=True)
    if isinstance(leaf, jax.Array) and not _is_key(leaf) and jnp.issubdtype(leaf.dtype, jnp.inexact)
  ]
  finite = jax.device_get(_all_finite([leaf for _, leaf in inexact])) if inexact else []
  bad.update(path for (path, _), ok in zip(inexact, finite, strict=True) if not ok)
  return [path for path in paths if path in bad]


def _host_non_finite(leaf: Any) -> bool:
  """A Python float or a NumPy array (checked on the host) holding a NaN or an infinity."""
  if type(leaf) is float:
    return not np.isfinite(leaf)
  if isinstance(leaf, (np.ndarray, np.generic)) and np.issubdtype(leaf.dtype, np.inexact):
    return not np.isfinite(leaf).all()
  return False


@jax.jit
def _all_finite(leaves: list[Any]) -> list[jax.Array]:
  return [jnp.all(jnp.isfinite(leaf)) for leaf in leaves]


def _check_matches(header: dict[str, Any], paths: list[str], leaves: list[Any], where: str) -> None:
  saved = dict(zip(header["paths"], header["signature"], strict=True))  # same lengths (`_header_problem`)
  wanted = {path: _describe(leaf) for path, leaf in zip(paths, leaves, strict=True)}
  only_saved = [f"{p} {s}" for p, s in saved.items() if p not in wanted]
  only_wanted = [f"{p} {s}" for p, s in wanted.items() if p not in saved]
  changed = [f"{p}: checkpoint {saved[p]}, here {s}" for p, s in wanted.items() if p in saved and saved[p] != s]
  if only_saved or only_wanted or changed:
    parts = [
      f"{title}: {_listed(items)}"
      for title, items in (("only in the checkpoint", only_saved), ("only here", only_wanted), ("different", changed))
      if items
    ]
    raise CheckpointMismatchError(
      f"The checkpoint {where} does not fit the state restored into (another model, optimizer or metrics?). "
      + "; ".join(parts)
      + "."
    )


def _listed(items: list[str]) -> str:
  more = f", ... and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
  return ", ".join(items[:_LISTED]) + more


def _stored_shape(leaf: Any) -> jax.ShapeDtypeStruct:
  """What orbax reads for `leaf`: its shape, dtype (key data for keys) and sharding."""
  sharding = getattr(leaf, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if _is_key(leaf):
    leaf = jax.eval_shape(jax.random.key_data, leaf)
  return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=sharding)
