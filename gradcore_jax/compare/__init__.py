"""The main job: the SGD / momentum / RMSprop / Adam article's experiments, rerun fairly.

`gradcore-jax compare` (`gradcore_jax.compare.cli`) runs them from the command line. The pieces:

- `line_fit`: `y = m·x + b` by per-example updates: the article's `y = 30x + 2` (`REGRESSION`,
  slow slope) and the fast.ai spreadsheet's `y = 2x + 30` (`SPREADSHEET`, slow intercept).
- `digits`: a linear layer 64→10 with MSE on one-hot targets on scikit-learn's digits.
- `presets`: PyTorch's coefficients and the article's (`PRESETS`), default learning rates.
- `sweep`: every optimizer over a log grid of learning rates, vmapped, each at its best (`BEST_RULE`).
- `claims`: the article's statements as rules our numbers pass or fail.
- `plots`: loss surfaces with each optimizer's path, loss curves, loss against learning rate.
- `report`: tables and the JSON summary.
"""

from gradcore_jax.compare import claims
from gradcore_jax.compare import digits
from gradcore_jax.compare import line_fit
from gradcore_jax.compare import presets
from gradcore_jax.compare import report
from gradcore_jax.compare import sweep
from gradcore_jax.compare.claims import CLAIMS
from gradcore_jax.compare.claims import check_claims
from gradcore_jax.compare.digits import DigitsSetup
from gradcore_jax.compare.line_fit import REGRESSION
from gradcore_jax.compare.line_fit import SPREADSHEET
from gradcore_jax.compare.line_fit import LineFitSetup
from gradcore_jax.compare.presets import PRESETS
from gradcore_jax.compare.sweep import BEST_RULE
from gradcore_jax.compare.sweep import TaskRun
from gradcore_jax.compare.sweep import Trial
from gradcore_jax.compare.sweep import learning_rate_grid
from gradcore_jax.compare.sweep import pick_best
from gradcore_jax.compare.sweep import run_task

__all__ = [
  "BEST_RULE",
  "CLAIMS",
  "PRESETS",
  "REGRESSION",
  "SPREADSHEET",
  "DigitsSetup",
  "LineFitSetup",
  "TaskRun",
  "Trial",
  "check_claims",
  "claims",
  "digits",
  "learning_rate_grid",
  "line_fit",
  "pick_best",
  "presets",
  "report",
  "run_task",
  "sweep",
]
