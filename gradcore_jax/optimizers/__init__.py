"""PyTorch-exact optimizers as Optax gradient transformations, and a name registry."""

from __future__ import annotations

from typing import Callable

import optax

from gradcore_jax.optimizers._alias import adadelta
from gradcore_jax.optimizers._alias import adafactor
from gradcore_jax.optimizers._alias import adagrad
from gradcore_jax.optimizers._alias import adam
from gradcore_jax.optimizers._alias import adamax
from gradcore_jax.optimizers._alias import adamw
from gradcore_jax.optimizers._alias import asgd
from gradcore_jax.optimizers._alias import muon
from gradcore_jax.optimizers._alias import nadam
from gradcore_jax.optimizers._alias import radam
from gradcore_jax.optimizers._alias import rmsprop
from gradcore_jax.optimizers._alias import rprop
from gradcore_jax.optimizers._alias import sgd
from gradcore_jax.optimizers._alias import sgd_ema
from gradcore_jax.optimizers._lbfgs import LBFGSState
from gradcore_jax.optimizers._lbfgs import lbfgs

OptimizerFactory = Callable[..., optax.GradientTransformationExtraArgs]

# `lbfgs` is not registered: its `update` needs the objective (`value_fn`), which `fit`, the CLI and the
# gradient-only callers of `get` do not pass.
_REGISTRY: dict[str, OptimizerFactory] = {
  f.__name__: f
  for f in (sgd, sgd_ema, rmsprop, adam, adamw, adagrad, adadelta, adamax, nadam, radam, rprop, asgd, adafactor, muon)
}


def names() -> tuple[str, ...]:
  """The names accepted by `get`, in the order of the README's table."""
  return tuple(_REGISTRY)


def get(name: str) -> OptimizerFactory:
  """Returns the optimizer factory called `name` (e.g. `"adam"`); ValueError lists the valid names.

  Args:
    name: one of `names()`, e.g. `"adam"` for `gradcore_jax.adam`.

  Returns:
    The factory: call it with the optimizer's hyperparameters, e.g. `get("adam")(1e-3)`.
  """
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(f"Unknown optimizer {name!r}; choose one of: {', '.join(_REGISTRY)}.") from None


__all__ = [
  "LBFGSState",
  "adadelta",
  "adafactor",
  "adagrad",
  "adam",
  "adamax",
  "adamw",
  "asgd",
  "get",
  "lbfgs",
  "muon",
  "nadam",
  "names",
  "radam",
  "rmsprop",
  "rprop",
  "sgd",
  "sgd_ema",
]
