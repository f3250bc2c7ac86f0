"""gradcore_jax: PyTorch-exact optimizers, exact metrics and a fast training loop for JAX.

The optimizers are Optax `GradientTransformation`s that reproduce `torch.optim`:

    import gradcore_jax as gcj
    tx = gcj.rmsprop(1e-3, alpha=0.99)
"""

from gradcore_jax import optimizers
from gradcore_jax import transforms
from gradcore_jax.memory import StateMemory
from gradcore_jax.memory import state_memory
from gradcore_jax.optimizers import adadelta
from gradcore_jax.optimizers import adagrad
from gradcore_jax.optimizers import adam
from gradcore_jax.optimizers import adamax
from gradcore_jax.optimizers import adamw
from gradcore_jax.optimizers import nadam
from gradcore_jax.optimizers import radam
from gradcore_jax.optimizers import rmsprop
from gradcore_jax.optimizers import sgd
from gradcore_jax.optimizers import sgd_ema

__version__ = "0.1.0"

__all__ = [
    "StateMemory",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "nadam",
    "optimizers",
    "radam",
    "rmsprop",
    "sgd",
    "sgd_ema",
    "state_memory",
    "transforms",
]
