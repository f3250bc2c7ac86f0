"""Training: `fit` and `evaluate` for apply functions, Flax linen and Flax NNX models.

`fit` runs one compiled, donating train step per batch (or, with `compiled_epoch`, one
compiled `lax.scan` of it per epoch) and records `TrainingStats`, which keep the three
figures of a training run apart: the loss of each batch (what its gradient saw), the
epoch's running loss (every example of the epoch counted once) and the evaluation (fixed
params, the whole evaluation set). Training steps run the model in train mode and
evaluations in eval mode, carrying its state (linen collections such as BatchNorm's
`batch_stats`, NNX batch statistics and RNG streams) and drawing dropout keys from one
`seed`. It can clip gradients, skip or stop at non-finite
steps, checkpoint and resume exactly (`gradcore_jax.checkpoint`), call callbacks at its
sync points (`gradcore_jax.callbacks`: early stopping, CSV and TensorBoard logs), and train
on a `jax.sharding.Mesh`.
"""

from gradcore_jax.training._fit import FitResult
from gradcore_jax.training._fit import NonFiniteLossError
from gradcore_jax.training._fit import TooManySkippedStepsError
from gradcore_jax.training._fit import evaluate
from gradcore_jax.training._fit import fit
from gradcore_jax.training._stats import TrainingStats

__all__ = ["FitResult", "NonFiniteLossError", "TooManySkippedStepsError", "TrainingStats", "evaluate", "fit"]
