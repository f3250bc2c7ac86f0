"""Weight averaging: the running averages of `torch.optim.swa_utils.AveragedModel` as pure functions.

    >>> import jax.numpy as jnp
    >>> import gradcore_jax as gcj
    >>> averaged = gcj.averaging.init({"w": jnp.zeros(2)})                  # AveragedModel(model)
    >>> averaged = gcj.averaging.update(averaged, {"w": jnp.ones(2)})       # .update_parameters(model)
    >>> averaged = gcj.averaging.update(averaged, {"w": jnp.full(2, 3.0)})  # the mean of 1 and 3
    >>> averaged.params["w"], int(averaged.n_averaged)
    (Array([2., 2.], dtype=float32), 2)

`gcj.evaluate(apply_fn, loader, params=averaged.params, ...)` scores the average.

The default rule is SWA's equal-weight mean (`swa()`); `ema(decay)` is torch's
`get_ema_multi_avg_fn(decay)`. As in torch, the first `update` (counter `n_averaged = 0`)
copies the params, every later one applies the rule and the counter counts the updates.
Model state (BatchNorm statistics) passed as a separate pytree is copied from the model on
every update (torch's default `use_buffers=False`) or averaged with the same rule
(`use_buffers=True`). Every function is pure and jit-safe: the counter is an array, so
advancing it never retraces.
"""

from __future__ import annotations

from typing import Callable
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from gradcore_jax import _checks
from gradcore_jax._typing import Array
from gradcore_jax._typing import PyTree
from gradcore_jax._typing import Scalar
from gradcore_jax.transforms._formulas import lerp

AvgFn = Callable[[Array, Array, Array], Array]


class AveragedState(NamedTuple):
  """The averaged model: what torch's `AveragedModel` holds.

  Attributes:
    params: the running average of the params (the initial params before the first update);
      pass it to `gcj.evaluate(..., params=averaged.params)`.
    model_state: the averaged (or copied) model state, e.g. BatchNorm statistics; `None` when
      `init` got none.
    n_averaged: int32 scalar, how many updates have been taken (torch's `n_averaged` buffer).
  """

  params: PyTree
  model_state: PyTree
  n_averaged: Array


def init(params: PyTree, model_state: PyTree = None, *, dtype: Optional[jnp.dtype] = None) -> AveragedState:
  """A new average holding a copy of `params` (torch deep-copies the model), `n_averaged = 0`.

  The leaves are copied into new buffers, so donating `params` to a training step later does
  not invalidate the average.

  Args:
    params: the model's params, a pytree of real floating-point arrays.
    model_state: optional non-trainable model state (BatchNorm running statistics, counters),
      a pytree of arrays; give it here to have `update` keep it too.
    dtype: optional floating dtype to keep the averaged params (and the floating leaves of
      `model_state`) in, e.g. `jnp.float32` for bfloat16 params; default: each leaf's own dtype,
      as torch's copy does.

  Returns:
    An `AveragedState`.

  Raises:
    TypeError: a param that is not a real floating-point array, or a `dtype` that is not floating.
  """
  _checks.check_real_floating(params, what="param")
  if dtype is not None and not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
    raise TypeError(f"dtype must be a floating dtype (e.g. jnp.float32), got {dtype!r}.")

  def copy(leaf):
    leaf = jnp.asarray(leaf)
    if dtype is not None and jnp.issubdtype(leaf.dtype, jnp.floating):
      leaf = leaf.astype(dtype)
    return jnp.copy(leaf)

  return AveragedState(
    params=jax.tree.map(copy, params),
    model_state=None if model_state is None else jax.tree.map(copy, model_state),
    n_averaged=jnp.zeros([], jnp.int32),
  )


def swa() -> AvgFn:
  """Torch's equal-weight running mean (`AveragedModel`'s default, `get_swa_avg_fn`).

  `avg <- avg + (p - avg) / (n + 1)` where `n` updates were already averaged, so after `N`
  updates `avg` is the plain mean of the `N` params given. This is the formula torch runs on
  CPU (`get_swa_avg_fn`); on CUDA torch uses `avg.lerp_(p, 1/(n+1))`, which agrees to rounding.
  Integer leaves (a BatchNorm step counter under `use_buffers=True`) are
  averaged in float32 and truncated toward zero, as torch's `copy_` into a long tensor does.

  Returns:
    The per-leaf averaging function `(averaged, current, n_averaged) -> new averaged`.
  """

  def swa_fn(averaged: Array, current: Array, n_averaged: Array) -> Array:
    if not jnp.issubdtype(averaged.dtype, jnp.floating):
      step = (current - averaged).astype(jnp.float32) / (n_averaged + 1).astype(jnp.float32)
      return (averaged.astype(jnp.float32) + step).astype(averaged.dtype)
    # XLA rewrites `x / broadcast(d)` as `x * (1/d)`, which rounds differently from torch's
    # true division; a full-shape divisor behind an optimization barrier keeps the division.
    divisor = lax.optimization_barrier(jnp.broadcast_to((n_averaged + 1).astype(averaged.dtype), averaged.shape))
    return (averaged + (current - averaged) / divisor).astype(averaged.dtype)

  return swa_fn


def ema(decay: Scalar = 0.999) -> AvgFn:
  """Torch's exponential moving average (`get_ema_multi_avg_fn(decay)`).

  `avg <- decay * avg + (1 - decay) * p`, computed as torch does: `avg.lerp(p, 1 - decay)`
  with the weight `1 - decay` taken in double precision and rounded to the leaf's dtype (and
  lerp's switch to `p - (p - avg) * decay` once the weight reaches 0.5). The first `update`
  copies the params (`W_0^EMA = W_0`). Integer leaves are combined in float32 and truncated
  toward zero, as torch does for them.

  Defaults: decay 0.999 (torch's).

  Args:
    decay: the weight of the old average, in [0, 1] (1: keep the first params; 0: follow the
      model); a number or a scalar array.

  Returns:
    The per-leaf averaging function `(averaged, current, n_averaged) -> new averaged`.

  Raises:
    ValueError: `decay` outside [0, 1] or not a scalar.
  """
  value = _checks.concrete_value("decay", decay)
  if decay is None or callable(decay) or isinstance(decay, bool):
    raise TypeError(f"decay must be a number in [0, 1] or a scalar array, got {decay!r}.")
  if value is not None and not 0 <= value <= 1:
    raise ValueError(f"decay must be in [0, 1], got {decay!r}.")

  def ema_fn(averaged: Array, current: Array, n_averaged: Array) -> Array:
    del n_averaged
    if not jnp.issubdtype(averaged.dtype, jnp.floating):
      # torch rounds `decay` and the double `1 - decay` to float32 separately
      keep, take = jnp.asarray(decay, jnp.float32), jnp.asarray(1 - decay, jnp.float32)
      mixed = averaged.astype(jnp.float32) * keep + current.astype(jnp.float32) * take
      return mixed.astype(averaged.dtype)
    return lerp(averaged, current, 1 - decay)

  return ema_fn


def update(
  averaged: AveragedState,
  params: PyTree,
  model_state: PyTree = None,
  *,
  avg_fn: Optional[AvgFn] = None,
  use_buffers: bool = False,
) -> AveragedState:
  """One `AveragedModel.update_parameters(model)`: folds `params` into the average.

  With `n = averaged.n_averaged`: if `n == 0` the params are copied, else each leaf becomes
  `avg_fn(avg, p, n)`; then `n <- n + 1`. `model_state` is copied (`use_buffers=False`,
  torch's default: the average keeps the model's latest BatchNorm statistics) or averaged
  with the same rule (`use_buffers=True`). The leaves of `params` are cast to the average's
  dtypes. Jit-safe: the first-update copy is a select on the traced counter.

  Defaults: `avg_fn=swa()` (equal weights), `use_buffers=False`.

  Args:
    averaged: the `AveragedState` from `init` or a previous `update`.
    params: the model's current params, the same tree (paths and shapes) as `averaged.params`.
    model_state: the model's current non-trainable state, the same tree as
      `averaged.model_state`; required exactly when `init` was given one.
    avg_fn: the per-leaf rule `(averaged, current, n_averaged) -> new averaged`: `swa()`,
      `ema(decay)` or your own (torch's `avg_fn` has the same signature).
    use_buffers: average `model_state` with `avg_fn` too, instead of copying it.

  Returns:
    The new `AveragedState`.

  Raises:
    TypeError: `averaged` not an `AveragedState`, `avg_fn` not callable, `use_buffers` not a bool,
      or a param that is not real floating-point.
    ValueError: `params` or `model_state` not matching the average's trees.
  """
  if not isinstance(averaged, AveragedState):
    raise TypeError(
      f"averaged must be the AveragedState returned by gcj.averaging.init/update, got {type(averaged).__name__}."
    )
  if avg_fn is None:
    avg_fn = swa()
  if not callable(avg_fn):
    raise TypeError(f"avg_fn must be a function (averaged, current, n_averaged) -> array, got {avg_fn!r}.")
  if not isinstance(use_buffers, bool):
    raise TypeError(f"use_buffers must be a bool, got {use_buffers!r}.")
  _checks.check_real_floating(params, what="param")
  _check_matches("params", params, averaged.params)
  if (model_state is None) != (averaged.model_state is None):
    given = "given" if model_state is not None else "missing"
    held = "holds model state" if averaged.model_state is not None else "was initialised without model state"
    raise ValueError(f"model_state is {given}, but the average {held}: pass it to init and to every update.")
  if model_state is not None:
    _check_matches("model_state", model_state, averaged.model_state)

  n = averaged.n_averaged
  first = n == 0

  def fold(avg, current):
    current = jnp.asarray(current).astype(avg.dtype)
    return jnp.where(first, current, jnp.asarray(avg_fn(avg, current, n)).astype(avg.dtype))

  def copy(avg, current):
    return jnp.asarray(current).astype(avg.dtype)

  new_params = jax.tree.map(fold, averaged.params, params)
  new_model_state = None
  if model_state is not None:
    new_model_state = jax.tree.map(fold if use_buffers else copy, averaged.model_state, model_state)
  return AveragedState(params=new_params, model_state=new_model_state, n_averaged=n + 1)


def _check_matches(name: str, tree: PyTree, reference: PyTree) -> None:
  """Raises a ValueError naming `name` unless `tree` has `reference`'s paths and leaf shapes."""
  got, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)
  want, _ = jax.tree_util.tree_flatten_with_path(reference, is_leaf=_is_none)
  got_paths = [jax.tree_util.keystr(path) for path, _ in got]
  want_paths = [jax.tree_util.keystr(path) for path, _ in want]
  if got_paths != want_paths or jax.tree.structure(tree) != jax.tree.structure(reference):
    extra = [path for path in got_paths if path not in set(want_paths)]
    missing = [path for path in want_paths if path not in set(got_paths)]
    detail = (
      f"{extra[0] or '<root>'} is not in the average"
      if extra
      else f"the average's {missing[0] or '<root>'} is missing"
      if missing
      else f"different containers ({jax.tree.structure(tree)} vs {jax.tree.structure(reference)})"
    )
    raise ValueError(f"{name} does not match the tree of the average: {detail}.")
  for (path, leaf), (_, ref) in zip(got, want, strict=True):
    if leaf is None:
      raise ValueError(f"{name} has None at {jax.tree_util.keystr(path) or '<root>'}; every leaf needs a value.")
    if jnp.shape(leaf) != jnp.shape(ref):
      raise ValueError(
        f"{name} at {jax.tree_util.keystr(path) or '<root>'} has shape {jnp.shape(leaf)}, but the average "
        f"there has shape {jnp.shape(ref)}."
      )


def _is_none(x) -> bool:
  return x is None
