"""Gradient accumulation (train.micro_batches) equals one step on the whole batch; bf16
compute keeps parameters and loss in float32; the attention backend comes from the config,
and cuDNN gets inputs it accepts."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jepa_jax import models, objectives
from jepa_jax.config import fields, shapes, validation
from jepa_jax.models import attention
from jepa_jax.objectives import initial
from jepa_jax.optim import ema, optimizer
from jepa_jax.training import loop, update
from tests.tiny import tiny_config, tiny_mae_config, tiny_uamix_config

N_MELS = 80  # the tiny configs' front end


class Regression:
  """A deterministic objective on the interface of objectives/__init__.py: a per-example
  squared error of a linear model of the clip's mean spectrum (with the EMA target's
  kernel added in), no randomness, so k micro-batches must give the whole batch's
  gradient exactly. Its aux counts the examples seen and folds in each call's ids in
  turn; the metric `seen_before` is the count a call found."""
  ema_subtree = "encoder"

  def init(self, rng):
    return {"encoder": {"kernel": 0.1 * jax.random.normal(rng, (N_MELS,))},
            "head": {"bias": jnp.zeros(())}}

  def init_aux(self):
    return {"seen": jnp.zeros([], jnp.int32), "trace": jnp.zeros([], jnp.float32)}

  def loss(self, params, aux, batch, rng, step):
    del rng, step
    kernel = params["encoder"]["kernel"] + 0.5 * aux["ema"]["kernel"]
    pred = batch["mel"].mean(-1) @ kernel + params["head"]["bias"]
    loss = ((pred - jnp.sin(batch["id"].astype(jnp.float32))) ** 2).mean()
    new_aux = {"seen": aux["seen"] + batch["id"].shape[0],
               "trace": 0.5 * aux["trace"] + batch["id"].sum()}
    return loss, ({"loss": loss, "seen_before": aux["seen"].astype(jnp.float32)}, new_aux)


def _optimizer(config, objective):
  """The config's optimizer (AdamW, EMA where the objective has one) at its peak lr."""
  return optimizer.make_optimizer(config.optim, config.get("ema"), config.train.batch_size,
                                  total_steps=10, warmup_steps=0,
                                  ema_subtree=objective.ema_subtree)


def _step(objective, tx, schedules, k):
  _, step_key = initial.rngs(tiny_config())
  return jax.jit(functools.partial(update.train_step, objective, tx, schedules, step_key,
                                   micro_batches=k))


def _random_params(init, seed: int = 0):
  """Parameters of the shapes `init(rng)` makes, drawn from N(0, 0.1) by numpy (compiling
  a model's initialisers costs more than the tests that use them)."""
  abstract = jax.eval_shape(lambda: nn.unbox(init(jax.random.key(0))))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype),
                      abstract)


def _state(objective, tx) -> dict:
  params = _random_params(objective.init)
  return {"step": jnp.zeros([], jnp.int32), "params": params,
          "opt_state": jax.jit(tx.init)(params), "aux": nn.unbox(objective.init_aux())}


def _batch(b: int, seed: int = 0) -> dict:
  mel = jax.random.normal(jax.random.key(seed), (b, N_MELS, 64))
  return {"mel": mel, "id": jnp.arange(b, dtype=jnp.int32)}


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-7):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ------------------------------------------------------------- accumulation


def test_micro_batches_give_the_whole_batch_step():
  objective, b = Regression(), 16
  tx, schedules = _optimizer(tiny_config(batch_size=b), objective)
  state = update.init_state(objective, tx, jax.random.key(3))
  batch = _batch(b)
  whole_state, whole = _step(objective, tx, schedules, 1)(state, batch)
  for k in (2, 4):
    new_state, metrics = _step(objective, tx, schedules, k)(state, batch)
    assert int(new_state["step"]) == 1
    _assert_trees_close(new_state["params"], whole_state["params"])
    _assert_trees_close(new_state["opt_state"], whole_state["opt_state"])  # moments, EMA
    for name in ("loss", "grad_norm", "lr", "tau"):
      np.testing.assert_allclose(metrics[name], whole[name], rtol=1e-5)
    # One optimizer and EMA update, not k.
    counted = lambda s: isinstance(s, (optax.ScaleByAdamState, ema.EmaTargetState))  # noqa: E731
    assert [int(s.count) for s in jax.tree.leaves(new_state["opt_state"], is_leaf=counted)
            if counted(s)] == [1, 1]
    # aux went through the micro-batches in order: i holds examples i, i + k, ...
    ids = np.arange(b)
    assert float(metrics["seen_before"]) == np.mean([i * b // k for i in range(k)])
    trace = 0.0
    for i in range(k):
      trace = 0.5 * trace + ids[i::k].sum()
    assert int(new_state["aux"]["seen"]) == b
    np.testing.assert_allclose(new_state["aux"]["trace"], trace)
  # k = 1 is the step without accumulation: no scan in it.
  jaxprs = {k: str(jax.make_jaxpr(functools.partial(
      update.train_step, objective, tx, schedules, jax.random.key(0), micro_batches=k))(
          state, batch)) for k in (1, 2)}
  assert "scan" not in jaxprs[1] and "scan" in jaxprs[2]


@pytest.mark.slow
def test_mae_gradient_is_the_mean_of_its_micro_batch_gradients():
  """The real objective, with Dasheng's BatchNorm in front (aux): the step equals the
  hand-made mean of the micro-batches' gradients, each with fold_in(step rng, i) masks
  and the BatchNorm statistics the micro-batch before left, then one update."""
  config = tiny_mae_config(batch_size=8, micro_batches=2)
  config.mae.input_norm = "batch_norm"
  config.decoder.update(depth=1, attention="global", block="prenorm")
  objective = objectives.build(config, 10)
  tx, schedules = _optimizer(config, objective)
  state = _state(objective, tx)
  batch = _batch(8)
  new_state, metrics = _step(objective, tx, schedules, 2)(state, batch)

  rng = jax.random.fold_in(initial.rngs(tiny_config())[1], 0)
  grad_fn = jax.jit(jax.value_and_grad(objective.loss, has_aux=True))
  aux, losses, grads = state["aux"], [], []
  for i in range(2):
    micro = jax.tree.map(lambda x, i=i: x[i::2], batch)
    (loss, (_, aux)), g = grad_fn(state["params"], {"ema": None, **aux}, micro,
                                  jax.random.fold_in(rng, i), state["step"])
    losses.append(loss)
    grads.append(g)

  @jax.jit
  def update(params, opt_state, grads):  # one update from the mean gradient
    mean = jax.tree.map(lambda *g: sum(g) / len(g), *grads)
    updates, opt_state = tx.update(mean, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, optax.tree.norm(mean)

  params, opt_state, grad_norm = update(state["params"], state["opt_state"], grads)
  _assert_trees_close(new_state["opt_state"], opt_state, atol=1e-6)  # AdamW moments
  _assert_trees_close(new_state["params"], params, atol=1e-6)
  _assert_trees_close(new_state["aux"], aux)  # running statistics, updated twice
  np.testing.assert_allclose(metrics["loss"], np.mean(losses), rtol=1e-5)
  np.testing.assert_allclose(metrics["grad_norm"], grad_norm, rtol=1e-5)
  assert not np.allclose(aux["input_norm"]["bn"]["var"], state["aux"]["input_norm"]["bn"]["var"])


def test_uamix_queue_threads_through_the_micro_batches():
  """The queue (aux) keeps its types through the scan: the step traces."""
  config = tiny_uamix_config(batch_size=8, micro_batches=2)
  objective = objectives.build(config)
  tx, schedules = _optimizer(config, objective)
  state = jax.eval_shape(lambda r: nn.unbox(update.init_state(objective, tx, r)),
                         jax.random.key(0))
  new_state, _ = jax.eval_shape(_step(objective, tx, schedules, 2), state, _batch(8))
  assert jax.tree.map(lambda x: (x.shape, x.dtype), new_state["aux"]) == \
      jax.tree.map(lambda x: (x.shape, x.dtype), state["aux"])


def test_micro_batch_config_errors(tmp_path):
  for bad in (0, -2, 3):
    with pytest.raises(fields.ConfigError,
                       match="train.micro_batches must be 'auto' or an integer >= 1 dividing "
                             "train.batch_size 8"):
      validation.validate(tiny_config(micro_batches=bad))
  # 8 examples in micro-batches of 2 cannot split over the 8 simulated devices.
  with pytest.raises(fields.ConfigError, match="= 2 examples must divide over the 8 "
                                                   "data x fsdp devices"):
    loop.train(tiny_config(micro_batches=4), tmp_path)


@pytest.mark.slow
def test_train_loop_runs_with_micro_batches(tmp_path):
  result = loop.train(tiny_config(batch_size=16, micro_batches=2), tmp_path)
  assert (result.step, result.total_steps, result.interrupted) == (3, 3, False)
  for name in ("loss", "grad_norm", "target_feature_std"):
    assert np.isfinite(result.last_metrics[name])
  assert (tmp_path / "export").is_dir()


# ------------------------------------------------------------- precision


def _output_dtypes(module, params, *args) -> dict:
  """{module path: dtype of its output} for every module's __call__ (traced, not run)."""
  _, state = jax.eval_shape(functools.partial(
      module.apply, capture_intermediates=True, mutable=["intermediates"]),
      {"params": params}, *args)
  flat = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
  return {"/".join(str(k.key) for k in path[:-2]): leaf.dtype for path, leaf in flat}


def test_bfloat16_computes_in_bf16_with_float32_params_and_loss():
  f32, bf16 = tiny_config(), tiny_config()
  bf16.model.dtype = "bfloat16"
  objective = objectives.build(bf16, 10)
  tx, schedules = _optimizer(bf16, objective)
  state = _state(objective, tx)
  assert {str(x.dtype) for x in jax.tree.leaves(state)} == {"float32", "int32"}

  params = state["params"]
  n = objective.grid[0] * objective.grid[1]
  tokens = jnp.ones((2, n, 16 * 16))
  encoder = _output_dtypes(objective.encoder, params["encoder"], tokens)
  assert encoder["transformer/block_0"] == jnp.bfloat16  # blocks: bf16 activations
  assert encoder["patch_embed"] == jnp.bfloat16
  assert encoder["transformer"] == jnp.float32  # the final norm: float32 features
  idx, valid = jnp.tile(jnp.arange(4), (2, 1)), jnp.ones((2, 4), bool)
  head = _output_dtypes(objective.predictor, params["predictor"],
                        jnp.ones((2, 4, bf16.model.width)), idx, valid, idx + 4, valid)
  assert head["transformer/block_0"] == jnp.bfloat16

  batch = _batch(8)
  new_state, metrics = jax.eval_shape(_step(objective, tx, schedules, 1), state, batch)
  assert metrics["loss"].dtype == jnp.float32
  assert {str(x.dtype) for x in jax.tree.leaves(new_state["params"])} == {"float32"}
  aux, rng = {"ema": params["encoder"]}, jax.random.key(2)
  losses = [jax.jit(objectives.build(c, 10).loss)(params, aux, batch, rng, 0)[0]
            for c in (bf16, f32)]
  assert losses[0].dtype == jnp.float32
  assert float(losses[0]) != float(losses[1])  # the bf16 loss did compute in bf16
  np.testing.assert_allclose(losses[0], losses[1], rtol=3e-2)


# ------------------------------------------------------------- attention backend


def test_attention_impl_picks_the_attention(monkeypatch):
  """'xla' goes to jax.nn.dot_product_attention; 'dense' to dense_attention, and so do
  'auto' and '' (its old spelling) at this length in float32 on any backend but a TPU
  (attention.choose); the outputs agree."""
  seen = []
  real = jax.nn.dot_product_attention

  def spy(*args, implementation=None, **kwargs):
    seen.append(implementation)
    return real(*args, implementation=implementation, **kwargs)

  monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
  encoder = models.build_encoder(tiny_config(), shapes.grid(tiny_config()))
  params = _random_params(functools.partial(models.init_encoder, encoder))
  n = encoder.grid[0] * encoder.grid[1]
  tokens = jax.random.normal(jax.random.key(1), (2, n, 16 * 16))
  outputs = {}
  for impl in ("auto", "", "dense", "xla"):
    config = tiny_config()
    config.model.attention_impl = impl
    encoder = models.build_encoder(config, shapes.grid(config))
    seen.clear()
    outputs[impl] = jax.jit(encoder.apply)({"params": params}, tokens)
    assert seen == (["xla"] * config.model.depth if impl == "xla" else [])
  np.testing.assert_allclose(outputs["xla"], outputs["dense"], rtol=1e-5, atol=1e-5)
  if jax.default_backend() != "tpu":
    np.testing.assert_array_equal(outputs["auto"], outputs["dense"])
    np.testing.assert_array_equal(outputs[""], outputs["dense"])


def test_cudnn_attention_needs_a_gpu_and_bfloat16():
  if jax.default_backend() == "gpu":
    pytest.skip("cuDNN attention is valid on a GPU")
  config = tiny_config()
  config.model.attention_impl = "cudnn"
  with pytest.raises(fields.ConfigError) as err:
    validation.validate(config)
  message = str(err.value)
  assert f"model.attention_impl 'cudnn' needs a GPU, but jax's backend is " \
         f"'{jax.default_backend()}'" in message
  assert "needs model.dtype 'bfloat16', got 'float32'" in message


@pytest.mark.parametrize("mask_shape", [None, (2, 1, 1, 7)])
def test_cudnn_attention_gets_an_even_length_and_a_whole_mask(monkeypatch, mask_shape):
  """What cuDNN is given (checked on a GPU: it rejects odd lengths and a (B, 1, 1, S)
  mask), computed here by XLA: the same attention."""
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 7, 2, 8))
  mask = None if mask_shape is None else \
      jax.random.uniform(jax.random.key(1), mask_shape) > 0.3
  attend = jax.jit(attention.masked_attention, static_argnums=4)
  expected = attend(q, k, v, mask, None)
  real, given = jax.nn.dot_product_attention, []

  def as_xla(q, k, v, mask=None, implementation=None):
    given.append((q.shape[1], None if mask is None else mask.shape, implementation))
    return real(q, k, v, mask=mask)

  monkeypatch.setattr(jax.nn, "dot_product_attention", as_xla)
  np.testing.assert_allclose(attend(q, k, v, mask, "cudnn"), expected,
                             rtol=1e-6, atol=1e-6)
  assert given == [(8, (2, 1, 8, 8), "cudnn")]
