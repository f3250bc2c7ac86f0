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

orbax-checkpoint is an optional dependency: `pip install 'gradcore-jax[checkpoint]'`.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gradcore_jax._typing import PyTree
from gradcore_jax.data import _check_int

__all__ = ["CheckpointMismatchError", "Checkpointer", "NonFiniteStateError"]

_LISTED = 8  # differences named in an error message before "... and N more"


class CheckpointMismatchError(ValueError):
  """A checkpoint's arrays do not match the tree it is restored into (paths, shapes or dtypes)."""


class NonFiniteStateError(ValueError):
  """`Checkpointer.save` was given a state with NaN or infinite values; nothing was written."""


class Checkpointer:
  """Checkpoints of one training run in `directory`, one per step, the last `keep` kept.

  Args:
    directory: the folder (created if missing). Temporary directories of unfinished
      writes found there are deleted.
    keep: how many checkpoints to keep (>= 1); saving one more deletes the oldest.

  Writes are synchronous: `save` returns when the checkpoint is complete on disk.
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3) -> None:
    try:
      import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    except ImportError as err:  # pragma: no cover - depends on the environment
      raise ImportError("Checkpoints need orbax-checkpoint: pip install 'gradcore-jax[checkpoint]'.") from err
    self._ocp = ocp
    options = ocp.CheckpointManagerOptions(
        max_to_keep=_check_int("keep", keep, minimum=1),
        create=True,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=False,
    )
    self._manager = ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), options=options)

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
    """Writes `state` (a pytree of arrays) and `record` (JSON-serialisable) as checkpoint `step`.

    Raises `NonFiniteStateError` naming the leaves with NaN/Inf values (nothing is
    written), and ValueError when `step` is negative or already saved.
    """
    step = _check_int("step", step, minimum=0)
    if step in self.steps():
      raise ValueError(f"step {step} is already saved in {self.directory}.")
    paths, leaves = _flatten(state)
    bad = _non_finite(paths, leaves)
    if bad:
      raise NonFiniteStateError(
          f"Refusing to save a checkpoint at step {step}: non-finite values in {_listed(bad)}. "
          "A checkpoint must be a state training can continue from."
      )
    stored = {str(i): jax.random.key_data(leaf) if _is_key(leaf) else leaf for i, leaf in enumerate(leaves)}
    header = {
        "signature": [_describe(leaf) for leaf in leaves],
        "paths": paths,
        "key_impls": {str(i): str(jax.random.key_impl(leaf)) for i, leaf in enumerate(leaves) if _is_key(leaf)},
        "record": record or {},
    }
    ocp = self._ocp
    saved = self._manager.save(
        step, args=ocp.args.Composite(arrays=ocp.args.StandardSave(stored), record=ocp.args.JsonSave(header))
    )
    self._manager.wait_until_finished()
    if not saved:
      raise RuntimeError(f"orbax declined to save step {step} in {self.directory} (its latest is {self.latest_step()}).")

  def restore(self, like: PyTree, step: Optional[int] = None) -> tuple[PyTree, dict[str, Any]]:
    """`(state, record)` of checkpoint `step` (default: the latest), in the structure of `like`.

    `like` is the tree to restore into: arrays or `jax.ShapeDtypeStruct`s with the
    checkpoint's paths, shapes and dtypes (e.g. the freshly initialised state); the
    restored arrays get its leaves' shardings. Raises FileNotFoundError when there is no
    such checkpoint and `CheckpointMismatchError` naming every path whose presence,
    shape or dtype differs.
    """
    step = self._existing(step)
    header = self._header(step)
    paths, leaves = _flatten(like)
    _check_matches(header, paths, leaves, f"{self.directory}/{step}")
    targets = {str(i): _stored_shape(leaf) for i, leaf in enumerate(leaves)}
    ocp = self._ocp
    arrays = self._manager.restore(step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(targets)))["arrays"]
    impls = header["key_impls"]
    restored = [jax.random.wrap_key_data(arrays[i], impl=impls[i]) if i in impls else arrays[i] for i in map(str, range(len(leaves)))]
    return jax.tree.unflatten(jax.tree.structure(like), restored), header["record"]

  def record(self, step: Optional[int] = None) -> dict[str, Any]:
    """The JSON record saved with checkpoint `step` (default: the latest), without reading its arrays."""
    return self._header(self._existing(step))["record"]

  def _existing(self, step: Optional[int]) -> int:
    """`step`, or the latest when None; FileNotFoundError when there is no such complete checkpoint."""
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"No complete checkpoint in {self.directory}.")
    elif step not in self.steps():
      raise FileNotFoundError(f"No complete checkpoint of step {step} in {self.directory} (it has {self.steps()}).")
    return step

  def _header(self, step: int) -> dict[str, Any]:
    ocp = self._ocp
    return self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def _flatten(tree: PyTree) -> tuple[list[str], list[Any]]:
  with_paths = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [jax.tree_util.keystr(path) for path, _ in with_paths], [leaf for _, leaf in with_paths]


def _is_key(leaf: Any) -> bool:
  return jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _describe(leaf: Any) -> str:
  """`float32[64,10]`-style shape and dtype of a leaf (for keys, the key type)."""
  return f"{leaf.dtype}[{','.join(map(str, np.shape(leaf)))}]"


def _non_finite(paths: list[str], leaves: list[Any]) -> list[str]:
  """The paths of the inexact leaves that hold a NaN or an infinity (one transfer)."""
  inexact = [(path, leaf) for path, leaf in zip(paths, leaves) if not _is_key(leaf) and jnp.issubdtype(leaf.dtype, jnp.inexact)]
  finite = jax.device_get(_all_finite([leaf for _, leaf in inexact]))
  return [path for (path, _), ok in zip(inexact, finite) if not ok]


@jax.jit
def _all_finite(leaves: list[Any]) -> list[jax.Array]:
  return [jnp.all(jnp.isfinite(leaf)) for leaf in leaves]


def _check_matches(header: dict[str, Any], paths: list[str], leaves: list[Any], where: str) -> None:
  saved = dict(zip(header["paths"], header["signature"]))
  wanted = {path: _describe(leaf) for path, leaf in zip(paths, leaves)}
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
