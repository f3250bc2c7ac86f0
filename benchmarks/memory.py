"""Where the resident memory of a `fit(compiled_epoch=True)` run goes, against the per-step loop.

Model and data: the digits MLP (64 -> 64 -> 10, as a plain function of NumPy params, so
that nothing is compiled before a measurement starts) with `gcj.adam(1e-3)`, the masked
mean cross-entropy and a `DataLoader` over the 1,797 digits (batch 32, 57 batches an
epoch), two epochs. Four ways to train it:

* `fit`: `fit(...)`, one compiled step per batch;
* `fit_compiled_epoch`: `fit(..., compiled_epoch=True)`;
* `bare_step`: the same step hand-written with `jax.jit` (carry donated), one call per batch;
* `bare_scan`: that step in a jitted `lax.scan` over `loader.stacked(epoch)`, one call an epoch.

Measurements (resident set from `/proc/self/status`; peaks from its high-water mark,
reset before each measurement):

* `fresh`: each way as the first thing a new Python process compiles (imports and data
  done before): the peak growth, what of it is still resident afterwards split into
  anonymous memory (heap) and mapped files (jaxlib's code pages, shared and
  reclaimable), and what is left after glibc's `malloc_trim(0)` hands freed heap back;
  then `fit` and `fit_compiled_epoch` again in new processes that find every executable
  in JAX's persistent compilation cache (off by default; filled by a process before),
  which leaves out what compiling costs;
* `warm_runs`: each way again in a process that has run all four once, after
  `malloc_trim(0)`: what a second call needs;
* `compile_run`: the step and the scan compiled ahead of time (`jit(...).lower(...).compile()`)
  and run twice, after `malloc_trim(0)`: the peak during XLA's compilation and during the
  runs, with XLA's own count of the runtime buffers (`memory_analysis()`: arguments,
  temporaries, outputs, bytes aliased by donation) and the `while` loops of the compiled
  HLO (1: the scan is not unrolled); also a scan over ten epochs stacked (ten times the
  batches) and a scan whose carry is not donated.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import gradcore_jax as gcj
from benchmarks import common
from gradcore_jax import losses
from gradcore_jax.data import DataLoader
from gradcore_jax.training import fit

ROOT = Path(__file__).resolve().parents[1]
WAYS = ("fit", "fit_compiled_epoch", "bare_step", "bare_scan")
EPOCHS = 2
MIB = 1024.0


def _loader() -> DataLoader:
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  return DataLoader(((x / 16).astype(np.float32), y.astype(np.int32)), batch_size=32, shuffle=True, seed=0)


def _params() -> dict[str, np.ndarray]:
  """NumPy params of the 64 -> 64 -> 10 MLP (creating them compiles nothing)."""
  rng = np.random.default_rng(0)
  return {
    "w1": (rng.standard_normal((64, 64)) / 8).astype(np.float32),
    "b1": np.zeros(64, np.float32),
    "w2": (rng.standard_normal((64, 10)) / 8).astype(np.float32),
    "b2": np.zeros(10, np.float32),
  }


def _mlp(params: Any, x: jax.Array) -> jax.Array:
  return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def _step(tx: optax.GradientTransformation) -> Callable[[Any, Any], tuple[Any, jax.Array]]:
  """`(carry, ((x, y), mask)) -> (carry, batch loss)`: what `fit`'s train step does for this model."""

  def loss_fn(params: Any, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    per_example = losses.cross_entropy(_mlp(params, x), y, reduction="none", mask=mask)
    return jnp.sum(jnp.where(mask, per_example, 0)) / jnp.maximum(jnp.sum(mask), 1)

  def step(carry: Any, batch: Any) -> tuple[Any, jax.Array]:
    params, state = carry
    (x, y), mask = batch
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y, mask)
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  return step


def _carry(tx: optax.GradientTransformation) -> Any:
  params = jax.tree.map(jnp.asarray, _params())
  return params, tx.init(params)


def train(way: str, loader: DataLoader) -> None:
  """Two epochs of `way` (one of `WAYS`)."""
  tx = gcj.adam(1e-3)
  if way in ("fit", "fit_compiled_epoch"):
    fit(
      _mlp,
      tx,
      params=_params(),
      loss=losses.cross_entropy,
      train_loader=loader,
      epochs=EPOCHS,
      progress=False,
      compiled_epoch=way == "fit_compiled_epoch",
    )
    return
  carry = _carry(tx)
  if way == "bare_step":
    step = jax.jit(_step(tx), donate_argnums=0)
    for epoch in range(EPOCHS):
      batch_losses = []
      for batch in loader.epoch(epoch):
        carry, loss = step(carry, (batch.data, batch.mask))
        batch_losses.append(loss)
      jax.device_get(batch_losses)
    return
  scan = jax.jit(functools.partial(lax.scan, _step(tx)), donate_argnums=0)
  for epoch in range(EPOCHS):
    stacked = loader.stacked(epoch)
    carry, batch_losses = scan(carry, (stacked.data, stacked.mask))
    jax.device_get(batch_losses)


def trim() -> bool:
  """Hands the heap's free memory back to the system (glibc `malloc_trim(0)`); False where unavailable."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    return False
  return True


class Window:
  """Memory figures of this process between `Window()` and `close()`, in MiB."""

  def __init__(self) -> None:
    common.reset_peak()
    self.rss = common.resident_kib("VmRSS")
    self.anon = common.resident_kib("RssAnon")
    self.file = common.resident_kib("RssFile")

  def close(self) -> dict[str, float]:
    return {
      "peak_growth_mib": (common.resident_kib("VmHWM") - self.rss) / MIB,
      "kept_mib": (common.resident_kib("VmRSS") - self.rss) / MIB,
      "kept_heap_mib": (common.resident_kib("RssAnon") - self.anon) / MIB,
      "kept_code_pages_mib": (common.resident_kib("RssFile") - self.file) / MIB,
    }


def measure_fresh(way: str) -> dict[str, Any]:
  """`way` as the first compilation of this process (call it in a new process)."""
  loader = _loader()
  window = Window()
  started = time.perf_counter()
  train(way, loader)
  row: dict[str, Any] = {"way": way, "seconds": time.perf_counter() - started, **window.close()}
  row["kept_after_trim_mib"] = (common.resident_kib("VmRSS") - window.rss) / MIB if trim() else None
  return row


def _aot(kind: str, loader: DataLoader) -> dict[str, Any]:
  """Compiles and runs the step or a scan ahead of time; memory of each phase and XLA's buffer count."""
  tx = gcj.adam(1e-3)
  step = _step(tx)
  stacked = loader.stacked(0)
  batches = (stacked.data, stacked.mask)
  if kind == "scan_10_epochs":
    batches = jax.tree.map(lambda a: np.concatenate([a] * 10), batches)
  if kind == "step":
    function, args = jax.jit(step, donate_argnums=0), jax.tree.map(lambda a: a[0], batches)
  elif kind == "scan_not_donated":
    function, args = jax.jit(functools.partial(lax.scan, step)), batches
  else:
    function, args = jax.jit(functools.partial(lax.scan, step), donate_argnums=0), batches
  carry = _carry(tx)
  trim()
  window = Window()
  started = time.perf_counter()
  compiled = function.lower(carry, args).compile()
  compile_s = time.perf_counter() - started
  compiling = window.close()
  window = Window()
  for _ in range(2):
    carry, out = compiled(carry, args)
    jax.block_until_ready((carry, out))
  running = window.close()
  analysis, text = compiled.memory_analysis(), compiled.as_text()
  if analysis is None or text is None:  # both exist on the CPU backend this suite runs on
    raise RuntimeError(f"XLA gives no memory analysis or HLO text for {kind} on {jax.default_backend()}.")
  return {
    "case": kind,
    "batches": int(jax.tree.leaves(args)[0].shape[0]) if kind != "step" else 1,
    "input_bytes": int(sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(args))),
    "compile_s": compile_s,
    "compile_peak_mib": compiling["peak_growth_mib"],
    "run_peak_mib": running["peak_growth_mib"],
    "xla_argument_kib": analysis.argument_size_in_bytes / 1024,
    "xla_temp_kib": analysis.temp_size_in_bytes / 1024,
    "xla_output_kib": analysis.output_size_in_bytes / 1024,
    "xla_alias_kib": analysis.alias_size_in_bytes / 1024,
    "while_loops": text.count(" while("),
  }


def measure_warm(quick: bool = False) -> dict[str, Any]:
  """The second calls of every way, and the compile/run breakdown, in this (warmed) process.

  Args:
    quick: warm up with `bare_step` alone, skip the second calls and compile only the
      step and the one-epoch scan (a smoke test).
  """
  loader = _loader()
  for way in ("bare_step",) if quick else WAYS:  # first use: the compiler's and runtime's one-time costs
    train(way, loader)
  runs = []
  for way in () if quick else WAYS:
    trim()
    window = Window()
    train(way, loader)
    runs.append({"way": way, **window.close()})
  kinds = ("step", "scan") if quick else ("step", "scan", "scan_10_epochs", "scan_not_donated")
  stacked = loader.stacked(0)
  dataset = sum(leaf.nbytes for leaf in jax.tree.leaves(stacked.data)) + stacked.mask.nbytes
  return {"warm_runs": runs, "compile_run": [_aot(kind, loader) for kind in kinds], "stacked_epoch_bytes": int(dataset)}


def _in_new_process(call: str, env: Optional[dict[str, str]] = None) -> Any:
  """`benchmarks.memory.<call>` in a new Python process (with `env` added to its environment); its JSON."""
  code = f"import json\nfrom benchmarks import memory\nprint(json.dumps(memory.{call}))\n"
  done = subprocess.run(
    [sys.executable, "-c", code],
    cwd=ROOT,
    env={**os.environ, **(env or {})},
    capture_output=True,
    text=True,
    check=False,
  )
  if done.returncode != 0:
    raise RuntimeError(f"benchmarks.memory.{call} failed in its process:\n{done.stderr[-4000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def _with_cache_hit(way: str) -> dict[str, Any]:
  """`measure_fresh(way)` in a process whose compilations all come from JAX's persistent cache.

  A first process fills a new cache folder (every compilation kept, however short);
  the second, measured, loads the executables instead of compiling them.
  """
  with tempfile.TemporaryDirectory() as folder:
    env = {
      "JAX_COMPILATION_CACHE_DIR": folder,
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    _in_new_process(f"measure_fresh({way!r})", env)
    row = _in_new_process(f"measure_fresh({way!r})", env)
  return {**row, "way": f"{way}, compilation cache hit"}


def run(settings: common.Settings) -> dict[str, Any]:
  """Every measurement in a new process; a quick run does the warm one only."""
  fresh = []
  if not settings.quick:
    fresh = [_in_new_process(f"measure_fresh({way!r})") for way in WAYS]
    fresh += [_with_cache_hit(way) for way in ("fit", "fit_compiled_epoch")]
  return {"memory": {"fresh": fresh, **_in_new_process(f"measure_warm(quick={settings.quick})")}}


def report(result: dict[str, Any]) -> str:
  memory = result["memory"]
  kept = ("peak_growth_mib", "kept_mib", "kept_heap_mib", "kept_code_pages_mib")
  parts = []
  if memory["fresh"]:
    parts.append(
      "First compilation in a new process:\n\n"
      + common.markdown_table(memory["fresh"], ("way", *kept, "kept_after_trim_mib", "seconds"))
    )
  if memory["warm_runs"]:
    parts.append("Second call, after malloc_trim:\n\n" + common.markdown_table(memory["warm_runs"], ("way", *kept)))
  parts.append(
    f"Compile and run, ahead of time (one epoch stacked: {memory['stacked_epoch_bytes'] / 1024:.0f} KiB):\n\n"
    + common.markdown_table(memory["compile_run"], tuple(memory["compile_run"][0]))
  )
  return "\n\n".join(parts)
