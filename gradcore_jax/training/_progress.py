"""What `fit` prints: a one-line header and a tqdm bar per epoch (both on stderr)."""

from __future__ import annotations

import sys
from typing import Any
from typing import Mapping
from typing import Optional

import jax
import numpy as np
from tqdm.auto import tqdm

from gradcore_jax._typing import PyTree
from gradcore_jax.data import DataLoader
from gradcore_jax.memory import state_memory


def header(loader: Any, params: PyTree, opt_state: PyTree, epochs: int) -> str:
  """Samples, batch size, batches per epoch, parameter count and optimizer state bytes.

  A streamed loader (not a `DataLoader`) shows its batch size and, when its source has one, its length.
  """
  count = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(params))
  memory = state_memory(opt_state, params)
  state = f"{count:,} parameters, optimizer state {memory.state_bytes:,} bytes ({memory.multiple:.2f}x the params)"
  if not isinstance(loader, DataLoader):
    length = loader.length
    batches = "an unknown number of" if length is None else f"{length}"
    return (
      f"fit: streamed batches of {loader.batch_size} rows (shorter ones padded and masked), {batches} batches "
      f"per epoch, {epochs} epochs | {state}"
    )
  short = loader.examples_per_epoch % loader.batch_size
  last = f" (last one {short} real + {loader.batch_size - short} masked rows)" if short else ""
  return (
    f"fit: {loader.num_examples:,} samples, batch size {loader.batch_size}, {len(loader)} batches "
    f"per epoch{last}, {epochs} epochs | {count:,} parameters, optimizer state "
    f"{memory.state_bytes:,} bytes ({memory.multiple:.2f}x the params)"
  )


def say(text: str, enabled: bool) -> None:
  if enabled:
    tqdm.write(text, file=sys.stderr)


def epoch_bar(epoch: int, epochs: int, steps: Optional[int], enabled: bool, *, done: int = 0) -> Any:
  """A bar over the steps of one epoch, `done` of them already (resuming); advanced at the loop's sync points.

  `steps` None (a stream of unknown length): a bar counting steps without a total.
  """
  return tqdm(
    total=steps, initial=done, desc=f"epoch {epoch + 1}/{epochs}", unit="step", disable=not enabled, file=sys.stderr
  )


def show(bar: Any, advance: int, figures: Mapping[str, float]) -> None:
  """Advances `bar` by `advance` steps and shows `figures` (already on the host)."""
  bar.set_postfix({name: f"{value:.4g}" for name, value in figures.items()}, refresh=False)
  bar.update(advance)
