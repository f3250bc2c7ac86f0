"""The one train step and the one eval step, for every kind of model.

Both are pure functions of fixed-shape pytrees: the train step has the `lax.scan` body
signature `(carry, batch) -> (carry, batch_loss)`, so an epoch can run as one compiled
loop as well as step by step, and it is jitted once with its carry donated (params,
optimizer state and the epoch's metric statistics are updated in place).

The batch loss is the mean of the per-example losses over the batch's real rows. The
loop turns the batch losses into the epoch's loss on the host (each weighted by its real
rows); metrics and evaluations accumulate in `gradcore_jax.metrics` states (sums, never
means of means). Keeping the loss sums out of the carry saves a fifth of a small step.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradcore_jax import metrics as metrics_lib
from gradcore_jax._typing import Array
from gradcore_jax._typing import PyTree
from gradcore_jax.training._models import Adapted

LossFn = Callable[..., Array]
BatchData = tuple[PyTree, Array]  # ((inputs, targets), mask)
MetricStates = dict[str, Any]


class Carry(NamedTuple):
  """Everything a train step reads and replaces; donated to the step."""

  params: PyTree
  opt_state: PyTree
  model_state: PyTree
  metrics: MetricStates  # the epoch's training metrics so far


class Tally(NamedTuple):
  """Sufficient statistics of an evaluation: the loss and each metric (sums, never ratios)."""

  loss: metrics_lib.MeanState
  metrics: MetricStates


@dataclasses.dataclass(frozen=True)
class Steps:
  """The compiled functions of one `fit` or `evaluate` call.

  Attributes:
    train: `train(carry, ((inputs, targets), mask)) -> (carry, batch_loss)`, jitted,
      donates `carry`; `batch_loss` is the mean loss over the real rows, taken with the
      params before the update.
    evaluate: `evaluate(tally, params, model_state, ((inputs, targets), mask)) -> tally`,
      jitted, donates `tally`; params are fixed.
    new_metrics: empty training-metric states (start of an epoch).
    new_tally: an empty `Tally` (start of an evaluation).
    metric_values: `{name: value}` of metric states, as device scalars.
    tally_values: `{"loss": ..., **metrics}` of a `Tally`, as device scalars.
  """

  train: Callable[[Carry, BatchData], tuple[Carry, Array]]
  evaluate: Callable[[Tally, PyTree, PyTree, BatchData], Tally]
  new_metrics: Callable[[], MetricStates]
  new_tally: Callable[[], Tally]
  metric_values: Callable[[MetricStates], dict[str, Array]]
  tally_values: Callable[[Tally], dict[str, Array]]


def build_steps(model: Adapted, loss: LossFn, metrics: Mapping[str, metrics_lib.Metric]) -> Steps:
  """Builds (and jits) the train and eval steps of `model` under `loss` and `metrics`.

  `loss(y_pred, y_true, reduction="none")` must give one value per example; if it takes a
  `mask` keyword (as every `gradcore_jax.losses` function does) it also receives the batch
  mask, which keeps NaN targets in padded rows out of the gradient. Metrics receive
  `(y_true, y_pred)` and the mask.
  """
  loss_metric = metrics_lib.mean()
  collection = metrics_lib.collection(metrics)
  loss_kwargs = _mask_keyword(loss)

  def forward(params: PyTree, model_state: PyTree, batch: BatchData) -> tuple[Array, tuple]:
    (inputs, targets), mask = _unpack(batch)
    predictions, new_model_state = model.apply(params, model_state, inputs)
    per_example = loss(predictions, targets, reduction="none", **loss_kwargs(mask))
    if jnp.shape(per_example) != mask.shape:
      raise ValueError(
          f"loss(y_pred, y_true, reduction='none') must return one value per example, shape "
          f"{mask.shape}; got shape {jnp.shape(per_example)} for y_pred {jnp.shape(predictions)} "
          f"and y_true {jnp.shape(targets)}."
      )
    per_example = jnp.where(mask, per_example, 0)
    batch_loss = jnp.sum(per_example) / jnp.maximum(jnp.sum(mask), 1)
    return batch_loss, (per_example, targets, predictions, mask, new_model_state)

  def train(carry: Carry, batch: BatchData) -> tuple[Carry, Array]:
    grad_fn = jax.value_and_grad(forward, has_aux=True)
    (batch_loss, (_, targets, predictions, mask, model_state)), grads = grad_fn(carry.params, carry.model_state, batch)
    updates, opt_state = model.tx.update(grads, carry.opt_state, carry.params)
    params = optax.apply_updates(carry.params, updates)
    metric_states = collection.update(carry.metrics, targets, predictions, mask=mask)
    return Carry(params, opt_state, model_state, metric_states), batch_loss

  def evaluate(tally: Tally, params: PyTree, model_state: PyTree, batch: BatchData) -> Tally:
    _, (per_example, targets, predictions, mask, _) = forward(params, model_state, batch)
    return Tally(
        loss_metric.update(tally.loss, per_example, mask=mask),
        collection.update(tally.metrics, targets, predictions, mask=mask),
    )

  def tally_values(tally: Tally) -> dict[str, Array]:
    return {"loss": loss_metric.compute(tally.loss), **collection.compute(tally.metrics)}

  # The initial states are jitted: one dispatch, and every leaf its own buffer (metric
  # states may share one zero array between leaves, which a donated carry cannot take twice).
  return Steps(
      train=jax.jit(train, donate_argnums=0),
      evaluate=jax.jit(evaluate, donate_argnums=0),
      new_metrics=jax.jit(collection.init),
      new_tally=jax.jit(lambda: Tally(loss_metric.init(), collection.init())),
      metric_values=jax.jit(collection.compute),
      tally_values=jax.jit(tally_values),
  )


def _unpack(batch: BatchData) -> tuple[tuple[PyTree, PyTree], Array]:
  """Splits a batch into `(inputs, targets)` and the mask, or says how data must be laid out."""
  data, mask = batch
  if not isinstance(data, (tuple, list)) or len(data) != 2:
    raise ValueError(
        "The loader's data must be an (inputs, targets) pair, e.g. DataLoader((x, y), batch_size=...); "
        f"got {jax.tree.structure(data)}."
    )
  return (data[0], data[1]), mask


def _mask_keyword(loss: LossFn) -> Callable[[Array], dict[str, Array]]:
  """`mask -> {"mask": mask}` when `loss` accepts a `mask` keyword, else `mask -> {}`."""
  try:
    parameters = inspect.signature(loss).parameters.values()
  except (TypeError, ValueError):
    parameters = []
  takes_mask = any(p.name == "mask" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
  return (lambda mask: {"mask": mask}) if takes_mask else (lambda mask: {})
