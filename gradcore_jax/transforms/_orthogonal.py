"""Orthogonalised momentum: torch's Muon, a Newton-Schulz iteration in bfloat16 on 2-D momentum buffers."""

from __future__ import annotations

import math
from typing import Any
from typing import NamedTuple
from typing import Optional
from typing import Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from gradcore_jax import _checks
from gradcore_jax._typing import Array
from gradcore_jax._typing import PyTree
from gradcore_jax._typing import Scalar
from gradcore_jax.transforms._formulas import lerp
from gradcore_jax.transforms._formulas import map_state
from gradcore_jax.transforms._formulas import map_updates
from gradcore_jax.transforms._formulas import zeros_like

GradientTransformation = optax.GradientTransformationExtraArgs

MUON_NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)
"""Torch's quintic Newton-Schulz coefficients `(a, b, c)` (Keller Jordan's)."""

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
"""The learning-rate adjustments torch's Muon accepts (`None` is `"original"`)."""


class ScaleByMuonState(NamedTuple):
  """Torch's Muon state: one momentum buffer per (2-D) leaf, in the leaf's dtype.

  Attributes:
    momentum_buffer: the moving average `lerp(buf, g, 1 - momentum)` of the gradients
      (torch's `momentum_buffer`), like the params; 0 at first.
  """

  momentum_buffer: PyTree


def newton_schulz(
  x: Array, ns_coefficients: Sequence[Scalar] = MUON_NS_COEFFICIENTS, ns_steps: Any = 5, eps: Scalar = 1e-7
) -> Array:
  """Torch's Newton-Schulz orthogonalisation of a matrix, in bfloat16 as torch runs it.

  `X = bf16(x)`, transposed when it has more rows than columns; `X <- X / max(||X||_F, eps)`;
  then `ns_steps` times `A = X X^T`, `B = b A + c A A`, `X <- a X + B X`; transposed back.
  Every product accumulates in float32 and every intermediate is rounded to bfloat16, as
  torch's CPU kernels do (`addmm` rounds `beta*C + alpha*A@B` once). The result is bfloat16
  and approximates `U V^T` of the SVD `x = U S V^T` (singular values land near 0.7-1.2).
  A matrix sharded over an Explicit mesh axis is gathered (`jax.sharding.reshard`) for the
  iteration and the result sharded back like `x`.

  Args:
    x: a 2-D array.
    ns_coefficients: the quintic's `(a, b, c)`.
    ns_steps: the number of iterations, a Python int or an int array (traced is fine).
    eps: floor of the Frobenius norm the input is divided by.

  Returns:
    A bfloat16 array shaped like `x`.
  """
  if jnp.ndim(x) != 2:
    raise ValueError(f"newton_schulz orthogonalises 2-D matrices only, got shape {jnp.shape(x)}.")
  a, b, c = (jnp.asarray(v).astype(jnp.float32) for v in _check_coefficients(ns_coefficients))
  ortho = jnp.asarray(x).astype(jnp.bfloat16)
  spec = _explicit_spec(ortho)
  if spec is not None:
    ortho = jax.sharding.reshard(ortho, PartitionSpec())
  transposed = ortho.shape[0] > ortho.shape[1]
  if transposed:
    ortho = ortho.T
  norm = jnp.linalg.norm(ortho.astype(jnp.float32)).astype(jnp.bfloat16)
  norm = jnp.maximum(norm, jnp.asarray(eps).astype(jnp.bfloat16))
  ortho = _bf16(ortho.astype(jnp.float32) / norm.astype(jnp.float32))

  def iteration(_, ortho):
    gram = _bf16(_matmul(ortho, ortho.T))
    gram_update = _bf16(b * gram.astype(jnp.float32) + c * _matmul(gram, gram))
    return _bf16(a * ortho.astype(jnp.float32) + _matmul(gram_update, ortho))

  ortho = jax.lax.fori_loop(0, ns_steps, iteration, ortho)
  ortho = ortho.T if transposed else ortho
  return ortho if spec is None else jax.sharding.reshard(ortho, spec)


def _explicit_spec(x: Array) -> Optional[PartitionSpec]:
  """The `PartitionSpec` in `x`'s type when it shards `x` over an Explicit mesh axis, else None.

  Under `jax.sharding.AxisType.Explicit` the products `X X^T` of a matrix sharded by rows
  would be sharded over both axes by one mesh axis, which JAX refuses; `newton_schulz`
  gathers such a matrix first and shards the result back. (Under Auto axes the type
  carries no sharding and XLA places the products itself.)
  """
  spec = getattr(jax.typeof(x).sharding, "spec", None)
  if spec is None or all(entry is None for entry in spec):
    return None
  return spec


def _matmul(x: Array, y: Array) -> Array:
  """A bfloat16 product with float32 accumulation (float32 result)."""
  return jnp.matmul(x, y, preferred_element_type=jnp.float32, precision=jax.lax.Precision.HIGHEST)


def _bf16(x: Array) -> Array:
  return x.astype(jnp.bfloat16)


def _check_coefficients(ns_coefficients: Sequence[Scalar]) -> tuple:
  try:
    count = len(ns_coefficients)
  except TypeError:
    count = None
  if count != 3:
    raise ValueError(f"ns_coefficients must be a tuple of three numbers (a, b, c), got {ns_coefficients!r}.")
  for index, value in enumerate(ns_coefficients):
    _checks.concrete_value(f"ns_coefficients[{index}]", value)  # a number or a scalar array
  return tuple(ns_coefficients)


def adjusted_lr_ratio(shape: Sequence[int], adjust_lr_fn: Optional[str] = None) -> float:
  """Torch's Muon learning-rate factor for a matrix of `shape = (A, B)`.

  `"original"` (and `None`): `sqrt(max(1, A/B))` (Keller Jordan's); `"match_rms_adamw"`:
  `0.2 * sqrt(max(A, B))` (Moonshot's, to reuse AdamW's learning rate and weight decay).
  Rows and columns are the array's own: a torch `Linear` weight is `(out, in)`, a Flax
  `Dense` kernel `(in, out)`.

  Args:
    shape: the matrix's shape `(A, B)`.
    adjust_lr_fn: `None`, `"original"` or `"match_rms_adamw"`, as torch's `Muon(adjust_lr_fn=...)`.

  Returns:
    The factor the learning rate is multiplied by, a Python float.
  """
  rows, cols = shape[:2]
  if adjust_lr_fn is None or adjust_lr_fn == "original":
    return math.sqrt(max(1, rows / cols))
  if adjust_lr_fn == "match_rms_adamw":
    return 0.2 * math.sqrt(max(rows, cols))
  raise ValueError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS}, got {adjust_lr_fn!r}.")


def check_muon_hyperparameters(
  momentum: Scalar, ns_coefficients: Sequence[Scalar], eps: Scalar, ns_steps: Any, adjust_lr_fn: Optional[str]
) -> None:
  """Torch's checks (`momentum >= 0`, a known `adjust_lr_fn`, three coefficients, `ns_steps < 100`), and `eps >= 0`."""
  _checks.check_non_negative("momentum", momentum)
  _checks.check_non_negative("eps", eps)
  _check_coefficients(ns_coefficients)
  if adjust_lr_fn not in ADJUST_LR_FNS:
    raise ValueError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS}, got {adjust_lr_fn!r}.")
  is_int_array = hasattr(ns_steps, "dtype") and jnp.issubdtype(ns_steps.dtype, jnp.integer)
  if isinstance(ns_steps, bool) or not (isinstance(ns_steps, int) or is_int_array):
    raise TypeError(f"ns_steps must be an int (or an integer array), got {ns_steps!r}.")
  if isinstance(ns_steps, int) and not 0 <= ns_steps < 100:
    raise ValueError(f"ns_steps must be in [0, 100), got {ns_steps!r}.")


def check_matrices(tree: PyTree, what: str) -> None:
  """Raises a ValueError naming the first leaf of `tree` that is not 2-D."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if jnp.ndim(leaf) != 2:
      raise ValueError(
        f"muon orthogonalises 2-D matrices only, but the {what} at {jax.tree_util.keystr(path) or '<root>'} has "
        f"shape {tuple(jnp.shape(leaf))}. Give the other leaves another optimizer, e.g. "
        "optax.partition({'muon': gcj.muon(), 'adamw': gcj.adamw()}, "
        "lambda params: jax.tree.map(lambda p: 'muon' if p.ndim == 2 else 'adamw', params))."
      )


def scale_by_muon(
  momentum: Scalar = 0.95,
  nesterov: bool = True,
  ns_coefficients: Sequence[Scalar] = MUON_NS_COEFFICIENTS,
  eps: Scalar = 1e-7,
  ns_steps: Any = 5,
  adjust_lr_fn: Optional[str] = None,
) -> GradientTransformation:
  """Torch's Muon direction (Jordan et al., 2024) for 2-D leaves.

  `buf <- lerp(buf, g, 1 - momentum)` (buf starts at 0), the look-ahead
  `u = lerp(g, buf, momentum)` with `nesterov` (else `u = buf`), and the output
  `ratio * newton_schulz(u)` with `ratio = adjusted_lr_ratio(shape, adjust_lr_fn)`: with
  the chain's `-lr` last, that is torch's step `-lr * ratio * O`. The orthogonalised
  update is bfloat16 as in torch; the output is cast back to the gradient's dtype.

  Every leaf must be 2-D (ValueError naming the leaf, at `init` and `update`).
  (`optax.contrib.muon` differs: bias-corrected momentum, the iteration in the input's
  dtype, `x / (||x|| + eps)` with eps 1e-8, a `sqrt(max(1, fan_out/fan_in))` scale, and
  AdamW for non-2-D leaves.)

  Args:
    momentum: the momentum factor of the buffer's moving average, >= 0.
    nesterov: orthogonalise the Nesterov look-ahead `lerp(g, buf, momentum)` instead of `buf`.
    ns_coefficients: the Newton-Schulz quintic's `(a, b, c)` (three numbers, traced allowed).
    eps: floor of the Frobenius norm before the iteration.
    ns_steps: the number of Newton-Schulz iterations, in [0, 100) (an int array works too).
    adjust_lr_fn: `None`/`"original"` or `"match_rms_adamw"` (see `adjusted_lr_ratio`).

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is a `ScaleByMuonState`.
  """
  check_muon_hyperparameters(momentum, ns_coefficients, eps, ns_steps, adjust_lr_fn)
  _checks.check_flag("nesterov", nesterov)

  def init_fn(params):
    check_matrices(params, "param")
    return ScaleByMuonState(momentum_buffer=zeros_like(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _checks.check_tree_matches(updates, state.momentum_buffer, what="the Muon state")
    check_matrices(updates, "gradient")
    buffer = map_state(lambda g, buf: lerp(buf, g, 1 - momentum), updates, state.momentum_buffer)

    def direction(g, buf):
      lookahead = lerp(g, buf, momentum) if nesterov else buf
      ortho = newton_schulz(lookahead, ns_coefficients, ns_steps, eps)
      return adjusted_lr_ratio(g.shape, adjust_lr_fn) * ortho.astype(g.dtype)

    return map_updates(direction, updates, buffer), ScaleByMuonState(momentum_buffer=buffer)

  return GradientTransformation(init_fn, update_fn)
