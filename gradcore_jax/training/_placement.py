"""Where `fit` and `evaluate` put their arrays: the default device, or a `jax.sharding.Mesh`.

On a mesh, every batch is split along its example axis over the mesh's data axes
(`NamedSharding(mesh, P(data_axes))`; stacked epochs along their second axis), params are
replicated or laid out as the caller asks (FSDP style: a `PartitionSpec` or `Sharding` per
param), each optimizer-state leaf shaped like a param takes that param's sharding
(`optax.tree_utils.tree_map_params`), and everything else (counters, metric statistics,
non-trained model state) is replicated. The steps themselves are plain `jax.jit`
functions: the compiler partitions them from these input shardings, so a sum over the
batch axis (the loss numerator, every metric statistic) is a sum over all devices by
construction, never an average of per-device figures.

With several processes (`jax.distributed`), a batch comes either from a loader over the
whole data on every process (each process builds its own devices' rows from it) or from a
`DataLoader(..., process_local=True)` on each process over its own examples: each
process's batch then fills the rows its devices hold (`jax.make_array_from_process_local_data`),
and the host-side counts of real rows are summed over the processes.

Every placement makes new buffers, so donating them never consumes the caller's arrays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from typing import Any
from typing import Callable
from typing import Optional
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
from jax.sharding import Sharding

from gradcore_jax._typing import PyTree
from gradcore_jax.training._models import copy_tree

ParamSharding = Union[None, PartitionSpec, Sharding, PyTree, Callable[[Any, Any], Union[PartitionSpec, Sharding]]]


@dataclasses.dataclass(frozen=True)
class Placement:
  """How one `fit` or `evaluate` call places its arrays (see the module docstring).

  Attributes:
    mesh: the mesh, or None for the default device (nothing is moved, only copied).
    data_axes: the mesh axes the batch's example axis is split over.
    param_sharding: the caller's `param_sharding` argument (None: replicated).
  """

  mesh: Optional[Mesh] = None
  data_axes: tuple[str, ...] = ()
  param_sharding: ParamSharding = None

  @classmethod
  def build(
    cls, mesh: Optional[Mesh], data_axis: Union[None, str, tuple[str, ...]], param_sharding: ParamSharding
  ) -> "Placement":
    """Checks the `mesh`, `data_axis` and `param_sharding` arguments of `fit`/`evaluate`."""
    if mesh is None:
      for name, value in (("data_axis", data_axis), ("param_sharding", param_sharding)):
        if value is not None:
          raise ValueError(f"{name} needs a mesh: pass mesh=jax.make_mesh(...) as well.")
      return cls()
    if not isinstance(mesh, Mesh):
      raise ValueError(
        f"mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((8,), ('data',))), got {type(mesh).__name__}."
      )
    axes = mesh.axis_names if data_axis is None else (data_axis,) if isinstance(data_axis, str) else tuple(data_axis)
    unknown = [axis for axis in axes if axis not in mesh.axis_names]
    if unknown or not axes:
      raise ValueError(f"data_axis must name axes of the mesh {mesh.axis_names}; got {data_axis!r}.")
    return cls(mesh, tuple(axes), param_sharding)

  @property
  def data_devices(self) -> int:
    """Devices a batch is split over (1 without a mesh)."""
    return math.prod(self.mesh.shape[axis] for axis in self.data_axes) if self.mesh is not None else 1

  def context(self) -> contextlib.AbstractContextManager:
    """`jax.set_mesh(mesh)` (which Explicit mesh axes need), or nothing without a mesh."""
    return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

  def check_loader(self, name: str, loader: Any) -> None:
    """Refuses a loader whose batches cannot be split evenly, or process-local loaders that differ.

    A process-local loader needs a mesh (without one each process trains alone); its global
    batch is `batch_size` times the number of processes, and every process's loader must
    have the same settings and number of examples (else the processes would run different
    numbers of steps and wait for each other forever).
    """
    processes = jax.process_count() if loader.process_local else 1
    if processes > 1 and self.mesh is None:
      raise ValueError(f"{name} is process_local: pass the mesh spanning the {processes} processes as well.")
    if loader.batch_size * processes % self.data_devices:
      raise ValueError(
        f"{name}.batch_size ({loader.batch_size}{f' on each of {processes} processes' if processes > 1 else ''}) "
        f"must be divisible by the {self.data_devices} devices of the "
        f"mesh's data axes {self.data_axes}: every device takes an equal share of each batch."
      )
    if processes > 1 and not _same_everywhere(repr(loader)):
      raise ValueError(
        f"{name} is process_local, so every process must build it with the same settings and number of "
        f"examples; here it is {loader!r}, and another process's differs. Give each process an equal "
        "share of the data (drop the remainder)."
      )

  def params(self, params: PyTree) -> tuple[PyTree, PyTree]:
    """`(placed params, their shardings)`; the shardings are None without a mesh."""
    if self.mesh is None:
      return copy_tree(params), None
    shardings = self._param_shardings(params)

    def put(path: Any, leaf: Any, sharding: Sharding) -> jax.Array:
      try:
        return _put(leaf, sharding)
      except (ValueError, TypeError) as err:
        raise ValueError(
          f"param_sharding does not fit params{jax.tree_util.keystr(path)} of shape {np.shape(leaf)}: {err}"
        ) from err

    return jax.tree_util.tree_map_with_path(put, params, shardings), shardings

  def opt_state(self, tx: optax.GradientTransformation, opt_state: PyTree, params: PyTree) -> PyTree:
    """Fresh buffers of `opt_state`, each leaf laid out as `tx.init` would lay it out for the placed `params`.

    The layout comes from compiling `tx.init` on the params' shardings (nothing is computed), so
    a leaf shaped like its param follows that param, a reduced statistic (Adafactor's row and
    column factors) follows what `init` gives it, and counters are replicated. Matching state
    leaves to params by tree position alone would miss both of the latter.
    """
    if self.mesh is None:
      return copy_tree(opt_state)
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params)
    shardings = jax.jit(tx.init).lower(abstract).compile().output_shardings
    try:
      return jax.tree.map(_put, opt_state, shardings)
    except (ValueError, TypeError) as err:
      raise ValueError(
        f"Cannot place the optimizer state on the mesh: its structure does not follow optimizer.init(params) ({err})."
      ) from err

  def replicated(self, tree: PyTree) -> PyTree:
    """Fresh buffers of `tree`, on every device of the mesh (or on the default device)."""
    if self.mesh is None:
      return copy_tree(tree)
    return jax.tree.map(lambda leaf: _put(leaf, self._replicated), tree)

  def batch(self, batch: PyTree, *, stacked: bool = False, process_local: bool = False) -> PyTree:
    """`batch` (host arrays) split over the data axes along the example axis (axis 1 when `stacked`).

    `process_local`: `batch` is this process's share of the global batch (see the module docstring).
    """
    if self.mesh is None:
      return batch
    spec = PartitionSpec(*((None,) if stacked else ()), self.data_axes)
    sharding = NamedSharding(self.mesh, spec)
    if process_local and jax.process_count() > 1:
      return jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(sharding, np.asarray(leaf)), batch)
    return jax.tree.map(lambda leaf: _put(leaf, sharding), batch)

  def real_rows(self, loader: Any, sizes: list[int]) -> list[int]:
    """The real rows of each global batch, from this process's counts `sizes` of `loader`'s batches.

    The same list for a loader over the whole data; for a process-local one, the counts of
    all processes summed (one collective), so the loss and `examples_seen` weigh every
    example of the global batch.
    """
    if not (loader.process_local and jax.process_count() > 1):
      return sizes
    return np.asarray(multihost_utils.process_allgather(np.asarray(sizes, np.int32))).sum(axis=0).tolist()

  @property
  def _replicated(self) -> NamedSharding:
    return self._on_mesh(PartitionSpec())

  def _on_mesh(self, spec: PartitionSpec) -> NamedSharding:
    """`spec` on the mesh; only the paths that have a mesh get here."""
    if self.mesh is None:
      raise RuntimeError("internal error: a sharding was asked for without a mesh.")
    return NamedSharding(self.mesh, spec)

  def _param_shardings(self, params: PyTree) -> PyTree:
    spec = self.param_sharding
    if spec is None:
      return jax.tree.map(lambda _: self._replicated, params)
    if callable(spec) and not _is_spec(spec):
      return jax.tree_util.tree_map_with_path(lambda path, leaf: self._sharding(spec(path, leaf), path), params)
    try:
      return jax.tree.map(lambda s, sub: jax.tree.map(lambda _: self._sharding(s), sub), spec, params, is_leaf=_is_spec)
    except ValueError as err:
      if "param_sharding" in str(err):
        raise
      raise ValueError(
        "param_sharding must be a PartitionSpec or Sharding, a pytree of them shaped like params (or a "
        f"prefix of it), or a callable (path, leaf) -> PartitionSpec; it does not match params: {err}"
      ) from err

  def _sharding(self, spec: Any, path: Any = ()) -> Sharding:
    where = f" for params{jax.tree_util.keystr(path)}" if path else ""
    if isinstance(spec, PartitionSpec):
      return self._on_mesh(spec)
    if isinstance(spec, NamedSharding) and spec.mesh == self.mesh:
      return spec
    raise ValueError(f"param_sharding{where} must give a PartitionSpec or a NamedSharding on the mesh, got {spec!r}.")


def _same_everywhere(text: str) -> bool:
  """Whether every process passes the same `text` (compared by a hash of it, one collective)."""
  digest = np.frombuffer(hashlib.sha256(text.encode()).digest()[:16], np.int32)
  everyone = np.asarray(multihost_utils.process_allgather(digest))
  return bool((everyone == everyone[0]).all())


def _is_spec(x: Any) -> bool:
  return isinstance(x, (PartitionSpec, Sharding))


def _put(leaf: Any, sharding: Sharding) -> jax.Array:
  """A new array with `leaf`'s values laid out as `sharding`.

  With several processes (`jax.distributed`), a host array must hold the same global
  values on every process; each process builds only its own devices' shards from it.
  """
  if jax.process_count() > 1 and not isinstance(leaf, jax.Array):
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
  if isinstance(leaf, jax.Array):
    # jax 0.10's device_put replicating a one-device array keeps the source buffer as the
    # shard on that device, even with may_alias=False; the step then donates it and the
    # caller's array is deleted. Placing a private copy keeps the caller's arrays alive.
    leaf = jnp.copy(leaf)
  return jax.device_put(leaf, sharding, may_alias=False)
