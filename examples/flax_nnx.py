"""The Full Example's model (10 -> 32 -> ReLU -> 1, RMSprop(1e-3, alpha=0.99), Huber loss with delta
2.0, diabetes data) as a Flax NNX module, trained with an `nnx.Optimizer` by `fit`.

`fit` updates the module and the `nnx.Optimizer` in place (its `step` counts the updates).

Run: python examples/flax_nnx.py [--quick]
"""

from __future__ import annotations

from typing import Optional
from typing import Sequence

import _shared
import jax
from flax import nnx

import gradcore_jax as gcj
from gradcore_jax.training import fit


class MLP(nnx.Module):
  """10 -> hidden -> ReLU -> 1."""

  def __init__(self, hidden: int, *, rngs: nnx.Rngs) -> None:
    self.hidden = nnx.Linear(10, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(nnx.relu(self.hidden(x)))


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _shared.parser(__doc__).parse_args(argv)
  model = MLP(_shared.HIDDEN, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, gcj.rmsprop(1e-3, alpha=0.99), wrt=nnx.Param)
  _, stats = fit(model, optimizer, **_shared.fit_options(args.quick))  # updates model and optimizer in place
  print(_shared.report(stats))
  print(f"nnx.Optimizer.step = {int(optimizer.step[...])} updates")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
