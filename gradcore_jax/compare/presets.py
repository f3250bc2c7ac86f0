"""What each optimizer is run with: the presets' coefficients and the default learning rates.

Two presets (`PRESETS`):

- **torch**: every optimizer with the library's defaults, which are PyTorch's (RMSprop's
  average 0.99, Adam's betas (0.9, 0.999)); `sgd_ema` (not a torch optimizer) with beta 0.9.
- **article**: the coefficients the article states: "I used 0.9 for both" of Adam's
  (b1 = b2 = 0.9), RMSprop's squared-gradient average with 0.9, and momentum as the
  zero-start moving average `step = 0.9·step + 0.1·grad` (`sgd_ema`, beta 0.9), which is
  also what its MNIST code calls SGD.

A preset sets coefficients, never learning rates: the article states none. The same
coefficient names are set in every preset (one compiled run covers both presets, the
coefficients being injected hyperparameters); optimizers a preset does not list keep their
library defaults. The default learning rates (`default_learning_rate`) depend on the task only.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Callable
from typing import Mapping
from typing import Optional
from typing import Sequence

import jax.numpy as jnp
import optax

from gradcore_jax import optimizers

TASKS = ("regression", "spreadsheet", "digits")
DEFAULT_OPTIMIZERS = ("sgd", "sgd_ema", "rmsprop", "adam")
# Optimizers whose step is lr x gradient: their learning rate is bounded by the curvature of
# the steepest parameter. The others divide by a running scale and step by about lr.
SGD_LIKE = ("sgd", "sgd_ema", "asgd")


@dataclasses.dataclass(frozen=True)
class Preset:
  """Coefficients for the optimizers, by name.

  Attributes:
    name: "torch" or "article".
    description: one line for the reports.
    coefficients: `{optimizer: {argument: value}}`; optimizers not listed keep their defaults.
    article_sgd: the optimizer that plays the article's MNIST "SGD" in its claims (the article's
      code computes SGD's step as the zero-start moving average; a PyTorch user's SGD has no momentum).
  """

  name: str
  description: str
  coefficients: Mapping[str, Mapping[str, float]]
  article_sgd: str


PRESETS: Mapping[str, Preset] = {
  "torch": Preset(
    "torch",
    "PyTorch's defaults: RMSprop alpha 0.99, Adam betas (0.9, 0.999); sgd_ema beta 0.9",
    {"sgd_ema": {"beta": 0.9}, "rmsprop": {"alpha": 0.99}, "adam": {"b1": 0.9, "b2": 0.999}},
    article_sgd="sgd",
  ),
  "article": Preset(
    "article",
    "the article's coefficients: RMSprop alpha 0.9, Adam betas (0.9, 0.9), momentum as the zero-start EMA (beta 0.9)",
    {"sgd_ema": {"beta": 0.9}, "rmsprop": {"alpha": 0.9}, "adam": {"b1": 0.9, "b2": 0.9}},
    article_sgd="sgd_ema",
  ),
}
PRESET_NAMES = tuple(PRESETS)


def get_preset(name: str) -> Preset:
  """The preset called `name` ("torch" or "article"); ValueError lists the valid names.

  Args:
    name: the preset's name.
  """
  try:
    return PRESETS[name]
  except (KeyError, TypeError):
    raise ValueError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.") from None


def coefficients(preset: str, name: str) -> dict[str, float]:
  """The arguments preset `preset` gives optimizer `name` besides its learning rate ({} for none).

  Args:
    preset: "torch" or "article".
    name: an optimizer name (`gradcore_jax.optimizers.names()`).
  """
  optimizers.get(name)
  return dict(get_preset(preset).coefficients.get(name, {}))


def coefficient_names(name: str) -> tuple[str, ...]:
  """The arguments of optimizer `name` that the presets set (the same in every preset).

  Args:
    name: an optimizer name.
  """
  optimizers.get(name)
  names = {tuple(sorted(preset.coefficients.get(name, {}))) for preset in PRESETS.values()}
  if len(names) != 1:  # a table error, caught by the tests
    raise ValueError(f"The presets set different arguments of {name}: {sorted(names)}.")
  return names.pop()


def make_optimizer(name: str, learning_rate: float, preset: str = "torch") -> optax.GradientTransformationExtraArgs:
  """The library optimizer `name` with `learning_rate` and the coefficients of `preset`.

  Args:
    name: an optimizer name.
    learning_rate: its learning rate.
    preset: "torch" (the library's defaults, PyTorch's) or "article".
  """
  return optimizers.get(name)(learning_rate, **coefficients(preset, name))


def injected_optimizer(name: str) -> Callable[..., optax.GradientTransformationExtraArgs]:
  """`optax.inject_hyperparams` of optimizer `name`, its learning rate and preset coefficients injected.

  Call the result with `learning_rate=...` and the `coefficient_names(name)` as arrays (traced
  values under `jax.vmap`, one per row of a sweep); every other argument keeps its default and
  is static, so the update is the plain optimizer's, step for step.

  Args:
    name: an optimizer name.
  """
  factory = optimizers.get(name)
  swept = ("learning_rate", *coefficient_names(name))
  static = tuple(p for p in inspect.signature(factory).parameters if p not in swept)
  return optax.inject_hyperparams(factory, static_args=static)


@functools.lru_cache(maxsize=None)
def unsupported_reason(name: str) -> Optional[str]:
  """None when optimizer `name` can train the experiments' parameters (scalars, vectors,
  matrices); otherwise its own error message (Muon, for one, takes matrices only).

  Args:
    name: an optimizer name.
  """
  params = {"scalar": jnp.zeros((), jnp.float32), "vector": jnp.zeros(3, jnp.float32), "matrix": jnp.zeros((3, 2))}
  try:
    optimizers.get(name)().init(params)
  except (ValueError, TypeError) as err:
    return str(err)
  return None


# ---------------------------------------------------------------------------------------
# Default learning rates (the same in both presets: the article states none).


def _library_default(name: str) -> float:
  """The `learning_rate` default of optimizer `name` (PyTorch's, for all but SGD)."""
  return inspect.signature(optimizers.get(name)).parameters["learning_rate"].default


# The line fit y = 30x + 2 has 1,000 updates to move the slope from 0 to 30. The adaptive
# optimizers step by about `lr` per update whatever the gradient's size, and SGD's rate is capped
# by the intercept (per-example curvature 2, diverging at lr >= 1), so one learning rate, 0.1,
# serves every optimizer. Adadelta keeps its own 1.0: its lr multiplies a step already in the
# parameters' units.
LINE_FIT_LEARNING_RATES: Mapping[str, float] = {name: 0.1 for name in optimizers.names()} | {"adadelta": 1.0}

# The spreadsheet's y = 2x + 30 with x up to 100: the slope's per-example curvature 2x² reaches
# 2·10⁴, so SGD-like optimizers diverge above about 1e-4 (the spreadsheet's own rate); the
# intercept must travel 30 in 60 updates, which the adaptive optimizers, stepping by about lr,
# can only do with lr near 1.
SPREADSHEET_LEARNING_RATES: Mapping[str, float] = {
  name: (1e-4 if name in SGD_LIKE else 1.0) for name in optimizers.names()
}

# Digits: each optimizer's library default, which is PyTorch's (RMSprop 1e-2, Adam 1e-3, ...),
# except SGD, for which PyTorch has no default (the library's 1e-3 is a placeholder): 0.1,
# the usual starting point for SGD on inputs scaled to [0, 1].
DIGITS_LEARNING_RATES: Mapping[str, float] = {name: _library_default(name) for name in optimizers.names()} | {
  "sgd": 0.1,
  "sgd_ema": 0.1,
}

_LEARNING_RATES = {
  "regression": LINE_FIT_LEARNING_RATES,
  "spreadsheet": SPREADSHEET_LEARNING_RATES,
  "digits": DIGITS_LEARNING_RATES,
}


def default_learning_rate(task: str, name: str) -> float:
  """The learning rate `compare` uses for optimizer `name` on `task` when it does not sweep.

  Args:
    task: "regression", "spreadsheet" or "digits".
    name: an optimizer name.
  """
  if task not in _LEARNING_RATES:
    raise ValueError(f"Unknown task {task!r}; choose one of: {', '.join(TASKS)}.")
  optimizers.get(name)  # a clear ValueError for an unknown name
  return _LEARNING_RATES[task][name]


def learning_rates(
  task: str, names: Sequence[str], overrides: Optional[Mapping[str, float]] = None
) -> dict[str, float]:
  """`{name: lr}` for `names` on `task`: the defaults, replaced by `overrides` where given.

  Args:
    task: "regression", "spreadsheet" or "digits".
    names: optimizer names.
    overrides: `{name: lr}` to use instead of the defaults.
  """
  overrides = dict(overrides or {})
  return {name: overrides.get(name, default_learning_rate(task, name)) for name in names}
