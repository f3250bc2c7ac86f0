"""How XLA's CPU backend threads a large elementwise update, and what changes it.

XLA:CPU splits every large loop fusion into as many partitions as the machine has cores
(`outer_dimension_partitions` in the compiled HLO) and runs them on its intra-op pool.
Adam compiles to three such loops per leaf (new `m`, new `v`, then the params, which
read `m` and `v` back): XLA:CPU has no multi-output loop fusion, so a step moves about
40 bytes per float32 parameter where a fused kernel (PyTorch's) moves 28.

Each variant runs the 25M-parameter Adam step in a fresh process (so that CPU affinity
and `XLA_FLAGS` take effect), interleaved there with PyTorch's fused Adam on the same
threads:

* `default`: all cores;
* `one_core`: the process pinned to one core, PyTorch with one thread;
* `legacy_emitters`: `compiler_options={"xla_cpu_use_fusion_emitters": False}`;
* `eigen_single_thread`: `XLA_FLAGS=--xla_cpu_multi_thread_eigen=false` (Eigen's
  threads serve dots and convolutions, not loop fusions);
* `cache_blocked`: the update split into 256K-element chunks in a `fori_loop`, so that
  `m` and `v` are read back from cache (needs
  `xla_cpu_copy_insertion_use_region_analysis` to update in place).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import gradcore_jax as gcj
from benchmarks import common
from gradcore_jax import transforms

VARIANTS = ("default", "one_core", "legacy_emitters", "eigen_single_thread", "cache_blocked")
CHUNK = 1 << 18
B1, B2, EPS, LR = 0.9, 0.999, 1e-8, 1e-3


def _adam_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
  def step(params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def _cache_blocked_adam(n: int) -> Callable[..., Any]:
  """Adam on a flat leaf, chunk by chunk; the same state as `gradcore_jax.adam`'s."""

  def step(params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
    adam = state[0]
    count = jnp.asarray(optax.safe_increment(adam.count))
    bc1, bc2 = transforms.bias_correction(B1, count), transforms.bias_correction(B2, count)

    def chunk(i: Any, carry: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
      p, m, v = carry
      start = (i * CHUNK,)
      read = lambda x: jax.lax.dynamic_slice(x, start, (CHUNK,), allow_negative_indices=False)  # noqa: E731
      g = read(grads)
      m_new = B1 * read(m) + (1 - B1) * g
      v_new = B2 * read(v) + (1 - B2) * g * g
      m_new, v_new = jax.lax.optimization_barrier((m_new, v_new))  # keep them in one chunk buffer
      p_new = read(p) - LR * (m_new / bc1) / (jnp.sqrt(v_new) / jnp.sqrt(bc2) + EPS)
      write = lambda x, y: jax.lax.dynamic_update_slice(x, y, start)  # noqa: E731
      return write(p, p_new), write(m, m_new), write(v, v_new)

    p, m, v = jax.lax.fori_loop(0, n // CHUNK, chunk, (params, adam.mu, adam.nu))
    return p, (adam._replace(count=count, mu=m, nu=v),) + tuple(state[1:])

  return step


def measure(variant: str, n: int, rounds: int) -> dict[str, Any]:
  """Runs in the child process: our Adam step and PyTorch's fused Adam, interleaved."""
  if variant == "one_core":
    torch.set_num_threads(1)
  n = n // CHUNK * CHUNK
  rng = np.random.default_rng(0)
  params_np, grads_np = (0.1 * rng.standard_normal((2, n))).astype(np.float32)
  tx = gcj.adam(LR)
  grads = jnp.asarray(grads_np)
  step = _cache_blocked_adam(n) if variant == "cache_blocked" else _adam_step(tx)
  options = _compiler_options(variant)
  params = jnp.asarray(params_np)
  state = tx.init(params)
  compiled = jax.jit(step, donate_argnums=(0, 2)).lower(params, grads, state).compile(compiler_options=options)
  carry = [params, state]

  def ours() -> None:
    carry[0], carry[1] = compiled(carry[0], grads, carry[1])
    jax.block_until_ready(carry)

  weights = torch.nn.Parameter(torch.from_numpy(params_np.copy()))
  weights.grad = torch.from_numpy(grads_np)
  fused = torch.optim.Adam([weights], lr=LR, fused=True)
  times = common.interleaved({"ours": ours, "torch_fused": fused.step}, common.Settings(False, rounds, 0.05))
  return {
    "variant": variant,
    "params": n,
    "ours_ms": times["ours"] * 1e3,
    "torch_fused_ms": times["torch_fused"] * 1e3,
    "ours/torch": times["ours"] / times["torch_fused"],
    "ours_gbps": 28 * n / times["ours"] / 1e9,
    "torch_threads": torch.get_num_threads(),
    "affinity": sorted(os.sched_getaffinity(0)),
  }


def _compiler_options(variant: str) -> Optional[dict[str, Any]]:
  if variant == "legacy_emitters":
    return {"xla_cpu_use_fusion_emitters": False}
  if variant == "cache_blocked":
    return {"xla_cpu_copy_insertion_use_region_analysis": True}
  return None


def _child_environment(variant: str) -> dict[str, str]:
  env = dict(os.environ)
  if variant == "eigen_single_thread":
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
  return env


def run_variant(variant: str, n: int, rounds: int) -> dict[str, Any]:
  """`measure(variant)` in a fresh Python process (pinned to one core for `one_core`)."""
  code = (
    "import json, os\n"
    f"if {variant!r} == 'one_core': os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})\n"
    "from benchmarks import xla_threads\n"
    f"print(json.dumps(xla_threads.measure({variant!r}, {n}, {rounds})))\n"
  )
  done = subprocess.run(
    [sys.executable, "-c", code], env=_child_environment(variant), capture_output=True, text=True, check=True
  )
  return json.loads(done.stdout.strip().splitlines()[-1])


def run(settings: common.Settings) -> dict[str, Any]:
  """Every variant in its own process; a quick run measures the default in this one."""
  if settings.quick:
    return {"xla_threads": [measure("default", 1 << 20, settings.rounds)]}
  return {"xla_threads": [run_variant(variant, 25_000_000, settings.rounds) for variant in VARIANTS]}


COLUMNS = ("variant", "params", "ours_ms", "torch_fused_ms", "ours/torch", "ours_gbps", "torch_threads", "affinity")


def report(result: dict[str, Any]) -> str:
  return common.markdown_table(result["xla_threads"], COLUMNS)
