"""One internal form for the three kinds of model `fit` and `evaluate` accept.

Whatever the user passes, the step functions see an `Adapted`: a pure
`apply(params, model_state, inputs) -> (predictions, model_state)`, the trained `params`,
the Optax transformation and its state, the non-trained `model_state` (Flax NNX batch
statistics, RNG counters; `None` for the others), and a `rebuild` that turns the trained
arrays back into the user's form. So there is one train step and one eval step, not three.

| `model` argument | also needs | `FitResult.model` |
|---|---|---|
| a function `apply_fn(params, inputs)` | `params`, an Optax `optimizer` | the trained params |
| a Flax linen `TrainState` | nothing (its `tx` is the optimizer) | the advanced `TrainState` |
| a Flax linen `Module` | `params` (the `"params"` collection), `optimizer` | a new `TrainState` |
| a Flax NNX `Module` | an `nnx.Optimizer` or an Optax `optimizer` | the same module, updated |

Flax is optional: it is only looked at when the caller has imported it already.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any
from typing import Callable
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from gradcore_jax._typing import Array
from gradcore_jax._typing import PyTree

Apply = Callable[[PyTree, PyTree, PyTree], tuple[Array, PyTree]]
Rebuild = Callable[[PyTree, PyTree, PyTree, int], Any]


@dataclasses.dataclass(frozen=True)
class Adapted:
  """A model of any supported kind, as pure pieces.

  Attributes:
    apply: `apply(params, model_state, inputs) -> (predictions, new_model_state)`, pure.
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


def adapt(
  model: Any,
  optimizer: Any = None,
  *,
  params: PyTree = None,
  opt_state: PyTree = None,
) -> Adapted:
  """Recognises the kind of `model` and returns its `Adapted` form (see the module table).

  `opt_state` continues a run with a plain function or a linen module; a `TrainState` and
  an `nnx.Optimizer` carry their own. Raises ValueError naming the argument that is
  missing, superfluous or of the wrong kind.
  """
  flax = _loaded_flax()
  if flax is not None and isinstance(model, flax.TrainState):
    _reject("optimizer", optimizer, "a TrainState carries its optimizer in .tx")
    _reject("params", params, "a TrainState carries its params")
    _reject("opt_state", opt_state, "a TrainState carries its opt_state")
    return _from_train_state(model)
  if flax is not None and isinstance(model, flax.LinenModule):
    tx = _require_optax(optimizer)
    variables = _params_collection(_require("params", params, "a linen Module"))
    return _from_train_state(
      flax.TrainState(
        step=0,
        apply_fn=model.apply,
        params=variables,
        tx=tx,
        opt_state=_initial_state(tx, variables, opt_state),
      )
    )
  if flax is not None and isinstance(model, flax.nnx.Module):
    _reject("params", params, "an NNX Module holds its own params")
    return _from_nnx(flax.nnx, model, optimizer, opt_state)
  if callable(model):
    return _from_function(model, _require("params", params, "a plain apply function"), optimizer, opt_state)
  raise ValueError(
    "model must be an apply function `apply_fn(params, inputs)`, a Flax linen TrainState or "
    f"Module, or a Flax NNX Module; got {type(model).__name__}."
  )


def _from_function(apply_fn: Callable, params: PyTree, optimizer: Any, opt_state: PyTree) -> Adapted:
  tx = _require_optax(optimizer)
  return Adapted(
    apply=lambda p, _, inputs: (apply_fn(p, inputs), None),
    tx=tx,
    params=params,
    opt_state=_initial_state(tx, params, opt_state),
    model_state=None,
    rebuild=lambda p, *_: p,
  )


def _from_train_state(state: Any) -> Adapted:
  apply_fn = state.apply_fn
  return Adapted(
    apply=lambda p, _, inputs: (apply_fn({"params": p}, inputs), None),
    tx=state.tx,
    params=state.params,
    opt_state=state.opt_state,
    model_state=None,
    rebuild=lambda p, o, _, steps: state.replace(step=state.step + steps, params=p, opt_state=o),
  )


def _from_nnx(nnx: Any, module: Any, optimizer: Any, opt_state: PyTree) -> Adapted:
  """Splits `module` into a graph definition, pure params and pure remaining state."""
  if isinstance(optimizer, nnx.Optimizer):
    _reject("opt_state", opt_state, "an nnx.Optimizer carries its opt_state")
    tx, wrt = optimizer.tx, optimizer.wrt
  else:
    tx, wrt = _require_optax(optimizer), nnx.Param
  graphdef, params, rest = nnx.split(module, wrt, ...)
  params, rest = nnx.as_pure(params), nnx.as_pure(rest)
  if isinstance(optimizer, nnx.Optimizer):
    opt_state = nnx.as_pure(optimizer.opt_state)

  def apply(p: PyTree, r: PyTree, inputs: PyTree) -> tuple[Array, PyTree]:
    merged = nnx.merge(graphdef, p, r)
    predictions = merged(inputs)
    return predictions, nnx.as_pure(nnx.split(merged, wrt, ...)[2])

  def rebuild(p: PyTree, o: PyTree, r: PyTree, steps: int) -> Any:
    nnx.update(module, p, r)
    if isinstance(optimizer, nnx.Optimizer):
      nnx.update(optimizer.opt_state, nnx.state(o))
      optimizer.step[...] += steps
    return module

  return Adapted(apply, tx, params, _initial_state(tx, params, opt_state), rest, rebuild)


def _initial_state(tx: Optional[optax.GradientTransformation], params: PyTree, opt_state: PyTree) -> PyTree:
  if tx is None or opt_state is not None:
    return opt_state
  return tx.init(params)


def _params_collection(params: PyTree) -> PyTree:
  """Accepts `module.init(...)` output or its `"params"` entry; other collections are refused."""
  if not isinstance(params, dict) or "params" not in params:
    return params
  others = sorted(set(params) - {"params"})
  if others:
    raise ValueError(
      f"params holds the collections {others} besides 'params'; linen models with mutable "
      "collections (batch statistics, caches) are not supported yet: pass variables['params']."
    )
  return params["params"]


def _require_optax(optimizer: Any) -> Optional[optax.GradientTransformation]:
  """`optimizer` itself, which must be an Optax transformation or None (evaluation only)."""
  if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
    raise ValueError(
      "optimizer must be an Optax GradientTransformation (e.g. gradcore_jax.adam(1e-3) or "
      f"optax.sgd(0.1)); got {type(optimizer).__name__}."
    )
  return optimizer


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
  LinenModule: type
  nnx: Any


def _loaded_flax() -> Optional[_Flax]:
  """Flax's model classes, or None when the caller never imported flax (so neither do we)."""
  if "flax" not in sys.modules:
    return None
  from flax import linen  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from flax.training import train_state  # pylint: disable=g-import-not-at-top

  return _Flax(train_state.TrainState, linen.Module, nnx)
