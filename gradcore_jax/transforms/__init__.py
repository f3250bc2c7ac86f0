"""Building blocks: small `GradientTransformation`s that every optimizer is chained from.

Each block does one thing of PyTorch's `torch.optim` update, in the order torch applies
it, so that an optimizer is a short `optax.chain`:

    maximize -> coupled weight decay -> preconditioner / momentum
             -> decoupled weight decay -> learning rate

Conventions shared by every block:

* State is a NamedTuple of arrays; leaves shaped like the params keep the params' dtype
  and sharding, scalar counters are int32. Dtypes never change across an update, so
  blocks work under `lax.cond`, `optax.MultiSteps` and `optax.inject_hyperparams`.
* Updates keep the gradient's dtype (bf16 gradients give bf16 updates) even when a
  hyperparameter is an injected float32 array.
* A `None` gradient leaf gets a `None` update and leaves its state untouched; masked
  leaves (`optax.MaskedNode`) are empty subtrees and pass through.
* Momentum buffers never contain the learning rate; the learning rate is applied last,
  exactly as torch does, so trajectories match torch under any schedule. Two blocks hold
  torch's own step sizes instead, as torch does: `scale_by_rprop` (per-element step sizes
  that start at the learning rate) and `scale_by_asgd` (its decaying `eta`); their
  optimizers end with a scale of -1.
"""

from __future__ import annotations

from gradcore_jax.transforms._asgd import ScaleByAsgdState
from gradcore_jax.transforms._asgd import asgd_average
from gradcore_jax.transforms._asgd import scale_by_asgd
from gradcore_jax.transforms._clipping import ClipGradNormState
from gradcore_jax.transforms._clipping import clip_by_torch_norm
from gradcore_jax.transforms._clipping import clip_grad_norm
from gradcore_jax.transforms._clipping import clip_grad_value
from gradcore_jax.transforms._clipping import total_norm
from gradcore_jax.transforms._decay import coupled_weight_decay
from gradcore_jax.transforms._decay import decoupled_weight_decay
from gradcore_jax.transforms._decay import inverse_time_decay
from gradcore_jax.transforms._factored import ScaleByAdafactorState
from gradcore_jax.transforms._factored import scale_by_adafactor
from gradcore_jax.transforms._formulas import bias_correction
from gradcore_jax.transforms._formulas import lerp
from gradcore_jax.transforms._formulas import rms_denominator
from gradcore_jax.transforms._moments import ScaleByAdadeltaState
from gradcore_jax.transforms._moments import ScaleByAdagradState
from gradcore_jax.transforms._moments import ScaleByAdamaxState
from gradcore_jax.transforms._moments import ScaleByAdamState
from gradcore_jax.transforms._moments import ScaleByNadamState
from gradcore_jax.transforms._moments import ScaleByRadamState
from gradcore_jax.transforms._moments import ScaleByRmsState
from gradcore_jax.transforms._moments import scale_by_adadelta
from gradcore_jax.transforms._moments import scale_by_adagrad
from gradcore_jax.transforms._moments import scale_by_adam
from gradcore_jax.transforms._moments import scale_by_adamax
from gradcore_jax.transforms._moments import scale_by_nadam
from gradcore_jax.transforms._moments import scale_by_radam
from gradcore_jax.transforms._moments import scale_by_rms
from gradcore_jax.transforms._momentum import EmaMomentumState
from gradcore_jax.transforms._momentum import TorchMomentumState
from gradcore_jax.transforms._momentum import ema_momentum
from gradcore_jax.transforms._momentum import torch_momentum
from gradcore_jax.transforms._orthogonal import ScaleByMuonState
from gradcore_jax.transforms._orthogonal import adjusted_lr_ratio
from gradcore_jax.transforms._orthogonal import newton_schulz
from gradcore_jax.transforms._orthogonal import scale_by_muon
from gradcore_jax.transforms._scaling import ScaleByLearningRateState
from gradcore_jax.transforms._scaling import maximize
from gradcore_jax.transforms._scaling import scale_by_learning_rate
from gradcore_jax.transforms._sign import ScaleByRpropState
from gradcore_jax.transforms._sign import scale_by_rprop

__all__ = [
  "ClipGradNormState",
  "EmaMomentumState",
  "ScaleByAdadeltaState",
  "ScaleByAdafactorState",
  "ScaleByAdagradState",
  "ScaleByAdamState",
  "ScaleByAdamaxState",
  "ScaleByAsgdState",
  "ScaleByLearningRateState",
  "ScaleByMuonState",
  "ScaleByNadamState",
  "ScaleByRadamState",
  "ScaleByRmsState",
  "ScaleByRpropState",
  "TorchMomentumState",
  "adjusted_lr_ratio",
  "asgd_average",
  "bias_correction",
  "clip_by_torch_norm",
  "clip_grad_norm",
  "clip_grad_value",
  "coupled_weight_decay",
  "decoupled_weight_decay",
  "ema_momentum",
  "inverse_time_decay",
  "lerp",
  "maximize",
  "newton_schulz",
  "rms_denominator",
  "scale_by_adadelta",
  "scale_by_adafactor",
  "scale_by_adagrad",
  "scale_by_adam",
  "scale_by_adamax",
  "scale_by_asgd",
  "scale_by_learning_rate",
  "scale_by_muon",
  "scale_by_nadam",
  "scale_by_radam",
  "scale_by_rms",
  "scale_by_rprop",
  "torch_momentum",
  "total_norm",
]
