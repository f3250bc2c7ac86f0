"""`fit(lr_plateau=...)`: torch's `ReduceLROnPlateau` stepped once per epoch on a monitored figure.

The plateau's state is never stored: after each epoch it is rebuilt by replaying the
monitored figure of every epoch so far through `plateau.step` (a handful of scalar
operations per epoch). So a run resumed from a checkpoint, whose `TrainingStats` hold the
figures of the epochs before it, continues with exactly the learning rate an uninterrupted
run would have, and nothing is added to the checkpoint.

The learning rate reaches the optimizer through `optax.inject_hyperparams`: the driver
writes `plateau.lr(state)` into the `"learning_rate"` hyperparameter of the optimizer state.
The same hyperparameter is where `fit` reads the learning rate each step used
(`learning_rate_reader`, recorded in `TrainingStats.learning_rates`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from gradcore_jax._typing import PyTree
from gradcore_jax.training._stats import TrainingStats

_INJECTED = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


def _is_injected(node: Any) -> bool:
  return isinstance(node, _INJECTED)


def _injected_states(opt_state: PyTree) -> list[Any]:
  return [node for node in jax.tree.leaves(opt_state, is_leaf=_is_injected) if _is_injected(node)]


def _injected_learning_rates(opt_state: PyTree) -> list[Any]:
  return [s.hyperparams["learning_rate"] for s in _injected_states(opt_state) if "learning_rate" in s.hyperparams]


def learning_rate_reader(opt_state: PyTree) -> Optional[Callable[[PyTree], Any]]:
  """A function that reads the learning rate out of optimizer states shaped like `opt_state`, or None.

  The rule: the state must hold exactly one `optax.inject_hyperparams` state with a
  `"learning_rate"` hyperparameter (as `fit(lr_plateau=...)` needs too); the function
  returns that value, which `inject_hyperparams` sets at every update to the rate the
  update used. Anything else (no injected rate, or one per parameter group) gives None:
  a rate passed straight to an optimizer lives in its closure, not in its state. The
  search is over the state's structure, so it costs nothing once traced.

  Args:
    opt_state: an optimizer state (or one with the same structure).
  """
  if len(_injected_learning_rates(opt_state)) != 1:
    return None
  return lambda state: _injected_learning_rates(state)[0]


@dataclasses.dataclass(frozen=True)
class PlateauDriver:
  """Steps `plateau` on `monitor` after every epoch and sets the optimizer's learning rate.

  Attributes:
    plateau: a `gradcore_jax.schedules.reduce_lr_on_plateau(...)` object.
    monitor: `"loss"` (the epoch's training loss), `"eval_loss"`, `"eval_<metric>"` or
      `"<metric>"` (a training metric).
  """

  plateau: Any
  monitor: str

  @classmethod
  def build(
    cls, plateau: Any, monitor: Optional[str], has_eval: bool, metric_names: list[str]
  ) -> Optional["PlateauDriver"]:
    if plateau is None:
      if monitor is not None:
        raise ValueError("plateau_monitor needs lr_plateau (a gradcore_jax.schedules.reduce_lr_on_plateau).")
      return None
    if not all(callable(getattr(plateau, name, None)) for name in ("init", "step", "lr")):
      raise TypeError(
        f"lr_plateau must be a gradcore_jax.schedules.reduce_lr_on_plateau(...) object, got {type(plateau).__name__}."
      )
    if monitor is None:
      monitor = "eval_loss" if has_eval else "loss"
    known = ["loss", *metric_names] + (["eval_loss", *(f"eval_{m}" for m in metric_names)] if has_eval else [])
    if monitor not in known:
      raise ValueError(f"plateau_monitor {monitor!r} is not a figure this run records; choose one of {known}.")
    return cls(plateau, monitor)

  def check_optimizer(self, opt_state: PyTree) -> None:
    """The optimizer state must hold exactly one injected `learning_rate` for the plateau to set."""
    injected = [s for s in _injected_states(opt_state) if "learning_rate" in s.hyperparams]
    if len(injected) != 1:
      raise ValueError(
        "lr_plateau sets the optimizer's learning rate through optax.inject_hyperparams: build the optimizer as "
        "`optax.inject_hyperparams(gcj.adam)(learning_rate=...)` (exactly one injected learning_rate; found "
        f"{len(injected)})."
      )

  def figure(self, stats: TrainingStats, epoch: int) -> float:
    if self.monitor == "loss":
      return stats.epoch_losses[epoch]
    if self.monitor.startswith("eval_") and self.monitor[len("eval_") :] in stats.eval_metrics[epoch]:
      return stats.eval_metrics[epoch][self.monitor[len("eval_") :]]
    return stats.train_metrics[epoch][self.monitor]

  def learning_rate(self, stats: TrainingStats) -> float:
    """The plateau's learning rate after replaying every epoch recorded in `stats`."""
    state = self.plateau.init()
    for epoch in range(stats.epochs_trained):
      figure = self.figure(stats, epoch)
      state = self.plateau.step(state, math.nan if figure is None else figure)
    return float(self.plateau.lr(state))

  def apply(self, opt_state: PyTree, stats: TrainingStats) -> PyTree:
    """`opt_state` with its injected learning rate set to the plateau's current one."""
    lr = self.learning_rate(stats)

    def set_lr(node: Any) -> Any:
      if not _is_injected(node) or "learning_rate" not in node.hyperparams:
        return node
      old = node.hyperparams["learning_rate"]
      new = jax.device_put(jnp.asarray(lr, dtype=old.dtype), old.sharding) if isinstance(old, jax.Array) else lr
      return node._replace(hyperparams={**node.hyperparams, "learning_rate": new})

    return jax.tree.map(set_lr, opt_state, is_leaf=_is_injected)
