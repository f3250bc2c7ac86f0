"""L-BFGS as `torch.optim.LBFGS`: one `update` is one torch `step(closure)`, a solver loop, not a chain.

torch's L-BFGS flattens every parameter into one vector, runs up to `max_iter` quasi-Newton
iterations per `step` (each with a fixed step or a strong-Wolfe line search that calls the
closure again), and keeps its curvature history across steps. Here the closure is Optax's
`value_fn` extra argument, the iterations are `lax.while_loop`s (an update compiles once),
and the history is a fixed `(history_size, n)` circular buffer, so the state never grows.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any
from typing import Callable
from typing import NamedTuple
from typing import Optional

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from gradcore_jax import _checks
from gradcore_jax._typing import Array
from gradcore_jax._typing import PyTree
from gradcore_jax._typing import Scalar
from gradcore_jax._typing import ScalarOrSchedule

GradientTransformation = optax.GradientTransformationExtraArgs

_LINE_SEARCHES = (None, "strong_wolfe")
# torch's strong-Wolfe constants (`_strong_wolfe`'s defaults, which `LBFGS.step` never overrides).
_C1 = 1e-4
_C2 = 0.9
# torch keeps a curvature pair only when `y.s` exceeds this (a fixed constant in `LBFGS.step`).
_CURVATURE_FLOOR = 1e-10


class LBFGSState(NamedTuple):
  """torch's L-BFGS state (`optimizer.state[first param]`), with fixed shapes.

  `n` is the number of parameter entries (all leaves flattened in tree order, as torch
  concatenates its params), `m` the `history_size`. torch keeps the pairs in Python lists
  (oldest first, the oldest dropped when full); here they sit in a circular buffer: pair
  `i` (0 = oldest) is row `(history_start + i) % m`, `history_len` rows are in use.

  Attributes:
    count: number of `update` calls (the argument of a learning-rate schedule).
    func_evals: objective evaluations so far, counted as torch counts them (one per
      `update` for the value passed in, one per evaluation inside).
    n_iter: L-BFGS iterations so far (torch's `state["n_iter"]`).
    d: the last search direction, `(n,)`.
    t: the last step length (torch's `t`).
    old_dirs: gradient differences `y` of the kept pairs, `(m, n)` (torch's `old_dirs`).
    old_stps: step differences `s = t*d` of the kept pairs, `(m, n)` (torch's `old_stps`).
    ro: `1 / (y.s)` of each kept pair, `(m,)`, aligned with the rows.
    al: the two-loop coefficients of the last direction, `(m,)`, indexed by pair age
      `i` (oldest first) as torch's `state["al"]`; entries `>= history_len` are unused.
    history_start: the row of the oldest pair.
    history_len: the number of pairs kept, at most `m`.
    h_diag: the scale of the initial inverse Hessian (torch's `H_diag`).
    prev_flat_grad: the gradient at the start of the last iteration, `(n,)`.
    prev_loss: the objective at the start of the last iteration.
    value: the objective at the params this update returns, or `inf` when the update
      did not evaluate it there (no line search, `max_iter` reached). With the gradient
      below, what `optax.value_and_grad_from_state` reuses.
    grad: the gradient there, shaped like the params.
  """

  count: Array  # pyright: ignore[reportIncompatibleMethodOverride]  (optax's field name, shadows tuple.count)
  func_evals: Array
  n_iter: Array
  d: Array
  t: Array
  old_dirs: Array
  old_stps: Array
  ro: Array
  al: Array
  history_start: Array
  history_len: Array
  h_diag: Array
  prev_flat_grad: Array
  prev_loss: Array
  value: Array
  grad: PyTree

  # Read by `gcj.torch_state`, which converts per-parameter states only.
  _torch_state_unsupported = (
    "L-BFGS state (gcj.lbfgs) is not supported by to_torch_state_dict / from_torch_state_dict: torch keeps it "
    "as one global entry of flattened vectors and Python lists, not per parameter. Save it with gcj.checkpoint "
    "(or any pytree serializer) instead."
  )


class _Loop(NamedTuple):
  """The carry of the iteration loop of one update (torch's locals of `step`, and the state)."""

  x: Array
  loss: Array
  flat_grad: Array
  d: Array
  t: Array
  old_dirs: Array
  old_stps: Array
  ro: Array
  al: Array
  start: Array
  num: Array
  h_diag: Array
  prev_flat_grad: Array
  prev_loss: Array
  state_n_iter: Array
  func_evals: Array
  n_iter: Array
  current_evals: Array
  opt_cond: Array
  fresh: Array
  stop: Array


class _Search(NamedTuple):
  """The carry of the line search.

  Row 0 and row 1 of `t`, `f`, `g`, `gtd` are torch's `(t_prev, t)` while bracketing, and
  the bracket's two ends once zooming (torch's bracket starts as those two points).
  """

  zooming: Array
  t: Array
  f: Array
  g: Array
  gtd: Array
  low: Array
  insuf_progress: Array
  done: Array
  ls_iter: Array
  evals: Array


Objective = Callable[[Array], tuple[Array, Array]]


def _py_max(a: Array, b: Array) -> Array:
  """Python's `max(a, b)`: `a` unless `b > a` (so a NaN in `b` is ignored, one in `a` kept)."""
  return jnp.where(b > a, b, a)


def _py_min(a: Array, b: Array) -> Array:
  """Python's `min(a, b)`: `a` unless `b < a`."""
  return jnp.where(b < a, b, a)


def _cubic_minimiser(x1: Array, f1: Array, g1: Array, x2: Array, f2: Array, g2: Array) -> tuple[Array, Array]:
  """The minimiser of the cubic through two points with values and slopes, and whether it is real.

  torch's `_cubic_interpolate` before its clipping, with its evaluation order.
  """
  d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
  d2_square = d1 * d1 - g1 * g2
  real = d2_square >= 0
  d2 = jnp.sqrt(jnp.where(real, d2_square, 0))  # the root only where it is taken (no NaN to select away)
  from_left = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
  from_right = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
  return jnp.where(x1 <= x2, from_left, from_right), real


def _clip(minimiser: Array, real: Array, lower: Array, upper: Array) -> Array:
  """torch's `_cubic_interpolate` result: the minimiser within the bounds, their middle when it is not real."""
  return jnp.where(real, _py_min(_py_max(minimiser, lower), upper), (lower + upper) / 2.0)


def _strong_wolfe(
  objective: Objective,
  x: Array,
  t: Array,
  d: Array,
  f: Array,
  g: Array,
  gtd: Array,
  tolerance_change: Array,
  max_ls: Array,
) -> tuple[Array, Array, Array, Array]:
  """torch's `_strong_wolfe` line search along `d` from `x`: (value, gradient, step, evaluations).

  Bracketing: from `t`, extrapolate by cubic interpolation (within `[t + 0.01(t - t_prev),
  10t]`) until the sufficient-decrease condition fails, the value stops decreasing (from the
  third trial on, as torch), the strong curvature condition holds, or the slope turns
  non-negative. Zoom: shrink the bracket by safeguarded cubic interpolation until a point
  satisfies both Wolfe conditions or the bracket is shorter than `tolerance_change` (in
  `max|d|` units). At most `max_ls` evaluations after the first; the result is the
  bracket's lower end.

  Both phases run in one `lax.while_loop` with a single call of `objective` per trial, so
  the objective is compiled once (torch's two loops, each evaluating, would trace it twice).
  """
  dtype = x.dtype
  c1 = jnp.asarray(_C1, dtype)
  c2 = jnp.asarray(_C2, dtype)
  d_norm = jnp.max(jnp.abs(d))
  zero = jnp.zeros((), dtype)
  no = jnp.asarray(False)

  def armijo_fails(step: Array, value: Array) -> Array:
    return value > f + c1 * step * gtd

  def curvature_holds(slope: Array) -> Array:
    return jnp.abs(slope) <= -c2 * gtd

  def searching(c: _Search) -> Array:
    too_short = jnp.abs(c.t[1] - c.t[0]) * d_norm < tolerance_change
    return ~c.zooming | (~c.done & (c.ls_iter < max_ls) & ~too_short)

  def trial_step(c: _Search) -> _Search:
    first = c.evals == 0
    # The cubic through the two rows: extrapolated (bracketing) or interpolated (zoom).
    minimiser, real = _cubic_minimiser(c.t[0], c.f[0], c.gtd[0], c.t[1], c.f[1], c.gtd[1])
    extrapolated = _clip(minimiser, real, c.t[1] + 0.01 * (c.t[1] - c.t[0]), c.t[1] * 10)
    upper, lower = _py_max(c.t[0], c.t[1]), _py_min(c.t[0], c.t[1])
    interpolated = _clip(minimiser, real, lower, upper)
    # Zoom safeguard: a trial within 10 % of an end is moved to 10 % inside the bracket if it
    # is at (or past) an end, or if the previous trial was already that close.
    eps = 0.1 * (upper - lower)
    near_end = _py_min(upper - interpolated, interpolated - lower) < eps
    at_end = c.insuf_progress | (interpolated >= upper) | (interpolated <= lower)
    moved = jnp.where(jnp.abs(interpolated - upper) < jnp.abs(interpolated - lower), upper - eps, lower + eps)
    zoomed = jnp.where(near_end & at_end, moved, interpolated)
    step = jnp.where(c.zooming, zoomed, jnp.where(first, c.t[1], extrapolated))

    value, grad = objective(x + step * d)
    slope = jnp.dot(grad, d)
    ls_iter = jnp.where(first, c.ls_iter, c.ls_iter + 1)

    # Zoom: a trial that fails sufficient decrease, or is no lower than the low end, replaces
    # the high end. Otherwise it replaces the low end, and if the slope points past the high
    # end, the old low end first becomes the high end.
    low, high = c.low, 1 - c.low
    raise_high = armijo_fails(step, value) | (value >= c.f[low])
    curvature = curvature_holds(slope)
    swap = ~raise_high & ~curvature & (slope * (c.t[high] - c.t[low]) >= 0)
    # Bracketing: the trial becomes the current point, the current one the previous (the first
    # trial keeps row 0, torch's `t_prev = 0` with the starting value and slope). Then torch's
    # checks, in order: out of evaluations (the bracket becomes [0, t]), the value too high
    # ([t_prev, t]), the curvature condition (done, the one-point bracket [t, t]), the slope
    # non-negative ([t_prev, t]).
    prev = jnp.where(first, 0, 1)
    prev_f = c.f[prev]
    exhausted = ls_iter >= max_ls
    too_high = armijo_fails(step, value) | ((ls_iter > 1) & (value >= prev_f))
    converged = ~exhausted & ~too_high & curvature
    leave = exhausted | too_high | converged | (slope >= 0)

    def rows(ends: Array, new: Array, start: Array) -> Array:
      """The two rows after the trial: zoom's replacement, or bracketing's shift and exit."""
      zoom_low = jnp.where(raise_high, ends[low], new)
      zoom_high = jnp.where(raise_high, new, jnp.where(swap, ends[low], ends[high]))
      zoom_rows = ends.at[low].set(zoom_low).at[high].set(zoom_high)
      bracket_first = jnp.where(exhausted, start, jnp.where(converged, new, ends[prev]))
      bracket_rows = jnp.stack([bracket_first, new])
      return jnp.where(c.zooming, zoom_rows, bracket_rows)

    t_rows = rows(c.t, step, zero)
    f_rows = rows(c.f, value, f)
    ordered = jnp.where(f_rows[0] <= f_rows[1], 0, 1).astype(jnp.int32)
    return _Search(
      zooming=c.zooming | leave,
      t=t_rows,
      f=f_rows,
      g=rows(c.g, grad, g),
      gtd=rows(c.gtd, slope, gtd),
      low=jnp.where(c.zooming & ~raise_high, c.low, ordered),
      insuf_progress=c.zooming & near_end & ~at_end,
      done=jnp.where(c.zooming, c.done | (~raise_high & curvature), converged),
      ls_iter=ls_iter,
      evals=c.evals + 1,
    )

  start = _Search(
    zooming=no,
    t=jnp.stack([zero, t]),
    f=jnp.stack([f, f]),
    g=jnp.stack([g, g]),
    gtd=jnp.stack([gtd, gtd]),
    low=jnp.zeros((), jnp.int32),
    insuf_progress=no,
    done=no,
    ls_iter=jnp.zeros((), jnp.int32),
    evals=jnp.zeros((), jnp.int32),
  )
  s = jax.lax.while_loop(searching, trial_step, start)
  return s.f[s.low], s.g[s.low], s.t[s.low], s.evals


def _direction(c: _Loop, first: Array, m: int) -> tuple[Array, Array, Array, Array, Array, Array, Array, Array]:
  """Stores the last curvature pair (if `y.s > 1e-10`) and returns the L-BFGS direction.

  Returns:
    (d, old_dirs, old_stps, ro, al, start, num, h_diag) after the update.
  """
  dtype = c.x.dtype
  y = c.flat_grad - c.prev_flat_grad
  s = c.d * c.t
  ys = jnp.dot(y, s)
  keep = ~first & (ys > _CURVATURE_FLOOR)
  # The first iteration starts from an empty history (torch resets its lists there).
  start = jnp.where(first, 0, c.start)
  num = jnp.where(first, 0, c.num)
  h_diag = jnp.where(first, jnp.ones((), dtype), c.h_diag)
  # The new pair goes after the newest one; when the buffer is full that row is the oldest pair's.
  row = (start + num) % m
  old_dirs = c.old_dirs.at[row].set(jnp.where(keep, y, c.old_dirs[row]))
  old_stps = c.old_stps.at[row].set(jnp.where(keep, s, c.old_stps[row]))
  # Divisors replaced by 1 where the pair is dropped: the same values where kept, no NaN elsewhere.
  ro = c.ro.at[row].set(jnp.where(keep, 1.0 / jnp.where(keep, ys, 1), c.ro[row]))
  full = num == m
  start = jnp.where(keep & full, (start + 1) % m, start)
  num = jnp.where(keep & ~full, num + 1, num)
  h_diag = jnp.where(keep, ys / jnp.where(keep, jnp.dot(y, y), 1), h_diag)

  # Two-loop recursion, newest pair to oldest, then back (with no pairs: d = -g * 1 = -g).
  def backward(k, carry):
    q, al = carry
    i = num - 1 - k
    slot = (start + i) % m
    a = jnp.dot(old_stps[slot], q) * ro[slot]
    return q + (-a) * old_dirs[slot], al.at[i].set(a)

  q, al = jax.lax.fori_loop(0, num, backward, (-c.flat_grad, c.al))

  def forward(i, r):
    slot = (start + i) % m
    be_i = jnp.dot(old_dirs[slot], r) * ro[slot]
    return r + (al[i] - be_i) * old_stps[slot]

  d = jax.lax.fori_loop(0, num, forward, q * h_diag)
  return d, old_dirs, old_stps, ro, al, start, num, h_diag


def _check_int(name: str, value: Any, minimum: int) -> None:
  """Accepts integers `>= minimum` (Python, NumPy, integer 0-d arrays, traced ones unchecked); raises naming `name`."""
  if isinstance(value, bool):
    raise TypeError(f"{name} must be an integer >= {minimum}, got the bool {value!r}.")
  if isinstance(value, numbers.Integral):
    number = int(value)
  elif isinstance(value, (np.ndarray, jax.Array)) and jnp.issubdtype(value.dtype, jnp.integer):
    if np.ndim(value) != 0:
      raise ValueError(f"{name} must be a scalar integer, got an array of shape {np.shape(value)}.")
    if isinstance(value, jax.core.Tracer):
      return
    number = int(value)
  else:
    raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}.")
  if number < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _check_tolerance(name: str, value: Any) -> None:
  if value is None or callable(value) or isinstance(value, bool):
    raise TypeError(f"{name} must be a number >= 0, got {value!r}.")
  if _checks.concrete_value(name, value) is None and not isinstance(value, jax.core.Tracer):
    raise TypeError(f"{name} must be a number >= 0, got {value!r}.")
  _checks.check_non_negative(name, value)


def _flat_dtype(tree: PyTree, what: str) -> Any:
  """The one floating dtype of `tree`'s leaves (torch concatenates its params into one vector)."""
  _checks.check_real_floating(tree, what=what)
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  if not leaves:
    raise ValueError(f"lbfgs needs at least one {what} leaf.")
  dtype = jnp.dtype(leaves[0][1].dtype)
  for path, leaf in leaves:
    if jnp.dtype(leaf.dtype) != dtype:
      raise TypeError(
        f"lbfgs works on all {what}s as one vector, so every leaf needs one dtype: the {what} at "
        f"{jax.tree_util.keystr(path) or '<root>'} is {leaf.dtype}, the first leaf is {dtype}."
      )
  return dtype


def lbfgs(
  learning_rate: ScalarOrSchedule = 1.0,
  max_iter: int = 20,
  max_eval: Optional[int] = None,
  tolerance_grad: Scalar = 1e-7,
  tolerance_change: Scalar = 1e-9,
  history_size: int = 100,
  line_search_fn: Optional[str] = None,
) -> GradientTransformation:
  """L-BFGS as `torch.optim.LBFGS`: one `update` performs one torch `step(closure)`.

  The rule (all params flattened into one vector `x`, as torch does). An update takes the
  value `f` and gradient `g` at `x` (torch's first closure call) and stops at once if
  `max|g| <= tolerance_grad`. Otherwise it iterates, at most `max_iter` times:

  - direction: on the very first iteration `d = -g`; afterwards, with `y = g - g_prev` and
    `s = t*d` from the previous iteration, the pair is kept if `y.s > 1e-10` (the oldest
    dropped beyond `history_size`) and `H_diag = y.s / y.y`, and `d = -H g` by the
    two-loop recursion over the kept pairs with initial inverse Hessian `H_diag * I`;
  - step length: `t = min(1, 1/sum|g|) * lr` on the very first iteration, else `t = lr`;
    stop if `g.d > -tolerance_change`;
  - `line_search_fn=None`: `x <- x + t*d`, and `f, g` evaluated there unless this is the
    last iteration; `"strong_wolfe"`: torch's strong-Wolfe line search from `t`
    (`c1 = 1e-4`, `c2 = 0.9`, cubic interpolation, at most `max_eval` minus the
    evaluations so far), then `x <- x + t*d`;
  - stop after `max_iter` iterations, once `max_eval` evaluations are spent (counting the
    value passed in), if `max|g| <= tolerance_grad`, if `max|t*d| <= tolerance_change`, or
    if `|f - f_prev| < tolerance_change`.

  The history, `d`, `t`, `H_diag`, the previous gradient and value, and torch's `n_iter` and
  `func_evals` counters persist in the state, so consecutive updates continue exactly as
  consecutive torch steps do.

  Calling convention (Optax's, as `optax.lbfgs`): `update(grads, state, params, *,
  value=f, grad=grads, value_fn=objective, **extra_args)`. `value_fn(params,
  **extra_args)` returns the scalar objective and must be differentiable with
  `jax.value_and_grad` (the update evaluates it, and its gradient, inside the line
  search); `value` (computed if omitted) and `grads` are the objective and its gradient
  at `params`. `grad`, if given, is used as the gradient (Optax passes it twice). The
  returned updates move `params` to torch's new params (`optax.apply_updates`). The state
  keeps the value and gradient at the new params when the update evaluated them there
  (`inf` otherwise), so `optax.value_and_grad_from_state(objective)` saves torch's
  repeated closure call.

  Defaults: torch's (lr 1, max_iter 20, max_eval `max_iter*5//4`, tolerance_grad 1e-7,
  tolerance_change 1e-9, history_size 100, no line search). State: two `(history_size, n)`
  buffers plus three `n`-vectors, `2*history_size + 3` times the params, fixed for the
  whole run (torch's lists grow to `2*history_size + 2` times the params).
  Under `optax.inject_hyperparams` every numeric argument may be injected: `learning_rate`
  and the tolerances take effect at the next update, `max_iter`/`max_eval` too;
  `history_size` sets the buffers' shape, so only its value at `init` counts. Not
  supported: several param groups (torch refuses them too), complex params, and params of
  mixed dtypes (the vector has one dtype).

  Example (each `step` is one torch `optimizer.step(closure)`):

    >>> import jax, jax.numpy as jnp, optax
    >>> import gradcore_jax as gcj
    >>> def rosenbrock(p):
    ...   x = p["x"]
    ...   return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    >>> tx = gcj.lbfgs(line_search_fn="strong_wolfe")
    >>> params = {"x": jnp.array([-1.5, 2.0])}
    >>> state = tx.init(params)
    >>> value_and_grad = optax.value_and_grad_from_state(rosenbrock)  # reuses the line search's last value
    >>> @jax.jit
    ... def step(params, state):
    ...   value, grad = value_and_grad(params, state=state)
    ...   updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=rosenbrock)
    ...   return optax.apply_updates(params, updates), state
    >>> for _ in range(5):
    ...   params, state = step(params, state)
    >>> print(params["x"].round(4))
    [1. 1.]

  Args:
    learning_rate: torch's `lr`, the step length (after the first iteration) or the
      line search's first trial: a number >= 0, a jax scalar, or a schedule of the number
      of updates taken.
    max_iter: the most L-BFGS iterations per update, an integer >= 1.
    max_eval: the most objective evaluations per update, including the value passed in;
      None: `max_iter * 5 // 4` (torch's). An integer >= 1.
    tolerance_grad: stop when the largest gradient entry is at most this, >= 0.
    tolerance_change: stop when the step, the change in value, or the directional
      derivative is below this, >= 0; also the line search's bracket-length tolerance.
    history_size: the number of curvature pairs kept, an integer >= 1.
    line_search_fn: None (fixed step `learning_rate`) or "strong_wolfe".

  Returns:
    An `optax.GradientTransformationExtraArgs` whose `update` needs `params` and `value_fn`.

  Raises:
    ValueError: for an argument out of range, or an unknown `line_search_fn`.
    TypeError: for an argument of the wrong type (an integer argument that is not an integer).
  """
  _checks.check_learning_rate(learning_rate)
  _check_int("max_iter", max_iter, 1)
  if max_eval is not None:
    _check_int("max_eval", max_eval, 1)
  _check_tolerance("tolerance_grad", tolerance_grad)
  _check_tolerance("tolerance_change", tolerance_change)
  _check_int("history_size", history_size, 1)
  if not isinstance(line_search_fn, (str, type(None))) or line_search_fn not in _LINE_SEARCHES:
    raise ValueError(f'line_search_fn must be None or "strong_wolfe", got {line_search_fn!r}.')
  strong_wolfe = line_search_fn == "strong_wolfe"

  def init_fn(params: PyTree) -> LBFGSState:
    dtype = _flat_dtype(params, "param")
    if isinstance(history_size, jax.core.Tracer):
      raise TypeError(
        "lbfgs: history_size sets the shape of the state, so init needs a concrete integer, got a traced value "
        "(with optax.inject_hyperparams, pass it in static_args or leave it concrete)."
      )
    m = int(history_size)
    n = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
    zero = jnp.zeros((), jnp.int32)
    scalar = jnp.zeros((), dtype)
    return LBFGSState(
      count=zero,
      func_evals=zero,
      n_iter=zero,
      d=jnp.zeros((n,), dtype),
      t=scalar,
      old_dirs=jnp.zeros((m, n), dtype),
      old_stps=jnp.zeros((m, n), dtype),
      ro=jnp.zeros((m,), dtype),
      al=jnp.zeros((m,), dtype),
      history_start=zero,
      history_len=zero,
      h_diag=jnp.ones((), dtype),
      prev_flat_grad=jnp.zeros((n,), dtype),
      prev_loss=scalar,
      value=jnp.full((), jnp.inf, dtype),
      grad=jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype), params),
    )

  def update_fn(
    updates: PyTree,
    state: optax.OptState,
    params: Optional[PyTree] = None,
    *,
    value: Any = None,
    grad: Optional[PyTree] = None,
    value_fn: Optional[Callable[..., Any]] = None,
    **extra_args: Any,
  ) -> tuple[PyTree, LBFGSState]:
    if not isinstance(state, LBFGSState):
      raise TypeError(f"lbfgs: the state must be the LBFGSState of this optimizer's init, got {type(state).__name__}.")
    if params is None:
      raise ValueError("lbfgs needs the current parameters: call update(grads, state, params, value_fn=...).")
    if value_fn is None or not callable(value_fn):
      raise TypeError(
        "lbfgs needs the objective: call update(grads, state, params, value=..., value_fn=f), with f(params, "
        f"**extra_args) returning the scalar loss (got value_fn={value_fn!r})."
      )
    gradient = updates if grad is None else grad
    dtype = _flat_dtype(params, "param")
    _checks.check_real_floating(gradient, what="gradient")
    _checks.check_tree_matches(gradient, params, what="the params")
    if any(leaf is None for leaf in jax.tree.leaves(gradient, is_leaf=lambda leaf: leaf is None)):
      raise ValueError("lbfgs needs a gradient for every param leaf (torch would use zeros; pass them).")
    x0, unravel = ravel_pytree(params)
    g0 = ravel_pytree(gradient)[0].astype(dtype)
    m = state.old_dirs.shape[0]
    if state.d.shape != x0.shape:
      raise ValueError(
        f"lbfgs: the state was built for {state.d.shape[0]} parameter entries, the params have {x0.size}."
      )
    objective_fn = functools.partial(value_fn, **extra_args)

    def objective(x: Array) -> tuple[Array, Array]:
      loss, grads = jax.value_and_grad(objective_fn)(unravel(x))
      return jnp.asarray(loss, dtype), ravel_pytree(grads)[0].astype(dtype)

    loss0 = jnp.asarray(objective_fn(params) if value is None else value, dtype)
    if loss0.shape != ():
      raise ValueError(f"lbfgs: value must be the scalar objective, got shape {loss0.shape}.")
    lr = jnp.asarray(learning_rate(state.count) if callable(learning_rate) else learning_rate, dtype)
    tol_grad = jnp.asarray(tolerance_grad, dtype)
    tol_change = jnp.asarray(tolerance_change, dtype)
    iter_limit = jnp.asarray(max_iter, jnp.int32)
    eval_limit = jnp.asarray(max_iter * 5 // 4 if max_eval is None else max_eval, jnp.int32)

    opt_cond = jnp.max(jnp.abs(g0)) <= tol_grad
    start = _Loop(
      x=x0,
      loss=loss0,
      flat_grad=g0,
      d=state.d,
      t=state.t,
      old_dirs=state.old_dirs,
      old_stps=state.old_stps,
      ro=state.ro,
      al=state.al,
      start=state.history_start,
      num=state.history_len,
      h_diag=state.h_diag,
      prev_flat_grad=state.prev_flat_grad,
      prev_loss=state.prev_loss,
      state_n_iter=state.n_iter,
      func_evals=state.func_evals + 1,
      n_iter=jnp.zeros((), jnp.int32),
      current_evals=jnp.ones((), jnp.int32),
      opt_cond=opt_cond,
      fresh=jnp.asarray(True),
      stop=opt_cond,  # torch returns before touching its state when the gradient is already small
    )

    def iteration(c: _Loop) -> _Loop:
      n_iter = c.n_iter + 1
      state_n_iter = c.state_n_iter + 1
      first = state_n_iter == 1
      d, old_dirs, old_stps, ro, al, hist_start, num, h_diag = _direction(c, first, m)
      first_t = _py_min(jnp.ones((), dtype), 1.0 / jnp.sum(jnp.abs(c.flat_grad))) * lr
      t = jnp.where(first, first_t, lr)
      c = c._replace(
        d=d,
        t=t,
        old_dirs=old_dirs,
        old_stps=old_stps,
        ro=ro,
        al=al,
        start=hist_start,
        num=num,
        h_diag=h_diag,
        prev_flat_grad=c.flat_grad,
        prev_loss=c.loss,
        state_n_iter=state_n_iter,
        n_iter=n_iter,
      )
      gtd = jnp.dot(c.flat_grad, d)

      def no_descent(c: _Loop) -> _Loop:
        return c._replace(stop=jnp.asarray(True))

      def move(c: _Loop) -> _Loop:
        if strong_wolfe:
          max_ls = eval_limit - c.current_evals
          loss, flat_grad, t, evals = _strong_wolfe(
            objective, c.x, c.t, c.d, c.loss, c.flat_grad, gtd, tol_change, max_ls
          )
          x = c.x + t * c.d
          opt = jnp.max(jnp.abs(flat_grad)) <= tol_grad
          fresh = jnp.asarray(True)
        else:
          t = c.t
          x = c.x + t * c.d

          def reevaluate(x: Array) -> tuple[Array, Array, Array, Array, Array]:
            loss, flat_grad = objective(x)
            return loss, flat_grad, jnp.max(jnp.abs(flat_grad)) <= tol_grad, jnp.ones((), jnp.int32), jnp.asarray(True)

          def keep(x: Array) -> tuple[Array, Array, Array, Array, Array]:
            del x
            return c.loss, c.flat_grad, c.opt_cond, jnp.zeros((), jnp.int32), jnp.asarray(False)

          # torch skips the evaluation after the last iteration (the next step's closure call makes it).
          loss, flat_grad, opt, evals, fresh = jax.lax.cond(n_iter != iter_limit, reevaluate, keep, x)
        current_evals = c.current_evals + evals
        stop = (
          (n_iter == iter_limit)
          | (current_evals >= eval_limit)
          | opt
          | (jnp.max(jnp.abs(c.d * t)) <= tol_change)
          | (jnp.abs(loss - c.prev_loss) < tol_change)
        )
        return c._replace(
          x=x,
          loss=loss,
          flat_grad=flat_grad,
          t=t,
          func_evals=c.func_evals + evals,
          current_evals=current_evals,
          opt_cond=opt,
          fresh=fresh,
          stop=stop,
        )

      return jax.lax.cond(gtd > -tol_change, no_descent, move, c)

    c = jax.lax.while_loop(lambda c: ~c.stop, iteration, start)
    new_params = unravel(c.x)
    new_updates = jax.tree.map(lambda new, old: (new - old).astype(old.dtype), new_params, params)
    new_state = LBFGSState(
      count=jnp.asarray(optax.safe_increment(state.count)),  # optax annotates it as ArrayLike
      func_evals=c.func_evals,
      n_iter=c.state_n_iter,
      d=c.d,
      t=c.t,
      old_dirs=c.old_dirs,
      old_stps=c.old_stps,
      ro=c.ro,
      al=c.al,
      history_start=c.start,
      history_len=c.num,
      h_diag=c.h_diag,
      prev_flat_grad=c.prev_flat_grad,
      prev_loss=c.prev_loss,
      value=jnp.where(c.fresh, c.loss, jnp.inf).astype(dtype),
      grad=unravel(c.flat_grad),
    )
    return new_updates, new_state

  return GradientTransformation(init_fn, update_fn)
