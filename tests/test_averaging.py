"""`gcj.averaging` against PyTorch's own `torch.optim.swa_utils.AveragedModel`.

Reference: torch 2.13's `AveragedModel` (default SWA average, and `get_ema_multi_avg_fn`),
with and without `use_buffers`, fed the params and BatchNorm buffers of 50 real
`torch.optim.SGD` steps of a small Linear-BatchNorm-Linear model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.optim import swa_utils

import gradcore_jax as gcj

STEPS = 50


def _trajectory(dtype: torch.dtype):
  """Params and buffers after each of `STEPS` SGD steps, and the model itself (for AveragedModel)."""
  torch.manual_seed(0)
  model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
  model = model.to(dtype)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
  inputs = torch.randn(STEPS, 16, 5, dtype=dtype)
  targets = torch.randn(STEPS, 16, 2, dtype=dtype)
  return model, optimizer, inputs, targets


def _params(model):
  return {name: jnp.asarray(p.detach().numpy()) for name, p in model.named_parameters()}


def _buffers(model):
  return {name: jnp.asarray(b.detach().numpy()) for name, b in model.named_buffers()}


def _run(dtype: torch.dtype, multi_avg_fn, use_buffers: bool, avg_fn):
  """Steps torch's model, updating torch's AveragedModel and ours from the same params each step."""
  update_fn = jax.jit(functools.partial(gcj.averaging.update, avg_fn=avg_fn, use_buffers=use_buffers))
  model, optimizer, inputs, targets = _trajectory(dtype)
  reference = swa_utils.AveragedModel(model, multi_avg_fn=multi_avg_fn, use_buffers=use_buffers)
  averaged = gcj.averaging.init(_params(model), _buffers(model))
  np.testing.assert_array_equal(averaged.params["0.weight"], reference.module[0].weight.detach().numpy())
  for step in range(STEPS):
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(inputs[step]), targets[step]).backward()
    optimizer.step()
    reference.update_parameters(model)
    averaged = update_fn(averaged, _params(model), _buffers(model))
  assert int(averaged.n_averaged) == int(reference.n_averaged) == STEPS
  return averaged, reference


def _max_relative_difference(averaged, reference) -> float:
  worst = 0.0
  expected = {**dict(reference.module.named_parameters()), **dict(reference.module.named_buffers())}
  got = {**averaged.params, **averaged.model_state}
  assert set(got) == set(expected)
  for name, tensor in expected.items():
    want = tensor.detach().numpy()
    have = np.asarray(got[name])
    if not np.issubdtype(want.dtype, np.floating):
      np.testing.assert_array_equal(have, want, err_msg=name)  # num_batches_tracked (int32 without x64)
      continue
    assert have.dtype == want.dtype, name
    worst = max(worst, float(np.max(np.abs(have - want) / np.maximum(np.abs(want), 1e-3))))
  return worst


RULES = [
    pytest.param(None, lambda: gcj.averaging.swa(), id="swa"),
    pytest.param(0.9, lambda: gcj.averaging.ema(0.9), id="ema-0.9"),
    pytest.param(0.3, lambda: gcj.averaging.ema(0.3), id="ema-0.3-lerp-high-branch"),
]


@pytest.mark.parametrize("use_buffers", [False, True])
@pytest.mark.parametrize("decay,rule", RULES)
def test_matches_torch_averaged_model_float64(decay, rule, use_buffers):
  multi_avg_fn = None if decay is None else swa_utils.get_ema_multi_avg_fn(decay)
  with jax.enable_x64(True):
    averaged, reference = _run(torch.float64, multi_avg_fn, use_buffers, rule())
    assert _max_relative_difference(averaged, reference) <= 1e-12


@pytest.mark.parametrize("decay,rule", RULES)
def test_matches_torch_averaged_model_float32(decay, rule):
  multi_avg_fn = None if decay is None else swa_utils.get_ema_multi_avg_fn(decay)
  averaged, reference = _run(torch.float32, multi_avg_fn, True, rule())
  assert _max_relative_difference(averaged, reference) <= 1e-6


def test_swa_is_the_plain_mean_and_buffers_are_copied_by_default():
  """Without use_buffers torch keeps the model's latest buffers; the params are the mean of the sequence."""
  with jax.enable_x64(True):
    sequence = [{"w": jnp.arange(3.0) * k} for k in range(1, 6)]
    averaged = gcj.averaging.init(sequence[0], {"stat": jnp.zeros(3)})
    for k, params in enumerate(sequence):
      averaged = gcj.averaging.update(averaged, params, {"stat": jnp.full(3, float(k))})
    np.testing.assert_allclose(averaged.params["w"], jnp.arange(3.0) * 3.0, rtol=1e-15)
    np.testing.assert_array_equal(averaged.model_state["stat"], jnp.full(3, 4.0))


def test_jit_matches_eager_and_does_not_retrace():
  traces = []

  def step(averaged, params, model_state):
    traces.append(1)
    return gcj.averaging.update(averaged, params, model_state, avg_fn=gcj.averaging.ema(0.9), use_buffers=True)

  jitted = jax.jit(step)
  with jax.enable_x64(True):
    model, optimizer, inputs, targets = _trajectory(torch.float64)
    eager = compiled = gcj.averaging.init(_params(model), _buffers(model))
    for step_index in range(5):
      optimizer.zero_grad()
      torch.nn.functional.mse_loss(model(inputs[step_index]), targets[step_index]).backward()
      optimizer.step()
      eager = step(eager, _params(model), _buffers(model))
      compiled = jitted(compiled, _params(model), _buffers(model))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-15, atol=0), compiled, eager)  # XLA may fuse to FMA
  assert len(traces) == 5 + 1  # five eager calls, one trace for all five jitted ones


def test_init_copies_buffers_and_dtype_keeps_a_wider_average():
  params = {"w": jnp.ones(4, jnp.bfloat16)}
  averaged = gcj.averaging.init(params, {"count": jnp.zeros([], jnp.int32)}, dtype=jnp.float32)
  assert averaged.params["w"].dtype == jnp.float32
  assert averaged.model_state["count"].dtype == jnp.int32
  averaged = gcj.averaging.update(averaged, {"w": jnp.full(4, 3.0, jnp.bfloat16)}, {"count": jnp.ones([], jnp.int32)})
  averaged = gcj.averaging.update(averaged, {"w": jnp.full(4, 4.0, jnp.bfloat16)}, {"count": jnp.ones([], jnp.int32)})
  np.testing.assert_array_equal(averaged.params["w"], np.full(4, 3.5, np.float32))
  assert averaged.params["w"].dtype == jnp.float32


def test_bad_arguments_are_named():
  params = {"w": jnp.ones(3)}
  averaged = gcj.averaging.init(params)
  with pytest.raises(ValueError, match="decay"):
    gcj.averaging.ema(1.5)
  with pytest.raises(ValueError, match="decay"):
    gcj.averaging.ema(-0.1)
  with pytest.raises(TypeError, match="decay"):
    gcj.averaging.ema(None)
  with pytest.raises(TypeError, match="averaged"):
    gcj.averaging.update(params, params)
  with pytest.raises(TypeError, match="avg_fn"):
    gcj.averaging.update(averaged, params, avg_fn=0.9)
  with pytest.raises(TypeError, match="use_buffers"):
    gcj.averaging.update(averaged, params, use_buffers="yes")
  with pytest.raises(ValueError, match="params.*'v'"):
    gcj.averaging.update(averaged, {"v": jnp.ones(3)})
  with pytest.raises(ValueError, match=r"params.*\['w'\].*shape"):
    gcj.averaging.update(averaged, {"w": jnp.ones(4)})
  with pytest.raises(ValueError, match="model_state"):
    gcj.averaging.update(averaged, params, {"stat": jnp.ones(3)})
  with pytest.raises(ValueError, match="model_state"):
    gcj.averaging.update(gcj.averaging.init(params, {"stat": jnp.ones(3)}), params)
  with pytest.raises(TypeError, match="param"):
    gcj.averaging.init({"w": jnp.ones(3, jnp.int32)})
  with pytest.raises(TypeError, match="dtype"):
    gcj.averaging.init(params, dtype=jnp.int32)


def test_evaluate_scores_the_averaged_params():
  """`averaged.params` drops into `gcj.evaluate`; the SWA average of a noisy trajectory scores its own loss."""
  inputs = jax.random.normal(jax.random.key(0), (32, 3))
  targets = inputs @ jnp.array([1.0, -2.0, 0.5])

  def apply_fn(params, x):
    return x @ params["w"]

  averaged = gcj.averaging.init({"w": jnp.zeros(3)})
  for k in range(4):
    averaged = gcj.averaging.update(averaged, {"w": jnp.array([1.0, -2.0, 0.5]) + (-1.0) ** k * 0.1})
  loader = gcj.DataLoader((inputs, targets), batch_size=8)
  scores = gcj.evaluate(apply_fn, loader, loss=gcj.losses.mse, params=averaged.params)
  assert scores["loss"] == pytest.approx(0.0, abs=1e-10)
