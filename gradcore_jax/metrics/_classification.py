"""Classification metrics: the accuracy kinds, top-k, precision/recall/F1 and the confusion matrix.

Which kind of `y_pred` a metric got is read from its shape and dtype, never from its values
(which `jit` cannot see), relative to `y_true`:

* *class scores*: shape `y_true.shape + (classes,)`, classes >= 2 (logits, probabilities,
  one-hot); the prediction is the argmax over the last axis.
* *class ids*: integer or bool dtype, shaped like `y_true` (or `y_true.shape + (1,)`).
* *probabilities of class 1*: floating dtype, shaped like `y_true` (or `y_true.shape + (1,)`);
  the prediction is `y_pred > threshold` (Keras' rule, a strict inequality).

A metric that gets a kind it does not take raises a ValueError naming `y_pred` and the
metric that takes it. A `y_true` label of shape `(..., 1)` beside class scores of shape
`(..., classes)` is squeezed, as Keras does.

Domains: class labels and class ids must lie in `[0, classes)`, binary labels in {0, 1}. With
concrete inputs (outside `jit`) a kept (unmasked) value outside raises a ValueError naming it;
under `jit` the values cannot be read and the metric's value becomes NaN instead, as does
a NaN score in a kept example: never a finite wrong number.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp

from gradcore_jax._typing import Array
from gradcore_jax._typing import ArrayLike
from gradcore_jax.metrics._core import COUNT_DTYPE
from gradcore_jax.metrics._core import DTYPE
from gradcore_jax.metrics._core import CompensatedSum
from gradcore_jax.metrics._core import Metric
from gradcore_jax.metrics._core import add
from gradcore_jax.metrics._core import as_array
from gradcore_jax.metrics._core import binned_total
from gradcore_jax.metrics._core import check_arity
from gradcore_jax.metrics._core import check_domain
from gradcore_jax.metrics._core import check_merge
from gradcore_jax.metrics._core import check_state
from gradcore_jax.metrics._core import compensated_total
from gradcore_jax.metrics._core import is_integer
from gradcore_jax.metrics._core import mean_metric
from gradcore_jax.metrics._core import operand
from gradcore_jax.metrics._core import resolve
from gradcore_jax.metrics._core import tagged
from gradcore_jax.metrics._core import untagged
from gradcore_jax.metrics._core import weights_and_keep
from gradcore_jax.metrics._core import zeros

_AVERAGES = ("binary", "micro", "macro", "weighted")
_FLOAT_LABELS_HINT = (
  " One-hot labels: categorical_accuracy() (or pass jnp.argmax(y_true, axis=-1)); class ids stored "
  "as floats: cast them to an integer dtype."
)


# ---------------------------------------------------------------------------------------
# Input kinds.


def _labels(tag: str, y_true: Any) -> Array:
  """Integer or bool class labels, or a ValueError naming y_true."""
  y_true = as_array("y_true", y_true)
  if not is_integer(y_true):
    raise ValueError(f"{tag} needs integer class labels in y_true, got dtype {y_true.dtype}.{_FLOAT_LABELS_HINT}")
  return y_true


def _kind(tag: str, y_true: Array, y_pred: Any) -> tuple[str, Array, Array]:
  """Classifies `y_pred` relative to `y_true` as "scores", "ids" or "probabilities" (module docstring).

  Returns the kind and `(y_true, y_pred)` with any trailing axis of 1 squeezed, so that
  `y_true.shape` is the per-example shape and scores have one more axis.
  """
  y_pred = as_array("y_pred", y_pred)
  true_shape, pred_shape = y_true.shape, y_pred.shape
  if true_shape and true_shape[-1] == 1 and y_pred.ndim == y_true.ndim and pred_shape[-1] >= 2:
    if pred_shape[:-1] == true_shape[:-1]:  # Keras' (batch, 1) labels beside (batch, classes) scores
      y_true, true_shape = y_true[..., 0], true_shape[:-1]
  if pred_shape[:-1] == true_shape and pred_shape[-1:] != (1,) and y_pred.ndim == y_true.ndim + 1:
    if pred_shape[-1] < 2:
      raise ValueError(f"{tag}: y_pred's class axis is empty, shape {pred_shape}.")
    return "scores", y_true, y_pred
  if pred_shape == true_shape + (1,):
    y_pred, pred_shape = y_pred[..., 0], true_shape
  elif true_shape == pred_shape + (1,):
    y_true, true_shape = y_true[..., 0], pred_shape
  if pred_shape != true_shape:
    raise ValueError(
      f"{tag}: y_pred of shape {pred_shape} fits neither y_true's shape {true_shape} (class ids or "
      f"probabilities) nor {true_shape + ('classes',)} (class scores)."
    )
  return ("ids" if is_integer(y_pred) else "probabilities"), y_true, y_pred


def _wrong_kind(tag: str, kind: str, y_pred: Array) -> ValueError:
  """The error for a `y_pred` of a kind `tag` does not take, naming the metric that does."""
  if kind == "ids":
    return ValueError(
      f"{tag} needs scores, but y_pred (dtype {y_pred.dtype}, shaped like y_true) holds class ids: compare "
      "predicted class ids with labels with accuracy(); for scores pass floats."
    )
  if kind == "probabilities":
    return ValueError(
      f"{tag} needs class scores of shape y_true.shape + (classes,), but y_pred (dtype {y_pred.dtype}) is "
      "shaped like y_true: probabilities (or logits) of class 1 go to binary_accuracy(threshold=0.5) "
      "(threshold=0.0 for logits); class ids go to accuracy() as an integer array."
    )
  return ValueError(
    f"{tag} needs one score per example shaped like y_true, but y_pred has a class axis (shape "
    f"{y_pred.shape}): use sparse_categorical_accuracy() for class scores, or pass the probability of "
    "class 1 (y_pred[..., 1])."
  )


def _nan_scores(y_pred: Array) -> Array:
  """Per example, True where a score on the last axis is NaN (never for integer scores)."""
  if is_integer(y_pred):
    return jnp.zeros(y_pred.shape[:-1], bool)
  return jnp.any(jnp.isnan(y_pred), axis=-1)


def _out_of_range(classes: int) -> Callable[[Any], Any]:
  """Element-wise (NumPy or JAX), True where a class label or id lies outside [0, classes)."""
  return lambda ids: (ids < 0) | (ids >= classes)


def _not_binary(y: Any) -> Any:
  """Element-wise (NumPy or JAX), True where a label is neither 0 nor 1 (NaN included)."""
  return ~((y == 0) | (y == 1))


def _check_labels(y_true: Array, classes: int, mask: Optional[ArrayLike]) -> None:
  """Concrete labels of kept examples must lie in [0, classes) (ValueError naming y_true)."""
  expected = f"class labels in [0, {classes}) (y_pred has {classes} classes)"
  check_domain("y_true", expected, y_true, _out_of_range(classes), operand("mask", mask, y_true.shape))


# Per-example 0/1 values, jitted once per shape for every instance of a metric (the inputs'
# kinds and domains are checked before, in Python). NaN marks an example outside its domain.


@jax.jit
def _argmax_correct(y_true: Array, y_pred: Array) -> Array:
  bad = _out_of_range(y_pred.shape[-1])(y_true) | _nan_scores(y_pred)
  return jnp.where(bad, jnp.nan, (jnp.argmax(y_pred, axis=-1) == y_true).astype(DTYPE))


@jax.jit
def _ids_correct(y_true: Array, y_pred: Array) -> Array:
  return (y_pred == y_true).astype(DTYPE)


@jax.jit
def _threshold_correct(y_true: Array, y_pred: Array, threshold: Array) -> Array:
  bad = _not_binary(y_true) | jnp.isnan(y_pred)
  return jnp.where(bad, jnp.nan, ((y_pred > threshold) == (y_true == 1)).astype(DTYPE))


@jax.jit
def _one_hot_correct(y_true: Array, y_pred: Array) -> Array:
  bad = _nan_scores(y_pred) | _nan_scores(y_true)
  return jnp.where(bad, jnp.nan, (jnp.argmax(y_pred, axis=-1) == jnp.argmax(y_true, axis=-1)).astype(DTYPE))


@jax.jit
def _top_k_correct(y_true: Array, y_pred: Array, k: Array) -> Array:
  classes = y_pred.shape[-1]
  bad = _out_of_range(classes)(y_true) | _nan_scores(y_pred)
  label = jnp.clip(y_true, 0, classes - 1).astype(jnp.int32)
  own = jnp.take_along_axis(y_pred, label[..., None], axis=-1)
  # scikit-learn's rank: classes scored above the label's, and those tied with it at a higher index.
  ahead = (y_pred > own) | ((y_pred == own) & (jnp.arange(classes) > label[..., None]))
  return jnp.where(bad, jnp.nan, (jnp.sum(ahead, axis=-1) < k).astype(DTYPE))


# ---------------------------------------------------------------------------------------
# The accuracy kinds (weighted means of a per-example 0/1).


def _accuracy_metric(tag: str, correct: Callable[..., Array]) -> Metric:
  """A weighted-mean metric whose per-example value `correct(y_true, y_pred, mask=mask)` is 0, 1 or NaN."""
  return mean_metric(tag, correct, takes_mask=True)


def accuracy() -> Metric:
  """Weighted fraction of correct predictions; `update(state, y_true, y_pred)`.

  `y_true`: integer class labels of shape (batch, ...). `y_pred` is one of:

  * class scores, shape `y_true.shape + (classes,)`, classes >= 2 (logits or probabilities):
    the prediction is the argmax over the last axis (Keras `SparseCategoricalAccuracy`);
    labels must lie in [0, classes);
  * predicted class ids, integer dtype, shaped like `y_true`: exact match (Keras
    `Accuracy`, scikit-learn `accuracy_score`).

  A floating `y_pred` shaped like `y_true` is ambiguous (probabilities of class 1, or class
  ids stored as floats?) and raises a ValueError pointing to `binary_accuracy`. (It used to
  be thresholded at 0.5, which scored integer class ids 2, 3, ... as wrong and a perfect
  prediction of 0/1 ids correctly only by luck.)
  """
  tag = "accuracy()"

  def correct(y_true: Any, y_pred: Any, *, mask: Optional[ArrayLike]) -> Array:
    y_true = _labels(tag, y_true)
    kind, y_true, y_pred = _kind(tag, y_true, y_pred)
    if kind == "ids":
      return _ids_correct(y_true, y_pred)
    if kind == "probabilities":
      raise ValueError(
        f"accuracy() got a floating y_pred (dtype {y_pred.dtype}) shaped like y_true, which is ambiguous: "
        "probabilities (or logits) of class 1 go to binary_accuracy(threshold=0.5) (threshold=0.0 for logits); "
        "predicted class ids go to accuracy() as an integer array (y_pred.astype(jnp.int32)); class scores "
        "need the class axis, shape y_true.shape + (classes,)."
      )
    _check_labels(y_true, y_pred.shape[-1], mask)
    return _argmax_correct(y_true, y_pred)

  return _accuracy_metric(tag, correct)


def binary_accuracy(threshold: float = 0.5) -> Metric:
  """Weighted fraction of `(y_pred > threshold) == y_true` (Keras `BinaryAccuracy`).

  `update(state, y_true, y_pred)`: `y_true` 0/1 labels (integer, bool or floating) of shape
  (batch, ...); `y_pred` floating probabilities shaped like `y_true` (or `y_true.shape +
  (1,)`). For logits pass `threshold=0.0` (sigmoid(x) > 0.5 exactly when x > 0). Integer
  `y_pred` (class ids) and class scores with a class axis raise a ValueError naming the
  metric to use. Labels must be 0 or 1.

  Args:
    threshold: a prediction is class 1 when `y_pred > threshold`; default 0.5.
  """
  threshold = _check_threshold(threshold)
  tag = f"binary_accuracy(threshold={threshold!r})"

  def correct(y_true: Any, y_pred: Any, *, mask: Optional[ArrayLike]) -> Array:
    y_true = as_array("y_true", y_true)
    kind, y_true, y_pred = _kind(tag, y_true, y_pred)
    if kind != "probabilities":
      raise _wrong_kind(tag, kind, y_pred)
    check_domain("y_true", "binary labels, 0 or 1", y_true, _not_binary, operand("mask", mask, y_true.shape))
    return _threshold_correct(y_true, y_pred, jnp.asarray(threshold, DTYPE))

  return _accuracy_metric(tag, correct)


def sparse_categorical_accuracy() -> Metric:
  """Weighted fraction of `argmax(y_pred, -1) == y_true` (Keras `SparseCategoricalAccuracy`).

  `update(state, y_true, y_pred)`: `y_true` integer labels in [0, classes) of shape
  (batch, ...) (or (batch, ..., 1)), `y_pred` class scores of shape `y_true.shape +
  (classes,)`. Ties go to the lowest class (argmax). `y_pred` shaped like `y_true` raises a
  ValueError naming `accuracy` (class ids) or `binary_accuracy` (probabilities).
  """
  tag = "sparse_categorical_accuracy()"

  def correct(y_true: Any, y_pred: Any, *, mask: Optional[ArrayLike]) -> Array:
    y_true = _labels(tag, y_true)
    kind, y_true, y_pred = _kind(tag, y_true, y_pred)
    if kind != "scores":
      raise _wrong_kind(tag, kind, y_pred)
    _check_labels(y_true, y_pred.shape[-1], mask)
    return _argmax_correct(y_true, y_pred)

  return _accuracy_metric(tag, correct)


def categorical_accuracy() -> Metric:
  """Weighted fraction of `argmax(y_pred, -1) == argmax(y_true, -1)` (Keras `CategoricalAccuracy`).

  `update(state, y_true, y_pred)`: `y_true` one-hot (or soft) labels of shape (batch, ...,
  classes), `y_pred` class scores of the same shape; sample weights and masks apply to
  (batch, ...). Integer labels without the class axis raise a ValueError naming
  `sparse_categorical_accuracy`.
  """
  tag = "categorical_accuracy()"

  def correct(y_true: Any, y_pred: Any, *, mask: Optional[ArrayLike]) -> Array:
    del mask  # one-hot labels have no domain to check
    y_true, y_pred = as_array("y_true", y_true), as_array("y_pred", y_pred)
    if is_integer(y_true) and y_pred.shape[:-1] == y_true.shape and y_pred.ndim == y_true.ndim + 1:
      raise ValueError(
        f"{tag} needs one-hot labels in y_true, shaped like y_pred {y_pred.shape}; y_true {y_true.shape} holds "
        "class labels: use sparse_categorical_accuracy()."
      )
    if y_pred.shape != y_true.shape or y_pred.ndim < 2 or y_pred.shape[-1] < 2:
      raise ValueError(
        f"{tag} needs y_pred of y_true's shape (batch, ..., classes >= 2), got y_true {y_true.shape} and "
        f"y_pred {y_pred.shape}."
      )
    return _one_hot_correct(y_true, y_pred)

  return _accuracy_metric(tag, correct)


def top_k_accuracy(k: int = 5) -> Metric:
  """Weighted fraction of examples whose label is among the `k` best-scored classes.

  scikit-learn's `top_k_accuracy_score`, ties included: the label's rank is the number of
  classes scored above it plus the number scored equal to it with a higher class index
  (scikit-learn's stable sort, reversed), and the example counts when that rank is < k.
  (So with ties `k=1` can differ from `sparse_categorical_accuracy`, whose argmax prefers
  the lowest index.) `k >= classes` scores every example as correct.

  `update(state, y_true, y_pred)`: `y_true` integer labels in [0, classes) of shape
  (batch, ...), `y_pred` class scores of shape `y_true.shape + (classes,)`.

  Args:
    k: how many of the best-scored classes count; an int >= 1, default 5.
  """
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"k must be an int >= 1, got {k!r}.")
  tag = f"top_k_accuracy(k={k})"

  def correct(y_true: Any, y_pred: Any, *, mask: Optional[ArrayLike]) -> Array:
    y_true = _labels(tag, y_true)
    kind, y_true, y_pred = _kind(tag, y_true, y_pred)
    if kind != "scores":
      raise _wrong_kind(tag, kind, y_pred)
    _check_labels(y_true, y_pred.shape[-1], mask)
    return _top_k_correct(y_true, y_pred, jnp.asarray(k, jnp.int32))

  return _accuracy_metric(tag, correct)


# ---------------------------------------------------------------------------------------
# Per-class statistics: precision, recall, F1.


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["true_positive", "predicted", "actual", "present", "count", "invalid"],
  meta_fields=["metric"],
)
@dataclasses.dataclass(frozen=True)
class ClassCountsState:
  """Per-class sufficient statistics of precision, recall and F1 (scikit-learn's `tp_sum`, ...).

  Attributes:
    true_positive: `Σ w` over examples with label c predicted as c, compensated, (classes,).
    predicted: `Σ w` over examples predicted as c, compensated, (classes,).
    actual: `Σ w` over examples labelled c (the support), compensated, (classes,).
    present: int32 (classes,), examples labelled c plus examples predicted c, whatever
      their weight: the classes scikit-learn's `labels=None` averages over.
    count: int32, the number of unmasked examples.
    invalid: int32, unmasked examples with a label or prediction outside the domain (under
      `jit`); the value is NaN while it is non-zero.
    metric: static tag, the description of the metric that owns the state.
  """

  true_positive: CompensatedSum
  predicted: CompensatedSum
  actual: CompensatedSum
  present: Array
  count: Array
  invalid: Array
  metric: str


@functools.partial(jax.tree_util.register_dataclass, data_fields=["weight", "count", "invalid"], meta_fields=["metric"])
@dataclasses.dataclass(frozen=True)
class ConfusionMatrixState:
  """A confusion matrix, rows the true class and columns the predicted class (scikit-learn's layout).

  Attributes:
    weight: `Σ w` per (true, predicted) pair, compensated, (classes, classes).
    count: int32 (classes, classes), the number of unmasked examples per pair.
    invalid: int32, unmasked examples outside the domain (under `jit`); the value is NaN
      while it is non-zero.
    metric: static tag, the description of the metric that owns the state.
  """

  weight: CompensatedSum
  count: Array
  invalid: Array
  metric: str


def _check_threshold(threshold: Any) -> float:
  if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold != threshold:
    raise ValueError(f"threshold must be a real number, got {threshold!r}.")
  return float(threshold)


def _check_num_classes(num_classes: Any) -> int:
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}.")
  return num_classes


def _class_inputs(
  tag: str,
  y_true: Any,
  y_pred: Any,
  num_classes: int,
  sample_weight: Optional[ArrayLike],
  mask: Optional[ArrayLike],
) -> tuple[str, Array, Array, Optional[Array], Optional[Array]]:
  """Checks the inputs of a metric that takes `num_classes`; returns `(kind, y_true, y_pred, weight, mask)`.

  Class ids are taken as they are, class scores by argmax (their class axis must have
  `num_classes` entries), probabilities of class 1 by `> threshold` (only when
  `num_classes == 2`). Concrete labels and ids of kept examples outside [0, num_classes)
  raise a ValueError naming the argument.
  """
  y_true = _labels(tag, y_true)
  kind, y_true, y_pred = _kind(tag, y_true, y_pred)
  sample_weight = operand("sample_weight", sample_weight, y_true.shape)
  mask = operand("mask", mask, y_true.shape)
  if kind == "scores" and y_pred.shape[-1] != num_classes:
    raise ValueError(f"{tag}: y_pred has {y_pred.shape[-1]} class scores on its last axis, expected {num_classes}.")
  if kind == "probabilities" and num_classes != 2:
    raise ValueError(
      f"{tag}: a floating y_pred shaped like y_true is read as probabilities of class 1, which needs "
      f"num_classes=2, got {num_classes}; pass class scores of shape y_true.shape + ({num_classes},) or "
      "predicted class ids as an integer array."
    )
  if kind == "ids":
    check_domain("y_pred", f"class ids in [0, {num_classes})", y_pred, _out_of_range(num_classes), mask)
  check_domain("y_true", f"class labels in [0, {num_classes})", y_true, _out_of_range(num_classes), mask)
  return kind, y_true, y_pred, sample_weight, mask


def _examples(
  y_true: Array,
  y_pred: Array,
  sample_weight: Optional[Array],
  mask: Optional[Array],
  kind: str,
  threshold: Array,
  num_classes: int,
) -> tuple[Array, Array, Array, Array, Array]:
  """Flat `(labels, ids, weight, valid, invalid)` (traced); invalid examples get bin 0 and weight 0."""
  if kind == "scores":
    bad, ids = _nan_scores(y_pred), jnp.argmax(y_pred, axis=-1)
  elif kind == "probabilities":
    bad, ids = jnp.isnan(y_pred), (y_pred > threshold)
  else:
    bad, ids = _out_of_range(num_classes)(y_pred), y_pred
  bad = bad | _out_of_range(num_classes)(y_true)
  weight, keep = weights_and_keep(y_true.shape, sample_weight, mask)
  valid = keep & ~bad
  labels = jnp.where(valid, y_true, 0).astype(jnp.int32).ravel()
  ids = jnp.where(valid, ids, 0).astype(jnp.int32).ravel()
  return labels, ids, jnp.where(valid, weight, 0).ravel(), valid.ravel(), (keep & bad).ravel()


@functools.partial(jax.jit, static_argnames="kind")
def _count_classes(
  state: ClassCountsState,
  y_true: Array,
  y_pred: Array,
  sample_weight: Optional[Array],
  mask: Optional[Array],
  kind: str,
  threshold: Array,
) -> ClassCountsState:
  c = state.present.shape[0]
  labels, ids, weight, valid, invalid = _examples(y_true, y_pred, sample_weight, mask, kind, threshold, c)
  # One scatter-add for the three statistics: bins [0, c) true positives, [c, 2c) predicted, [2c, 3c) actual.
  bins = jnp.concatenate([labels, c + ids, 2 * c + labels])
  sums = binned_total(bins, jnp.concatenate([jnp.where(labels == ids, weight, 0), weight, weight]), 3 * c)
  value, compensation = sums.value.reshape(3, c), sums.compensation.reshape(3, c)
  ones = valid.astype(COUNT_DTYPE)
  return ClassCountsState(
    add(state.true_positive, CompensatedSum(value[0], compensation[0])),
    add(state.predicted, CompensatedSum(value[1], compensation[1])),
    add(state.actual, CompensatedSum(value[2], compensation[2])),
    state.present.at[labels].add(ones).at[ids].add(ones),
    state.count + jnp.sum(valid | invalid, dtype=COUNT_DTYPE),
    state.invalid + jnp.sum(invalid, dtype=COUNT_DTYPE),
    state.metric,
  )


def _sum_all(s: CompensatedSum) -> Array:
  """The float32 total of all elements of a compensated array."""
  return resolve(add(compensated_total(s.value), compensated_total(s.compensation)))


def _divide(numerator: Array, denominator: Array, zero_division: Array) -> Array:
  """`numerator / denominator`, `zero_division` where the denominator is 0 (scikit-learn's rule)."""
  empty = denominator == 0
  return jnp.where(empty, zero_division, numerator / jnp.where(empty, 1, denominator))


def _nan_average(scores: Array, weights: Optional[Array], present: Array) -> Array:
  """scikit-learn's `_nanaverage` over the present classes: NaN scores left out; all-zero weights: plain mean."""
  use = present & ~jnp.isnan(scores)
  scores = jnp.where(use, scores, 0)
  plain = jnp.sum(scores) / jnp.maximum(jnp.sum(use), 1)
  if weights is None:
    value = plain
  else:
    weights = jnp.where(use, weights, 0)
    total = jnp.sum(weights)
    value = jnp.where(total == 0, plain, jnp.sum(weights * scores) / jnp.where(total == 0, 1, total))
  return jnp.where(jnp.any(use), value, jnp.nan)


@functools.partial(jax.jit, static_argnames=("score", "average"))
def _prf_value(state: ClassCountsState, score: str, average: str, zero_division: Array) -> Array:
  """precision, recall or F1 of a `ClassCountsState` under `average` (scikit-learn's rules)."""

  def scores(tp: Array, predicted: Array, actual: Array) -> Array:
    if score == "precision":
      return _divide(tp, predicted, zero_division)
    if score == "recall":
      return _divide(tp, actual, zero_division)
    return _divide(2 * tp, actual + predicted, zero_division)  # F1 = 2tp / (2tp + fp + fn)

  sums = (state.true_positive, state.predicted, state.actual)
  if average == "micro":
    value = scores(*(_sum_all(s) for s in sums))
  else:
    per_class = scores(*(resolve(s) for s in sums))
    if average == "binary":
      value = per_class[1]
    else:
      weights = resolve(state.actual) if average == "weighted" else None
      value = _nan_average(per_class, weights, state.present > 0)
  value = jnp.where(state.count == state.invalid, zero_division, value)  # nothing seen
  return jnp.where(state.invalid > 0, jnp.nan, value).astype(DTYPE)


def _prf_metric(score: str, num_classes: int, average: str, threshold: float, zero_division: float) -> Metric:
  """precision / recall / f1 over `ClassCountsState`."""
  num_classes = _check_num_classes(num_classes)
  threshold = _check_threshold(threshold)
  if average not in _AVERAGES:
    raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}.")
  if average == "binary" and num_classes != 2:
    raise ValueError(
      f"average='binary' scores class 1 of a 2-class problem, got num_classes={num_classes}: choose "
      "average='micro', 'macro' or 'weighted'."
    )
  if isinstance(zero_division, bool) or not isinstance(zero_division, (int, float)):
    raise ValueError(f"zero_division must be 0.0, 1.0 or nan (scikit-learn's choices), got {zero_division!r}.")
  if not (zero_division in (0, 1) or zero_division != zero_division):
    raise ValueError(f"zero_division must be 0.0, 1.0 or nan (scikit-learn's choices), got {zero_division!r}.")
  zero_division = float(zero_division)
  tag = (
    f"{score}(num_classes={num_classes}, average={average!r}, threshold={threshold!r}, zero_division={zero_division!r})"
  )
  c = num_classes

  def init() -> ClassCountsState:
    counts = jnp.zeros((c,), COUNT_DTYPE)
    scalar = jnp.zeros((), COUNT_DTYPE)
    return ClassCountsState(zeros((c,)), zeros((c,)), zeros((c,)), counts, scalar, scalar, tag)

  def update(
    state: ClassCountsState,
    *inputs: Any,
    sample_weight: Optional[ArrayLike] = None,
    mask: Optional[ArrayLike] = None,
  ) -> ClassCountsState:
    check_state(state, ClassCountsState, tag, "update")
    check_arity(tag, inputs, ("y_true", "y_pred"))
    kind, y_true, y_pred, weight, keep = _class_inputs(tag, inputs[0], inputs[1], c, sample_weight, mask)
    return tagged(
      _count_classes(untagged(state), y_true, y_pred, weight, keep, kind, jnp.asarray(threshold, DTYPE)), tag
    )

  def merge(a: ClassCountsState, b: ClassCountsState) -> ClassCountsState:
    check_merge(a, b, ClassCountsState, tag)
    return ClassCountsState(
      add(a.true_positive, b.true_positive),
      add(a.predicted, b.predicted),
      add(a.actual, b.actual),
      a.present + b.present,
      a.count + b.count,
      a.invalid + b.invalid,
      tag,
    )

  def compute(state: ClassCountsState) -> Array:
    check_state(state, ClassCountsState, tag, "compute")
    return _prf_value(untagged(state), score, average, jnp.asarray(zero_division, DTYPE))

  return Metric(init, update, merge, compute)


def precision(
  num_classes: int = 2,
  average: str = "binary",
  threshold: float = 0.5,
  zero_division: float = 0.0,
) -> Metric:
  """Precision `tp / (tp + fp)`: scikit-learn's `precision_score`, sample weights included.

  The state holds per-class weighted counts (`ClassCountsState`), never ratios.
  `update(state, y_true, y_pred)`: `y_true` integer labels in [0, num_classes) of shape
  (batch, ...); `y_pred` predicted class ids (integer, shaped like `y_true`), class scores
  (`y_true.shape + (num_classes,)`, argmax), or, with `num_classes=2`, probabilities of class
  1 shaped like `y_true` (class 1 when `y_pred > threshold`). A floating `y_pred` shaped like
  the labels of a problem with more classes is ambiguous and raises a ValueError naming it.

  Averages (scikit-learn's `average`): "binary" scores class 1 of a 2-class problem
  (`pos_label=1`); "micro" pools the counts of all classes (for single-label problems it
  equals the accuracy); "macro" is the plain mean over classes, "weighted" the mean weighted
  by each class's weighted support. As with scikit-learn's `labels=None`, "macro" and
  "weighted" average over the classes that occur among the labels or predictions seen
  (whatever their sample weight); a class never seen is left out, not scored 0.

  Zero division: where a class's denominator is 0 (no prediction of it for precision, no
  label for recall, neither for F1) its score is `zero_division`, scikit-learn's rule: 0.0
  (what its default "warn" gives, here without a warning), 1.0, or NaN, which "macro" and
  "weighted" leave out of the average (all NaN gives NaN). A state that has seen no
  example gives `zero_division`.

  Args:
    num_classes: the number of classes (static), an int >= 2; default 2.
    average: "binary" (default; needs num_classes=2), "micro", "macro" or "weighted".
    threshold: probabilities of class 1 (num_classes=2 only) predict class 1 when
      `y_pred > threshold`; default 0.5 (0.0 for logits).
    zero_division: the score of a class whose denominator is 0: 0.0 (default), 1.0 or nan.
  """
  return _prf_metric("precision", num_classes, average, threshold, zero_division)


def recall(
  num_classes: int = 2,
  average: str = "binary",
  threshold: float = 0.5,
  zero_division: float = 0.0,
) -> Metric:
  """Recall `tp / (tp + fn)`: scikit-learn's `recall_score`, sample weights included.

  Inputs, averages and zero division as in `precision` (a class's denominator is its
  weighted number of labels).

  Args:
    num_classes: the number of classes (static), an int >= 2; default 2.
    average: "binary" (default; needs num_classes=2), "micro", "macro" or "weighted".
    threshold: probabilities of class 1 (num_classes=2 only) predict class 1 when
      `y_pred > threshold`; default 0.5.
    zero_division: the score of a class whose denominator is 0: 0.0 (default), 1.0 or nan.
  """
  return _prf_metric("recall", num_classes, average, threshold, zero_division)


def f1(
  num_classes: int = 2,
  average: str = "binary",
  threshold: float = 0.5,
  zero_division: float = 0.0,
) -> Metric:
  """F1 `2·tp / (2·tp + fp + fn)`: scikit-learn's `f1_score`, sample weights included.

  Inputs, averages and zero division as in `precision` (a class's denominator is 0 when it
  was neither labelled nor predicted). "micro" is computed from the pooled counts, "macro"
  and "weighted" average the per-class F1 (not the F1 of averaged precision and recall).

  Args:
    num_classes: the number of classes (static), an int >= 2; default 2.
    average: "binary" (default; needs num_classes=2), "micro", "macro" or "weighted".
    threshold: probabilities of class 1 (num_classes=2 only) predict class 1 when
      `y_pred > threshold`; default 0.5.
    zero_division: the score of a class whose denominator is 0: 0.0 (default), 1.0 or nan.
  """
  return _prf_metric("f1", num_classes, average, threshold, zero_division)


@functools.partial(jax.jit, static_argnames="kind")
def _count_cells(
  state: ConfusionMatrixState,
  y_true: Array,
  y_pred: Array,
  sample_weight: Optional[Array],
  mask: Optional[Array],
  kind: str,
  threshold: Array,
) -> ConfusionMatrixState:
  c = state.count.shape[0]
  labels, ids, weight, valid, invalid = _examples(y_true, y_pred, sample_weight, mask, kind, threshold, c)
  cell = labels * c + ids
  sums = binned_total(cell, weight, c * c)
  batch = CompensatedSum(sums.value.reshape(c, c), sums.compensation.reshape(c, c))
  counts = jnp.zeros((c * c,), COUNT_DTYPE).at[cell].add(valid.astype(COUNT_DTYPE)).reshape(c, c)
  invalid = state.invalid + jnp.sum(invalid, dtype=COUNT_DTYPE)
  return ConfusionMatrixState(add(state.weight, batch), state.count + counts, invalid, state.metric)


def confusion_matrix(num_classes: int, threshold: float = 0.5) -> Metric:
  """The (num_classes, num_classes) confusion matrix: scikit-learn's `confusion_matrix(labels=range(C))`.

  `compute` gives `Σ w` per (true class, predicted class) as float32, rows the true class;
  without sample weights these are the counts (exact as int32 in `state.count`). Inputs as
  for `precision`: labels with predicted ids, class scores, or (num_classes=2) probabilities
  of class 1 thresholded at `threshold`. The shape is fixed by `num_classes`, where
  scikit-learn's default drops classes never seen. Under `jit`, a kept label or id outside
  [0, num_classes) makes the whole matrix NaN.

  Args:
    num_classes: the number of classes (static), an int >= 2.
    threshold: probabilities of class 1 (num_classes=2 only) predict class 1 when
      `y_pred > threshold`; default 0.5.
  """
  num_classes = _check_num_classes(num_classes)
  threshold = _check_threshold(threshold)
  tag = f"confusion_matrix(num_classes={num_classes}, threshold={threshold!r})"
  c = num_classes

  def init() -> ConfusionMatrixState:
    return ConfusionMatrixState(zeros((c, c)), jnp.zeros((c, c), COUNT_DTYPE), jnp.zeros((), COUNT_DTYPE), tag)

  def update(
    state: ConfusionMatrixState,
    *inputs: Any,
    sample_weight: Optional[ArrayLike] = None,
    mask: Optional[ArrayLike] = None,
  ) -> ConfusionMatrixState:
    check_state(state, ConfusionMatrixState, tag, "update")
    check_arity(tag, inputs, ("y_true", "y_pred"))
    kind, y_true, y_pred, weight, keep = _class_inputs(tag, inputs[0], inputs[1], c, sample_weight, mask)
    new = _count_cells(untagged(state), y_true, y_pred, weight, keep, kind, jnp.asarray(threshold, DTYPE))
    return tagged(new, tag)

  def merge(a: ConfusionMatrixState, b: ConfusionMatrixState) -> ConfusionMatrixState:
    check_merge(a, b, ConfusionMatrixState, tag)
    return ConfusionMatrixState(add(a.weight, b.weight), a.count + b.count, a.invalid + b.invalid, tag)

  def compute(state: ConfusionMatrixState) -> Array:
    check_state(state, ConfusionMatrixState, tag, "compute")
    return jnp.where(state.invalid > 0, jnp.nan, resolve(state.weight)).astype(DTYPE)

  return Metric(init, update, merge, compute)
