"""Reading (and writing) IDX files, the format MNIST is distributed in. NumPy only.

An IDX file is a 4-byte magic number `0x00 0x00 <type> <ndim>`, then `ndim` big-endian
uint32 dimension sizes, then the data, big-endian, in C order. Types: 0x08 uint8,
0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64. Gzipped files (`.gz`,
as MNIST is downloaded) are read transparently.
"""

from __future__ import annotations

import gzip
import os
import pathlib
from typing import NamedTuple
from typing import Union

import numpy as np

PathLike = Union[str, os.PathLike]

_TYPES: dict[int, np.dtype] = {
  0x08: np.dtype(np.uint8),
  0x09: np.dtype(np.int8),
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in _TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def parse_idx(content: bytes, *, name: str = "IDX data") -> np.ndarray:
  """The array held by the IDX bytes `content` (native byte order); `name` is used in errors.

  Raises ValueError when the magic number, the type code or the size is wrong.
  """
  if len(content) < 4 or content[:2] != b"\x00\x00":
    raise ValueError(f"{name} is not an IDX file: it must start with two zero bytes, got {content[:4]!r}.")
  code, ndim = content[2], content[3]
  if code not in _TYPES:
    raise ValueError(
      f"{name} has the unknown IDX type code 0x{code:02X}; known: " + ", ".join(f"0x{c:02X}" for c in _TYPES) + "."
    )
  header = 4 + 4 * ndim
  if len(content) < header:
    raise ValueError(f"{name} is truncated: its header needs {header} bytes, the file has {len(content)}.")
  shape = tuple(int(d) for d in np.frombuffer(content, ">u4", count=ndim, offset=4))
  dtype = _TYPES[code]
  expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(content) != expected:
    raise ValueError(f"{name} should hold {expected} bytes for shape {shape} of {dtype.name}, but has {len(content)}.")
  data = np.frombuffer(content, dtype, offset=header).reshape(shape)
  return data.astype(dtype.newbyteorder("="))


def read_idx(path: PathLike) -> np.ndarray:
  """Reads the IDX file at `path` (gzipped or not) into a NumPy array of its type and shape."""
  content = pathlib.Path(path).read_bytes()
  if content[:2] == _GZIP_MAGIC:
    content = gzip.decompress(content)
  return parse_idx(content, name=str(path))


def write_idx(path: PathLike, array: np.ndarray) -> None:
  """Writes `array` (uint8, int8, int16, int32, float32 or float64; >= 1 dimension) as an IDX file.

  A path ending in `.gz` is gzipped.
  """
  array = np.asarray(array)
  dtype = array.dtype.newbyteorder("=")
  if dtype not in _CODES or array.ndim == 0:
    raise ValueError(
      f"IDX holds 1-D or larger arrays of {', '.join(t.name for t in _TYPES.values())}; "
      f"got {array.ndim}-D {array.dtype}."
    )
  code = _CODES[dtype]
  header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  content = header + np.ascontiguousarray(array, _TYPES[code]).tobytes()
  path = pathlib.Path(path)
  path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)


class MnistData(NamedTuple):
  """MNIST as stored: uint8 images `(n, 28, 28)` and uint8 labels `(n,)`."""

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray


# The file stems as distributed (`train-images-idx3-ubyte`) and as often renamed
# (`train-images.idx3-ubyte`); each may also end in `.gz`.
MNIST_FILES = {
  "train_images": "train-images-idx3-ubyte",
  "train_labels": "train-labels-idx1-ubyte",
  "test_images": "t10k-images-idx3-ubyte",
  "test_labels": "t10k-labels-idx1-ubyte",
}


def _candidates(stem: str) -> list[str]:
  dotted = stem.replace("-idx", ".idx")
  return [stem, f"{stem}.gz", dotted, f"{dotted}.gz"]


def find_mnist_file(data_dir: PathLike, stem: str) -> pathlib.Path:
  """The file of `data_dir` named `stem` in one of its usual spellings; FileNotFoundError otherwise."""
  data_dir = pathlib.Path(data_dir)
  for candidate in _candidates(stem):
    if (data_dir / candidate).is_file():
      return data_dir / candidate
  raise FileNotFoundError(
    f"No {stem} in {data_dir} (looked for {', '.join(_candidates(stem))}). The MNIST IDX files are: "
    f"{', '.join(f'{s}[.gz]' for s in MNIST_FILES.values())}."
  )


def load_mnist(data_dir: PathLike) -> MnistData:
  """Reads the four MNIST IDX files from `data_dir` (nothing is downloaded).

  Raises FileNotFoundError naming the missing file, ValueError for a malformed file or
  when images and labels do not pair up.
  """
  if not pathlib.Path(data_dir).is_dir():
    raise FileNotFoundError(f"MNIST data directory {data_dir} does not exist.")
  arrays = {key: read_idx(find_mnist_file(data_dir, stem)) for key, stem in MNIST_FILES.items()}
  for split in ("train", "test"):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
      raise ValueError(
        f"The {split} files of {data_dir} do not pair up: images must be (n, rows, cols) and labels (n,), "
        f"got {images.shape} and {labels.shape}."
      )
  return MnistData(**arrays)
