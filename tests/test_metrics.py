"""`gradcore_jax.metrics` against NumPy float64 transcriptions of the Keras rules.

Keras is not installed, so each Keras metric is transcribed in NumPy from its documented rule
(`metrics.Mean`: Σw·v/Σw with weights broadcast from the batch axis; `MeanSquaredError` /
`MeanAbsoluteError`: the same over l = mean(error, axis=-1); `RootMeanSquaredError`: its
square root; empty state: `divide_no_nan` → 0). Accuracy is also checked against
scikit-learn's `accuracy_score`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from sklearn.metrics import accuracy_score

from gradcore_jax import metrics

RTOL = 1e-6  # float32 statistics against float64 NumPy


def _stream(metric: metrics.Metric, batches, **static) -> object:
  """Feeds `batches` = [(inputs, sample_weight, mask), ...] through `update`, one call each."""
  state = metric.init()
  for inputs, weight, mask in batches:
    state = metric.update(state, *inputs, sample_weight=weight, mask=mask, **static)
  return state


def _regression_batches(rng, shape=(6, 3), n=3):
  return [
      ((rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)),
       rng.uniform(0.1, 2.0, size=shape[0]).astype(np.float32),
       rng.uniform(size=shape[0]) > 0.3)
      for _ in range(n)
  ]


def keras_weighted_mean(values, weights, masks):
  """NumPy transcription of keras.metrics.Mean: Σ w·v / Σ w, weights broadcast from the batch axis."""
  total = weight_sum = 0.0
  for v, w, m in zip(values, weights, masks, strict=True):
    v = np.asarray(v, np.float64)
    w = np.broadcast_to(np.reshape(w * m, np.shape(w) + (1,) * (v.ndim - np.ndim(w))), v.shape)
    total += np.sum(w * v)
    weight_sum += np.sum(w)
  return total / weight_sum if weight_sum else 0.0


def keras_error_rule(error, batches):
  """Keras MeanSquaredError / MeanAbsoluteError: l = mean(error(y_pred - y_true), axis=-1), then Mean."""
  per_example = [error(np.float64(p) - np.float64(t)).mean(axis=-1) for (t, p), _, _ in batches]
  return keras_weighted_mean(per_example, [w for _, w, _ in batches], [m for _, _, m in batches])


# ----------------------------------------------------------------------------- values


def test_mean_equals_keras_mean_with_weights_and_masks():
  """keras.metrics.Mean rule (NumPy), (batch, k) values with (batch,) weights; count = unmasked slots."""
  rng = np.random.default_rng(0)
  batches = [(rng.normal(size=(5, 2)), rng.uniform(size=5), rng.uniform(size=5) > 0.4) for _ in range(4)]
  state = _stream(metrics.mean(), [((v,), w, m) for v, w, m in batches])
  expected = keras_weighted_mean(*zip(*batches, strict=True))
  np.testing.assert_allclose(metrics.mean().compute(state), expected, rtol=RTOL)
  assert int(state.count) == 2 * sum(int(m.sum()) for _, _, m in batches)


@pytest.mark.parametrize("factory, error, finish", [
    (metrics.mean_squared_error, np.square, lambda x: x),
    (metrics.mean_absolute_error, np.abs, lambda x: x),
    (metrics.root_mean_squared_error, np.square, np.sqrt),
], ids=["mse", "mae", "rmse"])
@pytest.mark.parametrize("shape", [(6,), (6, 3), (6, 2, 3)], ids=["1d", "2d", "3d"])
def test_regression_metrics_equal_keras_rule(factory, error, finish, shape):
  """Keras MeanSquaredError/MeanAbsoluteError/RootMeanSquaredError rule in NumPy, weighted and masked."""
  batches = _regression_batches(np.random.default_rng(1), shape=shape)
  if len(shape) == 1:  # each element is an example: Keras' mean over the last axis would merge them
    expected = keras_weighted_mean([error(np.float64(p) - t) for (t, p), _, _ in batches],
                                   [w for _, w, _ in batches], [m for _, _, m in batches])
  else:
    expected = keras_error_rule(error, batches)
  metric = factory()
  np.testing.assert_allclose(metric.compute(_stream(metric, batches)), finish(expected), rtol=RTOL)


def test_accuracy_equals_sklearn_accuracy_score():
  """Multi-class logits (argmax) with weights and a mask == sklearn.metrics.accuracy_score."""
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(40, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=40)
  weight = rng.uniform(size=40)
  keep = rng.uniform(size=40) > 0.2
  metric = metrics.accuracy()
  state = metric.update(metric.init(), labels[:25], logits[:25], sample_weight=weight[:25], mask=keep[:25])
  state = metric.update(state, labels[25:], logits[25:], sample_weight=weight[25:], mask=keep[25:])
  expected = accuracy_score(labels[keep], logits[keep].argmax(-1), sample_weight=weight[keep])
  np.testing.assert_allclose(metric.compute(state), expected, rtol=RTOL)


@pytest.mark.parametrize("shape", [(30,), (30, 1)], ids=["batch", "batch_1"])
def test_binary_accuracy_thresholds_probabilities_at_half(shape):
  """Binary probabilities: Keras BinaryAccuracy rule (p > 0.5) == sklearn accuracy_score."""
  rng = np.random.default_rng(3)
  probs = rng.uniform(size=shape).astype(np.float32)
  labels = rng.integers(0, 2, size=30)
  metric = metrics.binary_accuracy()
  got = metric.compute(metric.update(metric.init(), labels, probs))
  np.testing.assert_allclose(got, accuracy_score(labels, probs.reshape(30) > 0.5), rtol=RTOL)


def test_accuracy_refuses_float_predictions_shaped_like_labels():
  """Issue 11: accuracy() used to threshold these at 0.5; they are probabilities or float ids, so it asks."""
  with pytest.raises(ValueError, match="y_pred.*binary_accuracy"):
    metrics.accuracy().update(metrics.accuracy().init(), np.array([0, 2, 1]), np.array([0.0, 2.0, 1.0], np.float32))


def test_scalar_batch_mean_counts_as_its_examples():
  """A batch-mean loss with sample_weight=batch_size == the per-example mean (never counted as 1)."""
  rng = np.random.default_rng(4)
  sizes = [32, 32, 5]  # a short last batch
  batches = [rng.normal(size=n).astype(np.float32) for n in sizes]
  metric = metrics.mean()
  state = metric.init()
  for b in batches:
    state = metric.update(state, b.mean(), sample_weight=b.size)
  np.testing.assert_allclose(metric.compute(state), np.concatenate(batches).astype(np.float64).mean(), rtol=RTOL)
  naive_mean_of_means = np.mean([b.mean() for b in batches])
  assert abs(float(metric.compute(state)) - naive_mean_of_means) > 1e-3


def test_scalar_without_sample_weight_is_refused():
  with pytest.raises(ValueError, match="sample_weight"):
    metrics.mean().update(metrics.mean().init(), jnp.float32(1.5))


# ----------------------------------------------------------------------------- masks, NaN, empty


def test_nan_in_masked_slots_cannot_leak():
  """NaN values and NaN weights in masked rows: same result as the kept rows alone (NumPy)."""
  values = np.array([1.0, np.nan, 3.0, np.nan, 5.0], np.float32)
  weight = np.array([1.0, np.nan, 2.0, 1.0, 1.0], np.float32)
  keep = ~np.isnan(values)
  metric = metrics.mean()
  state = metric.update(metric.init(), values, sample_weight=weight, mask=keep)
  np.testing.assert_allclose(metric.compute(state), (1 + 6 + 5) / 4, rtol=RTOL)
  assert int(state.count) == 3


def test_padded_rows_match_unpadded_rows():
  """A batch padded with garbage rows and mask=False equals the unpadded batch (same state)."""
  rng = np.random.default_rng(5)
  y_true, y_pred = rng.normal(size=(2, 5, 3)).astype(np.float32)
  pad = np.full((3, 3), np.inf, np.float32)
  keep = np.arange(8) < 5
  metric = metrics.mean_squared_error()
  padded = metric.update(metric.init(), np.vstack([y_true, pad]), np.vstack([y_pred, pad]), mask=keep)
  plain = metric.update(metric.init(), y_true, y_pred)
  jax.tree.map(np.testing.assert_array_equal, padded, plain)


def test_empty_state_is_zero_like_keras_divide_no_nan():
  for metric in (metrics.mean(), metrics.mean_squared_error(), metrics.root_mean_squared_error(),
                 metrics.accuracy()):
    assert float(metric.compute(metric.init())) == 0.0
  m = metrics.mean()
  assert float(m.compute(m.update(m.init(), np.array([np.nan, 2.0]), mask=np.zeros(2, bool)))) == 0.0


# ----------------------------------------------------------------------------- state, merge, jit, scan


def _states(metric, rng, n=3):
  return [metric.update(metric.init(), rng.normal(loc=10.0, size=50).astype(np.float32)) for _ in range(n)]


def _as_float64(state: metrics.MeanState) -> tuple[float, float]:
  """The exact sums a compensated state stands for, read in float64."""
  return tuple(np.float64(s.value) + np.float64(s.compensation) for s in (state.total, state.weight))


def test_merge_is_associative_and_equals_sequential_updates():
  metric = metrics.mean()
  a, b, c = _states(metric, np.random.default_rng(6))
  left = metric.merge(metric.merge(a, b), c)
  right = metric.merge(a, metric.merge(b, c))
  np.testing.assert_allclose(_as_float64(left), _as_float64(right), rtol=1e-12)
  assert int(left.count) == int(right.count) == 150
  jax.tree.map(np.testing.assert_array_equal, metric.merge(a, metric.init()), a)


@pytest.mark.parametrize("metric, y_true, y_pred", [
    (metrics.mean_squared_error(), np.ones((4, 2)), np.zeros((4, 2))),
    (metrics.top_k_accuracy(2), np.array([0, 1, 2, 0]), np.eye(3)[[0, 2, 2, 1]]),
    (metrics.f1(3, "macro"), np.array([0, 1, 2, 0]), np.eye(3)[[0, 2, 2, 1]]),
    (metrics.confusion_matrix(2), np.array([0, 1, 1, 0]), np.array([0.2, 0.7, 0.4, 0.9])),
    (metrics.auc(), np.array([0, 1, 1, 0]), np.array([0.2, 0.7, 0.4, 0.9])),
], ids=["mse", "top_k", "f1", "confusion", "auc"])
def test_state_has_fixed_float32_int32_leaves_even_with_x64(metric, y_true, y_pred):
  with jax.enable_x64(True):
    state = metric.update(metric.init(), y_true, y_pred, sample_weight=np.ones(4))
    init = metric.init()
    assert metric.compute(state).dtype == jnp.float32
  assert jax.tree.structure(init) == jax.tree.structure(state)
  for fresh, updated in zip(jax.tree.leaves(init), jax.tree.leaves(state), strict=True):
    assert fresh.dtype == updated.dtype and fresh.shape == updated.shape
    assert fresh.dtype in (jnp.float32, jnp.int32)


def test_jitted_update_traces_once():
  traces = 0
  metric = metrics.accuracy()

  def step(state, labels, logits, mask):
    nonlocal traces
    traces += 1
    return metric.update(state, labels, logits, mask=mask)

  step = jax.jit(step)
  rng = np.random.default_rng(7)
  state = metric.init()
  for _ in range(5):
    state = step(state, rng.integers(0, 3, size=8), rng.normal(size=(8, 3)).astype(np.float32),
                 rng.uniform(size=8) > 0.5)
  assert traces == 1


def test_scan_equals_python_loop():
  metric = metrics.collection({"mse": metrics.mean_squared_error(), "mae": metrics.mean_absolute_error()})
  rng = np.random.default_rng(8)
  y_true, y_pred = rng.normal(size=(2, 10, 4, 3)).astype(np.float32)
  weight = rng.uniform(size=(10, 4)).astype(np.float32)

  def body(state, batch):
    t, p, w = batch
    return metric.update(state, t, p, sample_weight=w), None

  scanned, _ = jax.jit(lambda xs: lax.scan(body, metric.init(), xs))((y_true, y_pred, weight))
  looped = _stream(metric, [((t, p), w, None) for t, p, w in zip(y_true, y_pred, weight, strict=True)])
  for name in ("mse", "mae"):  # XLA may fuse (and round) per-example terms differently under scan
    np.testing.assert_allclose(_as_float64(scanned[name]), _as_float64(looped[name]), rtol=1e-7)
    assert int(scanned[name].count) == int(looped[name].count) == 40


def test_long_float32_stream_stays_exact():
  """2e7 float32 values in 20,000 updates: within 2e-7 of the float64 NumPy mean, where a plain
  float32 running total (the naive accumulator) drifts by more than that."""
  xs = np.random.default_rng(9).random((20_000, 1000), dtype=np.float32)
  truth = xs.astype(np.float64).mean()
  metric = metrics.mean()

  @jax.jit
  def run(xs):
    def body(carry, x):
      state, naive = carry
      return (metric.update(state, x), naive + jnp.sum(x)), None

    return lax.scan(body, (metric.init(), jnp.float32(0)), xs)[0]

  state, naive = run(xs)
  assert int(state.count) == xs.size  # an int32 count: exact past 2**24
  assert abs(float(metric.compute(state)) - truth) / truth < 2e-7
  assert abs(float(naive) / xs.size - truth) / truth > 2e-7


# ----------------------------------------------------------------------------- collection, psum


def test_collection_gives_dicts_equal_to_its_members():
  members = {"mse": metrics.mean_squared_error(), "rmse": metrics.root_mean_squared_error()}
  both = metrics.collection(members)
  batches = _regression_batches(np.random.default_rng(10))
  values = both.compute(_stream(both, batches))
  assert set(values) == {"mse", "rmse"}
  for name, member in members.items():
    np.testing.assert_array_equal(values[name], member.compute(_stream(member, batches)))
  np.testing.assert_allclose(values["rmse"], np.sqrt(values["mse"]), rtol=RTOL)


def test_psum_sums_statistics_across_devices():
  """Per-device states combined with psum (a named vmap axis stands in for devices) equal the
  state of all the data (NumPy mean), not the mean of per-device means."""
  rng = np.random.default_rng(11)
  shards = rng.normal(size=(4, 16)).astype(np.float32)
  keep = np.ones((4, 16), bool)
  keep[3, 4:] = False  # one device holds a short, padded shard
  metric = metrics.mean()

  def per_device(x, m):
    return metrics.psum(metric.update(metric.init(), x, mask=m), "devices")

  combined = jax.vmap(per_device, axis_name="devices")(shards, keep)
  device0 = jax.tree.map(lambda x: x[0], combined)
  np.testing.assert_allclose(metric.compute(device0), shards[keep].astype(np.float64).mean(), rtol=RTOL)
  assert int(device0.count) == keep.sum()


# ----------------------------------------------------------------------------- errors


def test_binned_sums_are_exact_where_a_float32_scatter_add_rounds():
  """40,000 log-normal float32 weights into 300 bins (a scatter-add in any order): the compensated
  per-bin sums equal float64 np.bincount to 1e-12, where jax.ops.segment_sum is off by ~1e-6."""
  from gradcore_jax.metrics import _core

  rng = np.random.default_rng(12)
  bins = rng.integers(0, 300, size=40_000).astype(np.int32)
  weight = rng.lognormal(0.0, 2.0, size=40_000).astype(np.float32)
  exact = np.bincount(bins, weight.astype(np.float64), 300)
  sums = jax.jit(_core.binned_total, static_argnums=2)(bins, weight, 300)
  got = np.float64(sums.value) + np.float64(sums.compensation)
  plain = np.asarray(jax.ops.segment_sum(weight, bins, 300), np.float64)
  assert np.max(np.abs(got - exact) / exact) < 1e-12
  assert np.max(np.abs(plain - exact) / exact) > 1e-8


# ----------------------------------------------------------------------------- tags, merge, errors


def test_merge_of_two_different_metrics_names_both():
  """Issue 11: merge pooled any two states with equal structure; the tag in the tree says whose they are."""
  mse, mae = metrics.mean_squared_error(), metrics.mean_absolute_error()
  a = mse.update(mse.init(), np.ones(3), np.zeros(3))
  b = mae.update(mae.init(), np.ones(3), np.zeros(3))
  with pytest.raises(ValueError, match=r"mean_squared_error\(\).*mean_absolute_error\(\)"):
    mse.merge(a, b)
  with pytest.raises(ValueError, match="mean_absolute_error"):
    mse.update(b, np.ones(3), np.zeros(3))
  p3, p4 = metrics.precision(3, "macro"), metrics.precision(4, "macro")
  with pytest.raises(ValueError, match="num_classes=3.*num_classes=4"):
    p3.merge(p3.init(), p4.init())
  with pytest.raises(ValueError, match=r"and mean_squared_error\(\)"):
    p3.merge(p3.init(), a)


def test_the_tag_survives_jit_scan_and_psum():
  metric = metrics.root_mean_squared_error()
  state = jax.jit(metric.update)(metric.init(), np.ones(4), np.zeros(4))
  scanned, _ = lax.scan(lambda s, x: (metric.update(s, x, x + 1), None), metric.init(), np.ones((3, 4)))
  summed = jax.vmap(lambda x: metrics.psum(metric.update(metric.init(), x, 2 * x), "d"), axis_name="d")(np.ones((2, 4)))
  for s in (state, scanned, summed):
    assert s.metric == "root_mean_squared_error()"
  with pytest.raises(ValueError, match="mean_squared_error"):
    metrics.mean_squared_error().merge(metrics.mean_squared_error().init(), scanned)


def test_collections_with_different_keys_name_the_keys():
  left = metrics.collection({"mse": metrics.mean_squared_error(), "mae": metrics.mean_absolute_error()})
  right = metrics.collection({"mse": metrics.mean_squared_error()})
  with pytest.raises(ValueError, match=r"missing \['mae'\]"):
    left.merge(left.init(), right.init())
  with pytest.raises(ValueError, match=r"unexpected \['mae'\]"):
    right.compute(left.init())


def test_mean_of_y_true_y_pred_points_to_the_error_metrics():
  """Issue 11: mean() given (y_true, y_pred) died in a dtype message."""
  with pytest.raises(ValueError, match="per-example values.*mean_squared_error"):
    metrics.mean().update(metrics.mean().init(), np.ones(3), np.zeros(3))
  with pytest.raises(ValueError, match=r"takes \(state, y_true, y_pred\), got 1"):
    metrics.accuracy().update(metrics.accuracy().init(), np.ones(3, int))


@pytest.mark.parametrize("metric, inputs", [
    (metrics.mean(), (np.ones(4),)),
    (metrics.precision(3, "micro"), (np.zeros(4, int), np.zeros(4, int))),
    (metrics.auc(), (np.zeros(4), np.full(4, 0.5))),
], ids=["mean", "precision", "auc"])
@pytest.mark.parametrize("keyword", ["mask", "sample_weight"])
def test_string_or_misshaped_weight_and_mask_name_the_argument(metric, inputs, keyword):
  with pytest.raises(TypeError, match=keyword):
    metric.update(metric.init(), *inputs, **{keyword: "valid"})
  with pytest.raises(ValueError, match=keyword):
    metric.update(metric.init(), *inputs, **{keyword: np.ones(5)})


@pytest.mark.parametrize("call, name", [
    (lambda: metrics.mean().update(metrics.mean().init(), np.ones(4), sample_weight=np.ones(5)), "sample_weight"),
    (lambda: metrics.mean().update(metrics.mean().init(), np.ones((4, 2)), mask=np.ones(2)), "mask"),
    (lambda: metrics.mean_squared_error().update(metrics.mean_squared_error().init(), np.ones(4), np.ones(3)),
     "y_pred"),
    (lambda: metrics.accuracy().update(metrics.accuracy().init(), np.ones(4), np.ones((4, 3))), "y_true"),
    (lambda: metrics.accuracy().update(metrics.accuracy().init(), np.ones(4, int), np.ones((5, 3))), "y_pred"),
], ids=["sample_weight", "mask", "regression_shapes", "float_labels", "accuracy_shapes"])
def test_errors_name_the_argument(call, name):
  with pytest.raises(ValueError, match=name):
    call()
