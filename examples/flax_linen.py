"""The Full Example's model (10 -> 32 -> ReLU -> 1, RMSprop(1e-3, alpha=0.99), Huber loss with delta
2.0, diabetes data) as a Flax linen module, trained from a `TrainState` by `fit`.

A `TrainState` carries its optimizer (`tx`), so `fit` takes no optimizer argument and returns
the advanced `TrainState` (its `step` counts the updates).

Run: python examples/flax_linen.py [--quick]
"""

from __future__ import annotations

from typing import Optional
from typing import Sequence

import _shared
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.training.train_state import TrainState

import gradcore_jax as gcj
from gradcore_jax.training import fit


class MLP(nn.Module):
  """10 -> hidden -> ReLU -> 1."""

  hidden: int = _shared.HIDDEN

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(1)(nn.relu(nn.Dense(self.hidden)(x)))


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _shared.parser(__doc__).parse_args(argv)
  model = MLP()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 10)))
  state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=gcj.rmsprop(1e-3, alpha=0.99))
  state, stats = fit(state, **_shared.fit_options(args.quick))  # the TrainState brings its tx
  print(_shared.report(stats))
  print(f"TrainState.step = {int(state.step)} updates")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
