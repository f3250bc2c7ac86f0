"""The `torch.optim` classes the bridge knows, and the converters of gradcore_jax's own block states.

Importing this module registers them; every module that needs the registry filled
(`_plan`, hence import and export) imports it.
"""

from __future__ import annotations

from typing import Any, Mapping

from gradcore_jax import optimizers
from gradcore_jax import transforms
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
    keys={"lr": REQUIRED, "momentum": REQUIRED, "dampening": REQUIRED, "weight_decay": REQUIRED, "nesterov": False,
          "maximize": False},
    extras=_NOT_FUSED,
    records_step=False,
    factories={optimizers.sgd: {}},
    structure=_momentum_structure,
)
RMSPROP = TorchOptimizer(
    "RMSprop",
    keys={"lr": REQUIRED, "alpha": REQUIRED, "eps": REQUIRED, "weight_decay": REQUIRED, "momentum": 0,
          "centered": False, "maximize": False},
    extras=_NOT_CAPTURED,
    factories={optimizers.rmsprop: {}},
    structure=_rmsprop_structure,
)
ADAM = TorchOptimizer(
    "Adam/AdamW",
    keys={"lr": REQUIRED, "betas": REQUIRED, "eps": REQUIRED, "weight_decay": REQUIRED, "amsgrad": False,
          "maximize": False, "decoupled_weight_decay": False},
    extras={**_NOT_CAPTURED, "fused": None},
    factories={optimizers.adam: {"decoupled_weight_decay": False}, optimizers.adamw: {"decoupled_weight_decay": True}},
    structure=_adam_structure,
    no_counterpart=("mask",),
)
ADAGRAD = TorchOptimizer(
    "Adagrad",
    keys={"lr": REQUIRED, "lr_decay": REQUIRED, "weight_decay": REQUIRED, "initial_accumulator_value": REQUIRED,
          "eps": REQUIRED, "maximize": False},
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
    keys={"lr": REQUIRED, "betas": REQUIRED, "eps": REQUIRED, "weight_decay": REQUIRED, "momentum_decay": REQUIRED,
          "decoupled_weight_decay": False, "maximize": False},
    extras=_NOT_CAPTURED,
    factories={optimizers.nadam: {"decoupled_weight_decay": False}},
)
RADAM = TorchOptimizer(
    "RAdam",
    keys={"lr": REQUIRED, "betas": REQUIRED, "eps": REQUIRED, "weight_decay": REQUIRED,
          "decoupled_weight_decay": False, "maximize": False},
    extras=_NOT_CAPTURED,
    factories={optimizers.radam: {"decoupled_weight_decay": False}},
)

_ADAM_MOMENTS = {"mu": "exp_avg", "nu": "exp_avg_sq"}
register_state_converter(
    transforms.TorchMomentumState,
    StateConverter(SGD, shared=True, trees={"momentum_buffer": "momentum_buffer"}, counters=("count",),
                   presence_counters=("count",)),
)
register_state_converter(
    transforms.ScaleByRmsState, StateConverter(RMSPROP, trees={"square_avg": "square_avg", "grad_avg": "grad_avg"})
)
register_state_converter(
    transforms.ScaleByAdamState,
    StateConverter(ADAM, trees={**_ADAM_MOMENTS, "nu_max": "max_exp_avg_sq"}, counters=("count",)),
)
register_state_converter(
    transforms.ScaleByAdamaxState, StateConverter(ADAMAX, trees={"mu": "exp_avg", "inf_norm": "exp_inf"},
                                                  counters=("count",))
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
register_state_converter(transforms.ScaleByLearningRateState, StateConverter(counters=("count",)))
# The norm clip_grad_norm keeps for logging is no optimizer state in torch: nothing to convert.
register_state_converter(transforms.ClipGradNormState, StateConverter())


def known_optimizers() -> list[TorchOptimizer]:
  """Every torch optimizer the registry names, and SGD (a group without optimizer state is torch SGD) in any case."""
  known = registered_optimizers()
  return known if any(optimizer is SGD for optimizer in known) else [*known, SGD]
