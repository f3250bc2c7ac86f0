"""`gradcore_jax.metrics` classification metrics against live scikit-learn.

References, run inside each test on the kept (unmasked) examples with their sample weights:
`accuracy_score`, `top_k_accuracy_score`, `precision_recall_fscore_support`, `f1_score`,
`confusion_matrix`. Every metric is fed in two batches of different sizes (24 then 36 of
60 examples) and, separately, the two batches' states are merged; `psum` over a named `vmap`
axis (standing in for devices) is compared with one update over all 60.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import accuracy_score
from sklearn.metrics import confusion_matrix
from sklearn.metrics import f1_score
from sklearn.metrics import precision_recall_fscore_support
from sklearn.metrics import top_k_accuracy_score

from gradcore_jax import metrics

RTOL = 1e-5  # float32 statistics against scikit-learn's float64
N, SPLIT, C = 60, 24, 5  # examples, first batch size, classes


def _data(seed: int = 0):
  """Labels in [0, 4) of a 5-class problem (class 4 never occurs), scores, weights, a mask."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, size=N).astype(np.int32)
  scores = rng.normal(size=(N, C)).astype(np.float32)
  scores[:, 4] -= 10.0  # class 4 is never predicted either: scikit-learn leaves it out of "macro"
  scores[:, 3] -= 10.0  # class 3 is labelled but never predicted: its precision divides by 0
  weight = rng.uniform(0.1, 2.0, size=N).astype(np.float32)
  keep = rng.uniform(size=N) > 0.25
  return labels, scores, weight, keep


def _streamed(metric, y_true, y_pred, weight, keep):
  """The values after two updates (24 then 36 examples) and after merging their separate states."""
  parts = [slice(0, SPLIT), slice(SPLIT, N)]
  state = metric.init()
  for p in parts:
    state = metric.update(state, y_true[p], y_pred[p], sample_weight=weight[p], mask=keep[p])
  halves = [metric.update(metric.init(), y_true[p], y_pred[p], sample_weight=weight[p], mask=keep[p]) for p in parts]
  return [metric.compute(s) for s in (state, metric.merge(*halves))]


def _assert_all_close(values, expected, rtol=RTOL):
  for value in values:
    np.testing.assert_allclose(np.asarray(value, np.float64), expected, rtol=rtol, atol=1e-7)


# ----------------------------------------------------------------------------- accuracy kinds


def test_accuracy_kinds_equal_sklearn_accuracy_score():
  """Each Keras accuracy kind == accuracy_score on its predicted classes, weighted and masked, streamed."""
  labels, scores, weight, keep = _data(1)
  rng = np.random.default_rng(11)
  probs = rng.uniform(size=N).astype(np.float32)
  binary = rng.integers(0, 2, size=N).astype(np.int32)
  one_hot = np.eye(C, dtype=np.float32)[labels]
  ids = scores.argmax(-1).astype(np.int32)
  cases = [
    (metrics.accuracy(), labels, ids, ids),  # class ids: exact match (Keras Accuracy)
    (metrics.accuracy(), labels, scores, ids),  # class scores: argmax (SparseCategoricalAccuracy)
    (metrics.sparse_categorical_accuracy(), labels, scores, ids),
    (metrics.sparse_categorical_accuracy(), labels[:, None], scores, ids),  # Keras' (batch, 1) labels
    (metrics.categorical_accuracy(), one_hot, scores, ids),
    (metrics.binary_accuracy(), binary, probs, probs > 0.5),
    (metrics.binary_accuracy(threshold=0.3), binary, probs[:, None], probs > 0.3),
    (metrics.binary_accuracy(threshold=0.0), binary, np.log(probs / (1 - probs)), probs > 0.5),  # logits
  ]
  for metric, y_true, y_pred, predicted in cases:
    truth = binary if y_true is binary else labels
    expected = accuracy_score(truth[keep], predicted[keep], sample_weight=weight[keep])
    _assert_all_close(_streamed(metric, y_true, y_pred, weight, keep), expected)


def test_issue_11_perfect_class_ids_score_one():
  """Predicted class ids equal to the labels: accuracy 1.0 (it was 0.0: ids were thresholded at 0.5)."""
  labels = np.arange(10, dtype=np.int32) % 5
  metric = metrics.accuracy()
  assert float(metric.compute(metric.update(metric.init(), labels, labels))) == 1.0
  assert float(metric.compute(metric.update(metric.init(), labels, (labels + 1) % 5))) == 0.0


@pytest.mark.parametrize(
  "metric, y_true, y_pred, names",
  [
    (metrics.accuracy(), np.zeros(4, int), np.full(4, 0.7, np.float32), ["y_pred", "binary_accuracy"]),
    (metrics.sparse_categorical_accuracy(), np.zeros(4, int), np.zeros(4, int), ["y_pred", "accuracy()"]),
    (metrics.sparse_categorical_accuracy(), np.zeros(4, int), np.zeros(4, np.float32), ["y_pred", "binary_accuracy"]),
    (metrics.binary_accuracy(), np.zeros(4, int), np.zeros(4, int), ["y_pred", "accuracy()"]),
    (metrics.binary_accuracy(), np.zeros(4, int), np.zeros((4, 3), np.float32), ["y_pred", "sparse_categorical"]),
    (metrics.top_k_accuracy(2), np.zeros(4, int), np.zeros(4, int), ["y_pred", "accuracy()"]),
    (metrics.categorical_accuracy(), np.zeros(4, int), np.zeros((4, 3), np.float32), ["y_true", "sparse_categorical"]),
    (metrics.accuracy(), np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32), ["y_true", "categorical"]),
    (metrics.precision(3, "macro"), np.zeros(4, int), np.zeros(4, np.float32), ["y_pred", "num_classes=2"]),
    (metrics.precision(3, "macro"), np.zeros(4, int), np.zeros((4, 4), np.float32), ["y_pred", "expected 3"]),
    (metrics.confusion_matrix(3), np.zeros(4, int), np.zeros((4, 2, 3)), ["y_pred"]),
  ],
  ids=["acc_float_like_labels", "sparse_ids", "sparse_probs", "binary_ids", "binary_scores", "top_k_ids",
       "categorical_labels", "acc_one_hot", "precision_probs_3_classes", "precision_4_scores", "confusion_shape"],
)
def test_ambiguous_or_wrong_kinds_raise_naming_the_metric_to_use(metric, y_true, y_pred, names):
  with pytest.raises(ValueError) as error:
    metric.update(metric.init(), y_true, y_pred)
  for name in names:
    assert name in str(error.value)


# ----------------------------------------------------------------------------- top-k


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.filterwarnings("ignore:'k' \\(5\\) greater than or equal to 'n_classes'")
def test_top_k_accuracy_equals_sklearn_with_ties(k):
  """top_k_accuracy_score(labels=range(C)), scores rounded so that many tie: sklearn's tie order
  (k = 5 = C: every example counts, which sklearn warns is meaningless)."""
  labels, scores, weight, keep = _data(2)
  scores = np.round(scores, 0)  # ties everywhere
  expected = top_k_accuracy_score(labels[keep], scores[keep], k=k, labels=np.arange(C), sample_weight=weight[keep])
  _assert_all_close(_streamed(metrics.top_k_accuracy(k), labels, scores, weight, keep), expected)


# ----------------------------------------------------------------------------- precision, recall, F1


@pytest.mark.parametrize("average", ["micro", "macro", "weighted"])
@pytest.mark.parametrize("zero_division", [0.0, 1.0, np.nan], ids=["zd0", "zd1", "zdnan"])
def test_precision_recall_f1_equal_sklearn(average, zero_division):
  """precision_recall_fscore_support on the kept examples with weights: classes never seen left out,
  a class labelled but never predicted scored `zero_division`; scores or ids as y_pred."""
  labels, scores, weight, keep = _data(3)
  predicted = scores.argmax(-1)
  expected = precision_recall_fscore_support(
    labels[keep], predicted[keep], average=average, sample_weight=weight[keep], zero_division=zero_division
  )[:3]
  factories = (metrics.precision, metrics.recall, metrics.f1)
  for factory, reference in zip(factories, expected, strict=True):
    metric = factory(C, average, zero_division=zero_division)
    for y_pred in (scores, predicted.astype(np.int32)):
      _assert_all_close(_streamed(metric, labels, y_pred, weight, keep), reference)


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_binary_precision_recall_f1_threshold_probabilities(threshold):
  """average='binary' (pos_label=1) on probabilities > threshold == sklearn on the thresholded ids."""
  rng = np.random.default_rng(4)
  labels = rng.integers(0, 2, size=N).astype(np.int32)
  probs = np.clip(0.35 * labels + rng.uniform(size=N) * 0.65, 0, 1).astype(np.float32)
  _, _, weight, keep = _data(4)
  predicted = (probs > threshold).astype(int)
  for factory in (metrics.precision, metrics.recall, metrics.f1):
    metric = factory(threshold=threshold)
    name = factory.__name__
    reference = {"precision": 0, "recall": 1, "f1": 2}[name]
    expected = precision_recall_fscore_support(labels[keep], predicted[keep], average="binary",
                                               sample_weight=weight[keep], zero_division=0.0)[reference]
    _assert_all_close(_streamed(metric, labels, probs, weight, keep), expected)
  assert np.isclose(float(metrics.f1().compute(metrics.f1().update(metrics.f1().init(), labels, probs))),
                    f1_score(labels, probs > 0.5), rtol=RTOL)


def test_empty_class_counts_give_zero_division():
  for zero_division in (0.0, 1.0):
    metric = metrics.recall(3, "macro", zero_division=zero_division)
    assert float(metric.compute(metric.init())) == zero_division


# ----------------------------------------------------------------------------- confusion matrix


def test_confusion_matrix_equals_sklearn():
  """confusion_matrix(labels=range(C), sample_weight) on kept rows; state.count holds the int32 counts."""
  labels, scores, weight, keep = _data(5)
  predicted = scores.argmax(-1)
  expected = confusion_matrix(labels[keep], predicted[keep], labels=np.arange(C), sample_weight=weight[keep])
  metric = metrics.confusion_matrix(C)
  _assert_all_close(_streamed(metric, labels, scores, weight, keep), expected)
  state = metric.update(metric.init(), labels, scores, mask=keep)
  np.testing.assert_array_equal(state.count, confusion_matrix(labels[keep], predicted[keep], labels=np.arange(C)))
  assert state.count.dtype == jnp.int32


# ----------------------------------------------------------------------------- psum, jit, tags


def test_psum_of_per_device_states_equals_all_data():
  """Three "devices" (a named vmap axis) with padded shards: psum of their states == one state of all."""
  labels, scores, weight, keep = _data(6)
  shards = [x.reshape(3, N // 3, *x.shape[1:]) for x in (labels, scores, weight, keep)]
  for metric in (metrics.f1(C, "macro"), metrics.confusion_matrix(C), metrics.top_k_accuracy(2)):

    def per_device(t, p, w, m, metric=metric):
      return metrics.psum(metric.update(metric.init(), t, p, sample_weight=w, mask=m), "devices")

    combined = jax.vmap(per_device, axis_name="devices")(*shards)
    device0 = jax.tree.map(lambda x: x[0], combined)
    whole = metric.update(metric.init(), labels, scores, sample_weight=weight, mask=keep)
    np.testing.assert_allclose(metric.compute(device0), metric.compute(whole), rtol=RTOL, atol=1e-7)


def test_jitted_update_traces_once_and_keeps_the_tag():
  metric = metrics.precision(C, "macro")
  traces = 0

  def step(state, t, p, m):
    nonlocal traces
    traces += 1
    return metric.update(state, t, p, mask=m)

  step = jax.jit(step)
  labels, scores, _, keep = _data(7)
  state = metric.init()
  for _ in range(4):
    state = step(state, labels, scores, keep)
  assert traces == 1
  assert state.metric == "precision(num_classes=5, average='macro', threshold=0.5, zero_division=0.0)"
  with pytest.raises(ValueError, match="recall.*precision|precision.*recall"):
    metrics.recall(C, "macro").compute(state)


# ----------------------------------------------------------------------------- domains


def test_labels_outside_the_classes_raise_when_concrete_and_give_nan_under_jit():
  labels, scores, _, keep = _data(8)
  labels = labels.copy()
  labels[5] = 7
  for metric in (metrics.sparse_categorical_accuracy(), metrics.precision(C, "micro"), metrics.confusion_matrix(C)):
    with pytest.raises(ValueError, match=r"y_true\[5\] = 7"):
      metric.update(metric.init(), labels, scores)
    jitted = jax.jit(lambda s, t, p, m, metric=metric: metric.update(s, t, p, mask=m))
    assert np.all(np.isnan(metric.compute(jitted(metric.init(), labels, scores, np.ones(N, bool)))))
    masked = keep.copy()
    masked[5] = False  # a masked label is never read
    kept = metric.compute(metric.update(metric.init(), labels, scores, mask=masked))
    assert np.all(np.isfinite(kept))
  with pytest.raises(ValueError, match=r"y_pred\[1\] = -1"):
    metrics.recall(3, "macro").update(metrics.recall(3, "macro").init(), np.zeros(3, int), np.array([0, -1, 2]))


def test_nan_score_in_a_kept_example_gives_nan():
  labels, scores, _, _ = _data(9)
  scores = scores.copy()
  scores[3, 1] = np.nan
  for metric in (metrics.accuracy(), metrics.top_k_accuracy(2), metrics.f1(C, "weighted")):
    assert np.isnan(float(metric.compute(metric.update(metric.init(), labels, scores))))
    mask = np.arange(N) != 3
    assert np.isfinite(float(metric.compute(metric.update(metric.init(), labels, scores, mask=mask))))


@pytest.mark.parametrize(
  "build, message",
  [
    (lambda: metrics.precision(3), "average='binary'"),
    (lambda: metrics.f1(3, "samples"), "average"),
    (lambda: metrics.recall(1, "macro"), "num_classes"),
    (lambda: metrics.precision(3, "macro", zero_division="warn"), "zero_division"),
    (lambda: metrics.top_k_accuracy(0), "k must"),
    (lambda: metrics.binary_accuracy(threshold="0.5"), "threshold"),
    (lambda: metrics.confusion_matrix(2.0), "num_classes"),
  ],
  ids=["binary_3_classes", "samples", "one_class", "warn", "k0", "threshold_str", "float_classes"],
)
def test_bad_arguments_raise_naming_them(build, message):
  with pytest.raises(ValueError, match=message):
    build()
