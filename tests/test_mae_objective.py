"""The MAE loss equals its definition computed by hand; the encoder sees visible tokens only."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import masks, objectives
from jepa_jax.config import validation
from jepa_jax.models import patches
from tests.tiny import tiny_mae_config


def _setup():
  config = tiny_mae_config()
  validation.validate(config)
  objective = objectives.build(config)
  params = nn.unbox(objective.init(jax.random.key(0)))
  mel = jnp.asarray(np.random.default_rng(0).normal(size=(4, 80, 64)), jnp.float32)
  return config, objective, params, {"mel": mel}


@pytest.mark.slow
def test_mae_loss_is_norm_pix_mse_on_masked_tokens():
  config, obj, params, batch = _setup()
  assert obj.ema_subtree is None and "decoder" in params
  rng = jax.random.key(5)
  loss, (metrics, aux) = jax.jit(obj.loss)(params, {}, batch, rng, 0)
  assert aux == {} and metrics["loss"] == loss

  m = masks.sample(rng, 4, (5, 4), config.mask)
  ci, ti = np.asarray(m.context_idx[:, 0]), np.asarray(m.target_idx[:, 0, 0])
  assert ci.shape == (4, 4) and ti.shape == (4, 16)  # 80 % of 20 patches masked
  tokens = np.asarray(patches.patchify(batch["mel"], (16, 16)))
  take = lambda x, i: np.take_along_axis(x, i[..., None], 1)  # noqa: E731
  latent = obj.encoder.apply({"params": params["encoder"]}, take(tokens, ci), ci)
  valid = jnp.ones(ci.shape, bool)
  pred = np.asarray(obj.decoder.apply({"params": params["decoder"]}, latent, ci, valid, ti,
                                      jnp.ones(ti.shape, bool)))
  assert pred.shape == (4, 16, 256)
  target = take(tokens, ti).astype(np.float64)
  target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True)
                                                               + 1e-6)
  np.testing.assert_allclose(loss, np.mean((pred - target) ** 2), rtol=1e-5)


def test_encoder_never_sees_masked_tokens():
  config, obj, params, batch = _setup()
  rng = jax.random.key(2)
  m = masks.sample(rng, 4, (5, 4), config.mask)
  tokens = patches.patchify(batch["mel"], (16, 16))
  masked = np.zeros((4, 20), bool)
  np.put_along_axis(masked, np.asarray(m.target_idx[:, 0, 0]), True, axis=1)
  # Not a constant: norm-pix targets ignore a patch's offset and scale.
  noise = np.random.default_rng(1).normal(size=tokens.shape) * 5
  noise = jnp.asarray(np.where(masked[..., None], noise, 0.0), jnp.float32)
  other = {"mel": patches.unpatchify(tokens + noise, (5, 4), (16, 16))}
  monitors = jax.jit(obj.monitors)
  a, b = monitors(params, {}, batch, rng, 0), monitors(params, {}, other, rng, 0)
  for key in a:  # the encoder's embeddings of the visible tokens did not change
    np.testing.assert_allclose(a[key], b[key], rtol=1e-5)
  # ...but the loss did: the masked tokens are the targets.
  assert not np.isclose(obj.loss(params, {}, batch, rng, 0)[0],
                        obj.loss(params, {}, other, rng, 0)[0])


def test_mae_config_errors():
  config = tiny_mae_config()
  config.decoder.layout = "queries"
  config.mae.norm_pix_eps = 0.0
  errors = objectives.OBJECTIVES["mae"].config_errors(config)
  assert any("decoder.layout must be 'full_grid'" in e for e in errors)
  assert any("needs decoder.layout 'full_grid'" in e for e in errors)
  assert any("norm_pix_eps" in e for e in errors)


def test_dasheng_input_batch_norm_feeds_the_encoder_and_the_target_is_taken_before_it():
  config = tiny_mae_config()
  config.mae.input_norm = "batch_norm"
  config.mask = masks.default_config("grouped")
  obj = objectives.build(config)
  params = nn.unbox(obj.init(jax.random.key(0)))
  aux = obj.init_aux()
  rng_np = np.random.default_rng(4)
  # Mel bins with very different offsets and scales, as dB spectrograms have.
  mel = rng_np.normal(size=(4, 80, 64)) * rng_np.uniform(1, 20, (1, 80, 1)) \
      + rng_np.uniform(-80, 0, (1, 80, 1))
  batch = {"mel": jnp.asarray(mel, jnp.float32)}
  rng = jax.random.key(6)
  loss, (_, new_aux) = jax.jit(obj.loss)(params, aux, batch, rng, 0)

  # Running statistics: PyTorch momentum 0.01 (biased batch variance, as flax keeps).
  stats = new_aux["input_norm"]["bn"]
  np.testing.assert_allclose(stats["mean"], 0.01 * mel.mean(axis=(0, 2)), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(stats["var"], 0.99 + 0.01 * mel.var(axis=(0, 2)), rtol=1e-4)

  # By hand: batch statistics normalise the encoder input; targets are the raw mel's.
  normed = (mel - mel.mean(axis=(0, 2), keepdims=True)) / np.sqrt(
      mel.var(axis=(0, 2), keepdims=True) + 1e-5)
  m = masks.sample(rng, 4, (5, 4), config.mask)
  ci, cv = m.context_idx[:, 0], m.context_valid[:, 0]
  ti, tv = m.target_idx[:, 0, 0], m.target_valid[:, 0, 0]
  take = lambda x, i: jnp.take_along_axis(x, i[..., None], 1)  # noqa: E731
  tokens = patches.patchify(jnp.asarray(normed, jnp.float32), (16, 16))
  latent = obj.encoder.apply({"params": params["encoder"]}, take(tokens, ci), ci, cv)
  pred = np.asarray(obj.decoder.apply({"params": params["decoder"]}, latent, ci, cv, ti, tv))
  target = np.asarray(take(patches.patchify(jnp.asarray(mel), (16, 16)), ti), np.float64)
  target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True)
                                                               + 1e-6)
  per_token = ((pred - target) ** 2).mean(-1)
  valid = np.asarray(tv)
  expected = np.mean((per_token * valid).sum(1) / valid.sum(1))
  np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_folded_input_norm_is_the_evaluation_mode_batch_norm():
  from jepa_jax.models import input_norm
  module = input_norm.MelBatchNorm()
  rng = np.random.default_rng(5)
  variables = {
      "params": {"bn": {"scale": jnp.asarray(rng.uniform(0.5, 2, 6), jnp.float32),
                        "bias": jnp.asarray(rng.normal(size=6), jnp.float32)}},
      "batch_stats": {"bn": {"mean": jnp.asarray(rng.normal(size=6), jnp.float32),
                             "var": jnp.asarray(rng.uniform(0.5, 3, 6), jnp.float32)}}}
  x = rng.normal(size=(2, 6, 5)).astype(np.float32)
  expected = np.asarray(module.apply(variables, jnp.asarray(x), train=False))
  folded = input_norm.fold(variables["params"], variables["batch_stats"])
  got = x * np.asarray(folded["scale"])[:, None] + np.asarray(folded["shift"])[:, None]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # Evaluation applies the exported transform after the scalar normalisation.
  from jepa_jax.evaluation import task_data
  meta = {"normalization": {"mean": 2.0, "std": 4.0}, "input_norm": folded}
  np.testing.assert_allclose(
      task_data.normalize(x[0] * 4.0 + 2.0, meta), got[0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_mae_run_trains_exports_its_input_norm_and_evaluates(tmp_path):
  from jepa_jax.evaluation import suite
  from jepa_jax.training import loop
  config = tiny_mae_config(checkpoint_every=100)
  config.mae.input_norm = "batch_norm"
  result = loop.train(config, tmp_path)
  assert (result.step, result.interrupted) == (6, False)
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  for key in ("loss", "grad_norm", "encoder_feature_std", "encoder_effective_rank"):
    assert np.isfinite(lines[-1][key])
  assert "tau" not in lines[-1]  # no target network
  meta = json.loads((tmp_path / "export" / "frontend.json").read_text())
  scale = np.asarray(meta["input_norm"]["scale"])
  assert scale.shape == (80,) and np.all(np.isfinite(scale)) and not np.allclose(scale, 1.0)
  summary = suite.probe_workdir(tmp_path)
  assert 0 <= summary["probe_accuracy"] <= 1 and 0 <= summary["probe_accuracy_random_init"] <= 1
