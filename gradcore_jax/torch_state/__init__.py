"""The optimizer `state_dict` bridge: torch.optim state <-> gradcore_jax optimizer state.

`from_torch_state_dict(state_dict, tx, params)` turns a torch optimizer's `state_dict()`
into `tx`'s state for `params`, so a run started in PyTorch continues in JAX exactly
(the next update equals torch's next `step()`); `to_torch_state_dict(opt_state, tx,
params)` goes the other way and returns a dict `optimizer.load_state_dict` accepts.

How the pieces are found. The bridge never relies on where a block sits in `tx`'s
chain: it walks the (nested) Optax state — tuples of `optax.chain`, `MaskedState`,
`PartitionState` (the groups of `gcj.param_groups`) and `InjectStatefulHyperparamsState`
(`optax.inject_hyperparams`) — and recognises block states by their type through a
registry, `StateConverter`s, each naming the torch per-parameter keys of its fields
(`ScaleByAdamState.mu` <-> `'exp_avg'`, ...) and the torch optimizer it belongs to
(`TorchOptimizer`: its param-group keys, whether it records `'step'`). A new optimizer
only registers its state type with `register_state_converter`.

Leaves and torch indices. torch numbers the parameters `0..n-1` through its groups in
order (`state_dict()['param_groups'][g]['params']`); `order` says which leaf is which
torch index. Tensors and leaves may be laid out differently (torch `Linear.weight` is
`(out, in)`, Flax `Dense.kernel` `(in, out)`): `layouts` says how, per leaf.

torch is not a dependency: a `state_dict` may hold torch tensors (converted through
their `.numpy()`, torch itself is never imported for that) or NumPy arrays and Python
numbers; `to_torch_state_dict` imports torch only to build tensors (`as_numpy=True`
avoids it).
"""

from __future__ import annotations

from gradcore_jax.torch_state._builtin_converters import ADADELTA as ADADELTA
from gradcore_jax.torch_state._builtin_converters import ADAFACTOR as ADAFACTOR
from gradcore_jax.torch_state._builtin_converters import ADAGRAD as ADAGRAD
from gradcore_jax.torch_state._builtin_converters import ADAM as ADAM
from gradcore_jax.torch_state._builtin_converters import ADAMAX as ADAMAX
from gradcore_jax.torch_state._builtin_converters import ASGD as ASGD
from gradcore_jax.torch_state._builtin_converters import MUON as MUON
from gradcore_jax.torch_state._builtin_converters import NADAM as NADAM
from gradcore_jax.torch_state._builtin_converters import RADAM as RADAM
from gradcore_jax.torch_state._builtin_converters import RMSPROP as RMSPROP
from gradcore_jax.torch_state._builtin_converters import RPROP as RPROP
from gradcore_jax.torch_state._builtin_converters import SGD as SGD
from gradcore_jax.torch_state._export import to_torch_state_dict
from gradcore_jax.torch_state._import import from_torch_state_dict
from gradcore_jax.torch_state._layout import Layout
from gradcore_jax.torch_state._layout import flax_kernel_layout
from gradcore_jax.torch_state._registry import _CONVERTERS as _CONVERTERS  # the registry (tests unregister from it)
from gradcore_jax.torch_state._registry import REQUIRED
from gradcore_jax.torch_state._registry import StateConverter
from gradcore_jax.torch_state._registry import TorchOptimizer
from gradcore_jax.torch_state._registry import register_state_converter

__all__ = [
  "Layout",
  "REQUIRED",
  "StateConverter",
  "TorchOptimizer",
  "flax_kernel_layout",
  "from_torch_state_dict",
  "register_state_converter",
  "to_torch_state_dict",
]
