"""One optimizer step, `params, state <- step(params, grads, state)`, in every implementation.

For each tree and optimizer the implementations run interleaved in the same rounds:

* `gcj`: the gradcore_jax optimizer, jitted, params and state donated (updated in place);
* `gcj_multi_tensor`: the same through `gradcore_jax.multi_tensor.multi_tensor` (trees
  with many leaves only);
* `optax`: Optax's closest equivalent, jitted and donated the same way;
* `torch_for_loop`, `torch_foreach`, `torch_fused`: `torch.optim` with `foreach=False`,
  `foreach=True` and `fused=True` (where PyTorch has a fused kernel), on the same values.

Reported per case: the median step time, the effective bandwidth (the bytes an ideal
single pass moves, e.g. 28 per float32 parameter for Adam: reads p, g, m, v and writes
p, m, v), that bandwidth as a share of the machine's (`benchmarks.bandwidth`), and for
JAX the seconds to trace and lower the step and to compile it ("compile" in the tables is
their sum: what a user waits for before the first step).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import time
from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import gradcore_jax as gcj
from benchmarks import bandwidth
from benchmarks import common
from gradcore_jax.multi_tensor import multi_tensor

LR = 1e-3
WEIGHT_DECAY = 1e-2
TORCH_VARIANTS = {
  "torch_for_loop": {"foreach": False},
  "torch_foreach": {"foreach": True},
  "torch_fused": {"fused": True},
}
Shapes = dict[str, Any]  # a nested dict of shape tuples


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """One optimizer in its three frameworks and the bytes an ideal step moves per float32 param."""

  name: str
  bytes_per_param: int
  ours: Callable[[], optax.GradientTransformation]
  optax: Callable[[], optax.GradientTransformation]
  torch: Callable[..., torch.optim.Optimizer]
  torch_fused: bool = True


OPTIMIZERS = (
  Optimizer("sgd", 12, lambda: gcj.sgd(LR), lambda: optax.sgd(LR), functools.partial(torch.optim.SGD, lr=LR)),
  Optimizer(
    "sgd_momentum",
    20,
    lambda: gcj.sgd(LR, momentum=0.9),
    lambda: optax.sgd(LR, momentum=0.9),
    functools.partial(torch.optim.SGD, lr=LR, momentum=0.9),
  ),
  Optimizer(
    "rmsprop",
    20,
    lambda: gcj.rmsprop(LR),
    lambda: optax.rmsprop(LR, decay=0.99, eps=1e-8, eps_in_sqrt=False),
    functools.partial(torch.optim.RMSprop, lr=LR),
    torch_fused=False,
  ),
  Optimizer("adam", 28, lambda: gcj.adam(LR), lambda: optax.adam(LR), functools.partial(torch.optim.Adam, lr=LR)),
  Optimizer(
    "adamw",
    28,
    lambda: gcj.adamw(LR, weight_decay=WEIGHT_DECAY),
    lambda: optax.adamw(LR, weight_decay=WEIGHT_DECAY),
    functools.partial(torch.optim.AdamW, lr=LR, weight_decay=WEIGHT_DECAY),
  ),
)


def optimizers(settings: common.Settings) -> tuple[Optimizer, ...]:
  """All five in a full run; Adam alone (the optimizer of the goals) in a quick one."""
  return tuple(o for o in OPTIMIZERS if o.name == "adam") if settings.quick else OPTIMIZERS


@dataclasses.dataclass(frozen=True)
class Tree:
  """A parameter tree to update; `packed` also runs it through `multi_tensor`."""

  name: str
  shapes: Shapes
  packed: bool = False


def transformer_shapes(d_model: int, layers: int, vocab: int, context: int) -> Shapes:
  """The params of a small pre-norm transformer, named and shaped as a Flax model's."""

  def dense(n_in: int, n_out: int) -> Shapes:
    return {"kernel": (n_in, n_out), "bias": (n_out,)}

  def norm() -> Shapes:
    return {"scale": (d_model,), "bias": (d_model,)}

  block = {
    "norm_1": norm(),
    "attention": {"qkv": dense(d_model, 3 * d_model), "out": dense(d_model, d_model)},
    "norm_2": norm(),
    "mlp": {"up": dense(d_model, 4 * d_model), "down": dense(4 * d_model, d_model)},
  }
  tree: Shapes = {"embed": (vocab, d_model), "position": (context, d_model), "final_norm": norm()}
  tree.update({f"block_{i:02d}": block for i in range(layers)})
  return tree


def trees(settings: common.Settings) -> list[Tree]:
  """(a) one large leaf, its 1M-element reference, (b) many small leaves, (c) a transformer."""
  if settings.quick:
    return [
      Tree("one_leaf_90k", {"w": (300, 300)}),
      Tree("one_leaf_20k", {"w": (20, 1000)}),
      Tree("leaves_20x1k", _many(20, 1000), packed=True),
      Tree("transformer_tiny", transformer_shapes(32, 2, 64, 16), packed=True),
    ]
  return [
    Tree("one_leaf_25m", {"w": (5000, 5000)}),
    Tree("one_leaf_1m", {"w": (1000, 1000)}),
    Tree("leaves_1000x1k", _many(1000, 1000), packed=True),
    Tree("transformer_10m", transformer_shapes(256, 12, 2048, 256), packed=True),
  ]


def _many(count: int, size: int) -> Shapes:
  return {f"leaf_{i:04d}": (size,) for i in range(count)}


def _is_shape(node: Any) -> bool:
  return isinstance(node, tuple)


def random_tree(shapes: Shapes, seed: int) -> Any:
  """Float32 NumPy arrays of the given shapes, reproducible from `seed`."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda shape: (0.1 * rng.standard_normal(shape)).astype(np.float32), shapes, is_leaf=_is_shape)


# --------------------------------------------------------------------------------------
# Cases: each builds its state, compiles, and returns a runner for one step.


@dataclasses.dataclass
class Case:
  """A ready step; for JAX, the seconds it took to trace and lower, and to compile."""

  run: common.Runner
  trace_s: Optional[float] = None
  compile_s: Optional[float] = None

  @property
  def build_s(self) -> Optional[float]:
    return None if self.compile_s is None or self.trace_s is None else self.trace_s + self.compile_s


def jax_case(tx: optax.GradientTransformation, params: Any, grads: Any) -> Case:
  """A jitted, donating step of `tx`; `params` are copied, `grads` shared and not donated."""

  def step(params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = jax.tree.map(jnp.array, params)
  state = tx.init(params)
  started = time.perf_counter()
  lowered = jax.jit(step, donate_argnums=(0, 2)).lower(params, grads, state)
  traced = time.perf_counter()
  compiled = lowered.compile()
  carry = [params, state]

  def run() -> None:
    carry[0], carry[1] = compiled(carry[0], grads, carry[1])
    jax.block_until_ready(carry)

  return Case(run, trace_s=traced - started, compile_s=time.perf_counter() - traced)


def torch_case(optimizer: Optimizer, variant: str, params: Any, grads: list[torch.Tensor]) -> Case:
  tensors = [torch.nn.Parameter(torch.from_numpy(leaf.copy())) for leaf in jax.tree.leaves(params)]
  for tensor, grad in zip(tensors, grads, strict=True):
    tensor.grad = grad
  return Case(optimizer.torch(tensors, **TORCH_VARIANTS[variant]).step)


def cases(tree: Tree, optimizer: Optimizer, params: Any, grads: Any) -> dict[str, Case]:
  """Every implementation of `optimizer` on `tree`, ready to run."""
  jax_grads = jax.tree.map(jnp.asarray, grads)
  built = {"gcj": jax_case(optimizer.ours(), params, jax_grads)}
  if tree.packed:
    built["gcj_multi_tensor"] = jax_case(multi_tensor(optimizer.ours()), params, jax_grads)
  built["optax"] = jax_case(optimizer.optax(), params, jax_grads)
  torch_grads = [torch.from_numpy(leaf) for leaf in jax.tree.leaves(grads)]
  for variant in TORCH_VARIANTS:
    if variant != "torch_fused" or optimizer.torch_fused:
      built[variant] = torch_case(optimizer, variant, params, torch_grads)
  return built


# --------------------------------------------------------------------------------------
# Running and reporting.


def run_tree(tree: Tree, settings: common.Settings) -> list[dict[str, Any]]:
  """Every optimizer and implementation on `tree` (bandwidth shares are added by `run`)."""
  params, grads = random_tree(tree.shapes, seed=0), random_tree(tree.shapes, seed=1)
  leaves = jax.tree.leaves(params)
  n_params = sum(leaf.size for leaf in leaves)
  records = []
  for optimizer in optimizers(settings):
    built = cases(tree, optimizer, params, grads)
    times = common.interleaved({name: case.run for name, case in built.items()}, settings)
    for name, case in built.items():
      records.append(
        {
          "tree": tree.name,
          "optimizer": optimizer.name,
          "impl": name,
          "params": n_params,
          "leaves": len(leaves),
          "step_ms": times[name] * 1e3,
          "gbps": optimizer.bytes_per_param * n_params / times[name] / 1e9,
          "trace_s": case.trace_s,
          "compile_s": case.compile_s,
          "build_s": case.build_s,
        }
      )
    del built
    gc.collect()
  return records


def packing_sweep(settings: common.Settings) -> list[dict[str, Any]]:
  """Adam on equal leaves of growing size: where packing into flat buffers stops paying."""
  total = 1 << 16 if settings.quick else 1 << 21
  sizes = [1 << 10] if settings.quick else [1 << 10, 1 << 12, 1 << 13, 1 << 14, 1 << 16, 1 << 18, 1 << 20]
  records = []
  for size in sizes:
    shapes = _many(total // size, size)
    params = random_tree(shapes, seed=0)
    grads = jax.tree.map(jnp.asarray, random_tree(shapes, seed=1))
    tx = gcj.adam(LR)
    built = {
      "gcj": jax_case(tx, params, grads),
      "gcj_multi_tensor": jax_case(multi_tensor(tx, max_leaf_size=size), params, grads),
    }
    times = common.interleaved({name: case.run for name, case in built.items()}, settings)
    records.append(
      {
        "leaf_size": size,
        "leaves": total // size,
        "gcj_ms": times["gcj"] * 1e3,
        "multi_tensor_ms": times["gcj_multi_tensor"] * 1e3,
        "gcj_compile_s": built["gcj"].build_s,
        "multi_tensor_compile_s": built["gcj_multi_tensor"].build_s,
      }
    )
  return records


def run(settings: common.Settings) -> dict[str, Any]:
  """The whole update-step benchmark, bracketed by two bandwidth measurements."""
  before = bandwidth.measure(settings)
  records = [record for tree in trees(settings) for record in run_tree(tree, settings)]
  after = bandwidth.measure(settings)
  reference = max(before["reference_gbps"], after["reference_gbps"])
  for record in records:
    record["pct_bandwidth"] = 100 * record["gbps"] / reference
  return {
    "bandwidth": {"before": before, "after": after, "reference_gbps": reference},
    "trees": [tree.name for tree in trees(settings)],
    "steps": records,
    "packing_sweep": packing_sweep(settings),
  }


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per tree and optimizer: ours against Optax, PyTorch and the bandwidth."""
  rows = []
  by_key: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
  for record in result["steps"]:
    by_key.setdefault((record["tree"], record["optimizer"]), {})[record["impl"]] = record
  for (tree, optimizer), impls in by_key.items():
    ours, torch_best = impls["gcj"], _torch_reference(impls)
    packed = impls.get("gcj_multi_tensor")
    rows.append(
      {
        "tree": tree,
        "optimizer": optimizer,
        "ours_ms": ours["step_ms"],
        "ours/optax": common.ratio(ours["step_ms"], impls["optax"]["step_ms"]),
        "torch_ref": torch_best["impl"],
        "ours/torch": common.ratio(ours["step_ms"], torch_best["step_ms"]),
        "ours_%bw": ours["pct_bandwidth"],
        "torch_%bw": torch_best["pct_bandwidth"],
        "ours_compile_s": ours["build_s"],
        "optax_compile_s": impls["optax"]["build_s"],
        "mt_ms": packed["step_ms"] if packed else None,
        "mt/ours": common.ratio(packed["step_ms"], ours["step_ms"]) if packed else None,
        "mt_compile_s": packed["build_s"] if packed else None,
      }
    )
  return rows


def _torch_reference(impls: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """PyTorch's fused step where it has one, else its faster of for-loop and foreach."""
  if "torch_fused" in impls:
    return impls["torch_fused"]
  return min((impls[name] for name in ("torch_for_loop", "torch_foreach")), key=lambda r: r["step_ms"])


SUMMARY_COLUMNS = (
  "tree",
  "optimizer",
  "ours_ms",
  "ours/optax",
  "torch_ref",
  "ours/torch",
  "ours_%bw",
  "torch_%bw",
  "ours_compile_s",
  "optax_compile_s",
  "mt_ms",
  "mt/ours",
  "mt_compile_s",
)


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
  """The issue's update-step goals, each with the figure seen and whether it is met."""
  rows = {(r["tree"], r["optimizer"]): r for r in summary(result)}
  one, ref, many = result["trees"][:3]
  big, small = rows[(one, "adam")], rows[(many, "adam")]
  reference_ms = rows[(ref, "adam")]["ours_ms"]
  best_many_ms = min(small["ours_ms"], small["mt_ms"])
  best_compile = min(small["ours_compile_s"], small["mt_compile_s"])
  checks = [
    (f"{one} Adam: ours/Optax <= 1.0", big["ours/optax"], big["ours/optax"] <= 1.0),
    (f"{one} Adam: >= 80% of bandwidth", big["ours_%bw"], big["ours_%bw"] >= 80),
    (f"{one} Adam: ours/torch fused <= 1.0", big["ours/torch"], big["ours/torch"] <= 1.0),
    (f"{many} Adam: step / {ref} step <= 1.5", best_many_ms / reference_ms, best_many_ms <= 1.5 * reference_ms),
    (f"{many} Adam: compile <= 1 s", best_compile, best_compile <= 1.0),
  ]
  return [{"goal": goal, "seen": seen, "met": met} for goal, seen, met in checks]


def report(result: dict[str, Any]) -> str:
  parts = [
    f"Bandwidth reference: {result['bandwidth']['reference_gbps']:.1f} GB/s",
    common.markdown_table(summary(result), SUMMARY_COLUMNS),
    common.markdown_table(goals(result), ("goal", "seen", "met")),
    common.markdown_table(result["packing_sweep"], tuple(result["packing_sweep"][0])),
  ]
  return "\n\n".join(parts)
