"""Tests of the IDX reader (gradcore_jax.idx) on small IDX files written here, by hand and by `write_idx`."""

from __future__ import annotations

import gzip
import re
import struct

import numpy as np
import pytest

from gradcore_jax import idx


def _hand_made(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
  """An IDX file built from the format's definition, independently of `write_idx`."""
  return struct.pack(">BBBB", 0, 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape) + payload


def test_reads_a_hand_made_uint8_file(tmp_path):
  path = tmp_path / "images"
  path.write_bytes(_hand_made(0x08, (2, 3), bytes([0, 1, 2, 253, 254, 255])))
  array = idx.read_idx(path)
  assert array.dtype == np.uint8
  np.testing.assert_array_equal(array, [[0, 1, 2], [253, 254, 255]])


@pytest.mark.parametrize(
    "code, fmt, dtype, values",
    [
        (0x09, "b", np.int8, [-128, 5, 127]),
        (0x0B, "h", np.int16, [-300, 2, 32000]),
        (0x0C, "i", np.int32, [-70000, 0, 2**31 - 1]),
        (0x0D, "f", np.float32, [-1.5, 0.25, 3e8]),
        (0x0E, "d", np.float64, [-1e-300, 0.1, 2.0]),
    ],
)
def test_reads_big_endian_values_into_native_arrays(tmp_path, code, fmt, dtype, values):
  path = tmp_path / "values.gz"
  path.write_bytes(gzip.compress(_hand_made(code, (3,), struct.pack(f">3{fmt}", *values))))
  array = idx.read_idx(path)
  assert array.dtype == np.dtype(dtype)  # native byte order
  np.testing.assert_array_equal(array, np.array(values, dtype))


def test_write_idx_writes_the_hand_made_bytes(tmp_path):
  array = np.arange(6, dtype=np.int16).reshape(1, 2, 3) - 3
  idx.write_idx(tmp_path / "a", array)
  assert (tmp_path / "a").read_bytes() == _hand_made(0x0B, (1, 2, 3), struct.pack(">6h", *array.ravel()))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["plain", "zipped.gz"])
def test_round_trip(tmp_path, dtype, name):
  array = (np.arange(24).reshape(2, 3, 4) * 3 - 7).astype(dtype)
  idx.write_idx(tmp_path / name, array)
  read = idx.read_idx(tmp_path / name)
  assert read.dtype == array.dtype
  np.testing.assert_array_equal(read, array)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "must start with two zero bytes"),
        (b"\x00", "must start with two zero bytes"),
        (b"\x00\x00\x0a\x01\x00\x00\x00\x01\x07", "unknown IDX type code 0x0A"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x01", "header needs 12 bytes"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x07\x07", "should hold 11 bytes for shape (3,)"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x07\x07", "should hold 9 bytes"),
    ],
)
def test_malformed_files_raise_a_clear_error(tmp_path, content, message):
  path = tmp_path / "bad"
  path.write_bytes(content)
  with pytest.raises(ValueError, match=re.escape(message)):
    idx.read_idx(path)


@pytest.mark.parametrize("array", [np.zeros((), np.uint8), np.zeros(3, np.int64), np.zeros(3, bool)])
def test_write_idx_refuses_what_idx_cannot_hold(tmp_path, array):
  with pytest.raises(ValueError, match="IDX holds 1-D or larger arrays"):
    idx.write_idx(tmp_path / "x", array)


def _write_mnist(directory, *, train: int = 5, test: int = 3, labels_for_test: int = 3) -> None:
  rng = np.random.default_rng(0)
  idx.write_idx(directory / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (train, 28, 28), dtype=np.uint8))
  idx.write_idx(directory / "train-labels-idx1-ubyte", rng.integers(0, 10, train, dtype=np.uint8))
  idx.write_idx(directory / "t10k-images.idx3-ubyte", rng.integers(0, 256, (test, 28, 28), dtype=np.uint8))
  idx.write_idx(directory / "t10k-labels.idx1-ubyte.gz", rng.integers(0, 10, labels_for_test, dtype=np.uint8))


def test_load_mnist_finds_every_usual_spelling(tmp_path):
  _write_mnist(tmp_path)
  data = idx.load_mnist(tmp_path)
  assert data.train_images.shape == (5, 28, 28) and data.train_labels.shape == (5,)
  assert data.test_images.shape == (3, 28, 28) and data.test_labels.shape == (3,)
  assert data.train_images.dtype == np.uint8


def test_load_mnist_names_what_is_missing(tmp_path):
  _write_mnist(tmp_path)
  (tmp_path / "t10k-images.idx3-ubyte").unlink()
  with pytest.raises(FileNotFoundError, match="No t10k-images-idx3-ubyte in"):
    idx.load_mnist(tmp_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    idx.load_mnist(tmp_path / "nowhere")


def test_load_mnist_refuses_images_and_labels_that_do_not_pair_up(tmp_path):
  _write_mnist(tmp_path, labels_for_test=4)
  with pytest.raises(ValueError, match="The test files .* do not pair up"):
    idx.load_mnist(tmp_path)
