"""gradcore_jax: PyTorch-exact optimizers, exact metrics and a fast training loop for JAX.

The optimizers are Optax `GradientTransformation`s that reproduce `torch.optim`:

    >>> import gradcore_jax as gcj
    >>> tx = gcj.rmsprop(1e-3, alpha=0.99)  # torch.optim.RMSprop(params, lr=1e-3, alpha=0.99)

Modules: `optimizers`, `transforms` (their building blocks, torch's gradient clipping),
`schedules` (every `torch.optim.lr_scheduler`), `param_groups` (torch-style groups),
`torch_state` (torch optimizer `state_dict` import/export), `losses`, `metrics`, `data`
(`DataLoader`), `training` (`fit`, `evaluate`, `TrainingStats`), `callbacks` (for `fit`:
`EarlyStopping`, `CSVLogger`, `TensorBoard`), `checkpoint`
(`Checkpointer`, needs the `checkpoint` extra: orbax is imported on first use).
"""

from gradcore_jax import averaging
from gradcore_jax import callbacks
from gradcore_jax import checkpoint
from gradcore_jax import data
from gradcore_jax import data_sources
from gradcore_jax import losses
from gradcore_jax import metrics
from gradcore_jax import optimizers
from gradcore_jax import schedules
from gradcore_jax import torch_state
from gradcore_jax import training
from gradcore_jax import transforms
from gradcore_jax.data import Batch
from gradcore_jax.data import DataLoader
from gradcore_jax.data_sources import IterableLoader
from gradcore_jax.memory import StateMemory
from gradcore_jax.memory import state_memory
from gradcore_jax.multi_tensor import MultiTensorState
from gradcore_jax.multi_tensor import multi_tensor
from gradcore_jax.optimizers import adadelta
from gradcore_jax.optimizers import adafactor
from gradcore_jax.optimizers import adagrad
from gradcore_jax.optimizers import adam
from gradcore_jax.optimizers import adamax
from gradcore_jax.optimizers import adamw
from gradcore_jax.optimizers import asgd
from gradcore_jax.optimizers import lbfgs
from gradcore_jax.optimizers import muon
from gradcore_jax.optimizers import nadam
from gradcore_jax.optimizers import radam
from gradcore_jax.optimizers import rmsprop
from gradcore_jax.optimizers import rprop
from gradcore_jax.optimizers import sgd
from gradcore_jax.optimizers import sgd_ema
from gradcore_jax.param_groups import decay_label
from gradcore_jax.param_groups import no_decay_groups
from gradcore_jax.param_groups import param_groups
from gradcore_jax.precision import with_state_dtype
from gradcore_jax.torch_state import from_torch_state_dict
from gradcore_jax.torch_state import to_torch_state_dict
from gradcore_jax.training import FitResult
from gradcore_jax.training import NonFiniteLossError
from gradcore_jax.training import TooManySkippedStepsError
from gradcore_jax.training import TrainingStats
from gradcore_jax.training import evaluate
from gradcore_jax.training import fit

__version__ = "0.1.0"

__all__ = [
  "Batch",
  "DataLoader",
  "FitResult",
  "IterableLoader",
  "MultiTensorState",
  "NonFiniteLossError",
  "StateMemory",
  "TooManySkippedStepsError",
  "TrainingStats",
  "adadelta",
  "adafactor",
  "adagrad",
  "adam",
  "adamax",
  "adamw",
  "asgd",
  "averaging",
  "callbacks",
  "checkpoint",
  "data",
  "data_sources",
  "decay_label",
  "evaluate",
  "fit",
  "from_torch_state_dict",
  "lbfgs",
  "losses",
  "metrics",
  "multi_tensor",
  "muon",
  "nadam",
  "no_decay_groups",
  "optimizers",
  "param_groups",
  "radam",
  "rmsprop",
  "rprop",
  "schedules",
  "sgd",
  "sgd_ema",
  "state_memory",
  "to_torch_state_dict",
  "torch_state",
  "training",
  "transforms",
  "with_state_dtype",
]
