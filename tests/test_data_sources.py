"""Tests of gradcore_jax.data_sources: fit/evaluate fed from a DataLoader, a generator function, a torch
DataLoader and grain give the same figures; short and len-less epochs, resume, and bad sources.

Reference: a float64 NumPy replay of SGD on the mean squared error (unshuffled batches, a short last one).
Across sources the figures are compared bit for bit (the same batches, padded differently but masked);
against the float64 replay to float32 rounding.
"""

from __future__ import annotations

from typing import Any
from typing import Optional

import jax
import numpy as np
import optax
import pytest
import torch

from gradcore_jax import losses
from gradcore_jax import metrics
from gradcore_jax.callbacks import Callback
from gradcore_jax.data import DataLoader
from gradcore_jax.data_sources import IterableLoader
from gradcore_jax.training import evaluate
from gradcore_jax.training import fit

try:
  import grain
except ImportError:  # the optional extra `grain`
  grain = None

LR = 0.05
N, FEATURES, BATCH = 22, 5, 8  # 3 batches per epoch: 8, 8 and a short 6
RTOL = 2e-5  # float32 training against the float64 replay


def _data() -> tuple[np.ndarray, np.ndarray, dict]:
  rng = np.random.default_rng(0)
  x = rng.random((N, FEATURES), dtype=np.float32)
  y = rng.random(N, dtype=np.float32)
  params = {"w": (0.1 * rng.standard_normal(FEATURES)).astype(np.float32), "b": np.float32(0.0)}
  return x, y, params


X, Y, PARAMS = _data()


def linear(params: dict, x: jax.Array) -> jax.Array:
  return x @ params["w"] + params["b"]


def _batches(x: np.ndarray = X, y: np.ndarray = Y, size: int = BATCH):
  for start in range(0, len(x), size):
    yield x[start : start + size], y[start : start + size]


def _sources() -> dict[str, Any]:
  sources: dict[str, Any] = {
    "DataLoader": lambda: DataLoader((X, Y), batch_size=BATCH),
    "generator function": lambda: _batches,
    "list": lambda: list(_batches()),
    "torch DataLoader": lambda: torch.utils.data.DataLoader(
      torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)), batch_size=BATCH
    ),
  }
  if grain is not None:
    sources["grain MapDataset"] = lambda: grain.MapDataset.source(range(N)).map(lambda i: (X[i], Y[i])).batch(BATCH)
    sources["grain IterDataset"] = lambda: (
      grain.MapDataset.source(range(N)).map(lambda i: (X[i], Y[i])).to_iter_dataset().batch(BATCH)
    )
  return sources


def _run(source: Any, epochs: int = 2, **kwargs: Any):
  return fit(
    linear,
    optax.sgd(LR),
    params=PARAMS,
    loss=losses.mse,
    train_loader=source,
    eval_loader=kwargs.pop("eval_loader", None),
    metrics={"mae": metrics.mean_absolute_error()},
    epochs=epochs,
    progress=kwargs.pop("progress", False),
    **kwargs,
  )


def _replay(epochs: int) -> dict[str, Any]:
  """What fit must report, in float64: plain SGD over the unshuffled batches."""
  w, b = PARAMS["w"].astype(np.float64), 0.0
  x, y = X.astype(np.float64), Y.astype(np.float64)
  out: dict[str, Any] = {"batch": [], "epoch": [], "mae": []}
  for _ in range(epochs):
    total = absolute = 0.0
    for start in range(0, N, BATCH):
      xb, yb = x[start : start + BATCH], y[start : start + BATCH]
      residual = xb @ w + b - yb
      out["batch"].append(np.mean(residual**2))
      total, absolute = total + np.sum(residual**2), absolute + np.sum(np.abs(residual))
      w, b = w - LR * 2 * xb.T @ residual / len(xb), b - LR * 2 * np.mean(residual)
    out["epoch"].append(total / N)
    out["mae"].append(absolute / N)
  out["w"], out["eval"] = w, float(np.mean((x @ w + b - y) ** 2))
  return out


def _figures(result: Any) -> dict[str, Any]:
  stats = result.stats
  return {
    "batch": stats.batch_losses,
    "running": stats.running_losses,
    "epoch": stats.epoch_losses,
    "train_metrics": stats.train_metrics,
    "eval_metrics": stats.eval_metrics,
    "examples": stats.examples_seen,
    "steps": stats.total_steps,
    "params": jax.tree.map(np.asarray, result.model),
  }


def _assert_same(a: dict, b: dict) -> None:
  for name in a:
    if name == "params":
      for left, right in zip(jax.tree.leaves(a[name]), jax.tree.leaves(b[name]), strict=True):
        np.testing.assert_array_equal(left, right)
    else:
      assert a[name] == b[name], name


def test_every_source_gives_the_dataloaders_figures_bit_for_bit_and_the_replays_to_rounding() -> None:
  sources = _sources()
  reference = _figures(_run(sources["DataLoader"](), eval_loader=DataLoader((X, Y), batch_size=BATCH)))
  replay = _replay(2)
  np.testing.assert_allclose(reference["batch"], replay["batch"], rtol=RTOL)
  np.testing.assert_allclose(reference["epoch"], replay["epoch"], rtol=RTOL)
  np.testing.assert_allclose([m["mae"] for m in reference["train_metrics"]], replay["mae"], rtol=RTOL)
  np.testing.assert_allclose(reference["params"]["w"], replay["w"], rtol=RTOL)
  np.testing.assert_allclose(reference["eval_metrics"][-1]["loss"], replay["eval"], rtol=RTOL)
  assert reference["examples"] == 2 * N  # the short batch counts by its 6 real rows
  for name, make in sources.items():
    if name == "DataLoader":
      continue
    figures = _figures(_run(make(), eval_loader=make()))
    _assert_same(figures, reference)


def test_evaluate_takes_any_source() -> None:
  reference = evaluate(linear, DataLoader((X, Y), batch_size=BATCH), params=PARAMS, loss=losses.mse)
  for name, make in _sources().items():
    assert evaluate(linear, make(), params=PARAMS, loss=losses.mse) == reference, name


def test_a_given_batch_size_pads_every_batch_to_it() -> None:
  reference = _figures(_run(DataLoader((X, Y), batch_size=BATCH)))
  padded = _figures(_run(IterableLoader(_batches, batch_size=BATCH + 3)))
  # Wider padded arrays change float32 summation order only: equal to rounding.
  for name in ("batch", "epoch"):
    np.testing.assert_allclose(padded[name], reference[name], rtol=1e-6)
  np.testing.assert_allclose(padded["params"]["w"], reference["params"]["w"], rtol=1e-6)
  assert padded["examples"] == reference["examples"]


def test_a_len_less_stream_trains_exactly_with_a_bar_without_total(capsys: pytest.CaptureFixture) -> None:
  reference = _figures(_run(DataLoader((X, Y), batch_size=BATCH)))
  _assert_same(_figures(_run(_batches, progress=True, log_interval=2)), reference)
  err = capsys.readouterr().err
  assert "an unknown number of batches per epoch" in err
  assert "3step" in err.replace(" ", "")  # the bar counts steps, no "3/3"
  assert "3/3" not in err


def test_a_compiled_epoch_of_a_stream_equals_the_per_step_loop() -> None:
  reference = _figures(_run(DataLoader((X, Y), batch_size=BATCH)))
  _assert_same(_figures(_run(_batches, compiled_epoch=True)), reference)


class _Interrupt(Callback):
  """Stops fit with KeyboardInterrupt at the sync after step `at` (a simulated crash)."""

  def __init__(self, at: int) -> None:
    self.at = at

  def on_sync(self, run: Any) -> Optional[bool]:
    if run.step == self.at:
      raise KeyboardInterrupt
    return None


def _interrupted_then_resumed(make: Any, directory: Any) -> dict:
  options = {"epochs": 3, "log_interval": 1, "checkpoint_dir": str(directory), "checkpoint_every": 2}
  with pytest.raises(KeyboardInterrupt):
    _run(make(), callbacks=[_Interrupt(5)], **options)  # the last checkpoint: step 4, epoch 1 batch 1
  return _figures(_run(make(), resume=True, **options))


@pytest.mark.parametrize("name", ["DataLoader", "grain MapDataset", "grain IterDataset"])
def test_resume_mid_epoch_is_exact_where_the_source_saves_its_position(name: str, tmp_path: Any) -> None:
  sources = _sources()
  if name not in sources:
    pytest.skip("grain is not installed (the optional extra `grain`)")
  uninterrupted = _figures(_run(sources[name](), epochs=3))
  _assert_same(_interrupted_then_resumed(sources[name], tmp_path), uninterrupted)


@pytest.mark.parametrize("name", ["generator function", "torch DataLoader"])
def test_resume_of_a_plain_iterable_restarts_the_epoch_with_a_warning(name: str, tmp_path: Any) -> None:
  make = _sources()[name]
  with pytest.warns(RuntimeWarning, match="epoch 1 restarts from its beginning"):
    resumed = _interrupted_then_resumed(make, tmp_path)
  # Steps 0-3 were kept (epoch 0 and batch 0 of epoch 1), then epochs 1 and 2 ran whole: 4 + 3 + 3 steps.
  assert resumed["steps"] == 10
  assert len(resumed["epoch"]) == 3
  assert resumed["examples"] == N + BATCH + 2 * N
  # The restarted epoch's loss is the mean over its own full pass (steps 4-6).
  last_pass = resumed["batch"][4:7]
  sizes = [8, 8, 6]
  assert resumed["epoch"][1] == pytest.approx(np.dot(last_pass, sizes) / N, rel=1e-12)


def test_a_one_shot_generator_serves_one_epoch_and_says_so() -> None:
  reference = _figures(_run(DataLoader((X, Y), batch_size=BATCH), epochs=1))
  _assert_same(_figures(_run(_batches(), epochs=1)), reference)
  with pytest.raises(ValueError, match="train_loader is a one-shot iterator"):
    _run(_batches(), epochs=2)


def _dict_batches():
  for x, y in _batches():
    yield {"x": x, "y": y}


def _growing_batches():
  yield X[:6], Y[:6]
  yield X[6:14], Y[6:14]


def _mixed_dtypes():
  yield X[:8], Y[:8]
  yield X[8:16].astype(np.int32), Y[8:16]


@pytest.mark.parametrize(
  "source, error, match",
  [
    (42, TypeError, "train_loader must be a gradcore_jax.data.DataLoader, an iterable"),
    (lambda: 42, TypeError, "train_loader is a function, so it must return an iterator"),
    (_dict_batches, ValueError, "train_loader batch 0 is a dict with keys"),
    (lambda: iter([(X, Y, Y)]), ValueError, "train_loader batch 0 is a tuple"),
    (lambda: iter([(X[:4], Y[:5])]), ValueError, "train_loader batch 0: every array needs the same number"),
    (_growing_batches, ValueError, "train_loader batch 1 of epoch 0 has 8 rows, more than 6"),
    (_mixed_dtypes, ValueError, "train_loader batch 1 of epoch 0 has structure"),
    (lambda: iter([]), ValueError, "train_loader yielded no batch"),
  ],
)
def test_bad_sources_raise_naming_the_argument(source: Any, error: type, match: str) -> None:
  with pytest.raises(error, match=match):
    _run(source, epochs=1)


def test_a_bad_eval_source_names_eval_loader() -> None:
  with pytest.raises(ValueError, match="eval_loader batch 0 is a dict"):
    _run(DataLoader((X, Y), batch_size=BATCH), epochs=1, eval_loader=_dict_batches)


def test_accumulate_needs_a_dataloader() -> None:
  with pytest.raises(ValueError, match="accumulate > 1 needs train_loader"):
    _run(_batches, epochs=1, accumulate=2)
