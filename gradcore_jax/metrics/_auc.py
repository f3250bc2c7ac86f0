"""Area under the ROC or precision-recall curve, by Keras' thresholded method (`tf.keras.metrics.AUC`).

The method (Keras' documented algorithm, implemented here from its description): take
`num_thresholds` thresholds `t_0 = -ε, t_i = i / (T - 1) for 0 < i < T - 1, t_{T-1} = 1 + ε`;
at each, count (with sample weights) the true positives `tp_i = Σ w·y·[p > t_i]`, false
positives `fp_i = Σ w·(1 - y)·[p > t_i]`, and the false and true negatives likewise with
`p <= t_i`. These `4·T` weighted counts follow from `2·T` per-bucket sums (below), which
are the whole state, so the metric streams and merges by addition. `compute` integrates
the curve through the `T` points:

* ROC: true-positive rate `tp / (tp + fn)` over false-positive rate `fp / (fp + tn)`
  (`divide_no_nan`), trapezoidal rule between neighbouring thresholds (Keras' default
  "interpolation" summation for ROC).
* PR: precision over recall, with Davis and Goadrich's (2006) interpolation between
  neighbouring thresholds A (lower) and B: true positives grow linearly in the number of
  predicted positives `P = tp + fp`, `tp(P) = tp_B + s·(P - P_B)` with slope
  `s = (tp_A - tp_B) / (P_A - P_B)`, so the area of the segment is the exact integral
  `∫ tp(P)/P d(tp(P)/N) = s/N · ((tp_A - tp_B) + (tp_B - s·P_B)·ln(P_A / P_B))`, `N = tp + fn`
  the positives (the logarithm taken as 0 when `P_B = 0`). Keras' default for PR.

The counts are kept as per-bucket histograms: prediction `p` falls in bucket
`b(p) = #{i : p > t_i} - 1`, so `tp_i` is the sum of the positives' weights over buckets
`>= i` (Keras' own fast path for evenly spaced thresholds, which estimates the bucket as
`ceil(p·(T - 1)) - 1`; that estimate can be one off for a `p` within a float32 rounding of a
threshold, and is corrected here by comparing with the thresholds themselves). The result
does not depend on `ε` for predictions in [0, 1].
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

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
from gradcore_jax.metrics._core import cumulative
from gradcore_jax.metrics._core import divide_no_nan
from gradcore_jax.metrics._core import is_integer
from gradcore_jax.metrics._core import operand
from gradcore_jax.metrics._core import resolve
from gradcore_jax.metrics._core import tagged
from gradcore_jax.metrics._core import untagged
from gradcore_jax.metrics._core import weights_and_keep
from gradcore_jax.metrics._core import zeros

_CURVES = ("ROC", "PR")
_EPSILON = 1e-7  # Keras' backend.epsilon(): the end thresholds sit just outside [0, 1]


@functools.partial(
  jax.tree_util.register_dataclass, data_fields=["positive", "negative", "count", "invalid"], meta_fields=["metric"]
)
@dataclasses.dataclass(frozen=True)
class AUCState:
  """Per-bucket weights of the positives and negatives seen (module docstring).

  Attributes:
    positive: `Σ w·y` per prediction bucket, compensated, (num_thresholds,).
    negative: `Σ w·(1 - y)` per prediction bucket, compensated, (num_thresholds,).
    count: int32, the number of unmasked values.
    invalid: int32, unmasked values outside [0, 1] or NaN (under `jit`); the value is NaN
      while it is non-zero.
    metric: static tag, the description of the metric that owns the state.
  """

  positive: CompensatedSum
  negative: CompensatedSum
  count: Array
  invalid: Array
  metric: str


def _outside_unit_interval(x: Array) -> Array:
  return (x < 0) | (x > 1)


def _inputs(tag: str, y_true: Any, y_pred: Any) -> tuple[Array, Array]:
  """`(y_true, y_pred)` of one shape, or a ValueError naming the argument."""
  y_true, y_pred = as_array("y_true", y_true), as_array("y_pred", y_pred)
  if is_integer(y_pred):
    raise ValueError(
      f"{tag} needs scores (probabilities of class 1) in y_pred, got dtype {y_pred.dtype}: class ids have no "
      "ranking to integrate; pass the probabilities (jax.nn.sigmoid(logits) for logits)."
    )
  if y_pred.shape == y_true.shape + (1,):
    y_pred = y_pred[..., 0]
  elif y_true.shape == y_pred.shape + (1,):
    y_true = y_true[..., 0]
  if y_pred.shape != y_true.shape:
    raise ValueError(
      f"{tag} needs y_pred shaped like y_true (one probability of class 1 per label), got y_true "
      f"{y_true.shape} and y_pred {y_pred.shape}; for 2-class scores pass the probability of class 1, y_pred[..., 1]."
    )
  return y_true, y_pred


def _thresholds(num_thresholds: int) -> np.ndarray:
  """Keras' float32 thresholds: `-ε`, `i / (T - 1)` for `0 < i < T - 1`, `1 + ε` (ε = 1e-7)."""
  inner = [(i + 1) / (num_thresholds - 1) for i in range(num_thresholds - 2)]
  return np.array([-_EPSILON, *inner, 1 + _EPSILON], np.float32)


def _bucket(p: Array, num_thresholds: int) -> Array:
  """The number of thresholds `p` exceeds, minus one: `tp_i` sums buckets `>= i`.

  `ceil(p·(T - 1)) - 1` (Keras' fast path) can be one off for a `p` within a rounding of a
  threshold; comparing `p` with the two float32 thresholds around that estimate makes the
  bucket exactly `#{i : p > t_i} - 1`, the rule itself.
  """
  t = num_thresholds
  thresholds = jnp.asarray(_thresholds(t))
  estimate = jnp.clip(jnp.ceil(p * (t - 1)) - 1, 0, t - 1).astype(jnp.int32)
  up = (estimate < t - 1) & (p > thresholds[jnp.minimum(estimate + 1, t - 1)])
  down = (estimate > 0) & ~(p > thresholds[estimate])
  return estimate + up.astype(jnp.int32) - down.astype(jnp.int32)


@jax.jit
def _add_buckets(
  state: AUCState, y_true: Array, y_pred: Array, sample_weight: Optional[Array], mask: Optional[Array]
) -> AUCState:
  t = state.positive.value.shape[0]
  y_true, y_pred = y_true.astype(DTYPE), y_pred.astype(DTYPE)
  weight, keep = weights_and_keep(y_true.shape, sample_weight, mask)
  inside = (y_true >= 0) & (y_true <= 1) & (y_pred >= 0) & (y_pred <= 1)  # False for NaN
  valid = keep & inside
  bucket = _bucket(jnp.where(valid, y_pred, 0), t).ravel()
  weight = jnp.where(valid, weight, 0).ravel()
  label = jnp.where(valid, y_true, 0).ravel()
  # One scatter-add for both histograms: bins [0, t) positives, [t, 2t) negatives.
  sums = binned_total(
    jnp.concatenate([bucket, t + bucket]), jnp.concatenate([weight * label, weight * (1 - label)]), 2 * t
  )
  return AUCState(
    add(state.positive, CompensatedSum(sums.value[:t], sums.compensation[:t])),
    add(state.negative, CompensatedSum(sums.value[t:], sums.compensation[t:])),
    state.count + jnp.sum(keep, dtype=COUNT_DTYPE),
    state.invalid + jnp.sum(keep & ~inside, dtype=COUNT_DTYPE),
    state.metric,
  )


def _roc_area(tp: Array, fp: Array, fn: Array, tn: Array) -> Array:
  """Trapezoidal area under the true-positive rate over the false-positive rate."""
  tpr = divide_no_nan(tp, tp + fn)
  fpr = divide_no_nan(fp, fp + tn)
  return jnp.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2)


def _pr_area(tp: Array, fp: Array, fn: Array) -> Array:
  """Davis-Goadrich interpolated area under precision over recall (module docstring)."""
  predicted = tp + fp
  d_tp = tp[:-1] - tp[1:]
  slope = divide_no_nan(d_tp, jnp.maximum(predicted[:-1] - predicted[1:], 0))
  intercept = tp[1:] - slope * predicted[1:]
  both = (predicted[:-1] > 0) & (predicted[1:] > 0)
  log_ratio = jnp.log(jnp.where(both, predicted[:-1] / jnp.where(both, predicted[1:], 1), 1))
  positives = jnp.maximum(tp[1:] + fn[1:], 0)
  return jnp.sum(divide_no_nan(slope * (d_tp + intercept * log_ratio), positives))


@functools.partial(jax.jit, static_argnames="curve")
def _area(state: AUCState, curve: str) -> Array:
  """The area of an `AUCState`'s curve; NaN once an invalid value was seen."""

  def above(s: CompensatedSum) -> Array:  # Σ over buckets >= i: the weight above threshold i
    return resolve(cumulative(s, reverse=True))

  def below(s: CompensatedSum) -> Array:  # Σ over buckets < i; the total minus `above` would cancel
    return jnp.concatenate([jnp.zeros((1,), DTYPE), resolve(cumulative(s))[:-1]])

  tp, fp = above(state.positive), above(state.negative)
  fn = below(state.positive)
  area = _roc_area(tp, fp, fn, below(state.negative)) if curve == "ROC" else _pr_area(tp, fp, fn)
  return jnp.where(state.invalid > 0, jnp.nan, area).astype(DTYPE)


def auc(curve: str = "ROC", num_thresholds: int = 200) -> Metric:
  """Area under the ROC or PR curve by Keras' thresholded method (`tf.keras.metrics.AUC` defaults).

  `update(state, y_true, y_pred)`: `y_true` labels 0/1 (integer, bool or floating; values in
  [0, 1] act as soft labels, as in Keras' default path), `y_pred` floating probabilities of
  class 1 in [0, 1], of the same shape (or with a trailing axis of 1). Every element is one
  point of the curve (Keras' `multi_label=False`); sample weights and masks broadcast from
  the batch axis. The state is `2·num_thresholds` compensated sums (`AUCState`), so the
  metric streams, merges and `psum`s exactly; `update` is O(batch) scatter-adds.

  The thresholds make the value an approximation of scikit-learn's exact figures. ROC
  differs from `roc_auc_score` by at most half the weight of the (positive, negative)
  pairs whose scores share a bucket (they count as ties), and equals it when no two
  distinct scores do; PR interpolates between thresholds where `average_precision_score`
  steps at every score. The README gives the distances measured at 200 thresholds.

  A kept value outside [0, 1] raises a ValueError naming it (concrete inputs) or makes the
  value NaN (under `jit`), as does a NaN; integer `y_pred` (class ids) raises a ValueError.
  For logits pass `jax.nn.sigmoid(logits)`.

  Args:
    curve: "ROC" (default) or "PR".
    num_thresholds: the number of thresholds (static), an int > 1; default 200.
  """
  if curve not in _CURVES:
    raise ValueError(f"curve must be one of {_CURVES}, got {curve!r}.")
  if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, int) or num_thresholds < 2:
    raise ValueError(f"num_thresholds must be an int > 1, got {num_thresholds!r}.")
  tag = f"auc(curve={curve!r}, num_thresholds={num_thresholds})"
  t = num_thresholds

  def init() -> AUCState:
    scalar = jnp.zeros((), COUNT_DTYPE)
    return AUCState(zeros((t,)), zeros((t,)), scalar, scalar, tag)

  def update(
    state: AUCState,
    *inputs: Any,
    sample_weight: Optional[ArrayLike] = None,
    mask: Optional[ArrayLike] = None,
  ) -> AUCState:
    check_state(state, AUCState, tag, "update")
    check_arity(tag, inputs, ("y_true", "y_pred"))
    y_true, y_pred = _inputs(tag, inputs[0], inputs[1])
    weight = operand("sample_weight", sample_weight, y_true.shape)
    keep = operand("mask", mask, y_true.shape)
    check_domain("y_true", "labels in [0, 1]", y_true, _outside_unit_interval, keep)
    check_domain("y_pred", "probabilities in [0, 1]", y_pred, _outside_unit_interval, keep)
    return tagged(_add_buckets(untagged(state), y_true, y_pred, weight, keep), tag)

  def merge(a: AUCState, b: AUCState) -> AUCState:
    check_merge(a, b, AUCState, tag)
    positive, negative = add(a.positive, b.positive), add(a.negative, b.negative)
    return AUCState(positive, negative, a.count + b.count, a.invalid + b.invalid, tag)

  def compute(state: AUCState) -> Array:
    check_state(state, AUCState, tag, "compute")
    return _area(untagged(state), curve)

  return Metric(init, update, merge, compute)
