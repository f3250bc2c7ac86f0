"""Tests of gradcore_jax.data.DataLoader: order, coverage, padding, masks and errors."""

from __future__ import annotations

import numpy as np
import pytest

from gradcore_jax.data import Batch
from gradcore_jax.data import DataLoader


def _dataset(n: int = 10) -> dict[str, np.ndarray]:
  """Example i has x = [i, i + 0.5] and y = i, so a row's origin can be read off its values."""
  ids = np.arange(n)
  return {"x": np.stack([ids, ids + 0.5], axis=1).astype(np.float32), "y": ids}


def _visited(batches: list[Batch]) -> np.ndarray:
  """Example ids of the real rows, in visiting order."""
  return np.concatenate([b.data["y"][b.mask] for b in batches])


def test_len_counts_batches_with_and_without_drop_last() -> None:
  assert len(DataLoader(_dataset(10), batch_size=4)) == 3
  assert len(DataLoader(_dataset(10), batch_size=4, drop_last=True)) == 2
  assert len(DataLoader(_dataset(8), batch_size=4)) == 2
  assert len(DataLoader(_dataset(3), batch_size=8)) == 1


def test_unshuffled_epoch_visits_examples_in_order() -> None:
  batches = list(DataLoader(_dataset(10), batch_size=4).epoch(0))
  np.testing.assert_array_equal(_visited(batches), np.arange(10))
  assert [b.size for b in batches] == [4, 4, 2]


def test_every_batch_has_the_full_shape_and_a_mask() -> None:
  for batch in DataLoader(_dataset(10), batch_size=4, shuffle=True).epoch(3):
    assert batch.data["x"].shape == (4, 2)
    assert batch.data["y"].shape == (4,)
    assert batch.mask.shape == (4,) and batch.mask.dtype == np.bool_
    assert batch.size == int(batch.mask.sum())


def test_short_last_batch_is_padded_with_masked_copies_of_real_examples() -> None:
  data = _dataset(10)
  last = list(DataLoader(data, batch_size=4, shuffle=True, seed=5).epoch(2))[-1]
  np.testing.assert_array_equal(last.mask, [True, True, False, False])
  # The padded rows are genuine examples (finite, consistent x and y), not zeros or garbage.
  np.testing.assert_array_equal(last.data["x"], data["x"][last.data["y"]])


def test_a_batch_size_larger_than_the_dataset_gives_one_batch_of_all_rows() -> None:
  """As torch.utils.data.DataLoader (run here): one short batch, not padded; nothing sized by batch_size."""
  import torch  # pylint: disable=g-import-not-at-top

  for batch_size in (8, 10**12):
    loader = DataLoader(_dataset(3), batch_size=batch_size)
    (batch,) = loader.epoch(0)
    reference = list(torch.utils.data.DataLoader(torch.arange(3), batch_size=batch_size))
    assert [len(b) for b in reference] == [batch.size] == [3] and loader.batch_size == 3
    np.testing.assert_array_equal(batch.data["y"], reference[0].numpy())
    assert batch.mask.all() and loader.spec.mask.shape == (3,) and len(loader) == 1
    assert f"batch_size={batch_size}," in repr(loader)  # the argument as given
  with pytest.raises(ValueError, match="leaves no batch"):  # torch's drop_last=True yields no batch here
    DataLoader(_dataset(3), batch_size=10**12, drop_last=True)


@pytest.mark.parametrize("batch_size", [1, 3, 4, 10, 13])
@pytest.mark.parametrize("shuffle", [False, True])
def test_each_epoch_visits_every_example_exactly_once(batch_size: int, shuffle: bool) -> None:
  loader = DataLoader(_dataset(10), batch_size=batch_size, shuffle=shuffle, seed=7)
  for epoch in range(3):
    np.testing.assert_array_equal(np.sort(_visited(list(loader.epoch(epoch)))), np.arange(10))


def test_order_is_a_function_of_seed_and_epoch() -> None:
  data = _dataset(100)
  a = DataLoader(data, batch_size=8, shuffle=True, seed=3)
  b = DataLoader(data, batch_size=8, shuffle=True, seed=3)
  other_seed = DataLoader(data, batch_size=8, shuffle=True, seed=4)
  np.testing.assert_array_equal(_visited(list(a.epoch(5))), _visited(list(b.epoch(5))))
  # Asking for an epoch out of turn gives the same order: no hidden generator state.
  np.testing.assert_array_equal(_visited(list(b.epoch(2))), _visited(list(a.epoch(2))))
  np.testing.assert_array_equal(a.order(1), np.random.default_rng((3, 1)).permutation(100))
  assert not np.array_equal(a.order(0), a.order(1)), "epochs must be shuffled differently"
  assert not np.array_equal(a.order(1), other_seed.order(1)), "the seed must matter after epoch 0"


def test_iterating_the_loader_walks_successive_epochs() -> None:
  loader = DataLoader(_dataset(50), batch_size=8, shuffle=True, seed=1)
  first, second = _visited(list(loader)), _visited(list(loader))
  np.testing.assert_array_equal(first, loader.order(0))
  np.testing.assert_array_equal(second, loader.order(1))


def test_drop_last_drops_the_short_batch_and_only_it() -> None:
  loader = DataLoader(_dataset(10), batch_size=4, shuffle=True, seed=2, drop_last=True)
  batches = list(loader.epoch(1))
  assert len(batches) == 2 and all(b.mask.all() for b in batches)
  np.testing.assert_array_equal(_visited(batches), loader.order(1)[:8])
  assert loader.examples_per_epoch == 8


def test_stacked_epoch_matches_the_batches_and_can_start_mid_epoch() -> None:
  loader = DataLoader(_dataset(10), batch_size=4, shuffle=True, seed=9)
  batches = list(loader.epoch(4))
  stacked = loader.stacked(4)
  assert stacked.data["x"].shape == (3, 4, 2) and stacked.mask.shape == (3, 4)
  assert stacked.size == 10
  for i, batch in enumerate(batches):
    np.testing.assert_array_equal(stacked.data["x"][i], batch.data["x"])
    np.testing.assert_array_equal(stacked.mask[i], batch.mask)
  resumed = list(loader.epoch(4, start=1))
  assert len(resumed) == 2
  np.testing.assert_array_equal(_visited(resumed), _visited(batches[1:]))


def test_single_array_and_tuple_data() -> None:
  x = np.arange(12.0).reshape(6, 2)
  (batch,) = DataLoader(x, batch_size=6).epoch(0)
  np.testing.assert_array_equal(batch.data, x)
  xs, ys = next(DataLoader((x, x[:, 0]), batch_size=4).epoch(0)).data
  assert xs.shape == (4, 2) and ys.shape == (4,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"data": (np.zeros((5, 2)), np.zeros(4)), "batch_size": 2}, r"same leading dimension.*data\[0\]: 5.*data\[1\]: 4"),
        ({"data": np.zeros((0, 3)), "batch_size": 2}, "empty"),
        ({"data": (), "batch_size": 2}, "no arrays"),
        ({"data": (np.zeros(3), np.float32(1.0)), "batch_size": 2}, r"data\[1\] is a scalar"),
        ({"data": np.zeros(5), "batch_size": 0}, "batch_size must be >= 1"),
        ({"data": np.zeros(5), "batch_size": 2.0}, "batch_size must be an integer"),
        ({"data": np.zeros(5), "batch_size": 2, "seed": -1}, "seed must be >= 0"),
        ({"data": np.zeros(5), "batch_size": 8, "drop_last": True}, "leaves no batch"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs: dict, match: str) -> None:
  data = kwargs.pop("data")
  with pytest.raises(ValueError, match=match):
    DataLoader(data, **kwargs)


def test_bad_epoch_and_start_raise() -> None:
  loader = DataLoader(np.zeros(5), batch_size=2)
  with pytest.raises(ValueError, match="epoch must be >= 0"):
    loader.epoch(-1)
  with pytest.raises(ValueError, match="start must be <= the number of batches"):
    loader.stacked(0, start=4)


# --------------------------------------------------------------------------------------
# Conversion to JAX's dtypes never changes a value silently (issue 11).


@pytest.mark.parametrize(
    ("leaf", "match"),
    [
        (np.array([5, 2**31], np.int64), r"data\['ids'\] holds 2147483648, outside the range of int32"),
        (np.array([-(2**31) - 1, 0], np.int64), r"data\['ids'\] holds -2147483649, outside the range of int32"),
        (np.array([2**32, 0], np.uint64), r"data\['ids'\] holds 4294967296, outside the range of uint32"),
        (np.array([1e300, 0.0]), r"data\['ids'\] holds 1e\+300, beyond the largest finite float32"),
    ],
    ids=["int64_high", "int64_low", "uint64", "float64_overflow"],
)
def test_values_jax_would_change_without_x64_are_refused_naming_the_leaf(leaf: np.ndarray, match: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top

  assert not jax.config.jax_enable_x64
  assert int(jax.numpy.asarray(np.array([2**31], np.int64))[0]) < 0  # what would happen: JAX wraps it around
  with pytest.raises(ValueError, match=match + r".*jax_enable_x64"):
    DataLoader({"x": np.zeros((2, 1)), "ids": leaf}, batch_size=2)
  with jax.enable_x64(True):  # with 64-bit mode the values are kept exactly
    (batch,) = DataLoader({"x": np.zeros((2, 1)), "ids": leaf}, batch_size=2).epoch(0)
  np.testing.assert_array_equal(batch.data["ids"], leaf)


def test_values_that_fit_are_converted_and_inf_nan_pass() -> None:
  data = {"ids": np.array([2**31 - 1, -(2**31), 7], np.int64), "x": np.array([np.inf, np.nan, 1e38])}
  (batch,) = DataLoader(data, batch_size=3).epoch(0)
  assert batch.data["ids"].dtype == np.int32 and batch.data["x"].dtype == np.float32
  np.testing.assert_array_equal(batch.data["ids"], data["ids"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"data": {"s": np.array(["a", "b"])}, "batch_size": 2}, TypeError, r"data\['s'\] has dtype <U1"),
        ({"data": np.array([object(), 1]), "batch_size": 2}, TypeError, "data has dtype object"),
        ({"data": [1, 2, 3], "batch_size": 2}, ValueError, r"data\[0\] is a scalar.*np.asarray"),
        ({"data": np.zeros(5), "batch_size": 2, "shuffle": "no"}, ValueError, "shuffle must be True or False"),
        ({"data": np.zeros(5), "batch_size": 2, "drop_last": 1}, ValueError, "drop_last must be True or False"),
        ({"data": np.zeros(5), "batch_size": "2"}, ValueError, "batch_size must be an integer"),
    ],
    ids=["strings", "objects", "python_list", "string_shuffle", "int_drop_last", "string_batch_size"],
)
def test_other_bad_arguments_name_the_argument(kwargs: dict, error: type, match: str) -> None:
  data = kwargs.pop("data")
  with pytest.raises(error, match=match):
    DataLoader(data, **kwargs)


def test_process_local_is_a_flag_for_fit_that_changes_no_batch() -> None:
  """`process_local=True` marks the data as this process's share (see tests/test_multihost.py for
  its use by `fit`); the batches are the same, and the repr shows it only when set, so that the
  repr recorded in older checkpoints still matches."""
  data = _dataset(10)
  plain = DataLoader(data, batch_size=4, shuffle=True)
  local = DataLoader(data, batch_size=4, shuffle=True, process_local=True)
  assert (plain.process_local, local.process_local) == (False, True)
  assert "process_local" not in repr(plain) and repr(local).endswith(", process_local=True)")
  for a, b in zip(plain.epoch(1), local.epoch(1), strict=True):
    np.testing.assert_array_equal(a.data["y"], b.data["y"])
    np.testing.assert_array_equal(a.mask, b.mask)
  with pytest.raises(ValueError, match="process_local must be True or False"):
    DataLoader(data, batch_size=4, process_local="yes")
