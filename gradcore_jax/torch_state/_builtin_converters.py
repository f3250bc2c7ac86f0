"""The `torch.optim` classes the bridge knows, and the converters of gradcore_jax's own block states.

Importing this module registers them; every module that needs the registry filled
(`_plan`, hence import and export) imports it.
"""

from __future__ import annotations

from typing import Any
from typing import Mapping
from typing import Optional

import numpy as np

from gradcore_jax import optimizers
from gradcore_jax import transforms
from gradcore_jax.torch_state._layout import Layout
from gradcore_jax.torch_state._layout import LayoutError
from gradcore_jax.torch_state._registry import REQUIRED
from gradcore_jax.torch_state._registry import StateConverter
from gradcore_jax.torch_state._registry import TorchOptimizer
from gradcore_jax.torch_state._registry import register_state_converter
from gradcore_jax.torch_state._registry import registered_optimizers


def _momentum_structure(blocks: Mapping[type, Any]) -> dict[str, bool]:
  return {"momentum": transforms.TorchMomentumState in blocks}


def _rmsprop_structure(blocks: Mapping[type, Any]) -> dict[str, bool]:
  rms = blocks.get(transforms.ScaleByRmsState)
  return {**_momentum_structure(blocks), **({} if rms is None else {"centered": rms.grad_avg is not None})}


def _adam_structure(blocks: Mapping[type, Any]) -> dict[str, bool]:
  adam = blocks.get(transforms.ScaleByAdamState)
  return {} if adam is None else {"amsgrad": adam.nu_max is not None}


# The bookkeeping keys torch writes into each group, for the two families of torch optimizers.
_NOT_FUSED = {"foreach": None, "differentiable": False, "fused": None}
_NOT_CAPTURED = {"foreach": None, "capturable": False, "differentiable": False}

SGD = TorchOptimizer(
  "SGD",
  keys={
    "lr": REQUIRED,
    "momentum": REQUIRED,
    "dampening": REQUIRED,
    "weight_decay": REQUIRED,
    "nesterov": False,
    "maximize": False,
  },
  extras=_NOT_FUSED,
  records_step=False,
  factories={optimizers.sgd: {}},
  structure=_momentum_structure,
)
RMSPROP = TorchOptimizer(
  "RMSprop",
  keys={
    "lr": REQUIRED,
    "alpha": REQUIRED,
    "eps": REQUIRED,
    "weight_decay": REQUIRED,
    "momentum": 0,
    "centered": False,
    "maximize": False,
  },
  extras=_NOT_CAPTURED,
  factories={optimizers.rmsprop: {}},
  structure=_rmsprop_structure,
)
ADAM = TorchOptimizer(
  "Adam/AdamW",
  keys={
    "lr": REQUIRED,
    "betas": REQUIRED,
    "eps": REQUIRED,
    "weight_decay": REQUIRED,
    "amsgrad": False,
    "maximize": False,
    "decoupled_weight_decay": False,
  },
  extras={**_NOT_CAPTURED, "fused": None},
  factories={optimizers.adam: {"decoupled_weight_decay": False}, optimizers.adamw: {"decoupled_weight_decay": True}},
  structure=_adam_structure,
  no_counterpart=("mask",),
)
ADAGRAD = TorchOptimizer(
  "Adagrad",
  keys={
    "lr": REQUIRED,
    "lr_decay": REQUIRED,
    "weight_decay": REQUIRED,
    "initial_accumulator_value": REQUIRED,
    "eps": REQUIRED,
    "maximize": False,
  },
  extras=_NOT_FUSED,
  eager=True,
  factories={optimizers.adagrad: {}},
)
ADADELTA = TorchOptimizer(
  "Adadelta",
  keys={"lr": REQUIRED, "rho": REQUIRED, "eps": REQUIRED, "weight_decay": REQUIRED, "maximize": False},
  extras=_NOT_CAPTURED,
  factories={optimizers.adadelta: {}},
)
ADAMAX = TorchOptimizer(
  "Adamax",
  keys={"lr": REQUIRED, "betas": REQUIRED, "eps": REQUIRED, "weight_decay": REQUIRED, "maximize": False},
  extras=_NOT_CAPTURED,
  factories={optimizers.adamax: {}},
)
NADAM = TorchOptimizer(
  "NAdam",
  keys={
    "lr": REQUIRED,
    "betas": REQUIRED,
    "eps": REQUIRED,
    "weight_decay": REQUIRED,
    "momentum_decay": REQUIRED,
    "decoupled_weight_decay": False,
    "maximize": False,
  },
  extras=_NOT_CAPTURED,
  factories={optimizers.nadam: {"decoupled_weight_decay": False}},
)
RADAM = TorchOptimizer(
  "RAdam",
  keys={
    "lr": REQUIRED,
    "betas": REQUIRED,
    "eps": REQUIRED,
    "weight_decay": REQUIRED,
    "decoupled_weight_decay": False,
    "maximize": False,
  },
  extras=_NOT_CAPTURED,
  factories={optimizers.radam: {"decoupled_weight_decay": False}},
)

RPROP = TorchOptimizer(
  "Rprop",
  keys={"lr": REQUIRED, "etas": REQUIRED, "step_sizes": REQUIRED, "maximize": False},
  extras=_NOT_CAPTURED,
  factories={optimizers.rprop: {}},
)
ASGD = TorchOptimizer(
  "ASGD",
  keys={
    "lr": REQUIRED,
    "lambd": REQUIRED,
    "alpha": REQUIRED,
    "t0": REQUIRED,
    "weight_decay": REQUIRED,
    "maximize": False,
  },
  extras=_NOT_CAPTURED,
  factories={optimizers.asgd: {}},
)
ADAFACTOR = TorchOptimizer(
  "Adafactor",
  keys={
    "lr": REQUIRED,
    "beta2_decay": REQUIRED,
    "eps": REQUIRED,
    "d": REQUIRED,
    "weight_decay": REQUIRED,
    "maximize": False,
  },
  extras={"foreach": None},
  factories={optimizers.adafactor: {}},
)
MUON = TorchOptimizer(
  "Muon",
  keys={
    "lr": REQUIRED,
    "weight_decay": REQUIRED,
    "momentum": REQUIRED,
    "nesterov": REQUIRED,
    "ns_coefficients": REQUIRED,
    "eps": REQUIRED,
    "ns_steps": REQUIRED,
    "adjust_lr_fn": REQUIRED,
  },
  records_step=False,
  zeros_at_first_step=True,
  factories={optimizers.muon: {}},
)


class _FactoredConverter(StateConverter):
  """Adafactor's statistics: torch's own shapes, `row_var` `(..., m, 1)` and `col_var` `(..., 1, n)`.

  They are statistics over a leaf's last two axes, so they convert only in torch's layout: a
  leaf laid out otherwise (a Flax `Dense` kernel is torch's weight transposed) factors over
  other axes, and its statistics are not torch's moved around. Such a leaf raises (naming it);
  the full `variance` of a 0-/1-D leaf follows its layout.
  """

  def import_leaf(self, field: str, value: np.ndarray, layout: Optional[Layout], like: Any) -> Optional[np.ndarray]:
    _refuse_factored_layout(field, layout)
    return super().import_leaf(field, value, layout, like)

  def export_leaf(self, field: str, value: np.ndarray, layout: Optional[Layout]) -> np.ndarray:
    _refuse_factored_layout(field, layout)
    return super().export_leaf(field, value, layout)


def _refuse_factored_layout(field: str, layout: Optional[Layout]) -> None:
  if layout is not None and field in ("row_var", "col_var"):
    raise LayoutError(
      f"Adafactor's {field} is a statistic over the leaf's last two axes, which the layout ({layout.name}) "
      "moves: it converts only in torch's layout (give this leaf None in `layouts`)"
    )


_ADAM_MOMENTS = {"mu": "exp_avg", "nu": "exp_avg_sq"}
register_state_converter(
  transforms.TorchMomentumState,
  StateConverter(
    SGD, shared=True, trees={"momentum_buffer": "momentum_buffer"}, counters=("count",), presence_counters=("count",)
  ),
)
register_state_converter(
  transforms.ScaleByRmsState, StateConverter(RMSPROP, trees={"square_avg": "square_avg", "grad_avg": "grad_avg"})
)
register_state_converter(
  transforms.ScaleByAdamState,
  StateConverter(ADAM, trees={**_ADAM_MOMENTS, "nu_max": "max_exp_avg_sq"}, counters=("count",)),
)
register_state_converter(
  transforms.ScaleByAdamaxState,
  StateConverter(ADAMAX, trees={"mu": "exp_avg", "inf_norm": "exp_inf"}, counters=("count",)),
)
register_state_converter(
  transforms.ScaleByNadamState,
  StateConverter(NADAM, trees=_ADAM_MOMENTS, scalars={"mu_product": "mu_product"}, counters=("count",)),
)
register_state_converter(transforms.ScaleByRadamState, StateConverter(RADAM, trees=_ADAM_MOMENTS, counters=("count",)))
register_state_converter(transforms.ScaleByAdagradState, StateConverter(ADAGRAD, trees={"sum_of_squares": "sum"}))
register_state_converter(
  transforms.ScaleByAdadeltaState,
  StateConverter(ADADELTA, trees={"square_avg": "square_avg", "acc_delta": "acc_delta"}),
)
register_state_converter(
  transforms.ScaleByRpropState, StateConverter(RPROP, trees={"prev": "prev", "step_size": "step_size"})
)
register_state_converter(
  transforms.ScaleByAsgdState,
  StateConverter(ASGD, trees={"ax": "ax"}, scalars={"eta": "eta", "mu": "mu"}, counters=("count",)),
)
register_state_converter(
  transforms.ScaleByAdafactorState,
  _FactoredConverter(
    ADAFACTOR, trees={"row_var": "row_var", "col_var": "col_var", "variance": "variance"}, counters=("count",)
  ),
)
register_state_converter(
  transforms.ScaleByMuonState, StateConverter(MUON, trees={"momentum_buffer": "momentum_buffer"})
)
register_state_converter(transforms.ScaleByLearningRateState, StateConverter(counters=("count",)))
# The norm clip_grad_norm keeps for logging is no optimizer state in torch: nothing to convert.
register_state_converter(transforms.ClipGradNormState, StateConverter())


def known_optimizers() -> list[TorchOptimizer]:
  """Every torch optimizer the registry names, and SGD (a group without optimizer state is torch SGD) in any case."""
  known = registered_optimizers()
  return known if any(optimizer is SGD for optimizer in known) else [*known, SGD]
