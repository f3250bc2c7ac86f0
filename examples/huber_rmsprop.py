"""The RMSprop page's "Full Example" in JAX: an MLP trained by RMSprop(lr=1e-3, alpha=0.99) on the
Huber loss with delta 2.0, through the data loader and `fit`, on scikit-learn's diabetes data.

    gradientcore (C++)                                        gradcore_jax
    optim::RMSprop rms(perm, seq.parameters(), 0.001f, 0.99f)  tx = gcj.rmsprop(1e-3, alpha=0.99)
    nn::HuberLoss criterion(2.0f)                              loss = partial(losses.huber, delta=2.0)
    TrainingStats stats = trainer.fit_dataloader(loader, 100)  _, stats = fit(mlp, tx, ..., epochs=100)

Run: python examples/huber_rmsprop.py [--quick]
"""

from __future__ import annotations

from typing import Optional
from typing import Sequence

import _shared
import numpy as np

import gradcore_jax as gcj
from gradcore_jax import experiments
from gradcore_jax.training import fit


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _shared.parser(__doc__).parse_args(argv)
  params = experiments.init_mlp(np.random.default_rng(0), (10, _shared.HIDDEN, 1))  # 10 -> 32 -> ReLU -> 1
  tx = gcj.rmsprop(1e-3, alpha=0.99)
  memory = gcj.state_memory(tx.init(params), params)
  print(f"RMSprop state: {memory.state_bytes:,} bytes = {memory.multiple:.2f}x the parameters (one average each)")
  # loss=partial(losses.huber, delta=2.0), train_loader=DataLoader(diabetes, batch_size=32, shuffle=True),
  # epochs=100, and the test set evaluated after every epoch:
  params, stats = fit(experiments.mlp, tx, params=params, **_shared.fit_options(args.quick))
  print(_shared.report(stats))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
