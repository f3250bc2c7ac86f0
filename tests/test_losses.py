"""`gradcore_jax.losses` against `torch.nn.functional`, computed live on the same data.

Every loss is compared in float64 (inside `jax.enable_x64(True)`, to 1e-12) and float32
(to ~1e-6). References: torch's own `reduction="mean"` (`"batchmean"` for `kl_div`), and
torch's `reduction="none"` averaged per example with NumPy for "none", "sum" and weights.
`hinge` has no torch counterpart and is compared to a NumPy transcription of its formula.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradcore_jax import losses

DTYPES = (np.float64, np.float32)
TOLERANCE = {np.float64: dict(rtol=1e-12, atol=1e-14), np.float32: dict(rtol=1e-6, atol=1e-7)}
BATCH = 7
WIDTH = 4  # features and classes: one shape throughout keeps JAX's per-shape compilations few


@contextlib.contextmanager
def precision(dtype):
  """float64 runs inside `jax.enable_x64(True)`; float32 runs with JAX's defaults."""
  if dtype == np.float64:
    with jax.enable_x64(True):
      yield
  else:
    yield


def _t(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x))


def _mean_over_rest(x: np.ndarray) -> np.ndarray:
  """One value per example: the mean over every non-batch axis."""
  return x.reshape(x.shape[0], -1).mean(axis=1)


def _classes_second(x: torch.Tensor) -> torch.Tensor:
  """torch puts the class axis second; ours is last."""
  return torch.movedim(x, -1, 1) if x.ndim > 2 else x


# ----------------------------------------------------------------------------- inputs


def regression(rng, dtype, shape=(BATCH, WIDTH), scale=1.0):
  return (rng.normal(size=shape) * scale).astype(dtype), rng.normal(size=shape).astype(dtype)


def probabilities(rng, dtype):
  return rng.uniform(0.02, 0.98, size=(BATCH, WIDTH)).astype(dtype), rng.uniform(size=(BATCH, WIDTH)).astype(dtype)


def logits_and_soft_targets(rng, dtype):
  return (3 * rng.normal(size=(BATCH, WIDTH))).astype(dtype), rng.uniform(size=(BATCH, WIDTH)).astype(dtype)


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
  return np.log(_softmax(x))


def logits_and_labels(rng, dtype, shape=(BATCH,), classes=WIDTH):
  return rng.normal(size=shape + (classes,)).astype(dtype), rng.integers(0, classes, size=shape)


def logits_and_distributions(rng, dtype):
  return rng.normal(size=(BATCH, WIDTH)).astype(dtype), _softmax(rng.normal(size=(BATCH, WIDTH))).astype(dtype)


def log_probs_and_labels(rng, dtype):
  x, y = logits_and_labels(rng, dtype)
  return _log_softmax(x).astype(dtype), y


def log_probs_and_distributions(rng, dtype):
  x, t = logits_and_distributions(rng, dtype)
  return _log_softmax(x).astype(dtype), t


def log_probs_and_log_targets(rng, dtype):
  x, t = log_probs_and_distributions(rng, dtype)
  return x, np.log(t).astype(dtype)


def margins(rng, dtype):
  return rng.normal(size=(BATCH, WIDTH)).astype(dtype), rng.choice([-1.0, 1.0], size=(BATCH, WIDTH)).astype(dtype)


# ----------------------------------------------------------------------------- references


def torch_per_example(fn: Callable, *, class_axis: bool = False, sum_classes: bool = False, **kwargs):
  """torch `reduction="none"`, then per example: (sum over classes if asked,) mean over the rest."""

  def reference(y_pred, y_true):
    pred, true = _t(y_pred), _t(y_true)
    if class_axis:
      pred = _classes_second(pred)
      true = _classes_second(true) if true.is_floating_point() else true
    out = fn(pred, true, reduction="none", **kwargs).numpy()
    if sum_classes:
      out = out.sum(axis=-1)
    return out if out.ndim == 1 else _mean_over_rest(out)

  return reference


def torch_reduced(fn: Callable, reduction: str = "mean", *, class_axis: bool = False, **kwargs):
  """torch's own reduced value."""

  def reference(y_pred, y_true):
    pred, true = _t(y_pred), _t(y_true)
    if class_axis:
      pred = _classes_second(pred)
      true = _classes_second(true) if true.is_floating_point() else true
    return fn(pred, true, reduction=reduction, **kwargs).item()

  return reference


def numpy_hinge(y_pred, y_true):
  """Transcription of the documented rule: mean over the last axis of max(0, 1 - y * y_hat)."""
  return _mean_over_rest(np.maximum(0.0, 1.0 - y_true * y_pred))


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  ours: Callable
  make: Callable
  per_example: Callable  # NumPy per-example values from the reference
  mean: Optional[Callable] = None  # the reference's own "mean" (None: mean of per_example)

  def __repr__(self) -> str:
    return self.name


def _huber2(y_pred, y_true, **kw):
  return losses.huber(y_pred, y_true, delta=2.0, **kw)


def _kl_log_target(y_pred, y_true, **kw):
  return losses.kl_div(y_pred, y_true, log_target=True, **kw)


CASES = [
    Case("mse", losses.mse, regression, torch_per_example(F.mse_loss), torch_reduced(F.mse_loss)),
    Case("l1", losses.l1, regression, torch_per_example(F.l1_loss), torch_reduced(F.l1_loss)),
    Case("huber", losses.huber, lambda r, d: regression(r, d, scale=2.0),
         torch_per_example(F.huber_loss), torch_reduced(F.huber_loss)),
    Case("huber_delta2", _huber2, lambda r, d: regression(r, d, scale=3.0),
         torch_per_example(F.huber_loss, delta=2.0), torch_reduced(F.huber_loss, delta=2.0)),
    Case("mse_3d", losses.mse, lambda r, d: regression(r, d, shape=(BATCH, 3, WIDTH)),
         torch_per_example(F.mse_loss), torch_reduced(F.mse_loss)),
    Case("bce", losses.bce, probabilities,
         torch_per_example(F.binary_cross_entropy), torch_reduced(F.binary_cross_entropy)),
    Case("bce_with_logits", losses.bce_with_logits, logits_and_soft_targets,
         torch_per_example(F.binary_cross_entropy_with_logits),
         torch_reduced(F.binary_cross_entropy_with_logits)),
    Case("cross_entropy_labels", losses.cross_entropy, logits_and_labels,
         torch_per_example(F.cross_entropy), torch_reduced(F.cross_entropy)),
    Case("cross_entropy_probabilities", losses.cross_entropy, logits_and_distributions,
         torch_per_example(F.cross_entropy), torch_reduced(F.cross_entropy)),
    Case("cross_entropy_sequence", losses.cross_entropy, lambda r, d: logits_and_labels(r, d, shape=(BATCH, 3)),
         torch_per_example(F.cross_entropy, class_axis=True), torch_reduced(F.cross_entropy, class_axis=True)),
    Case("nll", losses.nll, log_probs_and_labels, torch_per_example(F.nll_loss), torch_reduced(F.nll_loss)),
    Case("kl_div", losses.kl_div, log_probs_and_distributions,
         torch_per_example(F.kl_div, sum_classes=True), torch_reduced(F.kl_div, "batchmean")),
    Case("kl_div_log_target", _kl_log_target, log_probs_and_log_targets,
         torch_per_example(F.kl_div, sum_classes=True, log_target=True),
         torch_reduced(F.kl_div, "batchmean", log_target=True)),
    Case("hinge", losses.hinge, margins, numpy_hinge),
]


def _inputs(case: Case, dtype, seed: int = 0):
  return case.make(np.random.default_rng(seed), dtype)


# ----------------------------------------------------------------------------- against the references


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_mean_equals_torch(case: Case, dtype):
  """Default reduction == torch.nn.functional's "mean" ("batchmean" for kl_div; NumPy for hinge)."""
  y_pred, y_true = _inputs(case, dtype)
  expected = case.mean(y_pred, y_true) if case.mean else case.per_example(y_pred, y_true).mean()
  with precision(dtype):
    got = case.ours(y_pred, y_true)
    assert got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got), expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_none_and_sum_equal_torch_per_example(case: Case):
  """"none" == torch reduction="none" averaged per example (NumPy); "sum" == their sum (float64)."""
  y_pred, y_true = _inputs(case, np.float64)
  expected = case.per_example(y_pred, y_true)
  with jax.enable_x64(True):
    none = case.ours(y_pred, y_true, reduction="none")
    total = case.ours(y_pred, y_true, reduction="sum")
  assert none.shape == (BATCH,)
  np.testing.assert_allclose(np.asarray(none), expected, **TOLERANCE[np.float64])
  np.testing.assert_allclose(np.asarray(total), expected.sum(), **TOLERANCE[np.float64])


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_weights_and_mask_give_weighted_mean_of_torch_per_example(case: Case):
  """"mean" == Σ w·l / Σ w with w = sample_weight × mask and l from torch "none" (float64)."""
  y_pred, y_true = _inputs(case, np.float64, seed=1)
  rng = np.random.default_rng(2)
  weight = rng.uniform(0.1, 3.0, size=BATCH)
  keep = np.array([True, False, True, True, False, True, True])
  per_example = case.per_example(y_pred, y_true)
  w = weight * keep
  with jax.enable_x64(True):
    kw = dict(sample_weight=weight, mask=keep)
    np.testing.assert_allclose(case.ours(y_pred, y_true, **kw), (w * per_example).sum() / w.sum(), rtol=1e-12)
    np.testing.assert_allclose(case.ours(y_pred, y_true, reduction="sum", **kw), (w * per_example).sum(), rtol=1e-12)
    np.testing.assert_allclose(case.ours(y_pred, y_true, reduction="none", **kw), w * per_example, rtol=1e-12)


def test_one_dimensional_sum_equals_torch_sum():
  """For (batch,) inputs an example is an element: "sum" == torch.nn.functional.mse_loss(reduction="sum")."""
  y_pred, y_true = regression(np.random.default_rng(3), np.float64, shape=(BATCH,))
  with jax.enable_x64(True):
    got = losses.mse(y_pred, y_true, reduction="sum")
  np.testing.assert_allclose(got, F.mse_loss(_t(y_pred), _t(y_true), reduction="sum").item(), rtol=1e-12)


def test_bce_clamps_log_like_torch():
  """p in {0, 1} gives torch.nn.functional.binary_cross_entropy's finite values (log clamped at -100)."""
  p = np.array([0.0, 1.0, 0.0, 1.0, 0.5])
  y = np.array([1.0, 0.0, 0.0, 1.0, 0.3])
  with jax.enable_x64(True):
    got = losses.bce(p, y, reduction="none")
  np.testing.assert_allclose(got, F.binary_cross_entropy(_t(p), _t(y), reduction="none").numpy(), rtol=1e-12)


@pytest.mark.parametrize("fn, make_inputs", [
    (F.cross_entropy, lambda x: x),
    (F.nll_loss, lambda x: torch.log_softmax(x, dim=-1)),
], ids=["cross_entropy", "nll"])
def test_mask_equals_torch_ignore_index(fn, make_inputs):
  """mask=(labels != -100) reproduces torch's ignore_index=-100 (the ignored label is never read)."""
  logits, labels = logits_and_labels(np.random.default_rng(4), np.float64)
  labels[[1, 4]] = -100
  inputs = make_inputs(_t(logits)).numpy()
  expected = fn(_t(inputs), _t(labels), ignore_index=-100).item()
  ours = losses.cross_entropy if fn is F.cross_entropy else losses.nll
  with jax.enable_x64(True):
    got = ours(inputs, labels, mask=labels != -100)
  np.testing.assert_allclose(got, expected, rtol=1e-12)


# ----------------------------------------------------------------------------- masks, NaN, empty batches


def test_nan_in_masked_rows_reaches_neither_value_nor_gradient():
  """NaN targets and predictions in masked rows: the value is the NumPy mean of the kept rows,
  the gradient is finite and zero on masked rows."""
  y_pred, y_true = regression(np.random.default_rng(5), np.float32)
  keep = np.array([1, 1, 0, 1, 0, 1, 1], bool)
  y_true[~keep] = np.nan
  expected = ((y_pred[keep] - y_true[keep]) ** 2).mean()
  value, grad = jax.value_and_grad(lambda p: losses.mse(p, y_true, mask=keep))(jnp.asarray(y_pred))
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  assert np.isfinite(grad).all() and not np.asarray(grad)[~keep].any()
  y_pred[~keep] = np.nan
  np.testing.assert_allclose(losses.mse(y_pred, y_true, mask=keep), expected, rtol=1e-6)


def test_all_masked_batch_gives_zero_not_nan():
  """Documented rule: Σw = 0 gives a mean of 0 (and a zero, finite gradient)."""
  y_pred, y_true = regression(np.random.default_rng(6), np.float32)
  value, grad = jax.value_and_grad(lambda p: losses.huber(p, y_true, mask=np.zeros(BATCH, bool)))(
      jnp.asarray(y_pred))
  assert float(value) == 0.0
  assert not np.asarray(grad).any()
  assert float(losses.mse(y_pred, y_true, sample_weight=0.0)) == 0.0


def test_scalar_weight_broadcasts_and_cancels_in_mean():
  y_pred, y_true = regression(np.random.default_rng(7), np.float32)
  np.testing.assert_allclose(losses.l1(y_pred, y_true, sample_weight=3.0), losses.l1(y_pred, y_true), rtol=1e-6)
  np.testing.assert_allclose(
      losses.l1(y_pred, y_true, reduction="sum", sample_weight=3.0), 3 * losses.l1(y_pred, y_true, reduction="sum"),
      rtol=1e-6)


def test_works_under_jit():
  y_pred, y_true = logits_and_labels(np.random.default_rng(8), np.float32)
  mask = np.arange(BATCH) < 5
  jitted = jax.jit(losses.cross_entropy, static_argnames="reduction")
  np.testing.assert_allclose(jitted(y_pred, y_true, mask=mask), losses.cross_entropy(y_pred, y_true, mask=mask),
                             rtol=1e-6)


# ----------------------------------------------------------------------------- errors


def test_bad_reduction_names_reduction():
  with pytest.raises(ValueError, match="reduction"):
    losses.mse(np.zeros(3), np.zeros(3), reduction="batchmean")


@pytest.mark.parametrize("call, names", [
    (lambda: losses.mse(np.zeros((4, 2)), np.zeros((4, 3))), ("y_pred", "y_true")),
    (lambda: losses.mse(np.zeros(()), np.zeros(())), ("y_pred", "y_true")),
    (lambda: losses.cross_entropy(np.zeros((4, 3)), np.zeros(5, int)), ("y_pred", "y_true")),
    (lambda: losses.nll(np.zeros((4, 3)), np.zeros(4)), ("y_true",)),
    (lambda: losses.bce(np.zeros(4), np.zeros(4), sample_weight=np.ones(5)), ("sample_weight",)),
    (lambda: losses.bce(np.zeros((4, 2)), np.zeros((4, 2)), mask=np.ones((4, 2))), ("mask",)),
    (lambda: losses.huber(np.zeros(4), np.zeros(4), delta=0.0), ("delta",)),
], ids=["shape", "no_batch_axis", "labels_shape", "nll_float_labels", "sample_weight", "mask", "delta"])
def test_shape_errors_name_the_arguments(call, names):
  with pytest.raises(ValueError) as info:
    call()
  for name in names:
    assert name in str(info.value)


def test_mae_is_l1():
  assert losses.mae is losses.l1


# ----------------------------------------------------------------------------- out-of-domain inputs (issue 11)
# Concrete values outside a loss's domain raise naming the argument (torch raises for labels
# and bce: checked live); under jit the example's loss is NaN, never a finite wrong value.


def _torch_raises(fn) -> str:
  with pytest.raises((IndexError, RuntimeError)) as info:
    fn()
  return str(info.value)


@pytest.mark.parametrize("bad", [-1, WIDTH], ids=["minus_one", "num_classes"])
@pytest.mark.parametrize("ours, theirs, make_inputs", [
    (losses.cross_entropy, F.cross_entropy, lambda x: x),
    (losses.nll, F.nll_loss, _log_softmax),
], ids=["cross_entropy", "nll"])
def test_out_of_range_labels_raise_when_concrete_and_are_nan_under_jit(ours, theirs, make_inputs, bad):
  logits, labels = logits_and_labels(np.random.default_rng(9), np.float64)
  inputs = make_inputs(logits)
  labels[2] = bad
  assert "out of bounds" in _torch_raises(lambda: theirs(_t(inputs), _t(labels)))  # torch refuses it too
  with jax.enable_x64(True):
    with pytest.raises(ValueError, match=rf"y_true must hold class labels in \[0, {WIDTH}\).*y_true\[2\] = {bad}\b"):
      ours(inputs, labels)
    per_example = jax.jit(lambda x, y: ours(x, y, reduction="none"))(inputs, labels)
    assert np.isnan(per_example[2]) and bool(np.isnan(jax.jit(ours)(inputs, labels)))
    kept = np.arange(BATCH) != 2  # the other examples keep torch's values
    expected = theirs(_t(inputs[kept]), _t(labels[kept]), reduction="none").numpy()
    np.testing.assert_allclose(np.asarray(per_example)[kept], expected, rtol=1e-12)
    grad = jax.grad(lambda x: jax.jit(ours)(x, labels))(inputs)
    assert np.isfinite(grad).all() and not np.asarray(grad)[2].any()  # the bad example sends no gradient


def test_ignore_index_through_mask_still_works_under_jit():
  """torch's ignore_index=-100: the masked -100 labels are not range errors, in or out of jit."""
  logits, labels = logits_and_labels(np.random.default_rng(10), np.float64)
  labels[[0, 5]] = -100
  expected = F.cross_entropy(_t(logits), _t(labels), ignore_index=-100).item()
  with jax.enable_x64(True):
    for fn in (losses.cross_entropy, jax.jit(losses.cross_entropy)):
      np.testing.assert_allclose(fn(logits, labels, mask=labels != -100), expected, rtol=1e-12)
    with pytest.raises(ValueError, match=r"y_true\[0\] = -100, y_true\[5\] = -100\..*mask=\(y_true != ignore_index\)"):
      losses.cross_entropy(logits, labels)


@pytest.mark.parametrize("argument", ["y_pred", "y_true"])
@pytest.mark.parametrize("bad", [1.5, -0.25])
def test_bce_probabilities_outside_the_unit_interval(argument, bad):
  p, y = probabilities(np.random.default_rng(11), np.float64)
  (p if argument == "y_pred" else y)[3, 1] = bad
  message = _torch_raises(lambda: F.binary_cross_entropy(_t(p), _t(y)))
  assert "between 0 and 1" in message and ("input" if argument == "y_pred" else "target") in message
  with jax.enable_x64(True):
    with pytest.raises(ValueError, match=rf"{argument} must hold probabilities in \[0, 1\]; got {argument}\[3, 1\] = {bad}"):
      losses.bce(p, y)
    got = jax.jit(lambda a, b: losses.bce(a, b, reduction="none"))(p, y)
    kept = np.arange(BATCH) != 3
    np.testing.assert_allclose(np.asarray(got)[kept], torch_per_example(F.binary_cross_entropy)(p[kept], y[kept]),
                               rtol=1e-12)
    assert np.isnan(got[3])
    keep = kept  # masked out, the bad row is neither checked nor counted
    np.testing.assert_allclose(losses.bce(p, y, mask=keep), np.asarray(got)[kept].mean(), rtol=1e-12)


@pytest.mark.parametrize("call, base, bad, match", [
    (lambda y: losses.bce_with_logits(np.zeros((BATCH, WIDTH)), y), 0.25, 1.5, r"y_true must hold probabilities in \[0, 1\]"),
    (lambda y: losses.cross_entropy(np.zeros((BATCH, WIDTH)), y), 0.25, -0.5, r"y_true must hold probabilities in \[0, 1\]"),
    (lambda y: losses.kl_div(np.zeros((BATCH, WIDTH)), y), 0.25, 1.5, r"y_true must hold probabilities in \[0, 1\]"),
    (lambda y: losses.kl_div(np.zeros((BATCH, WIDTH)), y, log_target=True), -1.0, 0.5,
     r"y_true must hold log-probabilities \(<= 0\)"),
    (lambda y: losses.hinge(np.zeros((BATCH, WIDTH)), y), 1.0, 0.0, r"y_true must hold targets -1 or \+1"),
], ids=["bce_with_logits", "cross_entropy_probabilities", "kl_div", "kl_div_log_target", "hinge"])
def test_other_target_domains_raise_when_concrete_and_are_nan_under_jit(call, base, bad, match):
  y = np.full((BATCH, WIDTH), base)
  y[4, 0] = bad
  with pytest.raises(ValueError, match=match + rf"; got y_true\[4, 0\] = {bad}\."):
    call(y)
  assert np.isnan(np.asarray(jax.jit(call)(y)))
  assert np.isfinite(np.asarray(call(np.full((BATCH, WIDTH), base))))


@pytest.mark.parametrize("call, error, match", [
    (lambda: losses.mse(np.zeros(3), np.zeros(3), mask="abc"), TypeError, "mask must be an array of numbers"),
    (lambda: losses.mse(np.zeros(3), np.zeros(3), sample_weight="ab"), TypeError, "sample_weight must be an array"),
    (lambda: losses.mse(np.zeros(3), None), TypeError, "y_true must be an array of numbers or booleans, got NoneType"),
    (lambda: losses.mse("abc", np.zeros(3)), TypeError, "y_pred must be an array"),
    (lambda: losses.mse(np.zeros(3, np.int32), np.zeros(3)), TypeError, "y_pred must be a floating-point array"),
    (lambda: losses.mse(np.zeros(3), np.zeros(3), weights=np.ones(3)), TypeError, r"'weights'.*sample_weight and mask"),
    (lambda: losses.huber(np.zeros(3), np.zeros(3), delta=jnp.array(-1.0)), ValueError, "delta must be > 0"),
    (lambda: losses.huber(np.zeros(3), np.zeros(3), delta="1"), TypeError, "delta must be a number"),
    (lambda: losses.kl_div(np.zeros((2, 2)), np.ones((2, 2)) / 2, log_target="no"), TypeError, "log_target must be"),
], ids=["string_mask", "string_weight", "none_target", "string_pred", "integer_pred", "unknown_keyword",
        "negative_array_delta", "string_delta", "string_log_target"])
def test_bad_arguments_name_the_argument(call, error, match):
  with pytest.raises(error, match=match):
    call()
