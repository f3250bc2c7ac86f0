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

Inputs outside a loss's domain never give a finite wrong value. The domains: class labels in
`[0, classes)` (`cross_entropy`, `nll`); probabilities in `[0, 1]` (`bce`'s `y_pred` and
`y_true`, `bce_with_logits`' `y_true`, the probability targets of `cross_entropy` and
`kl_div`); log-probabilities `<= 0` (`kl_div(log_target=True)`'s `y_true`); targets -1 or +1
(`hinge`). With concrete inputs (outside `jit`) a value outside its domain in a kept
(unmasked) example raises a ValueError naming the argument, the values and where they are
(torch raises for labels and for `bce`); under `jit` the values cannot be read, and such an
example's loss is NaN instead (so the reduced loss is NaN and `fit` reports or skips the
step). NaN inputs are not domain errors: they propagate. Masked examples are never checked,
which is how torch's `ignore_index` works here: `mask=(labels != ignore_index)`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any
from typing import Callable
from typing import Literal
from typing import Optional
from typing import TypedDict
from typing import Unpack

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from gradcore_jax import _checks
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


def _as_array(name: str, value: Any) -> Array:
  """`value` as a JAX array of booleans or numbers, or a TypeError naming `name`."""
  if value is None or isinstance(value, (str, bytes)):
    raise TypeError(f"{name} must be an array of numbers or booleans, got {type(value).__name__} {value!r}.")
  try:
    array = jnp.asarray(value)
  except TypeError:
    kind = getattr(value, "dtype", type(value).__name__)
    raise TypeError(f"{name} must be an array of numbers or booleans, got {kind}.") from None
  if not (jnp.issubdtype(array.dtype, jnp.number) or jnp.issubdtype(array.dtype, jnp.bool_)):
    raise TypeError(f"{name} must be an array of numbers or booleans, got dtype {array.dtype}.")
  return array


def _per_example_operand(name: str, value: Optional[ArrayLike], batch: int) -> Optional[Array]:
  """`sample_weight` or `mask` as an array of shape (batch,), or None when not given."""
  if value is None:
    return None
  value = _as_array(name, value)
  if value.shape not in ((), (batch,)):
    raise ValueError(f"{name} must be a scalar or have shape ({batch},) (one per example), got {value.shape}.")
  return jnp.broadcast_to(value, (batch,))


def _rows(keep: Array, like: Array) -> Array:
  """A per-example boolean broadcast over the trailing axes of `like`."""
  return keep.reshape(keep.shape + (1,) * (like.ndim - 1))


_LISTED = 5  # out-of-domain values named in an error message


@dataclasses.dataclass(frozen=True)
class _Domain:
  """The values one argument of a loss may hold (see the module docstring).

  Attributes:
    argument: "y_pred" or "y_true".
    expected: what the values must be, as the error message says it.
    outside: element-wise, True where a value lies outside the domain; False for NaN,
      which propagates instead (a NaN loss is loud already).
    hint: a sentence appended to the error message.
  """

  argument: str
  expected: str
  outside: Callable[[Any], Any]
  hint: str = ""


def _outside_unit_interval(x: Any) -> Any:
  return (x < 0) | (x > 1)


def _probabilities(argument: str) -> _Domain:
  return _Domain(argument, "probabilities in [0, 1]", _outside_unit_interval)


def _class_labels(classes: int) -> _Domain:
  return _Domain(
    "y_true",
    f"class labels in [0, {classes}) (the last axis of y_pred has {classes} classes)",
    lambda y: (y < 0) | (y >= classes),
    " For torch's ignore_index, pass mask=(y_true != ignore_index): masked labels are never read.",
  )


def _check_domain(domain: _Domain, values: Array, keep: Optional[Array]) -> None:
  """Raises a ValueError naming the out-of-domain values of the kept examples, when they are concrete.

  Under a trace (`jit`, `grad` of this argument, `vmap`) the values cannot be read without
  a host round trip, and `_loss` gives those examples a NaN loss instead.
  """
  if isinstance(values, jax.core.Tracer) or isinstance(keep, jax.core.Tracer):
    return
  host = np.asarray(values)
  bad = np.asarray(domain.outside(host))
  if keep is not None:
    bad &= np.asarray(keep).reshape(keep.shape + (1,) * (host.ndim - 1))
  if not bad.any():
    return
  where = np.argwhere(bad)
  listed = ", ".join(
    f"{domain.argument}[{', '.join(map(str, index))}] = {host[tuple(index)].item()!r}" for index in where[:_LISTED]
  )
  more = f" (and {len(where) - _LISTED} more)" if len(where) > _LISTED else ""
  raise ValueError(
    f"{domain.argument} must hold {domain.expected}; got {listed}{more}.{domain.hint} "
    "(Under jit such an example's loss is NaN.)"
  )


def _inside(domains: list[tuple[_Domain, Array]]) -> Optional[Array]:
  """Per example, True when all its values lie in their domains (None when nothing is checked)."""
  inside = None
  for domain, values in domains:
    ok = ~jnp.any(domain.outside(values), axis=tuple(range(1, values.ndim)))
    inside = ok if inside is None else inside & ok
  return inside


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
  domains: tuple[_Domain, ...] = (),
  **unknown: Any,
) -> Array:
  """Validates, evaluates `pointwise`, averages it per example and reduces.

  `pointwise(y_pred, y_true)` returns either element-wise values (shape of `y_pred`) or one
  value per distribution (shape of `y_pred` without its last axis); both are averaged over
  their non-batch axes to give one value per example. `labels`: `y_true` holds class ids
  (checked against the classes of `y_pred`); `domains`: what else the arguments must hold.
  """
  if unknown:
    raise TypeError(
      f"Unexpected keyword argument(s) {', '.join(map(repr, unknown))}; every loss takes "
      "y_pred, y_true, reduction, sample_weight and mask (see gradcore_jax.losses.LossOptions)."
    )
  _check_reduction(reduction)
  y_pred = _as_array("y_pred", y_pred)
  y_true = _as_array("y_true", y_true)
  if not jnp.issubdtype(y_pred.dtype, jnp.floating):
    raise TypeError(
      f"y_pred must be a floating-point array (predictions, logits or probabilities), got {y_pred.dtype}."
    )
  _check_shapes(y_pred, y_true, labels)
  batch = y_pred.shape[0]
  weight = _per_example_operand("sample_weight", sample_weight, batch)
  keep = _per_example_operand("mask", mask, batch)
  if keep is not None:
    keep = keep.astype(bool)
    y_true = jnp.where(_rows(keep, y_true), y_true, jnp.zeros_like(y_true))
  if labels:
    domains = (_class_labels(y_pred.shape[-1]), *domains)
  checked = [(domain, y_pred if domain.argument == "y_pred" else y_true) for domain in domains]
  for domain, values in checked:
    _check_domain(domain, values, keep)
  values = pointwise(y_pred, y_true)
  per_example = jnp.mean(values, axis=tuple(range(1, values.ndim))) if values.ndim > 1 else values
  inside = _inside(checked)
  if inside is not None:  # out of the domain under jit: NaN, never a finite wrong value
    per_example = jnp.where(inside, per_example, jnp.nan)
  return _reduce(per_example, reduction, weight, keep)


def _absolute_error(y_pred: Array, y_true: Array) -> Array:
  return jnp.abs(y_pred - y_true)


def _probability_bce(p: Array, y: Array) -> Array:
  log_p = jnp.maximum(jnp.log(p), _BCE_LOG_FLOOR)
  log_not_p = jnp.maximum(jnp.log1p(-p), _BCE_LOG_FLOOR)
  return -(y * log_p + (1 - y) * log_not_p)


def _negative_log_likelihood(log_probs: Array, labels: Array) -> Array:
  return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


_LOG_PROBABILITIES = _Domain("y_true", "log-probabilities (<= 0)", lambda y: y > 0)
_SIGNS = _Domain(
  "y_true", "targets -1 or +1", lambda y: (y == y) & (y != 1) & (y != -1), " For 0/1 labels, pass 2 * y_true - 1."
)


def _is_integer(x: ArrayLike) -> bool:
  return jnp.issubdtype(jnp.asarray(x).dtype, jnp.integer)


def mse(y_pred: ArrayLike, y_true: ArrayLike, **options: Unpack[LossOptions]) -> Array:
  """Mean squared error, `l = mean((y_pred - y_true)**2)` over each example's elements.

  torch: `F.mse_loss`. Element-wise term: `optax.losses.squared_error` (no 0.5 factor,
  unlike `optax.losses.l2_loss`).

  Args:
    y_pred: predictions, shape (batch, ...).
    y_true: targets, the shape of `y_pred`.
    **options: `reduction` ("mean", "sum" or "none"), `sample_weight` and `mask`, as in
      `LossOptions` and the module docstring.
  """
  return _loss(optax.losses.squared_error, y_pred, y_true, **options)


def l1(y_pred: ArrayLike, y_true: ArrayLike, **options: Unpack[LossOptions]) -> Array:
  """Mean absolute error, `l = mean(|y_pred - y_true|)` over each example's elements.

  torch: `F.l1_loss`. Also available as `mae`.

  Args:
    y_pred: predictions, shape (batch, ...).
    y_true: targets, the shape of `y_pred`.
    **options: `reduction` ("mean", "sum" or "none"), `sample_weight` and `mask`, as in
      `LossOptions` and the module docstring.
  """
  return _loss(_absolute_error, y_pred, y_true, **options)


mae = l1


def huber(y_pred: ArrayLike, y_true: ArrayLike, *, delta: float = 1.0, **options: Unpack[LossOptions]) -> Array:
  """Huber loss with `e = y_pred - y_true`: `0.5 e**2` if `|e| <= delta`, else `delta (|e| - 0.5 delta)`.

  torch: `F.huber_loss(..., delta=delta)` (not `smooth_l1_loss`, which divides by beta).
  Element-wise term: `optax.losses.huber_loss`. `delta` must be a number or a scalar array
  > 0; a concrete one is checked, a traced one cannot be.

  Args:
    y_pred: predictions, shape (batch, ...).
    y_true: targets, the shape of `y_pred`.
    delta: where the quadratic turns linear; default 1.0.
    **options: `reduction` ("mean", "sum" or "none"), `sample_weight` and `mask`, as in
      `LossOptions` and the module docstring.
  """
  if not (_checks.is_number(delta) or isinstance(delta, (np.ndarray, np.generic, jax.Array))):
    raise TypeError(f"delta must be a number > 0 or a scalar array, got {type(delta).__name__} {delta!r}.")
  _checks.check_positive("delta", delta)
  return _loss(functools.partial(optax.losses.huber_loss, delta=delta), y_pred, y_true, **options)


def bce(y_pred: ArrayLike, y_true: ArrayLike, **options: Unpack[LossOptions]) -> Array:
  """Binary cross-entropy on probabilities: `-(y log p + (1 - y) log(1 - p))`.

  `y_pred` holds probabilities p in [0, 1], `y_true` targets in [0, 1]. Each log is clamped
  at -100 as in torch: `F.binary_cross_entropy`. Prefer `bce_with_logits` for training.
  A concrete value outside [0, 1] in either raises a ValueError naming it (as torch
  raises); under `jit` that example's loss is NaN.

  Args:
    y_pred: probabilities in [0, 1], shape (batch, ...).
    y_true: targets in [0, 1], the shape of `y_pred`.
    **options: `reduction` ("mean", "sum" or "none"), `sample_weight` and `mask`, as in
      `LossOptions` and the module docstring.
  """
  return _loss(
    _probability_bce, y_pred, y_true, domains=(_probabilities("y_pred"), _probabilities("y_true")), **options
  )


def bce_with_logits(y_pred: ArrayLike, y_true: ArrayLike, **options: Unpack[LossOptions]) -> Array:
  """Binary cross-entropy on logits x: `-(y log sigmoid(x) + (1 - y) log sigmoid(-x))`.

  torch: `F.binary_cross_entropy_with_logits`. Element-wise term:
  `optax.losses.sigmoid_binary_cross_entropy`. `y_true` holds targets in [0, 1]: a concrete
  one outside raises a ValueError (torch computes a meaningless value); under `jit` that
  example's loss is NaN.

  Args:
    y_pred: logits, shape (batch, ...).
    y_true: targets in [0, 1], the shape of `y_pred`.
    **options: `reduction` ("mean", "sum" or "none"), `sample_weight` and `mask`, as in
      `LossOptions` and the module docstring.
  """
  domains = (_probabilities("y_true"),)
  return _loss(optax.losses.sigmoid_binary_cross_entropy, y_pred, y_true, domains=domains, **options)


def cross_entropy(y_pred: ArrayLike, y_true: ArrayLike, **options: Unpack[LossOptions]) -> Array:
  """Softmax cross-entropy from logits, classes on the last axis.

  * integer `y_true` (shape `y_pred.shape[:-1]`): labels, `l = logsumexp(x) - x[y]`
    (`optax.losses.softmax_cross_entropy_with_integer_labels`);
  * floating `y_true` (shape of `y_pred`): class probabilities or one-hot rows,
    `l = -sum_c y_c log_softmax(x)_c` (`optax.losses.softmax_cross_entropy`).

  torch: `F.cross_entropy` with class-index or class-probability targets (torch puts the
  class axis second; here it is last). For torch's `ignore_index`, pass
  `mask=(labels != ignore_index)`: the masked label is never read.

  Labels must lie in [0, classes) and probabilities in [0, 1]: a concrete label or
  probability outside, in an unmasked example, raises a ValueError naming it (torch raises
  for labels); under `jit` that example's loss is NaN (never the last class's score, which
  is what a label -1 would otherwise read).

  Args:
    y_pred: logits, shape (batch, ..., classes).
    y_true: integer labels of shape (batch, ...), or class probabilities the shape of `y_pred`.
    **options: `reduction` ("mean", "sum" or "none"), `sample_weight` and `mask`, as in
      `LossOptions` and the module docstring.
  """
  if _is_integer(y_true):
    return _loss(optax.losses.softmax_cross_entropy_with_integer_labels, y_pred, y_true, labels=True, **options)
  return _loss(optax.losses.softmax_cross_entropy, y_pred, y_true, domains=(_probabilities("y_true"),), **options)


def nll(y_pred: ArrayLike, y_true: ArrayLike, **options: Unpack[LossOptions]) -> Array:
  """Negative log-likelihood: `l = -y_pred[y]` for log-probabilities `y_pred` and integer labels.

  torch: `F.nll_loss` (class axis last here). `y_true` has shape `y_pred.shape[:-1]` and
  integer dtype; labels must lie in [0, classes): a concrete label outside, in an unmasked
  example, raises a ValueError naming it (as torch raises); under `jit` that example's loss
  is NaN. Use `mask` for torch's `ignore_index`.

  Args:
    y_pred: log-probabilities, shape (batch, ..., classes).
    y_true: integer labels, shape (batch, ...).
    **options: `reduction` ("mean", "sum" or "none"), `sample_weight` and `mask`, as in
      `LossOptions` and the module docstring.
  """
  if not _is_integer(_as_array("y_true", y_true)):
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
  `y_true` must hold probabilities in [0, 1] (log-probabilities <= 0 with `log_target`): a
  concrete value outside raises a ValueError naming it; under `jit` that example's loss is NaN.

  Args:
    y_pred: log-probabilities, shape (batch, ..., classes).
    y_true: probabilities (log-probabilities with `log_target`), the shape of `y_pred`.
    log_target: whether `y_true` holds log-probabilities; default False.
    **options: `reduction` ("mean", "sum" or "none"), `sample_weight` and `mask`, as in
      `LossOptions` and the module docstring.
  """
  if not isinstance(log_target, (bool, np.bool_)):
    raise TypeError(f"log_target must be True or False, got {log_target!r}.")
  if log_target:
    pointwise, domain = optax.losses.kl_divergence_with_log_targets, _LOG_PROBABILITIES
  else:
    pointwise, domain = optax.losses.kl_divergence, _probabilities("y_true")
  return _loss(pointwise, y_pred, y_true, domains=(domain,), **options)


def hinge(y_pred: ArrayLike, y_true: ArrayLike, **options: Unpack[LossOptions]) -> Array:
  """Binary hinge loss, `l = mean(max(0, 1 - y_true * y_pred))` over each example's elements.

  Targets must be -1 or +1 (0/1 labels are not converted: a concrete target that is neither
  raises a ValueError naming it, and under `jit` that example's loss is NaN). For a
  (batch, k) input this is Keras' `Hinge` (mean over the last axis); for a (batch,) input it
  is the per-sample hinge of scikit-learn's binary `hinge_loss`. PyTorch has no direct
  counterpart (`F.hinge_embedding_loss` is a different loss). Element-wise term:
  `optax.losses.hinge_loss`.

  Args:
    y_pred: scores, shape (batch, ...).
    y_true: targets -1 or +1, the shape of `y_pred`.
    **options: `reduction` ("mean", "sum" or "none"), `sample_weight` and `mask`, as in
      `LossOptions` and the module docstring.
  """
  return _loss(optax.losses.hinge_loss, y_pred, y_true, domains=(_SIGNS,), **options)
