"""Exact streaming metrics as pure functions, in the shape of an Optax transformation.

A `Metric` is a NamedTuple of four pure functions:

    state = metric.init()
    state = metric.update(state, *inputs, sample_weight=None, mask=None)   # jit/scan friendly
    state = metric.merge(state_a, state_b)                                  # associative
    value = metric.compute(state)

The state holds sufficient statistics, never ratios. A mean (`MeanState`) holds the weighted
sum `Σ w·v` and the weight sum `Σ w`, each a compensated float32 pair (`CompensatedSum`,
exact to about float64 precision over any number of updates), and the int32 count of
unmasked values; `compute` divides at the end, `Σ w·v / Σ w`, and returns 0 for an empty
state (Keras' `divide_no_nan`). Precision, recall and F1 hold per-class weighted counts
(`ClassCountsState`), the confusion matrix its cells (`ConfusionMatrixState`), AUC
per-threshold histograms (`AUCState`), all compensated float32 plus int32 counts. Shapes and
dtypes are fixed, so `update` never retraces under `jit` and the state is a valid `lax.scan`
carry.

Rules shared by every metric:

* Values are per example. A 0-d value (e.g. a batch-mean loss) is accepted only with
  `sample_weight` = the number of examples it stands for; it is never counted as 1.
* `sample_weight` and `mask` broadcast to the per-example shape from the leading (batch)
  axis, as in Keras: a `(batch,)` weight applies to every element of a `(batch, k)` value.
* Masked slots are removed with `jnp.where`, so NaN in padding cannot reach the state.
* A state knows its metric: a static tag in its pytree structure (it survives `jit`,
  `scan` and `psum`). `update`, `merge` and `compute` given another metric's state raise a
  ValueError naming both; a collection's state with other keys raises naming the keys.
* Across devices, statistics are summed, never averaged: `psum(state, axis_name)` inside
  `pmap`/`shard_map`, or `merge` on the host. A global `jit` over sharded inputs needs
  nothing: its sums are already global.

Metric inputs are `(y_true, y_pred)` in Keras order (the losses in `gradcore_jax.losses`
take `(y_pred, y_true)`, as PyTorch and Optax do). The modules: `_core` (states, compensated
sums, collection, psum), `_regression` (mean and the error metrics), `_classification`
(accuracy kinds, top-k, precision/recall/F1, confusion matrix), `_auc`.
"""

from __future__ import annotations

from gradcore_jax.metrics._auc import AUCState
from gradcore_jax.metrics._auc import auc
from gradcore_jax.metrics._classification import ClassCountsState
from gradcore_jax.metrics._classification import ConfusionMatrixState
from gradcore_jax.metrics._classification import accuracy
from gradcore_jax.metrics._classification import binary_accuracy
from gradcore_jax.metrics._classification import categorical_accuracy
from gradcore_jax.metrics._classification import confusion_matrix
from gradcore_jax.metrics._classification import f1
from gradcore_jax.metrics._classification import precision
from gradcore_jax.metrics._classification import recall
from gradcore_jax.metrics._classification import sparse_categorical_accuracy
from gradcore_jax.metrics._classification import top_k_accuracy
from gradcore_jax.metrics._core import CompensatedSum
from gradcore_jax.metrics._core import MeanState
from gradcore_jax.metrics._core import Metric
from gradcore_jax.metrics._core import collection
from gradcore_jax.metrics._core import psum
from gradcore_jax.metrics._regression import mean
from gradcore_jax.metrics._regression import mean_absolute_error
from gradcore_jax.metrics._regression import mean_squared_error
from gradcore_jax.metrics._regression import root_mean_squared_error

__all__ = [
  "AUCState",
  "ClassCountsState",
  "CompensatedSum",
  "ConfusionMatrixState",
  "MeanState",
  "Metric",
  "accuracy",
  "auc",
  "binary_accuracy",
  "categorical_accuracy",
  "collection",
  "confusion_matrix",
  "f1",
  "mean",
  "mean_absolute_error",
  "mean_squared_error",
  "precision",
  "psum",
  "recall",
  "root_mean_squared_error",
  "sparse_categorical_accuracy",
  "top_k_accuracy",
]
