"""Losses with `torch.nn.functional` values and one rule for reduction, weights and masks.

Every loss has the signature (the keywords are typed once, in `LossOptions`)

    loss(y_pred, y_true, *, reduction="mean", sample_weight=None, mask=None)

(prediction first, as in PyTorch and Optax; the streaming metrics in `gradcore_jax.metrics`
take `y_true, y_pred` in Keras order). The leading axis is the batch axis. Each loss first
computes one value per example:

* element-wise losses (`mse`, `l1`, `huber`, `bce`, `bce_with_logits`, `hinge`) average the
  element-wise values over all non-batch axes;
* distribution losses (`cross_entropy`, `nll`, `kl_div`) reduce the last (class) axis, then
  average over any axes between the batch axis and the class axis.

Then, with `w = sample_weight * mask` (both of shape `()` or `(batch,)`):

* `reduction="none"`: `w * l`, one value per example (0 for masked examples);
* `reduction="sum"`: `sum(w * l)`;
* `reduction="mean"`: `sum(w * l) / sum(w)`; an all-masked (or zero-weight) batch gives 0, not NaN.

Without weights or masks, "mean" equals the torch value with `reduction="mean"` (for `kl_div`,
`reduction="batchmean"`, the mathematically correct KL). "sum" and "none" equal torch's when an
example is one element (or one distribution); otherwise torch sums and returns elements, we
sum and return examples (an example's elements averaged), so that "none" feeds the
per-example metrics and "sum" and "mean" agree with it.

Masked examples are removed with `jnp.where`, never by multiplying, so NaN or garbage in a
masked row cannot reach the value. Masked rows of `y_true` are also replaced by zeros before
the loss is evaluated, so NaN targets in padding cannot reach the gradient either.
"""

from __future__ import annotations

import functools
from typing import Callable
from typing import Literal
from typing import Optional
from typing import TypedDict
from typing import Unpack

import jax
import jax.numpy as jnp
import optax

from gradcore_jax._typing import Array

__all__ = [
  "LossOptions",
  "Reduction",
  "bce",
  "bce_with_logits",
  "cross_entropy",
  "hinge",
  "huber",
  "kl_div",
  "l1",
  "mae",
  "mse",
  "nll",
]

Reduction = Literal["mean", "sum", "none"]
ArrayLike = jax.typing.ArrayLike


class LossOptions(TypedDict, total=False):
  """The keyword arguments every loss takes (the defaults are applied by `_loss`).

  reduction: "mean" (default) | "sum" | "none".
  sample_weight: None (weight 1) or an array of shape () or (batch,).
  mask: None (keep all) or an array of shape () or (batch,); False/0 drops the example.
  """

  reduction: Reduction
  sample_weight: Optional[ArrayLike]
  mask: Optional[ArrayLike]


_REDUCTIONS = ("mean", "sum", "none")
# torch.nn.functional.binary_cross_entropy clamps each log term at -100 so that p in {0, 1}
# gives a finite loss; we keep the same clamp to match its values.
_BCE_LOG_FLOOR = -100.0


def _check_reduction(reduction: str) -> None:
  if reduction not in _REDUCTIONS:
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")


def _check_shapes(y_pred: Array, y_true: Array, labels: bool) -> None:
  """Integer labels have the prediction's shape minus the class axis; anything else, its shape."""
  if labels:
    if y_pred.ndim < 2 or y_true.shape != y_pred.shape[:-1]:
      raise ValueError(
        "With integer labels y_pred must be (batch, ..., classes) and y_true (batch, ...): "
        f"got y_pred {y_pred.shape} and y_true {y_true.shape}."
      )
  elif y_pred.ndim < 1 or y_true.shape != y_pred.shape:
    raise ValueError(
      "y_pred and y_true must have the same shape with a leading batch axis: "
      f"got y_pred {y_pred.shape} and y_true {y_true.shape}."
    )


def _per_example_operand(name: str, value: Optional[ArrayLike], batch: int) -> Optional[Array]:
  """`sample_weight` or `mask` as an array of shape (batch,), or None when not given."""
  if value is None:
    return None
  value = jnp.asarray(value)
  if value.shape not in ((), (batch,)):
    raise ValueError(f"{name} must be a scalar or have shape ({batch},) (one per example), got {value.shape}.")
  return jnp.broadcast_to(value, (batch,))


def _rows(keep: Array, like: Array) -> Array:
  """A per-example boolean broadcast over the trailing axes of `like`."""
  return keep.reshape(keep.shape + (1,) * (like.ndim - 1))


def _reduce(
  per_example: Array,
  reduction: Reduction,
  sample_weight: Optional[Array],
  keep: Optional[Array],
) -> Array:
  """The one reduction rule: weights, masks and mean/sum/none for every loss."""
  weight = jnp.ones_like(per_example) if sample_weight is None else sample_weight.astype(per_example.dtype)
  if keep is not None:
    weight = jnp.where(keep, weight, 0)
    per_example = jnp.where(keep, per_example, 0)
  weighted = weight * per_example
  if reduction == "none":
    return weighted
  total = jnp.sum(weighted)
  if reduction == "sum":
    return total
  denominator = jnp.sum(weight)
  empty = denominator == 0
  return jnp.where(empty, 0, total / jnp.where(empty, 1, denominator))


def _loss(
  pointwise: Callable[[Array, Array], Array],
  y_pred: ArrayLike,
  y_true: ArrayLike,
  *,
  reduction: Reduction = "mean",
  sample_weight: Optional[ArrayLike] = None,
  mask: Optional[ArrayLike] = None,
  labels: bool = False,
) -> Array:
  """Validates, evaluates `pointwise`, averages it per example and reduces.

  `pointwise(y_pred, y_true)` returns either element-wise values (shape of `y_pred`) or one
  value per distribution (shape of `y_pred` without its last axis); both are averaged over
  their non-batch axes to give one value per example.
  """
  _check_reduction(reduction)
  y_pred = jnp.asarray(y_pred)
  y_true = jnp.asarray(y_true)
  _check_shapes(y_pred, y_true, labels)
  batch = y_pred.shape[0]
  weight = _per_example_operand("sample_weight", sample_weight, batch)
  keep = _per_example_operand("mask", mask, batch)
  if keep is not None:
    keep = keep.astype(bool)
    y_true = jnp.where(_rows(keep, y_true), y_true, jnp.zeros_like(y_true))
  values = pointwise(y_pred, y_true)
  per_example = jnp.mean(values, axis=tuple(range(1, values.ndim))) if values.ndim > 1 else values
  return _reduce(per_example, reduction, weight, keep)


def _absolute_error(y_pred: Array, y_true: Array) -> Array:
  return jnp.abs(y_pred - y_true)


def _probability_bce(p: Array, y: Array) -> Array:
  log_p = jnp.maximum(jnp.log(p), _BCE_LOG_FLOOR)
  log_not_p = jnp.maximum(jnp.log1p(-p), _BCE_LOG_FLOOR)
  return -(y * log_p + (1 - y) * log_not_p)


def _negative_log_likelihood(log_probs: Array, labels: Array) -> Array:
  return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def _is_integer(x: ArrayLike) -> bool:
  return jnp.issubdtype(jnp.asarray(x).dtype, jnp.integer)


def mse(y_pred: ArrayLike, y_true: ArrayLike, **options: Unpack[LossOptions]) -> Array:
  """Mean squared error, `l = mean((y_pred - y_true)**2)` over each example's elements.

  torch: `F.mse_loss`. Element-wise term: `optax.losses.squared_error` (no 0.5 factor,
  unlike `optax.losses.l2_loss`).
  """
  return _loss(optax.losses.squared_error, y_pred, y_true, **options)


def l1(y_pred: ArrayLike, y_true: ArrayLike, **options: Unpack[LossOptions]) -> Array:
  """Mean absolute error, `l = mean(|y_pred - y_true|)` over each example's elements.

  torch: `F.l1_loss`. Also available as `mae`.
  """
  return _loss(_absolute_error, y_pred, y_true, **options)


mae = l1


def huber(y_pred: ArrayLike, y_true: ArrayLike, *, delta: float = 1.0, **options: Unpack[LossOptions]) -> Array:
  """Huber loss with `e = y_pred - y_true`: `0.5 e**2` if `|e| <= delta`, else `delta (|e| - 0.5 delta)`.

  torch: `F.huber_loss(..., delta=delta)` (not `smooth_l1_loss`, which divides by beta).
  Element-wise term: `optax.losses.huber_loss`.
  """
  if isinstance(delta, (int, float)) and not delta > 0:  # a traced delta passes unchecked
    raise ValueError(f"delta must be > 0, got {delta!r}.")
  return _loss(functools.partial(optax.losses.huber_loss, delta=delta), y_pred, y_true, **options)


def bce(y_pred: ArrayLike, y_true: ArrayLike, **options: Unpack[LossOptions]) -> Array:
  """Binary cross-entropy on probabilities: `-(y log p + (1 - y) log(1 - p))`.

  `y_pred` holds probabilities p in [0, 1], `y_true` targets in [0, 1]. Each log is clamped
  at -100 as in torch: `F.binary_cross_entropy`. Prefer `bce_with_logits` for training.
  """
  return _loss(_probability_bce, y_pred, y_true, **options)


def bce_with_logits(y_pred: ArrayLike, y_true: ArrayLike, **options: Unpack[LossOptions]) -> Array:
  """Binary cross-entropy on logits x: `-(y log sigmoid(x) + (1 - y) log sigmoid(-x))`.

  torch: `F.binary_cross_entropy_with_logits`. Element-wise term:
  `optax.losses.sigmoid_binary_cross_entropy`.
  """
  return _loss(optax.losses.sigmoid_binary_cross_entropy, y_pred, y_true, **options)


def cross_entropy(y_pred: ArrayLike, y_true: ArrayLike, **options: Unpack[LossOptions]) -> Array:
  """Softmax cross-entropy from logits, classes on the last axis.

  * integer `y_true` (shape `y_pred.shape[:-1]`): labels, `l = logsumexp(x) - x[y]`
    (`optax.losses.softmax_cross_entropy_with_integer_labels`);
  * floating `y_true` (shape of `y_pred`): class probabilities or one-hot rows,
    `l = -sum_c y_c log_softmax(x)_c` (`optax.losses.softmax_cross_entropy`).

  torch: `F.cross_entropy` with class-index or class-probability targets (torch puts the
  class axis second; here it is last). For torch's `ignore_index`, pass
  `mask=(labels != ignore_index)`: the masked label is never read.
  """
  if _is_integer(y_true):
    return _loss(optax.losses.softmax_cross_entropy_with_integer_labels, y_pred, y_true, labels=True, **options)
  return _loss(optax.losses.softmax_cross_entropy, y_pred, y_true, **options)


def nll(y_pred: ArrayLike, y_true: ArrayLike, **options: Unpack[LossOptions]) -> Array:
  """Negative log-likelihood: `l = -y_pred[y]` for log-probabilities `y_pred` and integer labels.

  torch: `F.nll_loss` (class axis last here). `y_true` has shape `y_pred.shape[:-1]` and
  integer dtype; labels must lie in [0, classes). Use `mask` for torch's `ignore_index`.
  """
  if not _is_integer(y_true):
    raise ValueError(f"nll needs integer class labels in y_true, got dtype {jnp.asarray(y_true).dtype}.")
  return _loss(_negative_log_likelihood, y_pred, y_true, labels=True, **options)


def kl_div(y_pred: ArrayLike, y_true: ArrayLike, *, log_target: bool = False, **options: Unpack[LossOptions]) -> Array:
  """Kullback-Leibler divergence KL(y_true || exp(y_pred)), summed over the last (class) axis.

  `l = sum_c t_c (log t_c - y_pred_c)` with `y_pred` log-probabilities and `y_true` = t
  probabilities (terms with t_c = 0 count 0), or log-probabilities if `log_target=True`.

  torch: `F.kl_div(y_pred, y_true, log_target=...)` with the same argument order. Our
  "mean" is torch's `reduction="batchmean"` (sum over classes, mean over examples: the true
  KL), not torch's "mean", which also divides by the number of classes.
  Element-wise term: `optax.losses.kl_divergence` / `kl_divergence_with_log_targets`.
  """
  pointwise = optax.losses.kl_divergence_with_log_targets if log_target else optax.losses.kl_divergence
  return _loss(pointwise, y_pred, y_true, **options)


def hinge(y_pred: ArrayLike, y_true: ArrayLike, **options: Unpack[LossOptions]) -> Array:
  """Binary hinge loss, `l = mean(max(0, 1 - y_true * y_pred))` over each example's elements.

  Targets must be -1 or +1 (they are used as given: 0/1 labels are not converted). For a
  (batch, k) input this is Keras' `Hinge` (mean over the last axis); for a (batch,) input it
  is the per-sample hinge of scikit-learn's binary `hinge_loss`. PyTorch has no direct
  counterpart (`F.hinge_embedding_loss` is a different loss). Element-wise term:
  `optax.losses.hinge_loss`.
  """
  return _loss(optax.losses.hinge_loss, y_pred, y_true, **options)
