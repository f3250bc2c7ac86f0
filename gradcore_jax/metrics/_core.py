"""The machinery every metric shares: compensated sums, tagged states, weights and masks, merge, psum.

A state is a frozen dataclass registered as a pytree whose *aux data* (the static part of
its tree structure) is the string `metric`, the description of the metric that made it
(e.g. `"precision(num_classes=3, average='macro', threshold=0.5, zero_division=0.0)"`).
The tag survives `jit`, `lax.scan`, `psum` and `jax.tree.map`, and costs nothing at run
time: `update`, `merge` and `compute` compare it while tracing and raise a ValueError
naming both metrics when a state meets a metric it was not made by.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any
from typing import Callable
from typing import Mapping
from typing import NamedTuple
from typing import Optional

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jax import lax

from gradcore_jax._typing import Array
from gradcore_jax._typing import ArrayLike

DTYPE = jnp.float32
COUNT_DTYPE = jnp.int32
_LISTED = 5  # out-of-domain values named in an error message


class CompensatedSum(NamedTuple):
  """A float32 running sum carried as `value + compensation` (Neumaier/Knuth two-sum).

  `value` is the rounded sum; `compensation` collects the rounding error of every addition,
  so `value + compensation` stays exact to about float64 precision where a plain float32
  total drifts by ~1e-6 relative after 10⁴–10⁶ additions. Both arrays have the same shape:
  `()` for a scalar statistic, `(classes,)` or `(thresholds,)` for a binned one.

  Attributes:
    value: the rounded running sum, float32.
    compensation: the accumulated rounding error of the additions, float32, shaped like
      `value`.
  """

  value: Array
  compensation: Array


@functools.partial(jax.tree_util.register_dataclass, data_fields=["total", "weight", "count"], meta_fields=["metric"])
@dataclasses.dataclass(frozen=True)
class MeanState:
  """Sufficient statistics of a weighted mean: `total / weight`, computed only at the end.

  Attributes:
    total: `Σ w·v` over unmasked slots, compensated float32.
    weight: `Σ w` over unmasked slots, compensated float32.
    count: int32, the number of unmasked values (exact beyond 2**24; wraps past 2**31).
    metric: static tag, the description of the metric that owns the state.
  """

  total: CompensatedSum
  weight: CompensatedSum
  count: Array
  metric: str


class Metric(NamedTuple):
  """A streaming metric: `init`, `update`, `merge`, `compute`, all pure.

  Attributes:
    init: `init() -> state`, the state of no data.
    update: `update(state, *inputs, sample_weight=None, mask=None) -> state`, the state
      with one batch added (inputs in Keras order, `(y_true, y_pred)`).
    merge: `merge(state_a, state_b) -> state`, the state of both states' data (associative).
    compute: `compute(state) -> value`, the metric's value (a dict for a `collection`).
  """

  init: Callable[[], Any]
  update: Callable[..., Any]
  merge: Callable[[Any, Any], Any]
  compute: Callable[[Any], Any]


# ---------------------------------------------------------------------------------------
# The compensated sum: the only place where float32 totals are added.


def add(a: CompensatedSum, b: CompensatedSum) -> CompensatedSum:
  """Adds two compensated sums element-wise; Knuth's two-sum recovers the rounding error of `a + b` exactly."""
  s = a.value + b.value
  b_virtual = s - a.value
  error = (a.value - (s - b_virtual)) + (b.value - b_virtual)
  return CompensatedSum(s, a.compensation + b.compensation + error)


def zeros(shape: tuple[int, ...] = ()) -> CompensatedSum:
  """An empty compensated sum of `shape`."""
  return CompensatedSum(jnp.zeros(shape, DTYPE), jnp.zeros(shape, DTYPE))


def compensated_total(x: Array) -> CompensatedSum:
  """Sum of all elements of a float32 array, itself compensated (a tree of `add`)."""
  zero = jnp.zeros((), DTYPE)
  return lax.reduce(CompensatedSum(x, jnp.zeros_like(x)), CompensatedSum(zero, zero), add, tuple(range(x.ndim)))


def _parts(x: Array) -> list[Array]:
  """`x` as a sum of parts, exactly, such that any sum of one part's elements is exact but the last's.

  Rump, Ogita and Oishi's error-free extraction (AccSum, 2008): with `|x| < 2**e` and
  `x.size <= 2**k`, the first part is `x` rounded to the grid `q = 2**(e + k - 23)`: every
  partial sum of it is a multiple of `q` below `2**24 · q`, so float32 adds it without
  rounding, in any order (a scatter-add, a cumsum). The rest (at most `q / 2` each) is
  split again on a grid `2**(24 - k)` times finer, and so on, until the parts cover 36
  bits below the largest element; only the last, remaining part is summed with rounding.
  For `x.size <= 2**12` that is three exact parts. Past `2**22` elements no grid has room
  and `x` is returned whole (a plain float32 sum). Exponents are clamped so that the grids
  stay normal float32 numbers.

  Args:
    x: float32 array (its size bounds the number of terms of any sum taken of it).
  """
  k = max(x.size - 1, 0).bit_length()  # x.size <= 2**k
  if k > 22:
    return [x]
  # |x| < 2**e, read from the float32 exponent bits of max|x| (exact, unlike log2).
  e = (lax.bitcast_convert_type(jnp.max(jnp.abs(x), initial=0.0), jnp.int32) >> 23) - 126
  exponent = jnp.clip(e + k - 23, -100, 127)
  parts = []
  for _ in range(max(2, -(-36 // (24 - k)))):  # static: a few levels of (24 - k) bits each
    grid = lax.bitcast_convert_type((exponent + 127) << 23, DTYPE)  # 2**exponent
    part = jnp.round(x / grid) * grid
    parts.append(part)
    x = x - part  # exact: both are multiples of the rest's last bit
    exponent = jnp.maximum(exponent + k - 24, -120)
  return parts + [x]


def _exactly(sum_of: Callable[[Array], Array], x: Array, compensation: Optional[Array] = None) -> CompensatedSum:
  """`sum_of(x)` (a linear sum along the leading axis: scatter-add, cumsum) as a compensated sum.

  The parts of `_parts` (and `compensation`, already small) are stacked on a trailing axis,
  so that one `sum_of` sums them all; the exact sums are then added with two-sums.

  Args:
    sum_of: the sum, along the leading axis of a (n, parts) array.
    x: float32 values, 1-D.
    compensation: float32 compensations of `x`, summed plainly; or None.
  """
  parts = _parts(x)
  rounded = 1 if compensation is None else 2  # the trailing columns that are not exact
  if compensation is not None:
    parts.append(compensation)
  sums = sum_of(jnp.stack(parts, axis=-1))
  if len(parts) == rounded:  # too many elements for an exact grid: a plain float32 sum
    return CompensatedSum(sums[..., 0], jnp.sum(sums[..., 1:], axis=-1))
  total = CompensatedSum(sums[..., 0], jnp.zeros_like(sums[..., 0]))
  for i in range(1, len(parts) - rounded):  # static: two or more exact parts
    total = add(total, CompensatedSum(sums[..., i], jnp.zeros_like(sums[..., i])))
  return CompensatedSum(total.value, total.compensation + jnp.sum(sums[..., len(parts) - rounded :], axis=-1))


def binned_total(bins: Array, weight: Array, num_bins: int) -> CompensatedSum:
  """Per-bin compensated sums of `weight`: `out[b] = Σ weight[i] over bins[i] == b`, shape (num_bins,).

  A float32 scatter-add rounds in an unspecified order; the exact parts of `_parts` make
  all but the last, tiny part's scatter-adds exact. O(n) (a few scatter-adds), no sort, no
  (n, bins) intermediate, and the same result in any order (deterministic on GPU). `bins`
  must lie in [0, num_bins) (callers send excluded slots to bin 0 with weight 0).

  Args:
    bins: int32 bin of each element, 1-D.
    weight: float32 weight of each element, the shape of `bins`.
    num_bins: the number of bins (static).
  """
  return _exactly(lambda v: jax.ops.segment_sum(v, bins, num_segments=num_bins), weight.astype(DTYPE))


def cumulative(s: CompensatedSum, reverse: bool = False) -> CompensatedSum:
  """Inclusive running sums of a 1-D compensated array (`reverse`: from the end), compensated.

  Args:
    s: the compensated values to accumulate.
    reverse: sum from the last element backwards (`out[i] = Σ_{j >= i} s[j]`).
  """

  def running(v: Array) -> Array:
    return jnp.flip(jnp.cumsum(jnp.flip(v, axis=0), axis=0), axis=0) if reverse else jnp.cumsum(v, axis=0)

  return _exactly(running, s.value, s.compensation)


def resolve(s: CompensatedSum) -> Array:
  """The float32 value a compensated sum stands for."""
  return s.value + s.compensation


def divide_no_nan(numerator: Array, denominator: Array) -> Array:
  """`numerator / denominator`, 0 where the denominator is 0 (Keras' `divide_no_nan`)."""
  empty = denominator == 0
  return jnp.where(empty, 0, numerator / jnp.where(empty, 1, denominator))


# ---------------------------------------------------------------------------------------
# State tags.


def check_state(state: Any, state_type: type, tag: str, where: str) -> None:
  """Raises a ValueError unless `state` is a `state_type` made by the metric `tag`.

  Args:
    state: the state given to `where`.
    state_type: the state class of the metric.
    tag: the metric's description.
    where: `"update"`, `"merge"` or `"compute"`, for the message.
  """
  if not isinstance(state, state_type):
    raise ValueError(
      f"{tag}.{where} needs a {state_type.__name__} made by {tag}.init(), got {type(state).__name__} "
      "(a collection's state is a dict: use the collection's own functions)."
    )
  owner = state.metric
  if owner != tag:
    raise ValueError(f"{tag}.{where} got the state of another metric, {owner}; a state only works with its own metric.")


def untagged(state: Any) -> Any:
  """`state` without its tag, for the jitted cores: one compilation serves every metric of a state type."""
  return dataclasses.replace(state, metric="")


def tagged(state: Any, tag: str) -> Any:
  """`state` with the tag `tag`."""
  return dataclasses.replace(state, metric=tag)


def check_merge(a: Any, b: Any, state_type: type, tag: str) -> None:
  """`merge(a, b)` only pools states of one metric: a ValueError naming both metrics otherwise."""
  owners = [getattr(s, "metric", type(s).__name__) for s in (a, b)]
  if not all(isinstance(s, state_type) for s in (a, b)) or owners != [tag, tag]:
    raise ValueError(
      f"{tag}.merge got the states of {owners[0]} and {owners[1]}; only states of the same metric "
      "(the same arguments) can be merged."
    )


# ---------------------------------------------------------------------------------------
# Inputs: arrays, weights, masks, domains.


def as_array(name: str, value: Any) -> Array:
  """`value` as a JAX array of booleans or numbers, or a TypeError naming `name`."""
  if value is None or isinstance(value, (str, bytes)):
    raise TypeError(f"{name} must be an array of numbers or booleans, got {type(value).__name__} {value!r}.")
  try:
    array = jnp.asarray(value)
  except TypeError:
    kind = getattr(value, "dtype", type(value).__name__)
    raise TypeError(f"{name} must be an array of numbers or booleans, got {kind}.") from None
  if not (jnp.issubdtype(array.dtype, jnp.number) or jnp.issubdtype(array.dtype, jnp.bool_)):
    raise TypeError(f"{name} must be an array of numbers or booleans, got dtype {array.dtype}.")
  return array


def is_integer(x: Array) -> bool:
  """Integer or boolean dtype: class ids or labels, never scores."""
  return bool(jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_)


def _fits(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
  """`shape` broadcasts to `target` when aligned on the leading axes (Keras' rule for sample weights)."""
  return len(shape) <= len(target) and all(d in (1, s) for d, s in zip(shape, target, strict=False))


def operand(name: str, x: Optional[ArrayLike], shape: tuple[int, ...]) -> Optional[Array]:
  """`sample_weight` or `mask` as an array that broadcasts to `shape` from the batch axis, or None.

  Checks only types and shapes (no computation), so it runs before the jitted update.

  Args:
    name: `"sample_weight"` or `"mask"`, for the message.
    x: None, or the weights or mask, e.g. of shape (batch,) for values of shape (batch, k).
    shape: the per-example shape of the values.
  """
  if x is None:
    return None
  x = as_array(name, x)
  if not _fits(x.shape, shape):
    raise ValueError(
      f"{name} of shape {x.shape} does not broadcast to the value shape {shape} "
      "(it is aligned with the leading, batch axis)."
    )
  return x


def broadcast_from_batch(x: Array, shape: tuple[int, ...]) -> Array:
  """Broadcasts `x` (checked by `operand`) to `shape`, aligning leading axes."""
  return jnp.broadcast_to(x.reshape(x.shape + (1,) * (len(shape) - x.ndim)), shape)


def weights_and_keep(
  shape: tuple[int, ...],
  sample_weight: Optional[Array],
  mask: Optional[Array],
) -> tuple[Array, Array]:
  """The float32 weight (0 in masked slots) and the bool keep of each slot of `shape`.

  Args:
    shape: the per-example shape the weights apply to, e.g. (batch,) or (batch, seq).
    sample_weight: None (all 1) or weights checked by `operand`.
    mask: None (all kept) or a mask checked by `operand`; non-zero keeps.
  """
  weight = jnp.ones(shape, DTYPE)
  if sample_weight is not None:
    weight = broadcast_from_batch(sample_weight, shape).astype(DTYPE)
  keep = jnp.ones(shape, bool)
  if mask is not None:
    keep = broadcast_from_batch(mask, shape).astype(bool)
  return jnp.where(keep, weight, 0), keep


def check_domain(
  argument: str,
  expected: str,
  values: Array,
  outside: Callable[[Any], Any],
  mask: Optional[Array],
) -> None:
  """Raises a ValueError naming out-of-domain values of kept slots, when the inputs are concrete.

  Runs on the host with NumPy, before the jitted update. Under a trace (`jit`, `vmap`,
  `scan`) values cannot be read without a host round trip; the jitted update then makes
  the metric NaN instead (never a finite wrong number).

  Args:
    argument: `"y_true"` or `"y_pred"`.
    expected: what the values must be, as the message says it.
    values: the argument's values.
    outside: element-wise on a NumPy array, True where a value lies outside the domain.
    mask: None (all kept) or the mask, broadcasting to `values` from the leading axes.
  """
  if isinstance(values, jax.core.Tracer) or isinstance(mask, jax.core.Tracer):
    return
  host = np.asarray(values)
  bad = np.asarray(outside(host), bool)
  if mask is not None:
    kept = np.asarray(mask).astype(bool)
    bad &= np.broadcast_to(kept.reshape(kept.shape + (1,) * (host.ndim - kept.ndim)), host.shape)
  if not bad.any():
    return
  where = np.argwhere(bad)
  listed = ", ".join(
    f"{argument}[{', '.join(map(str, index))}] = {host[tuple(index)].item()!r}" for index in where[:_LISTED]
  )
  more = f" (and {len(where) - _LISTED} more)" if len(where) > _LISTED else ""
  raise ValueError(f"{argument} must hold {expected}; got {listed}{more}. (Under jit the metric is NaN.)")


def check_arity(tag: str, inputs: tuple[Any, ...], names: tuple[str, ...], hint: str = "") -> None:
  """A ValueError when `update` got a different number of inputs than the metric takes."""
  if len(inputs) != len(names):
    raise ValueError(
      f"{tag}.update takes (state, {', '.join(names)}), got {len(inputs)} input(s) after the state.{hint}"
    )


# ---------------------------------------------------------------------------------------
# The weighted mean: init / accumulate / merge / ratio.


def init_mean(tag: str) -> MeanState:
  """An empty `MeanState` of the metric `tag`."""
  return MeanState(zeros(), zeros(), jnp.zeros((), COUNT_DTYPE), tag)


def merge_mean(a: MeanState, b: MeanState) -> MeanState:
  """Adds the statistics of two `MeanState`s of one metric (not checked here)."""
  return MeanState(add(a.total, b.total), add(a.weight, b.weight), a.count + b.count, a.metric)


def ratio(state: MeanState) -> Array:
  """`Σ w·v / Σ w`, or 0 when no weight has been seen (Keras' `divide_no_nan`)."""
  return divide_no_nan(resolve(state.total), resolve(state.weight))


def accumulate(
  state: MeanState,
  values: Array,
  sample_weight: Optional[ArrayLike],
  mask: Optional[ArrayLike],
) -> MeanState:
  """Adds per-example `values` with their weights to `state`; masked slots add nothing."""
  if values.ndim == 0 and sample_weight is None:
    raise ValueError(
      "A 0-d value is a batch mean: pass sample_weight=<number of examples in the batch> "
      "so that it counts for the examples it stands for (or pass the per-example values)."
    )
  weight = operand("sample_weight", sample_weight, values.shape)
  return tagged(_accumulate(untagged(state), values, weight, operand("mask", mask, values.shape)), state.metric)


@jax.jit
def _accumulate(state: MeanState, values: Array, sample_weight: Optional[Array], mask: Optional[Array]) -> MeanState:
  values = values.astype(DTYPE)
  weight, keep = weights_and_keep(values.shape, sample_weight, mask)
  weighted = jnp.where(keep, weight * values, 0)
  batch = MeanState(compensated_total(weighted), compensated_total(weight), jnp.sum(keep, dtype=COUNT_DTYPE), "")
  return merge_mean(state, batch)


def mean_metric(
  tag: str,
  values_of: Callable[..., Array],
  names: tuple[str, ...] = ("y_true", "y_pred"),
  finish: Callable[[Array], Array] = jnp.asarray,
  arity_hint: str = "",
  takes_mask: bool = False,
) -> Metric:
  """A weighted-mean metric over the per-example values `values_of(*inputs)`.

  Args:
    tag: the metric's description, stored in its states.
    values_of: per-example values of the inputs; may raise on bad inputs.
    names: the names of the inputs `update` takes after the state.
    finish: applied to the ratio in `compute` (e.g. `jnp.sqrt`).
    arity_hint: appended to the message when `update` gets the wrong number of inputs.
    takes_mask: call `values_of(*inputs, mask=mask)`, so that domain checks read only the
      kept examples (the mean removes masked values from the state either way).
  """

  def init() -> MeanState:
    return init_mean(tag)

  def update(
    state: MeanState,
    *inputs: Any,
    sample_weight: Optional[ArrayLike] = None,
    mask: Optional[ArrayLike] = None,
  ) -> MeanState:
    check_state(state, MeanState, tag, "update")
    check_arity(tag, inputs, names, arity_hint)
    values = values_of(*inputs, mask=mask) if takes_mask else values_of(*inputs)
    return accumulate(state, values, sample_weight, mask)

  def merge(a: MeanState, b: MeanState) -> MeanState:
    check_merge(a, b, MeanState, tag)
    return merge_mean(a, b)

  def compute(state: MeanState) -> Array:
    check_state(state, MeanState, tag, "compute")
    return finish(ratio(state))

  return Metric(init, update, merge, compute)


# ---------------------------------------------------------------------------------------
# Several metrics at once, and across devices.


def collection(metrics: Mapping[str, Metric]) -> Metric:
  """Runs several metrics on the same inputs; states and values are dicts keyed like `metrics`.

  Every member receives the same `*inputs`, `sample_weight` and `mask`, so members must take
  the same inputs (e.g. all `(y_true, y_pred)`). A state whose keys differ from the
  collection's raises a ValueError naming the missing and unexpected keys.

  Args:
    metrics: `{name: Metric}`.
  """
  metrics = dict(metrics)

  def check_keys(state: Any, where: str) -> None:
    if not isinstance(state, Mapping):
      raise ValueError(f"collection.{where} needs a dict of states {sorted(metrics)}, got {type(state).__name__}.")
    missing, unexpected = sorted(set(metrics) - set(state)), sorted(set(state) - set(metrics))
    if missing or unexpected:
      raise ValueError(
        f"collection.{where} got a state with the keys {sorted(state)}, but the collection has {sorted(metrics)} "
        f"(missing {missing}, unexpected {unexpected}); states of different collections cannot be combined."
      )

  def init() -> dict[str, Any]:
    return {name: m.init() for name, m in metrics.items()}

  def update(
    state: Mapping[str, Any],
    *inputs: Any,
    sample_weight: Optional[ArrayLike] = None,
    mask: Optional[ArrayLike] = None,
  ) -> dict[str, Any]:
    check_keys(state, "update")
    return {name: m.update(state[name], *inputs, sample_weight=sample_weight, mask=mask) for name, m in metrics.items()}

  def merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    check_keys(a, "merge")
    check_keys(b, "merge")
    return {name: m.merge(a[name], b[name]) for name, m in metrics.items()}

  def compute(state: Mapping[str, Any]) -> dict[str, Array]:
    check_keys(state, "compute")
    return {name: m.compute(state[name]) for name, m in metrics.items()}

  return Metric(init, update, merge, compute)


def psum(state: Any, axis_name: Any) -> Any:
  """Sums every statistic of a metric state (or a collection's dict of states) over `axis_name`.

  Use inside `pmap`/`shard_map`/`vmap` with a named axis. The result is the state of all
  devices' data; sums are combined, never averaged (`pmean` would be wrong). The state's
  tag is static and is kept.

  Args:
    state: a metric state or a dict of them.
    axis_name: the named mapped axis to sum over.
  """
  return jax.tree.map(functools.partial(lax.psum, axis_name=axis_name), state)
