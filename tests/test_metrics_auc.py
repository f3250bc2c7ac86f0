"""`gradcore_jax.metrics.auc` against Keras' thresholded method and against scikit-learn.

TensorFlow is not installed, so the reference for Keras' method (`tf.keras.metrics.AUC`,
`summation_method="interpolation"`) is a float64 NumPy transcription of its published
algorithm written for this test: float32 thresholds `[-1e-7, 1/(T-1), ..., (T-2)/(T-1),
1 + 1e-7]`, weighted confusion counts with `y_pred > threshold` compared directly (not by
buckets), ROC by `np.trapezoid` over (FPR, TPR), PR by numerically integrating (SciPy
`quad`) Davis and Goadrich's interpolated precision over recall, not by the closed form.
scikit-learn's exact `roc_auc_score` / `average_precision_score` bound the distance of the
thresholded figures.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.integrate import quad
from sklearn.metrics import average_precision_score
from sklearn.metrics import roc_auc_score

from gradcore_jax import metrics

RTOL = 1e-5  # float32 statistics against float64


def _counts(y, p, w, num_thresholds):
  """Keras' confusion counts at its thresholds, in float64 (y: 0/1 labels, p: float32 scores)."""
  inner = [(i + 1) / (num_thresholds - 1) for i in range(num_thresholds - 2)]
  thresholds = np.array([-1e-7, *inner, 1 + 1e-7], np.float32)
  above = p[None, :] > thresholds[:, None]
  y, w = np.float64(y), np.float64(w)
  tp = (above * (w * y)).sum(1)
  fp = (above * (w * (1 - y))).sum(1)
  return tp, fp, (w * y).sum() - tp, (w * (1 - y)).sum() - fp


def keras_roc_auc(y, p, w, num_thresholds):
  tp, fp, fn, tn = _counts(y, p, w, num_thresholds)
  tpr = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1e-300), 0)
  fpr = np.where(fp + tn > 0, fp / np.maximum(fp + tn, 1e-300), 0)
  return -np.trapezoid(tpr, fpr)  # fpr decreases as the threshold rises


def keras_pr_auc(y, p, w, num_thresholds):
  """Davis-Goadrich: between neighbouring thresholds tp grows linearly with P = tp + fp; integrate
  precision tp(P)/P over recall tp(P)/positives numerically."""
  tp, fp, fn, _ = _counts(y, p, w, num_thresholds)
  positives = tp[0] + fn[0]
  area = 0.0
  for i in range(num_thresholds - 1):
    p_hi, p_lo = tp[i] + fp[i], tp[i + 1] + fp[i + 1]
    if p_hi - p_lo <= 0 or tp[i] == tp[i + 1]:
      continue
    slope = (tp[i] - tp[i + 1]) / (p_hi - p_lo)

    def precision(big_p, i=i, slope=slope, p_lo=p_lo):
      return slope if big_p == 0 else (tp[i + 1] + slope * (big_p - p_lo)) / big_p

    area += quad(precision, p_lo, p_hi, epsabs=1e-13, epsrel=1e-12)[0] * slope / positives
  return area


def _realistic(seed=0, n=2000):
  """Imbalanced labels (30 % positive), sigmoid of class-conditional Gaussian logits, weights, a mask."""
  rng = np.random.default_rng(seed)
  y = (rng.uniform(size=n) < 0.3).astype(np.int32)
  p = (1 / (1 + np.exp(-rng.normal(np.where(y == 1, 1.0, -1.0), 1.5)))).astype(np.float32)
  return y, p, rng.uniform(0.2, 2.0, size=n).astype(np.float32), rng.uniform(size=n) > 0.2


def _value(metric, y, p, w, keep, split=700):
  """Streamed in two batches of different sizes; also the merge of the two separate states."""
  a = metric.update(metric.init(), y[:split], p[:split], sample_weight=w[:split], mask=keep[:split])
  b = metric.update(metric.init(), y[split:], p[split:], sample_weight=w[split:], mask=keep[split:])
  streamed = metric.update(a, y[split:], p[split:], sample_weight=w[split:], mask=keep[split:])
  return [float(metric.compute(s)) for s in (streamed, metric.merge(a, b))]


@pytest.mark.parametrize("num_thresholds", [200, 37])
@pytest.mark.parametrize("curve", ["ROC", "PR"])
def test_auc_equals_keras_method(curve, num_thresholds):
  y, p, w, keep = _realistic(1)
  reference = (keras_roc_auc if curve == "ROC" else keras_pr_auc)(y[keep], p[keep], w[keep], num_thresholds)
  for value in _value(metrics.auc(curve, num_thresholds), y, p, w, keep):
    np.testing.assert_allclose(value, reference, rtol=RTOL)


def test_predictions_on_the_thresholds_follow_the_strict_comparison():
  """p exactly at a float32 threshold is not above it (and its float32 neighbours are on either side),
  where ceil(p·(T - 1)) - 1 alone misplaces some of them."""
  t = 200
  on = np.array([(i + 1) / (t - 1) for i in range(t - 2)], np.float32)
  p = np.concatenate([on, np.nextafter(on, np.float32(2)), np.nextafter(on, np.float32(-1)), [0.0, 1.0]])
  p = p.astype(np.float32)
  rng = np.random.default_rng(6)
  y = rng.integers(0, 2, size=p.size).astype(np.int32)
  w = rng.uniform(0.2, 2.0, size=p.size).astype(np.float32)
  for curve, reference in (("ROC", keras_roc_auc), ("PR", keras_pr_auc)):
    metric = metrics.auc(curve, t)
    np.testing.assert_allclose(metric.compute(metric.update(metric.init(), y, p, sample_weight=w)),
                               reference(y, p, w, t), rtol=RTOL)


def test_roc_equals_sklearn_when_no_bucket_holds_two_scores():
  """Scores at bucket centres (ties only within a bucket): the trapezoids are sklearn's, weights included."""
  rng = np.random.default_rng(2)
  n, t = 1500, 200
  y = rng.integers(0, 2, size=n).astype(np.int32)
  bucket = np.clip(rng.normal(80 + 40 * y, 35), 0, t - 2).astype(int)
  p = ((bucket + 0.5) / (t - 1)).astype(np.float32)
  w, keep = rng.uniform(0.2, 2.0, size=n).astype(np.float32), rng.uniform(size=n) > 0.2
  expected = roc_auc_score(y[keep], p[keep], sample_weight=w[keep])
  for value in _value(metrics.auc("ROC", t), y, p, w, keep):
    np.testing.assert_allclose(value, expected, rtol=RTOL)


def test_distance_to_sklearn_at_200_thresholds():
  """ROC: at most the weight of the (positive, negative) pairs sharing a bucket, counted as ties.
  PR: Davis-Goadrich interpolation vs average_precision's steps, within 1e-3 (README figure)."""
  y, p, w, _ = _realistic(3, n=10_000)
  keep = np.ones_like(y, bool)
  roc = _value(metrics.auc("ROC"), y, p, w, keep)[0]
  exact = roc_auc_score(y, p, sample_weight=w)
  bucket = np.clip(np.ceil(p * 199) - 1, 0, 199).astype(int)
  pos, neg = np.bincount(bucket, w * y, 200), np.bincount(bucket, w * (1 - y), 200)
  tie_bound = 0.5 * np.sum(pos * neg) / (pos.sum() * neg.sum())
  assert abs(roc - exact) <= tie_bound + 1e-6
  pr = _value(metrics.auc("PR"), y, p, w, keep)[0]
  assert abs(pr - average_precision_score(y, p, sample_weight=w)) < 1e-3


def test_psum_and_jit_without_retrace():
  y, p, w, keep = _realistic(4, n=1200)
  metric = metrics.auc("PR")
  traces = 0

  def per_device(t, q, v, m):
    nonlocal traces
    traces += 1
    return metrics.psum(metric.update(metric.init(), t, q, sample_weight=v, mask=m), "devices")

  shards = [x.reshape(4, 300) for x in (y, p, w, keep)]
  run = jax.jit(jax.vmap(per_device, axis_name="devices"))
  for _ in range(3):
    combined = run(*shards)
  assert traces == 1
  device0 = jax.tree.map(lambda x: x[0], combined)
  whole = metric.update(metric.init(), y, p, sample_weight=w, mask=keep)
  np.testing.assert_allclose(metric.compute(device0), metric.compute(whole), rtol=RTOL)


def test_values_outside_unit_interval_raise_or_give_nan():
  y, p, _, _ = _realistic(5, n=50)
  p = p.copy()
  p[7] = 1.5
  metric = metrics.auc()
  with pytest.raises(ValueError, match=r"y_pred\[7\] = 1.5"):
    metric.update(metric.init(), y, p)
  assert np.isnan(float(metric.compute(jax.jit(metric.update)(metric.init(), y, p))))
  masked = metric.update(metric.init(), y, p, mask=np.arange(50) != 7)
  assert np.isfinite(float(metric.compute(masked)))
  with pytest.raises(ValueError, match="y_pred"):
    metric.update(metric.init(), y, y)  # class ids are not scores
  with pytest.raises(ValueError, match=r"y_pred\[\.\.\., 1\]"):
    metric.update(metric.init(), y, np.stack([1 - p, p], -1))
  with pytest.raises(ValueError, match="curve"):
    metrics.auc("roc")
  with pytest.raises(ValueError, match="num_thresholds"):
    metrics.auc(num_thresholds=1)
