"""One internal form for the three kinds of model `fit` and `evaluate` accept.

Whatever the user passes, the step functions see an `Adapted`: a pure
`apply(params, model_state, inputs, train) -> (predictions, model_state)`, the trained
`params`, the Optax transformation and its state, the non-trained `model_state` (linen
collections such as `batch_stats` and the step count that RNG keys are folded with, Flax
NNX batch statistics and RNG streams; `None` when there is none), and a `rebuild` that
turns the trained arrays back into the user's form. So there is one train step and one
eval step, not three.

| `model` argument | also needs | `FitResult.model` |
|---|---|---|
| a function `apply_fn(params, inputs)` | `params`, an Optax `optimizer` | the trained params |
| a Flax linen `TrainState` | nothing (its `tx` is the optimizer) | the advanced `TrainState` |
| a Flax linen `Module` | `params` (the variables), `optimizer` | a new `TrainState` |
| a Flax NNX `Module` | an `nnx.Optimizer` or an Optax `optimizer` | the same module, updated |

Train and eval mode. `apply(..., train=True)` runs the model as a training step does,
`train=False` as an evaluation does:

- a function or linen module gets its mode keywords (`ModelOptions.mode_flags`; detected
  from its signature by default: `train`, `training` and `is_training` are True in
  training, `deterministic` is False in training; evaluation passes the negations);
- an NNX module is split twice, once with the attributes `mode_flags` set to their
  training values (default `deterministic=False, use_running_average=False`, what
  `nnx.Module.train()` sets) and once with the negations (what `.eval()` sets): two graph
  definitions over one state, so the caller's module is never switched.

Randomness. For seed `s` the key of RNG stream `name` is
`stream_key(s, name) = fold_in(key(s), crc32(name))`. A linen model (and a function with
an `rngs` parameter) gets `rngs = {name: fold_in(stream_key(s, name), step)}` in a
training step, `step` being the number of updates made before it (the `TrainState.step`
convention, so a skipped step leaves it as it was); evaluation passes no RNGs (a function
gets `rngs=None`). An NNX module draws from its own `nnx.Rngs` streams, which live in its
state; with a seed, each of them is first re-seeded (`nnx.reseed`) to `stream_key(s, name)`.

Flax is optional: it is only looked at when the caller has imported it already.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import zlib
from typing import Any
from typing import Callable
from typing import Mapping
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradcore_jax._typing import Array
from gradcore_jax._typing import PyTree

Apply = Callable[[PyTree, PyTree, PyTree, bool], tuple[Array, PyTree]]
Rebuild = Callable[[PyTree, PyTree, PyTree, int], Any]

# Keyword arguments that select a mode by convention: True in training, or False in training.
TRAIN_TRUE_KEYWORDS = ("train", "training", "is_training")
TRAIN_FALSE_KEYWORDS = ("deterministic",)
# The attributes `nnx.Module.train()` sets (and `.eval()` negates).
NNX_MODE_ATTRIBUTES = {"deterministic": False, "use_running_average": False}
DEFAULT_STREAMS = ("dropout",)


@dataclasses.dataclass(frozen=True)
class ModelOptions:
  """How `fit` and `evaluate` run a model: its mode, its randomness and its mutable state.

  Attributes:
    mode_flags: `{name: value in training}` for the model's mode switches, which
      evaluation sets to `not value`: keyword arguments of a function's or a linen
      module's call, attributes of an NNX module's submodules. None: detected (see the
      module docstring); `{}`: none.
    seed: the integer all RNG keys of the run derive from (see the module docstring).
      None: 0 for a linen model or a function; an NNX module keeps its own streams.
    rng_streams: the RNG streams drawn from `seed`: a linen model's (default
      `("dropout",)`) or, with a seed, the NNX streams to re-seed (default: all).
    mutable: the linen collections a training step updates (default: every collection
      besides `"params"`; for a `TrainState`, its `batch_stats` field if it has one).
  """

  mode_flags: Optional[Mapping[str, bool]] = None
  seed: Optional[int] = None
  rng_streams: Optional[tuple[str, ...]] = None
  mutable: Optional[tuple[str, ...]] = None


@dataclasses.dataclass(frozen=True)
class Adapted:
  """A model of any supported kind, as pure pieces.

  Attributes:
    apply: `apply(params, model_state, inputs, train) -> (predictions, new_model_state)`,
      pure; `train` (a Python bool) picks train or eval mode, and in eval mode
      `new_model_state` is `model_state`.
    tx: the optimizer, or `None` when only evaluating.
    params: the trained arrays (what gradients are taken of).
    opt_state: `tx`'s state (`None` when `tx` is).
    model_state: non-trained variables threaded through `apply`, or `None`.
    rebuild: `rebuild(params, opt_state, model_state, steps)` gives the user's form back,
      `steps` being the number of updates made since this `Adapted` was built.
  """

  apply: Apply
  tx: Optional[optax.GradientTransformation]
  params: PyTree
  opt_state: PyTree
  model_state: PyTree
  rebuild: Rebuild


def stream_key(seed: int, name: str) -> Array:
  """The run's key of RNG stream `name`: `fold_in(key(seed), crc32(name))`."""
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()))


def adapt(
  model: Any,
  optimizer: Any = None,
  *,
  params: PyTree = None,
  opt_state: PyTree = None,
  options: ModelOptions = ModelOptions(),
  train: bool = True,
) -> Adapted:
  """Recognises the kind of `model` and returns its `Adapted` form (see the module table).

  `opt_state` continues a run with a plain function or a linen module; a `TrainState` and
  an `nnx.Optimizer` carry their own. With `train` (what `fit` asks for), the params must
  be floating point and a given optimizer state must be one `tx.init(params)` makes.
  Raises ValueError naming the argument that is missing, superfluous or of the wrong kind.
  """
  flax = _loaded_flax()
  if flax is not None and isinstance(model, flax.TrainState):
    _reject("optimizer", optimizer, "a TrainState carries its optimizer in .tx")
    _reject("params", params, "a TrainState carries its params")
    _reject("opt_state", opt_state, "a TrainState carries its opt_state")
    adapted = _from_train_state(model, options)
    names = ("model.params", "model.opt_state")
  elif flax is not None and isinstance(model, flax.LinenModule):
    tx = _require_optax(optimizer)
    variables = _require("params", params, "a linen Module")
    params, collections = _split_variables(variables)
    adapted = _from_train_state(_linen_state(flax, model.apply, params, tx, opt_state, collections), options)
    names = ("params", _named("opt_state", opt_state))
  elif flax is not None and isinstance(model, flax.nnx.Module):
    _reject("params", params, "an NNX Module holds its own params")
    _reject("mutable", options.mutable, "it is for linen collections; an NNX module carries its state itself")
    adapted = _from_nnx(flax.nnx, model, optimizer, opt_state, options)
    own = isinstance(optimizer, flax.nnx.Optimizer)
    names = ("the module's trained variables", "optimizer.opt_state" if own else _named("opt_state", opt_state))
  elif callable(model):
    _reject("mutable", options.mutable, "it is for linen collections; an apply function has none")
    adapted = _from_function(model, _require("params", params, "a plain apply function"), optimizer, opt_state, options)
    names = ("params", _named("opt_state", opt_state))
  else:
    raise ValueError(
      "model must be an apply function `apply_fn(params, inputs)`, a Flax linen TrainState or "
      f"Module, or a Flax NNX Module; got {type(model).__name__}."
    )
  if train and adapted.tx is not None:  # `names`: where the params and a not freshly made opt_state came from
    _check_trainable(adapted.params, names[0])
    if names[1] is not None:
      _check_opt_state(adapted.tx, adapted.params, adapted.opt_state, names[1])
  return adapted


def _from_function(
  apply_fn: Callable, params: PyTree, optimizer: Any, opt_state: PyTree, options: ModelOptions
) -> Adapted:
  tx = _require_optax(optimizer)
  keywords = _keywords(apply_fn, skip=2)
  flags = _call_flags(keywords, options.mode_flags, "the apply function")
  takes_rngs = keywords is not None and "rngs" in keywords.names
  streams = _streams(options.rng_streams)
  bases = {name: stream_key(options.seed or 0, name) for name in streams} if takes_rngs else {}

  def apply(p: PyTree, state: PyTree, inputs: PyTree, train: bool) -> tuple[Array, PyTree]:
    kwargs: dict[str, Any] = _mode_kwargs(flags, train)
    if not takes_rngs:
      return apply_fn(p, inputs, **kwargs), state
    if not train:
      return apply_fn(p, inputs, rngs=None, **kwargs), state
    step = state["step"]
    predictions = apply_fn(p, inputs, rngs=_fold(bases, step), **kwargs)
    return predictions, {"step": step + 1}

  return Adapted(
    apply=apply,
    tx=tx,
    params=params,
    opt_state=_initial_state(tx, params, opt_state),
    model_state={"step": jnp.zeros((), jnp.int32)} if takes_rngs else None,
    rebuild=lambda p, *_: p,
  )


def _from_train_state(state: Any, options: ModelOptions) -> Adapted:
  """A linen `TrainState` (the module's `apply` and its params, optimizer and collections)."""
  apply_fn = state.apply_fn
  collections, mutable, fields = _state_collections(state, options.mutable)
  module = getattr(apply_fn, "__self__", None)
  keywords = _keywords(module.__call__ if module is not None else apply_fn, skip=1)
  flags = _call_flags(keywords, options.mode_flags, "the linen module's __call__")
  streams = _streams(options.rng_streams)
  bases = {name: stream_key(options.seed or 0, name) for name in streams}

  def apply(p: PyTree, model_state: PyTree, inputs: PyTree, train: bool) -> tuple[Array, PyTree]:
    variables = {"params": p, **model_state["collections"]}
    kwargs: dict[str, Any] = _mode_kwargs(flags, train)
    if not train:
      return _linen_eval(apply_fn, variables, inputs, kwargs), model_state
    step = model_state["step"]
    if bases:
      kwargs["rngs"] = _fold(bases, step)
    if not mutable:
      return apply_fn(variables, inputs, **kwargs), {**model_state, "step": step + 1}
    predictions, updated = apply_fn(variables, inputs, mutable=list(mutable), **kwargs)
    old = model_state["collections"]
    new = {name: updated.get(name, value) if name in mutable else value for name, value in old.items()}
    return predictions, {"collections": new, "step": step + 1}

  def rebuild(p: PyTree, o: PyTree, model_state: PyTree, steps: int) -> Any:
    new = model_state["collections"]
    extra = {"collections": new} if fields is None else {name: new[name] for name in fields}
    return state.replace(step=state.step + steps, params=p, opt_state=o, **extra)

  return Adapted(
    apply=apply,
    tx=state.tx,
    params=state.params,
    opt_state=state.opt_state,
    model_state={"collections": collections, "step": jnp.asarray(state.step, jnp.int32)},
    rebuild=rebuild,
  )


def _linen_eval(apply_fn: Callable, variables: PyTree, inputs: PyTree, kwargs: dict[str, Any]) -> Array:
  """`apply_fn` in eval mode: no RNGs, every collection immutable (a write says how to fix it)."""
  from flax import errors  # pylint: disable=g-import-not-at-top  (loaded: the model is a linen one)

  try:
    return apply_fn(variables, inputs, **kwargs)
  except (errors.ModifyScopeVariableError, errors.InvalidRngError) as err:
    what = "update its collections" if isinstance(err, errors.ModifyScopeVariableError) else "draw random numbers"
    raise ValueError(
      f"In eval mode the linen model must not {what}, but it did ({err}). Pass the keyword that switches it to "
      f"eval mode with mode_flags={{name: value in training}} (passed now: {kwargs or 'none'})."
    ) from err


def _state_collections(state: Any, mutable: Optional[tuple[str, ...]]) -> tuple[dict, tuple, Optional[tuple]]:
  """`(collections, mutable names, TrainState fields holding them or None for `.collections`)`."""
  flax = _loaded_flax()
  if flax is not None and isinstance(state, flax.CollectionsState):
    collections = dict(state.collections)
    names = tuple(collections) if mutable is None else mutable
    _check_names("mutable", names, collections, "the model's linen collections")
    return collections, names, None
  if mutable is None:
    mutable = ("batch_stats",) if getattr(state, "batch_stats", None) is not None else ()
  missing = [name for name in mutable if not hasattr(state, name)]
  if missing:
    raise ValueError(
      f"mutable names {missing}, which are not among the model's linen collections (the variables besides "
      f"'params', or fields of its {type(state).__name__})."
    )
  return {name: getattr(state, name) for name in mutable}, mutable, mutable


def _linen_state(
  flax: Any, apply_fn: Callable, params: PyTree, tx: Any, opt_state: PyTree, collections: dict[str, PyTree]
) -> Any:
  """A new `TrainState` at step 0 (with `.collections` when the variables hold more than params)."""
  opt_state = _initial_state(tx, params, opt_state)
  fields = {"step": 0, "apply_fn": apply_fn, "params": params, "tx": tx, "opt_state": opt_state}
  if collections:
    return flax.CollectionsState(**fields, collections=collections)
  return flax.TrainState(**fields)


def _split_variables(variables: PyTree) -> tuple[PyTree, dict[str, PyTree]]:
  """`module.init(...)` output as `(params, other collections)`; a bare params tree as `(it, {})`."""
  if not isinstance(variables, Mapping) or "params" not in variables:
    return variables, {}
  return variables["params"], {name: value for name, value in variables.items() if name != "params"}


def _from_nnx(nnx: Any, module: Any, optimizer: Any, opt_state: PyTree, options: ModelOptions) -> Adapted:
  """Splits `module` into two graph definitions (train and eval mode), pure params and pure state."""
  if isinstance(optimizer, nnx.Optimizer):
    _reject("opt_state", opt_state, "an nnx.Optimizer carries its opt_state")
    tx, wrt = optimizer.tx, optimizer.wrt
  else:
    tx, wrt = _require_optax(optimizer), nnx.Param
  flags = dict(NNX_MODE_ATTRIBUTES if options.mode_flags is None else _check_flags(options.mode_flags))
  strict = options.mode_flags is not None
  train_def, params, rest = nnx.split(_nnx_view(nnx, module, flags, strict), wrt, ...)
  eval_def = nnx.split(_nnx_view(nnx, module, _negated(flags), strict), wrt, ...)[0]
  params, rest = nnx.as_pure(params), nnx.as_pure(rest)
  if options.seed is not None:
    rest = _reseed(nnx, train_def, wrt, params, rest, options)
  elif options.rng_streams is not None:
    raise ValueError("rng_streams of an NNX module are the streams re-seeded from seed: pass seed as well.")
  if isinstance(optimizer, nnx.Optimizer):
    opt_state = nnx.as_pure(optimizer.opt_state)

  def apply(p: PyTree, r: PyTree, inputs: PyTree, train: bool) -> tuple[Array, PyTree]:
    merged = nnx.merge(train_def if train else eval_def, p, r)
    predictions = merged(inputs)
    return predictions, nnx.as_pure(nnx.split(merged, wrt, ...)[2]) if train else r

  def rebuild(p: PyTree, o: PyTree, r: PyTree, steps: int) -> Any:
    nnx.update(module, p, r)
    if isinstance(optimizer, nnx.Optimizer):
      nnx.update(optimizer.opt_state, nnx.state(o))
      optimizer.step[...] += steps
    return module

  return Adapted(apply, tx, params, _initial_state(tx, params, opt_state), rest, rebuild)


def _nnx_view(nnx: Any, module: Any, attributes: dict[str, bool], strict: bool) -> Any:
  """A copy of `module`'s graph sharing its arrays, with `attributes` set on every submodule having them."""
  view = nnx.merge(*nnx.split(module))
  try:
    view.set_attributes(raise_if_not_found=strict, **attributes)
  except ValueError as err:
    raise ValueError(
      f"mode_flags {sorted(attributes)} must name attributes of the NNX module's submodules: {err}"
    ) from err
  return view


def _reseed(nnx: Any, graphdef: Any, wrt: Any, params: PyTree, rest: PyTree, options: ModelOptions) -> PyTree:
  """`rest` with the chosen RNG streams re-seeded to `stream_key(seed, name)` (`nnx.reseed`)."""
  view = nnx.merge(graphdef, params, rest)
  held = sorted({node.key.tag for _, node in nnx.iter_graph(view) if isinstance(node, nnx.RngStream)})
  streams = held if options.rng_streams is None else options.rng_streams
  _check_names("rng_streams", streams, held, "the NNX module's RNG streams")
  seed = options.seed if options.seed is not None else 0
  nnx.reseed(view, **{name: stream_key(seed, name) for name in streams})
  return nnx.as_pure(nnx.split(view, wrt, ...)[2])


class _Keywords(NamedTuple):
  names: tuple[str, ...]  # parameters that can be passed by keyword
  any: bool  # a **kwargs parameter


def _keywords(fn: Any, *, skip: int) -> Optional[_Keywords]:
  """The keyword parameters of `fn` after its first `skip` positional ones; None when it has no signature."""
  try:
    parameters = list(inspect.signature(fn).parameters.values())
  except (TypeError, ValueError):
    return None
  keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
  return _Keywords(
    tuple(p.name for i, p in enumerate(parameters) if p.kind in keyword_kinds and i >= skip),
    any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters),
  )


def _call_flags(keywords: Optional[_Keywords], mode_flags: Optional[Mapping[str, bool]], what: str) -> dict[str, bool]:
  """The mode keywords with their training values: `mode_flags`, or those detected by name."""
  if mode_flags is None:
    names = keywords.names if keywords is not None else ()
    detected = {name: True for name in TRAIN_TRUE_KEYWORDS if name in names}
    return detected | {name: False for name in TRAIN_FALSE_KEYWORDS if name in names}
  flags = _check_flags(mode_flags)
  if keywords is not None and not keywords.any:
    unknown = [name for name in flags if name not in keywords.names]
    if unknown:
      raise ValueError(f"mode_flags names {unknown}, which {what} does not take; it takes {list(keywords.names)}.")
  return flags


def _check_flags(mode_flags: Any) -> dict[str, bool]:
  if not isinstance(mode_flags, Mapping) or not all(
    isinstance(k, str) and isinstance(v, (bool, np.bool_)) for k, v in mode_flags.items()
  ):
    raise ValueError(
      "mode_flags must be a dict {name: value in training (True or False)}, e.g. {'train': True} or "
      f"{{'deterministic': False}}; got {mode_flags!r}."
    )
  return {name: bool(value) for name, value in mode_flags.items()}


def _negated(flags: dict[str, bool]) -> dict[str, bool]:
  return {name: not value for name, value in flags.items()}


def _mode_kwargs(flags: dict[str, bool], train: bool) -> dict[str, bool]:
  return dict(flags) if train else _negated(flags)


def _streams(rng_streams: Optional[tuple[str, ...]]) -> tuple[str, ...]:
  return DEFAULT_STREAMS if rng_streams is None else rng_streams


def _fold(bases: dict[str, Array], step: Array) -> dict[str, Array]:
  """Each stream's key for the step: `fold_in(stream_key, step)`."""
  return {name: jax.random.fold_in(base, step) for name, base in bases.items()}


def _check_names(argument: str, names: Any, available: Any, what: str) -> None:
  missing = [name for name in names if name not in available]
  if missing:
    raise ValueError(f"{argument} names {missing}, which are not among {what} {sorted(available)}.")


def _check_trainable(params: PyTree, name: str) -> None:
  """Every trained leaf must be floating point (or complex): gradients are taken of them."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise ValueError(
        f"{name}{jax.tree_util.keystr(path)} has dtype {dtype}, but the trained params must be floating point "
        "(the optimizer updates them along their gradients): make it a float array, or keep integer constants "
        "out of the params."
      )


def _check_opt_state(tx: optax.GradientTransformation, params: PyTree, opt_state: PyTree, name: str) -> None:
  """`opt_state` must have the structure, shapes and dtypes `tx.init(params)` gives."""
  want, want_def = jax.tree_util.tree_flatten_with_path(jax.eval_shape(tx.init, params))
  got, got_def = jax.tree_util.tree_flatten_with_path(opt_state)
  if want_def != got_def:
    raise ValueError(
      f"{name} is not a state of this optimizer: optimizer.init(params) makes {_short(want_def)}, but {name} is "
      f"{_short(got_def)}. Pass the state this optimizer returned (or none, to start afresh)."
    )
  for (path, expected), (_, leaf) in zip(want, got, strict=True):
    dtype = getattr(leaf, "dtype", None)
    if np.shape(leaf) != expected.shape or (dtype is not None and np.dtype(dtype) != np.dtype(expected.dtype)):
      raise ValueError(
        f"{name}{jax.tree_util.keystr(path)} has shape {np.shape(leaf)} and dtype {dtype}, but optimizer.init(params) "
        f"makes shape {expected.shape} and dtype {expected.dtype} there: it belongs to other params or another "
        "optimizer."
      )


def _short(treedef: Any, limit: int = 300) -> str:
  text = str(treedef)
  return text if len(text) <= limit else text[:limit] + "..."


def _initial_state(tx: Optional[optax.GradientTransformation], params: PyTree, opt_state: PyTree) -> PyTree:
  if tx is None or opt_state is not None:
    return opt_state
  return tx.init(params)


def _require_optax(optimizer: Any) -> Optional[optax.GradientTransformation]:
  """`optimizer` itself, which must be an Optax transformation or None (evaluation only)."""
  if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
    raise ValueError(
      "optimizer must be an Optax GradientTransformation (e.g. gradcore_jax.adam(1e-3) or "
      f"optax.sgd(0.1)); got {type(optimizer).__name__}."
    )
  return optimizer


def _named(name: str, value: Any) -> Optional[str]:
  """`name` when the caller gave `value`, else None."""
  return None if value is None else name


def _require(name: str, value: Any, kind: str) -> Any:
  if value is None:
    raise ValueError(f"{name} is required when model is {kind}.")
  return value


def _reject(name: str, value: Any, reason: str) -> None:
  if value is not None:
    raise ValueError(f"{name} must not be given here: {reason}.")


@jax.jit
def copy_tree(tree: PyTree) -> PyTree:
  """Fresh device buffers for every leaf, so donating them never consumes the caller's arrays.

  One compiled call for the whole tree (eager copies would compile once per leaf shape).
  """
  return jax.tree.map(jnp.copy, tree)


class _Flax(NamedTuple):
  TrainState: type
  CollectionsState: type
  LinenModule: type
  nnx: Any


def _loaded_flax() -> Optional[_Flax]:
  """Flax's model classes, or None when the caller never imported flax (so neither do we)."""
  if "flax" not in sys.modules:
    return None
  from flax import linen  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from flax.training import train_state  # pylint: disable=g-import-not-at-top

  return _Flax(train_state.TrainState, _collections_state_class(), linen.Module, nnx)


@functools.cache
def _collections_state_class() -> type:
  """`TrainStateWithCollections`, made once flax is loaded (flax is optional)."""
  from flax.training import train_state  # pylint: disable=g-import-not-at-top

  class TrainStateWithCollections(train_state.TrainState):
    """A linen `TrainState` that also holds the model's other collections (e.g. `batch_stats`).

    `fit` returns one for a linen `Module` whose variables hold more than `"params"`, and
    takes it back to continue training (all its collections then mutable by default).
    """

    collections: Any = None  # {collection name: variables}, everything but "params"

    @property
    def batch_stats(self) -> Any:
      """`collections["batch_stats"]` (BatchNorm's running statistics), or None."""
      return (self.collections or {}).get("batch_stats")

    @property
    def variables(self) -> dict[str, Any]:
      """`{"params": params, **collections}`: what `apply_fn` takes."""
      return {"params": self.params, **(self.collections or {})}

  return TrainStateWithCollections
