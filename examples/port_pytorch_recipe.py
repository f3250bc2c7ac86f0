"""Port a PyTorch training recipe to gradcore_jax and get the same loss curve, step for step.

The PyTorch recipe (the usual modern one, on scikit-learn's 8x8 digits):
  * an MLP 64 -> 64 -> LayerNorm -> ReLU -> 10, cross-entropy;
  * AdamW(weight_decay=0.05) with two parameter groups: no weight decay on biases and norm scales;
  * OneCycleLR(max_lr=0.01) stepped after every batch, cycling AdamW's beta1;
  * clip_grad_norm_(max_norm=1.0) before every step;
  * the optimizer's state_dict saved half-way through.

Its gradcore_jax twin starts from the same weights (copied from torch, Dense kernels transposed),
sees the same batches in the same order, and uses the same recipe in JAX form:

    schedule = gcj.schedules.one_cycle_lr(max_lr=0.01, total_steps=...)
    tx = gcj.no_decay_groups(gcj.adamw, learning_rate=schedule, b1=schedule.momentum, weight_decay=0.05)
    fit(model, tx, ..., clip_global_norm=1.0)

Both run in float64, each framework with its own autograd. The script prints the largest batch-loss
difference over the run (and the final parameters' difference) for three runs:
  1. gradcore_jax from scratch next to torch;
  2. torch's half-way `state_dict` imported with `gcj.from_torch_state_dict`, gradcore_jax finishing the run;
  3. gradcore_jax's half-way state exported with `gcj.to_torch_state_dict`, torch finishing the run.
and draws both loss curves with their difference.

Run: python examples/port_pytorch_recipe.py [--quick] [--out DIR] [--no-plot]
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any
from typing import Optional
from typing import Sequence

import jax

jax.config.update("jax_enable_x64", True)  # the comparison is in float64, as the torch side

import _shared  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import gradcore_jax as gcj  # noqa: E402

HIDDEN, CLASSES = 64, 10
BATCH = 64
MAX_LR, WEIGHT_DECAY, MAX_NORM = 0.01, 0.05, 1.0
EPOCHS, QUICK_EPOCHS = 8, 2
TOLERANCE = 1e-9  # the largest batch-loss difference this example accepts (float64)


# --------------------------------------------------------------------------------------
# The PyTorch recipe.


class TorchMLP(torch.nn.Module):
  def __init__(self) -> None:
    super().__init__()
    self.fc1 = torch.nn.Linear(64, HIDDEN)
    self.norm = torch.nn.LayerNorm(HIDDEN)
    self.fc2 = torch.nn.Linear(HIDDEN, CLASSES)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc2(torch.relu(self.norm(self.fc1(x))))


def torch_optimizer(model: TorchMLP, total_steps: int):
  """AdamW with torch's usual two groups, and OneCycleLR over the whole run."""
  decay = [p for p in model.parameters() if p.ndim > 1]
  no_decay = [p for p in model.parameters() if p.ndim <= 1]
  optimizer = torch.optim.AdamW(
      [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=MAX_LR, weight_decay=WEIGHT_DECAY
  )
  scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=MAX_LR, total_steps=total_steps)
  return optimizer, scheduler


def torch_train(model, optimizer, scheduler, loader, x, y, epochs, start_epoch=0, save_after=None):
  """The PyTorch loop; returns the batch losses and, after epoch `save_after`, a deep copy of
  `(model.state_dict(), optimizer.state_dict(), scheduler.state_dict())`."""
  losses, saved = [], None
  for epoch in range(start_epoch, start_epoch + epochs):
    order = loader.order(epoch)  # the same example order the gradcore_jax DataLoader visits
    for start in range(0, len(order), BATCH):
      rows = order[start:start + BATCH]
      optimizer.zero_grad()
      loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[rows])), torch.from_numpy(y[rows]))
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
      optimizer.step()
      scheduler.step()
      losses.append(loss.item())
    if save_after is not None and epoch + 1 == save_after:
      saved = copy.deepcopy((model.state_dict(), optimizer.state_dict(), scheduler.state_dict()))
  return np.array(losses), saved


# --------------------------------------------------------------------------------------
# The gradcore_jax twin.


class MLP(nn.Module):
  """The same network in Flax linen (torch's LayerNorm eps and two-pass variance)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Dense(HIDDEN, name="fc1")(x)
    x = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name="norm")(x)
    return nn.Dense(CLASSES, name="fc2")(nn.relu(x))


def torch_name(path: Any) -> str:
  """The torch parameter name of a Flax leaf: `fc1/kernel` -> `fc1.weight`, `norm/scale` -> `norm.weight`."""
  module, leaf = (key.key for key in path)
  return f"{module}.{'weight' if leaf in ('kernel', 'scale') else leaf}"


def flax_params(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
  """Torch module weights -> Flax params (kernels are torch's weights transposed)."""
  template = jax.eval_shape(MLP().init, jax.random.PRNGKey(0), jnp.zeros((1, 64)))["params"]

  def take(path, leaf):
    value = state_dict[torch_name(path)].detach().numpy()
    return jnp.asarray(value.T if path[-1].key == "kernel" else value)

  return jax.tree_util.tree_map_with_path(take, template)


def torch_weights(params: dict[str, Any]) -> dict[str, torch.Tensor]:
  """Flax params -> a torch `state_dict` for `TorchMLP.load_state_dict`."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {
      torch_name(path): torch.from_numpy(np.array(leaf.T if path[-1].key == "kernel" else leaf)) for path, leaf in flat
  }


def torch_order(model: TorchMLP, params: dict[str, Any]) -> dict[str, Any]:
  """Each Flax leaf's index in the torch optimizer's state_dict: torch numbers the parameters
  group after group (decay, then no_decay), each in `model.parameters()` order."""
  named = list(model.named_parameters())
  names = [n for n, p in named if p.ndim > 1] + [n for n, p in named if p.ndim <= 1]
  index = {name: i for i, name in enumerate(names)}
  return jax.tree_util.tree_map_with_path(lambda path, _: index[torch_name(path)], params)


def jax_recipe(total_steps: int):
  schedule = gcj.schedules.one_cycle_lr(max_lr=MAX_LR, total_steps=total_steps)
  return gcj.no_decay_groups(gcj.adamw, learning_rate=schedule, b1=schedule.momentum, weight_decay=WEIGHT_DECAY)


def jax_train(tx, params, loader, epochs, start_epoch=0, opt_state=None):
  result = gcj.fit(
      MLP(), tx, params=params, opt_state=opt_state, loss=gcj.losses.cross_entropy, train_loader=loader,
      epochs=epochs, start_epoch=start_epoch, clip_global_norm=MAX_NORM, progress=False,
  )
  return np.array(result.stats.batch_losses), result.model.params, result.opt_state


def largest_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in pairs)


# --------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = _shared.parser(__doc__, plots="port_pytorch_recipe")
  args = parser.parse_args(argv)
  torch.set_default_dtype(torch.float64)
  torch.manual_seed(0)

  digits = load_digits()
  x, y = (digits.data / 16.0).astype(np.float64), digits.target.astype(np.int64)
  train = np.random.default_rng(0).permutation(len(x))[: int(0.8 * len(x))]
  x, y = x[train], y[train]
  loader = gcj.DataLoader((x, y), batch_size=BATCH, shuffle=True, seed=0)
  epochs = QUICK_EPOCHS if args.quick else EPOCHS
  half = epochs // 2
  total_steps = epochs * len(loader)
  print(f"digits: {len(x)} training images, {len(loader)} batches of {BATCH} per epoch, {epochs} epochs, "
        f"{total_steps} steps; float64")

  model = TorchMLP()
  initial = copy.deepcopy(model.state_dict())
  params0 = flax_params(initial)
  order = torch_order(model, params0)

  # 1. The torch recipe, and its gradcore_jax twin from the same weights.
  optimizer, scheduler = torch_optimizer(model, total_steps)
  torch_losses, saved = torch_train(model, optimizer, scheduler, loader, x, y, epochs, save_after=half)
  tx = jax_recipe(total_steps)
  jax_losses, jax_final, _ = jax_train(tx, params0, loader, epochs)
  run1 = np.max(np.abs(jax_losses - torch_losses))
  final1 = largest_difference(jax_final, flax_params(model.state_dict()))
  print(f"1. from scratch:               largest batch-loss difference {run1:.2e}, final params {final1:.2e}")

  # 2. torch's half-way state_dict, imported: gradcore_jax finishes the run.
  weights, optimizer_state, _ = saved
  params_half = flax_params(weights)
  imported = gcj.from_torch_state_dict(optimizer_state, tx, params_half, order=order,
                                       layouts=gcj.torch_state.flax_kernel_layout)
  rest, jax_final2, _ = jax_train(tx, params_half, loader, epochs - half, start_epoch=half, opt_state=imported)
  steps_half = half * len(loader)
  run2 = np.max(np.abs(rest - torch_losses[steps_half:]))
  final2 = largest_difference(jax_final2, flax_params(model.state_dict()))
  print(f"2. torch state_dict -> gcj:    largest batch-loss difference {run2:.2e}, final params {final2:.2e}")

  # 3. gradcore_jax's half-way state, exported: torch finishes the run.
  first_half, jax_half, jax_state = jax_train(tx, params0, loader, half)
  torch_model = TorchMLP()
  torch_model.load_state_dict(torch_weights(jax_half))
  optimizer3, scheduler3 = torch_optimizer(torch_model, total_steps)
  exported = gcj.to_torch_state_dict(
      jax_state, tx, jax_half, order=order, layouts=gcj.torch_state.flax_kernel_layout,
      param_groups=optimizer3.state_dict()["param_groups"],  # keeps the keys OneCycleLR added (max_lr, ...)
  )
  optimizer3.load_state_dict(exported)
  scheduler3.load_state_dict(saved[2])  # the scheduler's own position (its state is not the optimizer's)
  torch_rest, _ = torch_train(torch_model, optimizer3, scheduler3, loader, x, y, epochs - half, start_epoch=half)
  run3 = np.max(np.abs(np.concatenate([first_half, torch_rest]) - torch_losses))
  print(f"3. gcj state -> torch:         largest batch-loss difference {run3:.2e}")

  worst = max(run1, run2, run3)
  verdict = "within" if worst <= TOLERANCE else "OUTSIDE"
  print(f"largest difference over all runs: {worst:.2e} ({verdict} the {TOLERANCE:.0e} float64 budget); "
        f"final loss torch {torch_losses[-1]:.6f}, gradcore_jax {jax_losses[-1]:.6f}")

  if not args.no_plot:
    path = plot(torch_losses, jax_losses, args.out)
    print(f"plot: {path}")
  return 0 if worst <= TOLERANCE else 1


def plot(torch_losses: np.ndarray, jax_losses: np.ndarray, out: pathlib.Path) -> pathlib.Path:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  out.mkdir(parents=True, exist_ok=True)
  steps = np.arange(1, len(torch_losses) + 1)
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=(3, 2))
  top.plot(steps, torch_losses, color="tab:orange", linewidth=3,
           label="PyTorch (AdamW groups, OneCycleLR, clip_grad_norm_)")
  top.plot(steps, jax_losses, color="black", linestyle="--", linewidth=1, label="gradcore_jax twin (drawn on top)")
  top.set_ylabel("batch loss (cross-entropy)")
  top.set_yscale("log")
  top.legend()
  top.set_title("The same recipe in PyTorch and gradcore_jax, float64")
  difference = np.abs(jax_losses - torch_losses)
  bottom.semilogy(steps, np.maximum(difference, 1e-18), color="tab:blue")
  bottom.set_ylabel("|difference| (0 drawn at 1e-18)")
  bottom.set_xlabel("update step")
  fig.tight_layout()
  path = out / "port_pytorch_recipe.png"
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


if __name__ == "__main__":
  raise SystemExit(main())
