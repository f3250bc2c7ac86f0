"""The record of a training run: three loss figures kept apart, and the run's counters."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any
from typing import Optional


@dataclasses.dataclass
class TrainingStats:
  """What `fit` measured. Plain Python numbers only, so `to_json()` always works (valid JSON: NaN as null).

  Three figures that are easy to confuse (see the issue's source note), named apart:

  1. `batch_losses[s]`: the loss of the batch at step `s`: the masked mean over its real
     rows, with the params *before* update `s`. This is what the gradient of step `s` saw.
     `running_losses[s]` is the epoch's running loss after step `s`: the sum of
     per-example losses so far in the epoch divided by the examples so far.
  2. `epoch_losses[e]`: the running loss at the end of epoch `e`: the sum of every
     per-example loss of the epoch divided by its number of examples. Each example counts
     once, a short last batch counts by its size (not as a whole batch); the params
     changed during the epoch, so this is not the loss of any single set of params.
     `train_metrics[e]` are the metrics accumulated in the same way.
  3. `eval_metrics[e]`: the evaluation after epoch `e` with the params fixed, over the
     whole evaluation loader, exactly (`"loss"` plus each metric). The list stays empty
     without an evaluation loader.

  Counters: `epochs_trained`, `total_steps` (steps taken, = `len(batch_losses)`),
  `examples_seen` (real rows of the applied steps, padding excluded), `epoch_times` (wall
  seconds of each epoch's training in this process, including compilation in the first,
  excluding evaluation), `steps_per_second` (per epoch) and `final_loss` (=
  `epoch_losses[-1]`, None before the first epoch).

  Learning rate: `learning_rates[s]` is the learning rate update `s` used, read on the
  device from the optimizer state the update returned (`optax.inject_hyperparams`'s
  `hyperparams["learning_rate"]`: a constant, the injected schedule evaluated at the
  optimizer's step count, or the value `fit(lr_plateau=...)` set) and fetched with the
  batch losses, so it costs no host sync. A skipped step records the rate it would have
  used. It stays empty when the optimizer state holds no single injected
  `learning_rate` (a constant or schedule passed straight to an optimizer lives in its
  closure, not in its state).

  Non-finite steps (`fit(..., on_nonfinite="skip")`): `skipped_steps` lists the steps whose
  loss or gradients were NaN/Inf, or whose update made the params or model state so, and
  whose update was therefore not applied (params,
  optimizer and model state untouched); `num_skipped_steps` counts them. A skipped batch
  keeps its (possibly non-finite) value in `batch_losses` but counts in neither the running
  and epoch losses, nor the training metrics, nor `examples_seen`; the optimizer has made
  `total_steps - num_skipped_steps` updates. An epoch whose every step was skipped has a
  NaN epoch loss.

  Gradient accumulation (`fit(..., accumulate=k)`): a step is still a batch (a
  micro-batch): `batch_losses`, `running_losses`, `learning_rates` and `total_steps` count
  batches, and `learning_rates[s]` is the rate of the optimizer update batch `s`
  contributes to (the same for every batch of a cycle). The optimizer makes one update per
  cycle of `k` batches (and one for an epoch's leftover batches); a cycle holding a
  skipped batch makes none.

  Every field defaults to empty (the lists) or 0 (the counters).

  Attributes:
    batch_losses: per step, the batch loss with the params before the step's update.
    running_losses: per step, the epoch's running loss after the step.
    learning_rates: per step, the learning rate of the update the step contributes to;
      empty when the optimizer state holds no single injected `learning_rate`.
    epoch_losses: per epoch, the running loss at the epoch's end.
    train_metrics: per epoch, `{name: value}` of the metrics accumulated over its training.
    eval_metrics: per epoch, `{"loss": value, name: value, ...}` of the evaluation after it;
      no entries without an evaluation loader.
    epochs_trained: the number of epochs completed.
    total_steps: the number of steps (batches) taken, `len(batch_losses)`.
    examples_seen: the real rows of the applied (not skipped) steps, padding excluded.
    skipped_steps: the indices of the steps skipped as non-finite, counted from 0.
    epoch_times: per epoch, the wall seconds of its training in this process (compilation
      included, evaluation excluded).
    steps_per_second: per epoch, the steps trained in this process divided by its
      `epoch_times` entry.
  """

  batch_losses: list[float] = dataclasses.field(default_factory=list)
  running_losses: list[float] = dataclasses.field(default_factory=list)
  learning_rates: list[float] = dataclasses.field(default_factory=list)
  epoch_losses: list[float] = dataclasses.field(default_factory=list)
  train_metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  eval_metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  epochs_trained: int = 0
  total_steps: int = 0
  examples_seen: int = 0
  skipped_steps: list[int] = dataclasses.field(default_factory=list)
  epoch_times: list[float] = dataclasses.field(default_factory=list)
  steps_per_second: list[float] = dataclasses.field(default_factory=list)

  @property
  def final_loss(self) -> Optional[float]:
    """The last epoch's running training loss (`epoch_losses[-1]`), or None."""
    return self.epoch_losses[-1] if self.epoch_losses else None

  @property
  def num_skipped_steps(self) -> int:
    """How many updates were skipped for a non-finite loss or gradient (`len(skipped_steps)`)."""
    return len(self.skipped_steps)

  def to_dict(self) -> dict[str, Any]:
    """All fields, `final_loss` and `num_skipped_steps`, as a new dict of plain Python values."""
    return {**dataclasses.asdict(self), **{name: getattr(self, name) for name in _DERIVED}}

  def to_json(self, **kwargs: Any) -> str:
    """`to_dict()` as standard JSON; keyword arguments go to `json.dumps` (e.g. `indent=2`).

    JSON has no NaN or infinity (Python's `json` would write the invalid tokens `NaN` and
    `Infinity`, e.g. for the loss of a skipped step), so a non-finite number is written as
    `null`, as JavaScript's `JSON.stringify` does. `from_json` reads such a `null` back as
    NaN: the round trip is exact except that an infinity comes back as NaN.

    Args:
      **kwargs: passed to `json.dumps` (`allow_nan` is always False: the output is valid JSON).
    """
    return json.dumps(_null_for_non_finite(self.to_dict()), **{**kwargs, "allow_nan": False})

  @classmethod
  def from_json(cls, text: str) -> "TrainingStats":
    """The inverse of `to_json`: a `null` number is NaN (see `to_json`)."""
    record = json.loads(text)
    if not isinstance(record, dict):
      raise ValueError(f"text must hold a JSON object (what to_json writes), got {type(record).__name__}.")
    return cls.from_dict({k: _nan_for_null(v) for k, v in record.items() if k not in _DERIVED})

  @classmethod
  def from_dict(cls, record: dict[str, Any]) -> "TrainingStats":
    """The inverse of `to_dict` (its derived entries, `final_loss` and `num_skipped_steps`, are ignored)."""
    return cls(**{k: v for k, v in record.items() if k not in _DERIVED})


_DERIVED = ("final_loss", "num_skipped_steps")


def _null_for_non_finite(value: Any) -> Any:
  """`value` with every non-finite float (in lists and dicts, at any depth) replaced by None."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, list):
    return [_null_for_non_finite(item) for item in value]
  if isinstance(value, dict):
    return {key: _null_for_non_finite(item) for key, item in value.items()}
  return value


def _nan_for_null(value: Any) -> Any:
  """`value` with every None inside a list or dict (a number `to_json` wrote as null) replaced by NaN."""
  if isinstance(value, list):
    return [math.nan if item is None else _nan_for_null(item) for item in value]
  if isinstance(value, dict):
    return {key: math.nan if item is None else _nan_for_null(item) for key, item in value.items()}
  return value
