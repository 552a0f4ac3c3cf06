"""The Audio-JEPA loss equals its definition computed by hand from the modules."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import masks, objectives
from jepa_jax.models import patches
from jepa_jax.objectives import jepa, losses
from tests.tiny import tiny_config


def _setup(**jepa):
  config = tiny_config()
  config.jepa.update(**jepa)
  objective = objectives.build(config)
  params = nn.unbox(objective.init(jax.random.key(0)))
  target = nn.unbox(objective.init(jax.random.key(1)))["encoder"]
  mel = jnp.asarray(np.random.default_rng(0).normal(size=(4, 80, 64)), jnp.float32)
  return config, objective, params, target, {"mel": mel}


@pytest.mark.slow
@pytest.mark.parametrize("domain", ["audio", "latent"])
def test_loss_matches_manual_computation(domain):
  config, obj, params, target_params, batch = _setup(target_domain=domain, distance="l2",
                                                     standardize_targets=False)
  rng = jax.random.key(7)
  loss, (metrics, aux) = jax.jit(obj.loss)(params, {"ema": target_params}, batch, rng, 0)
  assert aux == {}

  @jax.jit
  def manual(params, target_params, mel):
    tokens = patches.patchify(mel, (16, 16))
    m = masks.sample(rng, 4, (5, 4), config.mask)
    ci, cv = m.context_idx[:, 0], m.context_valid[:, 0]   # one set, one group, all valid
    ti, tv = m.target_idx[:, 0, 0], m.target_valid[:, 0, 0]
    take = lambda x, i: jnp.take_along_axis(x, i[..., None], 1)  # noqa: E731
    ctx = obj.encoder.apply({"params": params["encoder"]}, take(tokens, ci), ci)
    pred = obj.predictor.apply({"params": params["predictor"]}, ctx, ci, cv, ti, tv)
    if domain == "audio":
      tgt = obj.encoder.apply({"params": target_params}, take(tokens, ti), ti)
    else:
      tgt = take(obj.encoder.apply({"params": target_params}, tokens), ti)
    return pred, tgt

  pred, tgt = manual(params, target_params, batch["mel"])
  expected = np.mean((np.asarray(pred) - np.asarray(tgt)) ** 2)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert metrics["loss"] == loss


def test_audio_and_latent_domains_differ():
  _, obj_a, params, target, batch = _setup(target_domain="audio")
  _, obj_l, _, _, _ = _setup(target_domain="latent")
  rng = jax.random.key(3)
  la = jax.jit(obj_a.loss)(params, {"ema": target}, batch, rng, 0)[0]
  ll = jax.jit(obj_l.loss)(params, {"ema": target}, batch, rng, 0)[0]
  assert not np.isclose(la, ll)


def test_default_loss_is_smooth_l1_on_standardised_targets_and_targets_get_no_gradient():
  config, obj, params, target, batch = _setup()
  assert (config.jepa.distance, config.jepa.standardize_targets) == ("smooth_l1", True)
  rng = jax.random.key(5)
  assert obj.distance.func is losses.smooth_l1 and obj.distance.keywords == {"beta": 1.0}
  grad = jax.jit(jax.grad(lambda p, t: obj.loss(p, {"ema": t}, batch, rng, 0)[0], (0, 1)))
  g_params, g_target = grad(params, target)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_target))
  assert float(jnp.abs(g_params["predictor"]["mask_token"]).max()) > 0
  assert float(jnp.abs(g_params["encoder"]["patch_embed"]["kernel"]).max()) > 0


def test_monitors_report_target_and_context_collapse_statistics():
  _, obj, params, target, batch = _setup()
  out = jax.jit(obj.monitors)(params, {"ema": target}, batch, jax.random.key(2), 0)
  assert set(out) == {"target_feature_std", "target_effective_rank",
                      "context_feature_std", "context_effective_rank"}
  assert all(np.isfinite(float(v)) and float(v) > 0 for v in out.values())
  assert float(out["target_effective_rank"]) <= 32  # at most the embedding width


def test_first_occurrence_marks_each_valid_token_once():
  idx = jnp.array([[3, 1, 3, 0, 1, 0]])
  valid = jnp.array([[True, True, True, False, True, True]])
  np.testing.assert_array_equal(jepa.first_occurrence(idx, valid, 5),
                                [[True, True, False, False, False, True]])


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["multi_block", "time"])
def test_block_targets_in_the_audio_domain_equal_encoding_their_union(strategy):
  """With overlapping blocks and padding slots, each valid target equals the target
  encoder's output on the clip's union of target patches, taken once each."""
  config = tiny_config()
  config.data.frames = 208                      # 5 x 13: blocks with padding slots
  config.mask.strategy = strategy
  obj = objectives.build(config)
  params = jax.jit(lambda r: nn.unbox(obj.init(r)))(jax.random.key(0))
  target_params = params["encoder"]
  batch = {"mel": jnp.asarray(np.random.default_rng(0).normal(size=(4, 80, 208)), jnp.float32)}
  rng = jax.random.key(11)
  _, _, pred, target, valid = jax.jit(obj._forward)(params, {"ema": target_params}, batch,
                                                    rng, 0)
  m = masks.sample(rng, 4, obj.grid, config.mask)
  tokens = patches.patchify(batch["mel"], (16, 16))
  flat_idx = np.asarray(m.target_idx).reshape(4, -1)
  flat_valid = np.asarray(m.target_valid).reshape(4, -1)
  assert pred.shape == target.shape == flat_idx.shape + (32,)
  encode = jax.jit(lambda p, x, i: obj.encoder.apply({"params": p}, x, i))
  for b in range(4):
    union = np.unique(flat_idx[b][flat_valid[b]])
    out = encode(target_params, tokens[b:b + 1, union], jnp.asarray(union)[None])[0]
    for slot in np.flatnonzero(flat_valid[b]):
      np.testing.assert_allclose(target[b, slot], out[np.searchsorted(union, flat_idx[b, slot])],
                                 rtol=1e-4, atol=1e-5)
  assert (~flat_valid).any()  # the test did cover padding slots


@pytest.mark.slow
def test_full_grid_predictor_lines_up_every_group_with_its_targets():
  """A-JEPA layout: one predictor pass on the restored grid for all 4 multi-block groups
  and 2 mask sets gives the loss of predicting each group on its own."""
  config = tiny_config()
  config.mask = masks.default_config("multi_block", num_sets=2)
  config.predictor.update(layout="full_grid", attention="local", window=dict(freq=5, time=2),
                          shift=dict(freq=0, time=1), depth=2)
  config.jepa.update(target_domain="latent", distance="l2", standardize_targets=False)
  obj = objectives.build(config)
  params = nn.unbox(obj.init(jax.random.key(0)))
  target_params = nn.unbox(obj.init(jax.random.key(1)))["encoder"]
  mel = jnp.asarray(np.random.default_rng(1).normal(size=(3, 80, 64)), jnp.float32)
  rng = jax.random.key(4)
  loss = jax.jit(obj.loss)(params, {"ema": target_params}, {"mel": mel}, rng, 0)[0]

  m = masks.sample(rng, 3, (5, 4), config.mask)
  tokens = patches.patchify(mel, (16, 16))
  full = obj.encoder.apply({"params": target_params}, tokens)
  take = lambda x, i: jnp.take_along_axis(x, i[..., None], 1)  # noqa: E731
  per_sample = np.zeros(3)
  counts = np.zeros(3)
  for k in range(2):
    ci, cv = m.context_idx[:, k], m.context_valid[:, k]
    ctx = obj.encoder.apply({"params": params["encoder"]}, take(tokens, ci), ci, cv)
    for g in range(4):
      ti, tv = m.target_idx[:, k, g], m.target_valid[:, k, g]
      pred = obj.predictor.apply({"params": params["predictor"]}, ctx, ci, cv, ti, tv)
      d = np.asarray(((pred - take(full, ti)) ** 2).mean(-1))
      per_sample += (d * np.asarray(tv)).sum(1)
      counts += np.asarray(tv).sum(1)
  np.testing.assert_allclose(loss, np.mean(per_sample / counts), rtol=1e-5)
