"""The one train step and the one eval step, for every kind of model.

Both are pure functions of fixed-shape pytrees: the train step has the `lax.scan` body
signature `(carry, batch) -> (carry, out)`. It is jitted twice from that one definition:
as a step (one batch per call) and as a compiled epoch (`lax.scan` over stacked
batches, many steps per call); both donate the carry (params, optimizer state and the
epoch's metric statistics are updated in place).

The batch loss is the mean of the per-example losses over the batch's real rows. The
loop turns the batch losses into the epoch's loss on the host (each weighted by its real
rows); metrics and evaluations accumulate in `gradcore_jax.metrics` states (sums, never
means of means). Keeping the loss sums out of the carry saves a fifth of a small step;
carrying the metric states packed (one array per dtype instead of five arrays per metric)
saves more, since a compiled call costs microseconds per argument (with two metrics,
~120 instead of ~200 µs per step of the digits MLP on a 2-core CPU).

Non-finite values never need the host inside the step: with `on_nonfinite` set, the step
also returns a status (its loss and gradients finite? and then its new params and model
state?), and with `"skip"` it selects (`jnp.where`) the old carry instead of the new one
when anything was not finite.

The train step runs the model in train mode (`model.apply(..., train=True)`: dropout on,
batch statistics of the batch, model state updated), the eval step in eval mode.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any
from typing import Callable
from typing import Mapping
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from gradcore_jax import metrics as metrics_lib
from gradcore_jax import transforms
from gradcore_jax._typing import Array
from gradcore_jax._typing import PyTree
from gradcore_jax.training._models import Adapted

LossFn = Callable[..., Array]
FINITE, BAD_GRADIENTS, BAD_UPDATE = 0, 1, 2  # the step's status (see `StepOptions.on_nonfinite`)
BatchData = tuple[PyTree, Array]  # ((inputs, targets), mask)
PackedMetrics = dict[str, Array]  # {dtype name: 1-D array}, see `_Packing`


class Accumulator(NamedTuple):
  """The gradient accumulated over an update's micro-batches so far (`fit(accumulate=k)`, k > 1).

  Attributes:
    grads: Σ over the cycle's micro-batches of the gradient of the *sum* of per-example
      losses over their real rows (so the update divides once, by `rows`).
    rows: int32 scalar, the real rows of those micro-batches.
    spoiled: bool scalar, a micro-batch of the cycle was skipped as non-finite (the cycle
      then makes no update).
    batch: int32 scalar, the index within the epoch of the next batch (the cycle ends
      after every `k`-th batch and after the epoch's last).
  """

  grads: PyTree
  rows: Array
  spoiled: Array
  batch: Array


class Carry(NamedTuple):
  """Everything a train step reads and replaces; donated to the step."""

  params: PyTree
  opt_state: PyTree
  model_state: PyTree
  metrics: PackedMetrics  # the epoch's training metric states so far, packed
  accumulator: Optional[Accumulator] = None  # with gradient accumulation only (None adds no leaf)


class Tally(NamedTuple):
  """Sufficient statistics of an evaluation: the loss and each metric (sums, never ratios)."""

  loss: metrics_lib.MeanState
  metrics: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """How the train step treats its gradients.

  Attributes:
    clip_global_norm: scale the gradients so that their global norm is at most this
      with torch's `clip_grad_norm_` rule (`transforms.clip_by_torch_norm`:
      `coef = min(1, max_norm / (norm + 1e-6))`, applied before the optimizer), or None.
    on_nonfinite: None: the step returns its batch loss. `"raise"`: it returns
      `[batch_loss, status]`, `status` being `FINITE` (0) when everything was finite,
      `BAD_GRADIENTS` (1) when the loss or a gradient was not, `BAD_UPDATE` (2) when they
      were but the new params or model state were not (the caller raises). `"skip"`: the
      same, and a non-finite step returns the carry it was given (no update).
    learning_rate: None, or a function reading the learning rate out of the optimizer
      state an update returns (`_plateau.learning_rate_reader`): the step then returns
      `(out, learning_rate)`, the rate of its update (for a skipped step, the rate it
      would have used).
    accumulate: micro-batches per optimizer update (1: an update per batch, the plain
      step). With k > 1 the carry holds an `Accumulator`; the update is made after every
      k-th batch of the epoch and after its last (`batches_per_epoch`), from the summed
      gradients divided by the summed real rows.
    batches_per_epoch: the number of batches of an epoch; required when `accumulate > 1`.
  """

  clip_global_norm: Optional[float] = None
  on_nonfinite: Optional[str] = None
  learning_rate: Optional[Callable[[PyTree], Array]] = None
  accumulate: int = 1
  batches_per_epoch: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Steps:
  """The compiled functions of one `fit` or `evaluate` call.

  Attributes:
    train: `train(carry, ((inputs, targets), mask)) -> (carry, out)`, jitted, donates
      `carry`. `out` is the batch loss (the mean loss over the real rows, taken with the
      params before the update), or `[batch_loss, status]` with `on_nonfinite` set;
      `(out, learning_rate)` with `StepOptions.learning_rate` set.
    train_scan: the same step scanned over batches stacked on a leading axis, jitted,
      donates `carry`; `out` is stacked along a new leading axis.
    evaluate: `evaluate(tally, params, model_state, ((inputs, targets), mask)) -> tally`,
      jitted, donates `tally`; params are fixed.
    new_metrics: empty training-metric states, packed (start of an epoch).
    new_tally: an empty `Tally` (start of an evaluation).
    metric_values: `{name: value}` of packed metric states, as device scalars.
    tally_values: `{"loss": ..., **metrics}` of a `Tally`, as device scalars.
  """

  train: Callable[[Carry, BatchData], tuple[Carry, PyTree]]
  train_scan: Callable[[Carry, BatchData], tuple[Carry, PyTree]]
  evaluate: Callable[[Tally, PyTree, PyTree, BatchData], Tally]
  new_metrics: Callable[[], PackedMetrics]
  new_tally: Callable[[], Tally]
  metric_values: Callable[[PackedMetrics], dict[str, Array]]
  tally_values: Callable[[Tally], dict[str, Array]]


def build_steps(
  model: Adapted,
  loss: LossFn,
  metrics: Mapping[str, metrics_lib.Metric],
  options: StepOptions = StepOptions(),
) -> Steps:
  """Builds (and jits) the train and eval steps of `model` under `loss` and `metrics`.

  `loss(y_pred, y_true, reduction="none")` must give one value per example; if it takes a
  `mask` keyword (as every `gradcore_jax.losses` function does) it also receives the batch
  mask, which keeps NaN targets in padded rows out of the gradient. Metrics receive
  `(y_true, y_pred)` and the mask.
  """
  loss_metric = metrics_lib.mean()
  collection = metrics_lib.collection(metrics)
  packing = _Packing(collection.init)
  loss_kwargs = _mask_keyword(loss)

  def forward(
    params: PyTree, model_state: PyTree, batch: BatchData, train: bool, summed: bool = False
  ) -> tuple[Array, tuple]:
    (inputs, targets), mask = _unpack(batch)
    predictions, new_model_state = model.apply(params, model_state, inputs, train)
    per_example = loss(predictions, targets, reduction="none", **loss_kwargs(mask))
    if jnp.shape(per_example) != mask.shape:
      raise ValueError(
        f"loss(y_pred, y_true, reduction='none') must return one value per example, shape "
        f"{mask.shape}; got shape {jnp.shape(per_example)} for y_pred {jnp.shape(predictions)} "
        f"and y_true {jnp.shape(targets)}."
      )
    per_example = jnp.where(mask, per_example, 0)
    if summed:  # accumulation differentiates the sum, and divides the cycle's sum once
      return jnp.sum(per_example), (per_example, targets, predictions, mask, new_model_state)
    batch_loss = jnp.sum(per_example) / jnp.maximum(jnp.sum(mask), 1)
    return batch_loss, (per_example, targets, predictions, mask, new_model_state)

  def train(carry: Carry, batch: BatchData) -> tuple[Carry, PyTree]:
    if model.tx is None:  # `evaluate` builds the steps without an optimizer, and never trains
      raise ValueError("optimizer is required to train: pass an Optax transformation (or an nnx.Optimizer).")
    grad_fn = jax.value_and_grad(forward, has_aux=True)
    (batch_loss, (_, targets, predictions, mask, model_state)), grads = grad_fn(
      carry.params, carry.model_state, batch, True
    )
    gradients_finite = _all_finite(batch_loss, grads)
    if options.clip_global_norm is not None:
      grads, _ = transforms.clip_by_torch_norm(grads, options.clip_global_norm)
    updates, opt_state = model.tx.update(grads, carry.opt_state, carry.params)
    params = optax.apply_updates(carry.params, updates)
    metric_states = collection.update(packing.unpack(carry.metrics), targets, predictions, mask=mask)
    new = Carry(params, opt_state, model_state, packing.pack(metric_states))
    out = batch_loss
    if options.on_nonfinite is not None:
      # The new params catch a NaN/Inf update (an optimizer dividing 0 by 0) and an overflow
      # alike; the new model state, e.g. batch statistics gone bad.
      status = jnp.where(
        gradients_finite, jnp.where(_all_finite(params, model_state), FINITE, BAD_UPDATE), BAD_GRADIENTS
      )
      out = jnp.stack([batch_loss, status.astype(batch_loss.dtype)])
      if options.on_nonfinite == "skip":
        new = jax.tree.map(lambda updated, old: jnp.where(status == FINITE, updated, old), new, carry)
    if options.learning_rate is not None:  # read from the update's own state, before a skip discards it
      return new, (out, options.learning_rate(opt_state))
    return new, out

  def train_accumulating(carry: Carry, batch: BatchData) -> tuple[Carry, PyTree]:
    """One micro-batch of `accumulate` (see `StepOptions`): adds its gradient; updates at a cycle's end.

    The optimizer update is computed at every micro-batch and selected (`jnp.where`) only
    at a cycle's end, so the step is one program and the learning rate a micro-batch
    reports is the one of the update it contributes to.
    """
    if model.tx is None or carry.accumulator is None or options.batches_per_epoch is None:
      raise ValueError("gradient accumulation needs an optimizer, an Accumulator in the carry and batches_per_epoch.")
    acc = carry.accumulator
    grad_fn = jax.value_and_grad(lambda p, s, b: forward(p, s, b, True, summed=True), has_aux=True)
    (total, (_, targets, predictions, mask, model_state)), grads = grad_fn(carry.params, carry.model_state, batch)
    rows = jnp.sum(mask, dtype=jnp.int32)
    batch_loss = total / jnp.maximum(rows, 1)
    skipping = options.on_nonfinite == "skip"
    gradients_finite = _all_finite(total, grads)
    keep = gradients_finite if skipping else jnp.bool_(True)  # a skipped micro-batch adds nothing
    grad_sums = jax.tree.map(lambda total_, g: total_ + jnp.where(keep, g, jnp.zeros_like(g)), acc.grads, grads)
    row_sum = acc.rows + jnp.where(keep, rows, 0)
    end = ((acc.batch + 1) % options.accumulate == 0) | (acc.batch + 1 == options.batches_per_epoch)
    mean_grads = jax.tree.map(lambda g: g / jnp.maximum(row_sum, 1).astype(g.dtype), grad_sums)
    if options.clip_global_norm is not None:  # the accumulated gradient, as torch clips before `step`
      mean_grads, _ = transforms.clip_by_torch_norm(mean_grads, options.clip_global_norm)
    updates, opt_state = model.tx.update(mean_grads, carry.opt_state, carry.params)
    params = optax.apply_updates(carry.params, updates)
    # Only a cycle's end makes params; every micro-batch makes model state (BatchNorm statistics).
    update_finite = _all_finite(model_state) & (~end | _all_finite(params))
    status = jnp.where(gradients_finite, jnp.where(update_finite, FINITE, BAD_UPDATE), BAD_GRADIENTS)
    bad = (status != FINITE) if skipping else jnp.bool_(False)
    spoiled = acc.spoiled | bad
    apply = end & ~spoiled
    metric_states = packing.pack(collection.update(packing.unpack(carry.metrics), targets, predictions, mask=mask))
    zeros = jax.tree.map(jnp.zeros_like, grad_sums)
    new = Carry(
      params=_pick(apply, params, carry.params),
      opt_state=_pick(apply, opt_state, carry.opt_state),
      model_state=_pick(~bad, model_state, carry.model_state),
      metrics=_pick(~bad, metric_states, carry.metrics),
      accumulator=Accumulator(
        grads=_pick(end, zeros, grad_sums),
        rows=jnp.where(end, 0, row_sum),
        spoiled=~end & spoiled,  # a new cycle starts clean
        batch=jnp.where(acc.batch + 1 == options.batches_per_epoch, 0, acc.batch + 1),
      ),
    )
    out = batch_loss
    if options.on_nonfinite is not None:
      out = jnp.stack([batch_loss, status.astype(batch_loss.dtype)])
    if options.learning_rate is not None:
      return new, (out, options.learning_rate(opt_state))
    return new, out

  def evaluate(tally: Tally, params: PyTree, model_state: PyTree, batch: BatchData) -> Tally:
    _, (per_example, targets, predictions, mask, _) = forward(params, model_state, batch, False)
    return Tally(
      loss_metric.update(tally.loss, per_example, mask=mask),
      collection.update(tally.metrics, targets, predictions, mask=mask),
    )

  def tally_values(tally: Tally) -> dict[str, Array]:
    return {"loss": loss_metric.compute(tally.loss), **collection.compute(tally.metrics)}

  # The initial states are jitted: one dispatch, and every leaf its own buffer (metric
  # states may share one zero array between leaves, which a donated carry cannot take twice).
  step = train if options.accumulate == 1 else train_accumulating
  return Steps(
    train=jax.jit(step, donate_argnums=0),
    train_scan=jax.jit(lambda carry, batches: lax.scan(step, carry, batches), donate_argnums=0),
    evaluate=jax.jit(evaluate, donate_argnums=0),
    new_metrics=jax.jit(lambda: packing.pack(collection.init())),
    new_tally=jax.jit(lambda: Tally(loss_metric.init(), collection.init())),
    metric_values=jax.jit(lambda packed: collection.compute(packing.unpack(packed))),
    tally_values=jax.jit(tally_values),
  )


def _pick(use_new: Array, new: PyTree, old: PyTree) -> PyTree:
  """`new` where the bool scalar `use_new` holds, else `old`, leaf by leaf (one select each, no branch)."""
  return jax.tree.map(lambda n, o: jnp.where(use_new, n, o), new, old)


def _all_finite(*trees: PyTree) -> Array:
  """A bool scalar: every element of every floating-point leaf of `trees` is finite.

  Other leaves (step counts, RNG keys) cannot be NaN. The loop over leaves runs while
  tracing: the compiled step holds one fused reduction per leaf.
  """
  finite = jnp.bool_(True)
  for leaf in jax.tree.leaves(trees):
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
      finite &= jnp.all(jnp.isfinite(leaf))
  return finite


class _Packing:
  """A pytree of arrays (the metric states) as one 1-D array per dtype, and back, exactly.

  The layout is read from `jax.eval_shape(init)`; packing concatenates the raveled leaves
  of each dtype, unpacking slices and reshapes them. No value changes type.
  """

  def __init__(self, init: Callable[[], PyTree]) -> None:
    leaves, self._treedef = jax.tree.flatten(jax.eval_shape(init))
    self._layout = []  # per leaf: (dtype name, start, shape)
    sizes: dict[str, int] = {}
    for leaf in leaves:
      name = np.dtype(leaf.dtype).name
      start = sizes.get(name, 0)
      sizes[name] = start + int(np.prod(leaf.shape, dtype=np.int64))
      self._layout.append((name, start, leaf.shape))

  def pack(self, tree: PyTree) -> PackedMetrics:
    groups: dict[str, list[Array]] = {}
    for (name, _, _), leaf in zip(self._layout, jax.tree.leaves(tree), strict=True):
      groups.setdefault(name, []).append(jnp.ravel(leaf))
    return {name: jnp.concatenate(parts) for name, parts in groups.items()}

  def unpack(self, packed: PackedMetrics) -> PyTree:
    leaves = [
      packed[name][start : start + int(np.prod(shape, dtype=np.int64))].reshape(shape)
      for name, start, shape in self._layout
    ]
    return jax.tree.unflatten(self._treedef, leaves)


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
