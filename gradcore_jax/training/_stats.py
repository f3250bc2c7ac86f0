"""The record of a training run: three loss figures kept apart, and the run's counters."""

from __future__ import annotations

import dataclasses
import json
from typing import Any
from typing import Optional


@dataclasses.dataclass
class TrainingStats:
  """What `fit` measured. Plain Python numbers only, so `to_json()` always works.

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
     whole evaluation loader, exactly (`"loss"` plus each metric). Empty dicts without
     an evaluation loader.

  Counters: `epochs_trained`, `total_steps` (steps taken, = `len(batch_losses)`),
  `examples_seen` (real rows of the applied steps, padding excluded), `epoch_times` (wall
  seconds of each epoch's training in this process, including compilation in the first,
  excluding evaluation), `steps_per_second` (per epoch) and `final_loss` (=
  `epoch_losses[-1]`, None before the first epoch).

  Non-finite steps (`fit(..., on_nonfinite="skip")`): `skipped_steps` lists the steps whose
  loss or gradients were NaN/Inf and whose update was therefore not applied (params,
  optimizer and model state untouched); `num_skipped_steps` counts them. A skipped batch
  keeps its (possibly non-finite) value in `batch_losses` but counts in neither the running
  and epoch losses, nor the training metrics, nor `examples_seen`; the optimizer has made
  `total_steps - num_skipped_steps` updates. An epoch whose every step was skipped has a
  NaN epoch loss.
  """

  batch_losses: list[float] = dataclasses.field(default_factory=list)
  running_losses: list[float] = dataclasses.field(default_factory=list)
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
    """`to_dict()` as JSON; keyword arguments go to `json.dumps` (e.g. `indent=2`)."""
    return json.dumps(self.to_dict(), **kwargs)

  @classmethod
  def from_dict(cls, record: dict[str, Any]) -> "TrainingStats":
    """The inverse of `to_dict` (its derived entries, `final_loss` and `num_skipped_steps`, are ignored)."""
    return cls(**{k: v for k, v in record.items() if k not in _DERIVED})


_DERIVED = ("final_loss", "num_skipped_steps")
