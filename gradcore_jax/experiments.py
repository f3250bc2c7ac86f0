"""The article's experiments under their first names (they live in `gradcore_jax.compare` now).

Kept so that `from gradcore_jax import experiments` and `experiments.compare_line_fit(...)` keep
working: every name here is the `gradcore_jax.compare` object itself, not a copy.
"""

from gradcore_jax.compare._common import init_mlp
from gradcore_jax.compare._common import mlp
from gradcore_jax.compare._common import trailing_mean
from gradcore_jax.compare._common import updates_to_threshold
from gradcore_jax.compare.digits import DigitsComparison
from gradcore_jax.compare.digits import DigitsResult
from gradcore_jax.compare.digits import DigitsSetup
from gradcore_jax.compare.digits import Split
from gradcore_jax.compare.digits import compare_digits
from gradcore_jax.compare.digits import diabetes_data
from gradcore_jax.compare.digits import digits_data
from gradcore_jax.compare.digits import one_hot_mse
from gradcore_jax.compare.digits import train_digits
from gradcore_jax.compare.line_fit import LineBatches
from gradcore_jax.compare.line_fit import LineFitComparison
from gradcore_jax.compare.line_fit import LineFitResult
from gradcore_jax.compare.line_fit import LineFitSetup
from gradcore_jax.compare.line_fit import compare_line_fit
from gradcore_jax.compare.line_fit import fit_line
from gradcore_jax.compare.line_fit import line_batches
from gradcore_jax.compare.line_fit import line_data
from gradcore_jax.compare.presets import DEFAULT_OPTIMIZERS
from gradcore_jax.compare.presets import DIGITS_LEARNING_RATES
from gradcore_jax.compare.presets import LINE_FIT_LEARNING_RATES
from gradcore_jax.compare.presets import TASKS
from gradcore_jax.compare.presets import default_learning_rate
from gradcore_jax.compare.presets import learning_rates
from gradcore_jax.compare.presets import make_optimizer

__all__ = [
  "DEFAULT_OPTIMIZERS",
  "DIGITS_LEARNING_RATES",
  "LINE_FIT_LEARNING_RATES",
  "TASKS",
  "DigitsComparison",
  "DigitsResult",
  "DigitsSetup",
  "LineBatches",
  "LineFitComparison",
  "LineFitResult",
  "LineFitSetup",
  "Split",
  "compare_digits",
  "compare_line_fit",
  "default_learning_rate",
  "diabetes_data",
  "digits_data",
  "fit_line",
  "init_mlp",
  "learning_rates",
  "line_batches",
  "line_data",
  "make_optimizer",
  "mlp",
  "one_hot_mse",
  "train_digits",
  "trailing_mean",
  "updates_to_threshold",
]
