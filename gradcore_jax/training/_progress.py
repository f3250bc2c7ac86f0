"""What `fit` prints: a one-line header and a tqdm bar per epoch (both on stderr)."""

from __future__ import annotations

import sys
from typing import Any
from typing import Mapping

import jax
import numpy as np
from tqdm.auto import tqdm

from gradcore_jax._typing import PyTree
from gradcore_jax.data import DataLoader
from gradcore_jax.memory import state_memory


def header(loader: DataLoader, params: PyTree, opt_state: PyTree, epochs: int) -> str:
  """Samples, batch size, batches per epoch, parameter count and optimizer state bytes."""
  count = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(params))
  memory = state_memory(opt_state, params)
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


def epoch_bar(epoch: int, epochs: int, steps: int, enabled: bool, *, done: int = 0) -> Any:
  """A bar over the steps of one epoch, `done` of them already (resuming); advanced at the loop's sync points."""
  return tqdm(
    total=steps, initial=done, desc=f"epoch {epoch + 1}/{epochs}", unit="step", disable=not enabled, file=sys.stderr
  )


def show(bar: Any, advance: int, figures: Mapping[str, float]) -> None:
  """Advances `bar` by `advance` steps and shows `figures` (already on the host)."""
  bar.set_postfix({name: f"{value:.4g}" for name, value in figures.items()}, refresh=False)
  bar.update(advance)
