"""Tests of `fit(accumulate=k)`: gradient accumulation equals one update on the k batches concatenated.

References: `fit` itself on the concatenated batches (`batch_size * k`, same order), and a live
PyTorch 2 loop accumulating `loss.sum().backward()` over micro-batches, dividing by the real rows
and stepping `torch.optim.SGD(momentum=0.9)`.
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from _torch_reference import precision
from gradcore_jax import losses
from gradcore_jax.checkpoint import Checkpointer
from gradcore_jax.data import DataLoader
from gradcore_jax.training import FitResult
from gradcore_jax.training import fit

TOLERANCE = {np.float64: 1e-12, np.float32: 1e-6}


def mlp(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def _data(dtype: Any, n: int = 22, features: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, features)).astype(dtype)
  y = rng.standard_normal(n).astype(dtype)
  params = {
    "w1": (0.5 * rng.standard_normal((features, 5))).astype(dtype),
    "b1": (0.1 * rng.standard_normal(5)).astype(dtype),
    "w2": (0.5 * rng.standard_normal(5)).astype(dtype),
    "b2": np.asarray(0.0, dtype),
  }
  return x, y, params


def _fit(x: np.ndarray, y: np.ndarray, params: dict, batch_size: int, optimizer: Any = None, **kwargs: Any) -> FitResult:
  return fit(
    mlp,
    optax.sgd(0.05, momentum=0.9) if optimizer is None else optimizer,
    params=params,
    loss=losses.mse,
    train_loader=DataLoader((x, y), batch_size=batch_size),
    **{"epochs": 2, "progress": False, **kwargs},
  )


def _assert_params(have: dict, want: dict, rtol: float) -> None:
  for name in want:
    np.testing.assert_allclose(np.asarray(have[name]), np.asarray(want[name]), rtol=rtol, atol=rtol, err_msg=name)


def _torch_accumulating(x: np.ndarray, y: np.ndarray, params: dict, batch_size: int, k: int, epochs: int) -> dict:
  """The torch recipe: per micro-batch `loss.sum().backward()`; at a cycle's end (every k-th batch or
  the epoch's last) divide the gradients by the cycle's rows, `step()`, `zero_grad()`."""
  tensors = {name: torch.tensor(np.asarray(value), requires_grad=True) for name, value in params.items()}
  optimizer = torch.optim.SGD(list(tensors.values()), lr=0.05, momentum=0.9)
  xs, ys = torch.tensor(x), torch.tensor(y)
  batches = [(xs[s : s + batch_size], ys[s : s + batch_size]) for s in range(0, len(x), batch_size)]
  for _ in range(epochs):
    rows = 0
    for index, (xb, yb) in enumerate(batches):
      out = torch.tanh(xb @ tensors["w1"] + tensors["b1"]) @ tensors["w2"] + tensors["b2"]
      ((out - yb) ** 2).sum().backward()
      rows += len(xb)
      if (index + 1) % k == 0 or index + 1 == len(batches):
        with torch.no_grad():
          for tensor in tensors.values():
            assert tensor.grad is not None
            tensor.grad /= rows
        optimizer.step()
        optimizer.zero_grad()
        rows = 0
  return {name: tensor.detach().numpy() for name, tensor in tensors.items()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [2, 4])  # 6 batches (4 rows, then 2): cycles 2+2+2, and 4 + a leftover of 2
def test_equals_one_update_on_the_concatenated_batches_and_torch(dtype: Any, k: int) -> None:
  with precision(dtype):
    x, y, params = _data(dtype)
    result = _fit(x, y, params, 4, accumulate=k)
    concatenated = _fit(x, y, params, 4 * k)  # the same rows, one batch per cycle
    _assert_params(result.model, concatenated.model, TOLERANCE[dtype])
    _assert_params(result.model, _torch_accumulating(x, y, params, 4, k, epochs=2), TOLERANCE[dtype])
    # The running loss sums the same per-example losses (every micro-batch of a cycle sees the same params).
    np.testing.assert_allclose(result.stats.epoch_losses, concatenated.stats.epoch_losses, rtol=TOLERANCE[dtype])
    assert len(result.stats.batch_losses) == result.stats.total_steps == 12  # one entry per batch
    assert result.stats.examples_seen == 44


def _multi_steps() -> optax.GradientTransformation:
  """optax.MultiSteps, its sums kept in float64 (it otherwise keeps float32 sums for float64 params)."""
  return optax.MultiSteps(optax.sgd(0.05, momentum=0.9), every_k_schedule=2, accumulator_dtype=np.float64).gradient_transformation()


def test_a_short_last_batch_counts_by_its_real_rows_unlike_optax_multisteps() -> None:
  with precision(np.float64):
    x, y, params = _data(np.float64)  # 22 rows in batches of 4: the 6th batch has 2 real rows
    ours = _fit(x, y, params, 4, epochs=1, accumulate=2)
    _assert_params(ours.model, _fit(x, y, params, 8, epochs=1).model, 1e-12)
    multi = _fit(x, y, params, 4, epochs=1, optimizer=_multi_steps())
    # MultiSteps averages the two batch means: the 2-row batch weighs as much as the 4-row one.
    first_two_cycles = _fit(x[:16], y[:16], params, 4, epochs=1, accumulate=2)
    multi_two = _fit(x[:16], y[:16], params, 4, epochs=1, optimizer=_multi_steps())
    _assert_params(multi_two.model, first_two_cycles.model, 1e-12)  # equal batches: the same rule
    gap = max(float(np.max(np.abs(ours.model[n] - multi.model[n]))) for n in params)
    assert gap > 1e-4


def test_accumulate_1_is_the_plain_step_bit_for_bit() -> None:
  x, y, params = _data(np.float32)
  plain, once = _fit(x, y, params, 4), _fit(x, y, params, 4, accumulate=1)
  for name in params:
    np.testing.assert_array_equal(np.asarray(once.model[name]), np.asarray(plain.model[name]))
  assert once.stats.batch_losses == plain.stats.batch_losses


def test_clipping_applies_to_the_accumulated_gradient_and_compiled_epochs_agree() -> None:
  with precision(np.float64):
    x, y, params = _data(np.float64)
    clipped = _fit(x, y, params, 4, accumulate=3, clip_global_norm=0.05)
    _assert_params(clipped.model, _fit(x, y, params, 12, clip_global_norm=0.05).model, 1e-12)
    compiled = _fit(x, y, params, 4, accumulate=3, clip_global_norm=0.05, compiled_epoch=True)
    _assert_params(compiled.model, clipped.model, 1e-12)
    assert compiled.stats.batch_losses == pytest.approx(clipped.stats.batch_losses, rel=1e-12)


def test_a_skipped_micro_batch_makes_its_cycle_skip_its_update() -> None:
  with precision(np.float64):
    x, y, params = _data(np.float64)
    y = y.copy()
    y[9] = np.nan  # in batch 2 (rows 8-11): the second cycle of k=2 (batches 2, 3)
    adam = optax.adam(0.01)
    ours = _fit(x, y, params, 4, optimizer=adam, accumulate=2, on_nonfinite="skip")
    concatenated = _fit(x, y, params, 8, optimizer=adam, on_nonfinite="skip")  # skips its batch 1 (rows 8-15)
    _assert_params(ours.model, concatenated.model, 1e-12)
    assert ours.stats.skipped_steps == [2, 8] and concatenated.stats.skipped_steps == [1, 4]
    assert int(ours.opt_state[0].count) == int(concatenated.opt_state[0].count) == 4  # 2 updates of 3, per epoch
    assert ours.stats.examples_seen == 2 * (22 - 4)  # the skipped micro-batch's rows only


def test_resume_in_the_middle_of_a_cycle_is_exact(tmp_path: pathlib.Path) -> None:
  x, y, params = _data(np.float32)
  whole = _fit(x, y, params, 4, accumulate=4)
  first = _fit(x, y, params, 4, accumulate=4, checkpoint_dir=str(tmp_path), checkpoint_every=3, keep=10)
  assert Checkpointer(tmp_path).steps() == [3, 6, 9, 12]
  for step in (12, 9, 6):  # back to step 3: epoch 0, batch 3, three of the cycle's four micro-batches summed
    shutil.rmtree(tmp_path / str(step))
  resumed = _fit(x, y, params, 4, accumulate=4, checkpoint_dir=str(tmp_path), checkpoint_every=3, resume=True)
  for result in (first, resumed):
    for name in params:
      np.testing.assert_array_equal(np.asarray(result.model[name]), np.asarray(whole.model[name]))
    assert result.stats.batch_losses == whole.stats.batch_losses
  with pytest.raises(ValueError, match="accumulate=4; this call has accumulate=2"):
    _fit(x, y, params, 4, accumulate=2, checkpoint_dir=str(tmp_path), checkpoint_every=3, resume=True)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_a_bad_accumulate_is_named(bad: Any) -> None:
  x, y, params = _data(np.float32)
  with pytest.raises((ValueError, TypeError), match="accumulate"):
    _fit(x, y, params, 4, accumulate=bad)


def test_each_batch_records_the_learning_rate_of_the_update_it_contributes_to() -> None:
  x, y, params = _data(np.float32)  # 6 batches, k=4: cycles of batches 0-3 and 4-5 per epoch
  schedule = optax.linear_schedule(0.1, 0.0, transition_steps=10)  # read at the optimizer's update count
  optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
  stats = _fit(x, y, params, 4, optimizer=optimizer, accumulate=4).stats
  updates = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3]
  np.testing.assert_allclose(stats.learning_rates, [float(schedule(u)) for u in updates], rtol=1e-6)
