"""Tests of gradcore_jax.checkpoint and of checkpoint/resume in `fit`: atomic writes, keeping the
last N, mismatches named by path, no non-finite state saved, and resuming a killed run bit for bit."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradcore_jax import losses
from gradcore_jax import metrics
from gradcore_jax.checkpoint import CheckpointMismatchError
from gradcore_jax.checkpoint import Checkpointer
from gradcore_jax.checkpoint import NonFiniteStateError
from gradcore_jax.data import DataLoader
from gradcore_jax.training import FitResult
from gradcore_jax.training import NonFiniteLossError
from gradcore_jax.training import TrainingStats
from gradcore_jax.training import fit

SCRIPT = pathlib.Path(__file__).with_name("_resume_run.py")


def _state(scale: float = 1.0) -> dict[str, Any]:
  return {
      "w": scale * jnp.arange(6, dtype=jnp.float32).reshape(2, 3),
      "count": jnp.int32(7),
      "key": jax.random.key(3),
      "nested": [jnp.float32(0.5) * scale, jnp.ones(2, jnp.bfloat16)],
  }


def _assert_bitwise_equal(got: Any, want: Any) -> None:
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------------------
# Checkpointer.


def test_save_and_restore_are_exact_and_only_the_last_n_are_kept(tmp_path: pathlib.Path) -> None:
  with Checkpointer(tmp_path, keep=2) as checkpoints:
    assert checkpoints.latest_step() is None
    for step in (1, 2, 3):
      checkpoints.save(step, _state(step), record={"step": step, "loss": 0.1 + 0.2})
    assert checkpoints.steps() == [2, 3]
    state, record = checkpoints.restore(like=_state())
    _assert_bitwise_equal(state, _state(3))
    assert record == {"step": 3, "loss": 0.1 + 0.2}
    _assert_bitwise_equal(checkpoints.restore(like=jax.eval_shape(_state), step=2)[0], _state(2))
    with pytest.raises(ValueError, match="step 3 is already saved"):
      checkpoints.save(3, _state())
    with pytest.raises(FileNotFoundError, match="No complete checkpoint of step 1"):
      checkpoints.restore(like=_state(), step=1)


def test_a_checkpoint_killed_mid_write_is_never_read_and_is_cleaned_up(tmp_path: pathlib.Path) -> None:
  with Checkpointer(tmp_path) as checkpoints:
    checkpoints.save(4, _state(4))
  # What a process killed while writing step 8 leaves behind: orbax's temporary directory
  # (renamed to "8" only once complete), here with truncated files.
  half_written = tmp_path / "8.orbax-checkpoint-tmp-1700000000000000"
  shutil.copytree(tmp_path / "4", half_written)
  for path in half_written.rglob("*"):
    if path.is_file():
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with Checkpointer(tmp_path) as checkpoints:
    assert checkpoints.steps() == [4]
    _assert_bitwise_equal(checkpoints.restore(like=_state())[0], _state(4))
    checkpoints.save(8, _state(8))  # orbax deletes the leftovers when a folder is opened, at the latest before saving
    assert checkpoints.steps() == [4, 8] and not half_written.exists()


def test_restoring_into_another_tree_names_what_differs(tmp_path: pathlib.Path) -> None:
  with Checkpointer(tmp_path) as checkpoints:
    checkpoints.save(0, _state())
    changed = {**_state(), "w": jnp.zeros((3, 2)), "count": jnp.float32(0), "extra": jnp.zeros(1)}
    del changed["nested"]
    with pytest.raises(CheckpointMismatchError) as error:
      checkpoints.restore(like=changed)
  message = str(error.value)
  assert "only in the checkpoint: ['nested'][0] float32[], ['nested'][1] bfloat16[2];" in message
  assert "only here: ['extra'] float32[1]" in message
  assert "['count']: checkpoint int32[], here float32[]" in message
  assert "['w']: checkpoint float32[2,3], here float32[3,2]" in message


def test_a_non_finite_state_is_refused_and_nothing_is_written(tmp_path: pathlib.Path) -> None:
  state = _state()
  state["nested"][0] = jnp.float32(np.nan)
  with Checkpointer(tmp_path) as checkpoints:
    with pytest.raises(NonFiniteStateError, match=r"non-finite values in \['nested'\]\[0\]"):
      checkpoints.save(5, state)
    assert checkpoints.steps() == []
    with pytest.raises(FileNotFoundError, match="No complete checkpoint"):
      checkpoints.restore(like=state)
  with pytest.raises(ValueError, match="keep must be >= 1"):
    Checkpointer(tmp_path, keep=0)


# --------------------------------------------------------------------------------------
# Checkpoints in `fit`: a linear model, 50 examples in batches of 8 (7 steps per epoch).


def linear(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  return x @ params["w"] + params["b"]


def _data(features: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
  rng = np.random.default_rng(seed)
  x = rng.random((50, features), dtype=np.float32)
  y = rng.random(50, dtype=np.float32)
  return x, y, {"w": np.zeros(features, np.float32), "b": np.float32(0)}


def _fit(directory: Any = None, *, data: tuple = (), optimizer: Any = None, seed: int = 0, **kwargs: Any) -> FitResult:
  x, y, params = data or _data()
  options = {"epochs": 3, "progress": False, "metrics": {"mae": metrics.mean_absolute_error()}, **kwargs}
  if directory is not None:
    options["checkpoint_dir"] = directory
  return fit(
      linear,
      optimizer or optax.adam(0.05),
      params=params,
      loss=losses.mse,
      train_loader=DataLoader((x, y), batch_size=8, shuffle=True, seed=seed),
      eval_loader=DataLoader((x, y), batch_size=50),
      **options,
  )


def _figures(stats: TrainingStats) -> str:
  """Everything in the stats but wall-clock times, as JSON (so NaN compares equal to NaN)."""
  record = stats.to_dict()
  del record["epoch_times"], record["steps_per_second"]
  return json.dumps(record)


def _assert_same_run(got: FitResult, want: FitResult) -> None:
  assert _figures(got.stats) == _figures(want.stats)
  _assert_bitwise_equal((got.model, got.opt_state), (want.model, want.opt_state))


@pytest.fixture(scope="module")
def uninterrupted() -> FitResult:
  return _fit()


def test_a_compiled_epoch_resumed_from_a_mid_epoch_checkpoint_equals_the_uninterrupted_run(
    tmp_path: pathlib.Path, uninterrupted: FitResult
) -> None:
  """Per step (the default), the killed-process test below covers the same."""
  first = _fit(tmp_path, checkpoint_every=4, keep=3, compiled_epoch=True)
  _assert_same_run(first, uninterrupted)  # checkpointing, and compiling epochs, change nothing
  assert Checkpointer(tmp_path).steps() == [16, 20, 21]  # every 4 steps and at the end; the last 3
  shutil.rmtree(tmp_path / "21")
  shutil.rmtree(tmp_path / "20")  # back to step 16: epoch 2, batch 2
  _assert_same_run(_fit(tmp_path, checkpoint_every=4, resume=True, compiled_epoch=True), uninterrupted)


def test_resume_extends_a_finished_run_and_starts_afresh_without_a_checkpoint(tmp_path: pathlib.Path, uninterrupted: FitResult) -> None:
  _assert_same_run(_fit(tmp_path, epochs=2, resume=True), _fit(epochs=2))
  assert Checkpointer(tmp_path).steps() == [7, 14]  # every epoch by default
  _assert_same_run(_fit(tmp_path, resume=True), uninterrupted)


def test_resuming_into_another_optimizer_model_or_loader_says_what_differs(tmp_path: pathlib.Path) -> None:
  _fit(tmp_path, epochs=1)
  with pytest.raises(CheckpointMismatchError, match=r"only in the checkpoint: \.opt_state\[0\]\.count int32\[\]"):
    _fit(tmp_path, resume=True, optimizer=optax.sgd(0.1, momentum=0.9))
  with pytest.raises(CheckpointMismatchError, match=r"\.params\['w'\]: checkpoint float32\[3\], here float32\[4\]"):
    _fit(tmp_path, resume=True, data=_data(features=4))
  with pytest.raises(ValueError, match="written with another train_loader.*seed=0.*seed=1"):
    _fit(tmp_path, resume=True, seed=1)
  with pytest.raises(ValueError, match="start_epoch=0 .* this call has start_epoch=1"):
    _fit(tmp_path, resume=True, start_epoch=1)
  with pytest.raises(ValueError, match="already holds checkpoints"):
    _fit(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"checkpoint_every": 3}, "checkpoint_every and resume need checkpoint_dir"),
        ({"resume": True}, "checkpoint_every and resume need checkpoint_dir"),
        ({"resume": 1}, "resume must be True or False"),
        ({"keep": 0, "checkpoint_dir": "unused"}, "keep must be >= 1"),
        ({"checkpoint_every": 0, "checkpoint_dir": "unused"}, "checkpoint_every must be >= 1"),
    ],
)
def test_bad_checkpoint_arguments(overrides: dict, match: str) -> None:
  with pytest.raises(ValueError, match=match):
    _fit(**overrides)


def test_a_non_finite_loss_stops_the_run_before_anything_corrupt_is_saved(tmp_path: pathlib.Path) -> None:
  x, y, params = _data()
  bad_step = 4  # between the checkpoints of steps 3 and 6
  y[DataLoader((x, y), batch_size=8, shuffle=True).order(0)[8 * bad_step + 1]] = np.nan
  # Syncing only at checkpoints: the NaN step is found at the checkpoint after it.
  with pytest.raises(NonFiniteLossError, match=f"at step {bad_step} "):
    _fit(tmp_path, data=(x, y, params), checkpoint_every=3, log_interval=1000)
  with Checkpointer(tmp_path) as checkpoints:
    assert checkpoints.steps() == [3]
    stats = TrainingStats.from_dict(checkpoints.record()["stats"])
  assert stats.total_steps == 3 and np.all(np.isfinite(stats.batch_losses))


# --------------------------------------------------------------------------------------
# A killed training process, resumed.


def _train(directory: pathlib.Path, out: pathlib.Path, *flags: str) -> subprocess.Popen:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env["JAX_PLATFORMS"] = "cpu"
  command = [sys.executable, str(SCRIPT), str(directory), str(out), *flags]
  return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> int:
  _, stderr = process.communicate(timeout=300)
  assert process.returncode in (0, -signal.SIGKILL), stderr[-4000:]
  return process.returncode


def test_a_training_process_killed_mid_epoch_resumes_bit_for_bit(tmp_path: pathlib.Path) -> None:
  """The script checkpoints every 5 steps (8 steps per epoch, 3 epochs, one skipped step per
  epoch, NNX batch statistics and dropout RNG state); killed when it asks for batch 13 (epoch
  1, batch 5)."""
  reference = _train(tmp_path / "reference", tmp_path / "reference")
  killed = _train(tmp_path / "run", tmp_path / "run", "--kill-at", "13")
  assert _finish(killed) == -signal.SIGKILL
  assert not (tmp_path / "run.json").exists()
  with Checkpointer(tmp_path / "run") as checkpoints:
    assert checkpoints.steps() == [5, 10]
  assert _finish(_train(tmp_path / "run", tmp_path / "run")) == 0
  assert _finish(reference) == 0
  resumed, uninterrupted = json.loads((tmp_path / "run.json").read_text()), json.loads((tmp_path / "reference.json").read_text())
  assert resumed == uninterrupted
  assert uninterrupted["total_steps"] == 24 and uninterrupted["num_skipped_steps"] == 3
  with np.load(tmp_path / "run.npz") as got, np.load(tmp_path / "reference.npz") as want:
    assert sorted(got.files) == sorted(want.files) and any("rngs" in name for name in got.files)
    assert any("mean" in name for name in got.files)  # the batch statistics
    for name in want.files:
      assert got[name].dtype == want[name].dtype and got[name].tobytes() == want[name].tobytes(), name


# --------------------------------------------------------------------------------------
# What a state and a record may hold (issue 11): Python numbers exactly, empty trees, and
# clear errors naming the path for everything else.


def test_python_numbers_round_trip_exactly_with_their_types(tmp_path: pathlib.Path) -> None:
  state = {"step": 2**40 + 1, "lr": 0.1 + 0.2, "flag": True, "negative": -3, "w": jnp.arange(3.0), "n": np.int64(7)}
  with Checkpointer(tmp_path) as checkpoints:
    checkpoints.save(1, state, record={"pair": (1, 2)})
    restored, record = checkpoints.restore(like=state)
  for name in ("step", "lr", "flag", "negative"):
    assert type(restored[name]) is type(state[name]) and restored[name] == state[name]
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert int(restored["n"]) == 7 and record == {"pair": [1, 2]}  # JSON has no tuples
  with Checkpointer(tmp_path) as checkpoints, pytest.raises(CheckpointMismatchError, match=r"\['step'\]: checkpoint python int, here python float"):
    checkpoints.restore(like={**state, "step": 1.0})


def test_an_empty_state_saves_the_record_alone(tmp_path: pathlib.Path) -> None:
  with Checkpointer(tmp_path) as checkpoints:
    checkpoints.save(1, {}, record={"note": "nothing trained"})
    checkpoints.save(2, None)
    checkpoints.save(3, {"only": 5})
    assert checkpoints.restore(like={}, step=1) == ({}, {"note": "nothing trained"})
    assert checkpoints.restore(like=None, step=2) == (None, {})
    assert checkpoints.restore(like={"only": 0}) == ({"only": 5}, {})


@pytest.mark.parametrize(
    ("state", "record", "error", "match"),
    [
        ({"a": "text"}, None, TypeError, r"state\['a'\] holds a value of type str"),
        ({"a": [jnp.ones(1), object()]}, None, TypeError, r"state\['a'\]\[1\] holds a value of type object"),
        ({"a": np.array([2**40])}, None, ValueError, r"state\['a'\] holds 1099511627776, outside the range of int32"),
        ({"a": np.array([1e300])}, None, ValueError, r"state\['a'\] holds 1e\+300, beyond the largest finite float32"),
        ({"a": float("inf")}, None, NonFiniteStateError, r"non-finite values in \['a'\]"),
        ({"a": jnp.ones(1)}, [1], ValueError, "record must be None or a dict of JSON values, got list"),
        ({"a": jnp.ones(1)}, {1: "x"}, ValueError, "record has the key 1: record keys must be strings"),
        ({"a": jnp.ones(1)}, {"x": [np.float32(1)]}, ValueError, r"record\['x'\]\[0\] holds a value of type float32"),
    ],
    ids=["string_leaf", "object_leaf", "int64_overflow", "float64_overflow", "python_inf", "record_list",
         "record_int_key", "record_numpy_number"],
)
def test_what_a_checkpoint_cannot_hold_is_refused_naming_it(
    tmp_path: pathlib.Path, state: Any, record: Any, error: type, match: str
) -> None:
  with Checkpointer(tmp_path) as checkpoints:
    with pytest.raises(error, match=match):
      checkpoints.save(1, state, record=record)
    assert checkpoints.steps() == []  # nothing written


def test_a_step_that_is_not_an_int_is_named(tmp_path: pathlib.Path) -> None:
  with Checkpointer(tmp_path) as checkpoints:
    checkpoints.save(1, {"a": 1})
    with pytest.raises(ValueError, match="step must be an integer, got '1'"):
      checkpoints.restore(like={"a": 0}, step="1")
    with pytest.raises(ValueError, match="step must be an integer, got 1.0"):
      checkpoints.record(1.0)
