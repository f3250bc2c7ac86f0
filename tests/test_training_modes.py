"""Train and eval modes, RNG streams and model state in `fit`/`evaluate` (issue 12, "Models").

A small CNN with BatchNorm and Dropout on scikit-learn's digits (8x8 images, a subset), as a
Flax linen module and as a Flax NNX module. The references are hand-written training loops
in the style of Flax's own recipes (linen: `apply(..., mutable=["batch_stats"],
rngs={"dropout": fold_in(key, step)})`; NNX: `model.train()`, `nnx.Optimizer.update`,
`model.eval()`), run inside each test with the RNG rule `fit` documents: stream `name` of
seed `s` has the key `fold_in(key(s), crc32(name))`, and a linen step folds in the number of
updates before it. Float32 on both sides: equal to rounding (1e-5).

The convolutions have no bias: a bias before BatchNorm gets an exactly-zero gradient, which
in float32 is rounding noise that Adam scales up to full steps, so any two programs (two
compilations of one step included) disagree on it.
"""

from __future__ import annotations

import functools
import json
import pathlib
import zlib
from typing import Any
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from jax.sharding import AxisType
from sklearn.datasets import load_digits

from gradcore_jax import losses
from gradcore_jax import metrics
from gradcore_jax.data import DataLoader
from gradcore_jax.training import FitResult
from gradcore_jax.training import evaluate
from gradcore_jax.training import fit

LR, SEED, EPOCHS, BATCH = 1e-2, 7, 2, 32
RTOL = 1e-5  # float32, the same arithmetic compiled into two programs
METRICS = {"accuracy": metrics.accuracy()}


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """256 training images (8 full batches) and 128 test images, scaled to [0, 1]."""
  x, y = load_digits(return_X_y=True)
  x = (x / 16).astype(np.float32).reshape(-1, 8, 8)
  y = y.astype(np.int32)
  return x[:256], y[:256], x[256:384], y[256:384]


X_TRAIN, Y_TRAIN, X_TEST, Y_TEST = _digits()
TEST = DataLoader((X_TEST, Y_TEST), batch_size=48)  # the last batch padded: eval mode is per example


def _train_loader(x: np.ndarray = X_TRAIN) -> DataLoader:
  return DataLoader((x, Y_TRAIN), batch_size=BATCH, shuffle=True, seed=0)


def stream_key(seed: int, name: str) -> jax.Array:
  """The documented key of RNG stream `name` for `fit(seed=seed)`."""
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()))


def _cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@jax.jit
def _linen_logits(variables: dict[str, Any], x: jax.Array) -> jax.Array:
  """The linen CNN in eval mode, the reference's way: running averages, no dropout."""
  return LinenCNN().apply(variables, x, train=False)


def _eval_figures(logits: jax.Array) -> dict[str, float]:
  return {"accuracy": float(jnp.mean(jnp.argmax(logits, -1) == Y_TEST)), "loss": float(_cross_entropy(logits, Y_TEST))}


def _assert_close(got: Any, want: Any, rtol: float = RTOL) -> None:
  jax.tree.map(lambda g, w: np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=1e-6), got, want)


def _same_bytes(a: Any, b: Any) -> bool:
  def raw(leaf: Any) -> bytes:
    leaf = jax.random.key_data(leaf) if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf
    return np.asarray(leaf).tobytes()

  return [raw(leaf) for leaf in jax.tree.leaves(a)] == [raw(leaf) for leaf in jax.tree.leaves(b)]


def _figures(result: FitResult) -> str:
  record = result.stats.to_dict()
  del record["epoch_times"], record["steps_per_second"]
  return json.dumps(record)


# --------------------------------------------------------------------------------------
# The models.


class LinenCNN(nn.Module):
  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Conv(8, (3, 3), use_bias=False)(x[..., None])
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = nn.Dropout(0.25, deterministic=not train)(x.reshape(x.shape[0], -1))
    return nn.Dense(10)(x)


class NnxCNN(nnx.Module):
  def __init__(self, rngs: nnx.Rngs) -> None:
    self.conv = nnx.Conv(1, 8, (3, 3), use_bias=False, rngs=rngs)
    self.norm = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
    self.dropout = nnx.Dropout(0.25, rngs=rngs)
    self.out = nnx.Linear(512, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.norm(self.conv(x[..., None])))
    return self.out(self.dropout(x.reshape(x.shape[0], -1)))


def _linen_variables() -> dict[str, Any]:
  return LinenCNN().init(jax.random.key(0), X_TRAIN[:1], train=False)


def _fit_linen(**kwargs: Any) -> FitResult:
  options = {"train_loader": _train_loader(), "epochs": EPOCHS, "seed": SEED, **kwargs}
  return fit(
    LinenCNN(),
    optax.adam(LR),
    params=_linen_variables(),
    loss=losses.cross_entropy,
    eval_loader=TEST,
    metrics=METRICS,
    progress=False,
    **options,
  )


def _fit_nnx(seed: Any = SEED, **kwargs: Any) -> tuple[FitResult, NnxCNN]:
  model = NnxCNN(nnx.Rngs(0))
  options = {"train_loader": _train_loader(), "epochs": EPOCHS, **kwargs}
  result = fit(
    model,
    nnx.Optimizer(model, optax.adam(LR), wrt=nnx.Param),
    loss=losses.cross_entropy,
    eval_loader=TEST,
    metrics=METRICS,
    progress=False,
    seed=seed,
    **options,
  )
  return result, model


# --------------------------------------------------------------------------------------
# The references: hand-written loops.


def _linen_by_hand(loader: DataLoader, epochs: int, skip: tuple[int, ...] = ()) -> dict[str, Any]:
  """Flax's BatchNorm/Dropout recipe: batch_stats mutable, dropout key folded with the step.

  Steps in `skip` are left out entirely (no update, no step counted), as `on_nonfinite="skip"` does.
  """
  module, variables = LinenCNN(), _linen_variables()
  params, batch_stats = variables["params"], variables["batch_stats"]
  tx = optax.adam(LR)
  opt_state = tx.init(params)
  dropout = stream_key(SEED, "dropout")

  @jax.jit
  def step(params: Any, batch_stats: Any, opt_state: Any, count: jax.Array, x: jax.Array, y: jax.Array) -> tuple:
    def loss_fn(p: Any) -> tuple[jax.Array, Any]:
      logits, updated = module.apply(
        {"params": p, "batch_stats": batch_stats},
        x,
        train=True,
        rngs={"dropout": jax.random.fold_in(dropout, count)},
        mutable=["batch_stats"],
      )
      return _cross_entropy(logits, y), updated["batch_stats"]

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  batch_losses, count, index = [], 0, 0
  for epoch in range(epochs):
    for batch in loader.epoch(epoch):
      if index not in skip:
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, count, *batch.data)
        batch_losses.append(float(loss))
        count += 1
      index += 1
  logits = _linen_logits({"params": params, "batch_stats": batch_stats}, X_TEST)
  return {
    "params": params,
    "batch_stats": batch_stats,
    "losses": batch_losses,
    "steps": count,
    "eval": _eval_figures(logits),
  }


def _nnx_by_hand(loader: DataLoader, epochs: int, seed: Any, skip: tuple[int, ...] = ()) -> dict[str, Any]:
  """`model.train()`, `nnx.value_and_grad`, `nnx.Optimizer.update`, then `model.eval()`."""
  model = NnxCNN(nnx.Rngs(0))
  if seed is not None:  # what fit(seed=...) documents: every stream re-seeded to its stream key
    nnx.reseed(model, default=stream_key(seed, "default"))
  model.train()
  optimizer = nnx.Optimizer(model, optax.adam(LR), wrt=nnx.Param)

  @nnx.jit
  def step(model: NnxCNN, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(lambda m: _cross_entropy(m(x), y))(model)
    optimizer.update(model, grads)
    return loss

  batch_losses, index = [], 0
  for epoch in range(epochs):
    for batch in loader.epoch(epoch):
      if index not in skip:
        batch_losses.append(float(step(model, optimizer, *batch.data)))
      index += 1
  model.eval()
  return {"model": model, "losses": batch_losses, "eval": _eval_figures(nnx.jit(lambda m, x: m(x))(model, X_TEST))}


def _nnx_parts(model: NnxCNN) -> dict[str, Any]:
  """Params, batch statistics and the dropout stream's count of a module."""
  return {
    "params": nnx.state(model, nnx.Param),
    "stats": nnx.state(model, nnx.BatchStat),
    "count": model.dropout.rngs.count[...],
  }


# --------------------------------------------------------------------------------------
# fit equals the hand-written loops; evaluations run in eval mode.


@functools.cache
def _linen_run() -> FitResult:
  """`_fit_linen()`, shared by the tests that read it (compilation is most of a test's time)."""
  return _fit_linen()


@functools.cache
def _linen_reference() -> dict[str, Any]:
  return _linen_by_hand(_train_loader(), EPOCHS)


def test_linen_batchnorm_dropout_fit_equals_the_flax_recipe_and_evaluates_in_eval_mode() -> None:
  result = _linen_run()
  want = _linen_reference()
  state = result.model
  assert type(state).__name__ == "TrainStateWithCollections" and int(state.step) == want["steps"] == 16
  _assert_close(result.stats.batch_losses, want["losses"])
  _assert_close(state.params, want["params"])
  _assert_close(state.batch_stats, want["batch_stats"])
  # eval_loader figures: eval mode (running averages, no dropout), equal to evaluate and to the recipe.
  figures = result.stats.eval_metrics[-1]
  _assert_close(figures, want["eval"])
  assert evaluate(state, TEST, loss=losses.cross_entropy, metrics=METRICS) == figures
  assert figures == pytest.approx(_eval_figures(_linen_logits(state.variables, X_TEST)), rel=1e-6)
  # Train mode would be another number: batch statistics of the test set, dropout on.
  train_mode = jax.jit(
    lambda v, x: LinenCNN().apply(v, x, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])[0]
  )(state.variables, X_TEST)
  assert abs(_eval_figures(train_mode)["loss"] - figures["loss"]) > 1e-2 * figures["loss"]


def test_nnx_batchnorm_dropout_fit_equals_a_hand_written_loop_and_evaluates_in_eval_mode() -> None:
  """With a seed, the module's RNG stream is first re-seeded (the skip test below runs without one)."""
  result, model = _fit_nnx(SEED)
  want = _nnx_by_hand(_train_loader(), EPOCHS, SEED)
  assert result.model is model and model.dropout.deterministic is False  # trained in place, its mode untouched
  _assert_close(result.stats.batch_losses, want["losses"])
  _assert_close(_nnx_parts(model), _nnx_parts(want["model"]))
  figures = result.stats.eval_metrics[-1]
  _assert_close(figures, want["eval"])
  assert evaluate(model, TEST, loss=losses.cross_entropy, metrics=METRICS) == figures
  assert model.dropout.deterministic is False and model.norm.use_running_average is False


def test_a_plain_function_gets_its_train_flag_and_per_step_rngs() -> None:
  """`apply_fn(params, x, *, train, rngs)`: rngs = {"dropout": fold_in(stream_key, step)} in
  training, train=False and rngs=None in evaluation."""
  seen: list[tuple[bool, bool]] = []

  def mlp(params: dict, x: jax.Array, *, train: bool, rngs: Any) -> jax.Array:
    seen.append((train, rngs is None))
    hidden = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["w1"])
    if train:
      keep = jax.random.bernoulli(rngs["dropout"], 0.75, hidden.shape)
      hidden = jnp.where(keep, hidden / 0.75, 0)
    return hidden @ params["w2"]

  k1, k2 = jax.random.split(jax.random.key(1))
  params = {"w1": jax.random.normal(k1, (64, 32)) / 8, "w2": jax.random.normal(k2, (32, 10)) / 6}
  result = fit(
    mlp,
    optax.adam(LR),
    params=params,
    loss=losses.cross_entropy,
    train_loader=_train_loader(),
    epochs=EPOCHS,
    eval_loader=TEST,
    progress=False,
    seed=SEED,
  )
  assert set(seen) == {(True, False), (False, True)}
  tx, dropout, step = optax.adam(LR), stream_key(SEED, "dropout"), 0
  opt_state, want_losses = tx.init(params), []
  train_step = jax.jit(
    jax.value_and_grad(lambda p, x, y, key: _cross_entropy(mlp(p, x, train=True, rngs={"dropout": key}), y))
  )
  for epoch in range(EPOCHS):
    for batch in _train_loader().epoch(epoch):
      loss, grads = train_step(params, *batch.data, jax.random.fold_in(dropout, step))
      updates, opt_state = tx.update(grads, opt_state, params)
      params, step = optax.apply_updates(params, updates), step + 1
      want_losses.append(float(loss))
  _assert_close(result.stats.batch_losses, want_losses)
  _assert_close(result.model, params)
  _assert_close(
    result.stats.eval_metrics[-1]["loss"], _eval_figures(mlp(params, X_TEST, train=False, rngs=None))["loss"]
  )


# --------------------------------------------------------------------------------------
# Non-finite steps leave the model state alone; resuming is exact with model state and RNGs.


def _poisoned() -> np.ndarray:
  """The training images with a NaN pixel in one image of epoch 0's batch 3 (BatchNorm spreads it)."""
  x = X_TRAIN.copy()
  x[int(_train_loader().order(0)[3 * BATCH + 5]), 4, 4] = np.nan
  return x


def _bad_steps(x: np.ndarray, loader: DataLoader) -> tuple[int, ...]:
  """The steps of the run whose batch holds a NaN."""
  per_epoch = len(loader)
  return tuple(
    step
    for step in range(EPOCHS * per_epoch)
    if not np.isfinite(x[loader.order(step // per_epoch)[(step % per_epoch) * BATCH :][:BATCH]]).all()
  )


def test_skip_keeps_the_linen_batch_statistics_and_step_count() -> None:
  x = _poisoned()  # in epoch 1 the image falls in another batch: skipped too
  loader = _train_loader(x)
  bad = _bad_steps(x, loader)
  result = _fit_linen(train_loader=loader, on_nonfinite="skip")
  want = _linen_by_hand(loader, EPOCHS, skip=bad)
  assert result.stats.skipped_steps == list(bad) and len(bad) == 2
  assert int(result.model.step) == want["steps"] == 14  # the dropout keys of a skipped step are drawn again
  _assert_close(result.model.params, want["params"])
  _assert_close(result.model.batch_stats, want["batch_stats"])
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(result.model.batch_stats))


def test_skip_keeps_the_nnx_batch_statistics_and_rng_count() -> None:
  """Without a seed: the module draws from its own `nnx.Rngs` stream, as the hand-written loop does."""
  x = _poisoned()
  loader = _train_loader(x)
  bad = _bad_steps(x, loader)
  result, model = _fit_nnx(None, train_loader=loader, on_nonfinite="skip")
  want = _nnx_by_hand(loader, EPOCHS, None, skip=bad)
  assert result.stats.skipped_steps == list(bad)
  assert int(model.dropout.rngs.count[...]) == 16 - len(bad)
  _assert_close(_nnx_parts(model), _nnx_parts(want["model"]))


class _Interrupting(DataLoader):
  """Raises KeyboardInterrupt when asked for the run's `at`-th batch (counted from 0 over epochs)."""

  def __init__(self, *args: Any, at: int, **kwargs: Any) -> None:
    super().__init__(*args, **kwargs)
    self.at, self.served = at, 0

  def epoch(self, epoch: int, *, start: int = 0) -> Iterator[Any]:
    for batch in super().epoch(epoch, start=start):
      if self.served == self.at:
        raise KeyboardInterrupt
      self.served += 1
      yield batch


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_resuming_mid_epoch_is_bit_exact_with_batch_statistics_and_rngs(kind: str, tmp_path: pathlib.Path) -> None:
  """Interrupted at step 11 (epoch 1), resumed from the checkpoint of step 8: the same run, bit for bit."""
  run = _fit_linen if kind == "linen" else lambda **kw: _fit_nnx(**kw)[0]
  whole = _linen_run() if kind == "linen" else run()
  interrupted = _Interrupting((X_TRAIN, Y_TRAIN), batch_size=BATCH, shuffle=True, seed=0, at=11)
  with pytest.raises(KeyboardInterrupt):
    run(train_loader=interrupted, checkpoint_dir=tmp_path, checkpoint_every=4)
  resumed = run(checkpoint_dir=tmp_path, checkpoint_every=4, resume=True)
  assert _figures(resumed) == _figures(whole)
  if kind == "linen":
    assert _same_bytes(
      (resumed.model.params, resumed.model.batch_stats, resumed.model.opt_state),
      (whole.model.params, whole.model.batch_stats, whole.model.opt_state),
    )
    assert int(resumed.model.step) == int(whole.model.step) == 16
  else:
    assert _same_bytes(nnx.state(resumed.model), nnx.state(whole.model))
  with pytest.raises(ValueError, match=f"belongs to a run with seed={SEED}; this call has seed=8"):
    run(checkpoint_dir=tmp_path, resume=True, seed=8)


# --------------------------------------------------------------------------------------
# The same step compiled as an epoch, on a mesh, and continued from a returned TrainState.


def test_compiled_epoch_mesh_and_continued_train_states_carry_model_state_and_rngs() -> None:
  per_step = _linen_run()
  compiled = _fit_linen(compiled_epoch=True)
  on_mesh = _fit_linen(mesh=jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,)))
  for other in (compiled, on_mesh):  # the same step compiled into other programs: rounding apart
    _assert_close(other.stats.batch_losses, per_step.stats.batch_losses)
    _assert_close((other.model.params, other.model.batch_stats), (per_step.model.params, per_step.model.batch_stats))
  # Continuing from the returned TrainState continues the step count, hence the dropout keys.
  first = _fit_linen(epochs=1)
  second = fit(
    first.model,
    loss=losses.cross_entropy,
    train_loader=_train_loader(),
    epochs=1,
    start_epoch=1,
    seed=SEED,
    progress=False,
  )
  _assert_close(first.stats.batch_losses + second.stats.batch_losses, per_step.stats.batch_losses)
  _assert_close((second.model.params, second.model.batch_stats), (per_step.model.params, per_step.model.batch_stats))


def test_the_flax_recipe_train_state_with_a_batch_stats_field_is_carried() -> None:
  class RecipeState(train_state.TrainState):
    batch_stats: Any

  variables = _linen_variables()
  state = RecipeState.create(
    apply_fn=LinenCNN().apply, params=variables["params"], tx=optax.adam(LR), batch_stats=variables["batch_stats"]
  )
  result = fit(state, loss=losses.cross_entropy, train_loader=_train_loader(), epochs=EPOCHS, seed=SEED, progress=False)
  want = _linen_reference()
  assert isinstance(result.model, RecipeState) and int(result.model.step) == 16
  _assert_close((result.model.params, result.model.batch_stats), (want["params"], want["batch_stats"]))


# --------------------------------------------------------------------------------------
# Bad input names the argument.


class AlwaysTraining(nn.Module):
  """BatchNorm in train mode whatever the call says: evaluation cannot leave its statistics alone."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(10)(nn.BatchNorm(use_running_average=False)(x.reshape(x.shape[0], -1)))


def test_bad_mode_arguments_name_what_to_change() -> None:
  variables = AlwaysTraining().init(jax.random.key(0), X_TRAIN[:1])
  with pytest.raises(
    ValueError, match=r"eval_loader.*In eval mode the linen model must not update its collections.*mode_flags"
  ):
    fit(
      AlwaysTraining(),
      optax.sgd(LR),
      params=variables,
      loss=losses.cross_entropy,
      train_loader=_train_loader(),
      epochs=1,
      eval_loader=TEST,
      progress=False,
    )
  linen = {"model": LinenCNN(), "optimizer": optax.sgd(LR), "params": _linen_variables()}
  cases = [
    (
      linen | {"mode_flags": {"training": True}},
      r"mode_flags names \['training'\], which the linen module's __call__ does not take",
    ),
    (linen | {"mode_flags": {"train": "yes"}}, "mode_flags must be a dict"),
    (
      linen | {"mutable": ["cache"]},
      r"mutable names \['cache'\], which are not among the model's linen collections \['batch_stats'\]",
    ),
    (linen | {"mutable": "batch_stats"}, "mutable must be a list of names"),
    (linen | {"seed": -1}, "seed must be >= 0"),
  ]
  model = NnxCNN(nnx.Rngs(0))
  nnx_run = {"model": model, "optimizer": optax.sgd(LR)}
  cases += [
    (nnx_run | {"rng_streams": ["dropout"]}, "rng_streams of an NNX module are the streams re-seeded from seed"),
    (
      nnx_run | {"seed": 0, "rng_streams": ["noise"]},
      r"rng_streams names \['noise'\], which are not among the NNX module's RNG streams \['default'\]",
    ),
    (nnx_run | {"mutable": ["batch_stats"]}, "mutable must not be given here"),
    (nnx_run | {"mode_flags": {"training": True}}, "mode_flags .* must name attributes of the NNX module's submodules"),
  ]
  for arguments, match in cases:
    with pytest.raises(ValueError, match=match):
      fit(**arguments, loss=losses.cross_entropy, train_loader=_train_loader(), epochs=1, progress=False)
