"""uaMix-MAE: the NNCLR loss against a hand computation, nearest neighbours and the FIFO
queue, T-CutMix boxes and labels, the augmentation chain, progressive retraining (frozen
layers, no optimizer state for them, warm starts) and resume with the queue."""
import json
import os
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from scipy import stats

from jepa_jax import export, objectives
from jepa_jax.config import fields, validation
from jepa_jax.objectives import augment, mixing, nnclr
from jepa_jax.optim import optimizer
from jepa_jax.training import checkpoint, loop, warm_start
from tests.tiny import tiny_mae_config, tiny_uamix_config

# ---------------------------------------------------------------- NNCLR pieces


def test_soft_info_nce_equals_a_hand_computation():
  anchors = np.array([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]])
  positives = np.array([[1.0, 0.0], [0.0, 1.0], [-0.8, 0.6]])
  lam, partner, tau = np.array([0.7, 1.0, 0.25]), np.array([1, 1, 0]), 0.15
  labels = mixing.soft_labels(jnp.asarray(lam), jnp.asarray(partner))
  np.testing.assert_allclose(labels, [[0.7, 0.3, 0], [0, 1, 0], [0.75, 0, 0.25]], atol=1e-7)
  got = nnclr.soft_info_nce(jnp.asarray(anchors[:, None]), jnp.asarray(positives), labels, tau)
  expected = []
  for i in range(3):
    logits = [anchors[i] @ positives[j] / tau for j in range(3)]
    log_z = np.log(sum(np.exp(v) for v in logits))
    ce = [-(logits[j] - log_z) for j in range(3)]  # L_CL(z_i, z+_j), eq. 1
    weights = {i: lam[i]}
    weights[partner[i]] = weights.get(partner[i], 0) + 1 - lam[i]
    expected.append(sum(w * ce[j] for j, w in weights.items()))  # eq. 4, positive
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # k neighbours: the mean of the loss of each.
  two = jnp.asarray(np.stack([anchors, anchors[::-1]], axis=1))
  per_k = [nnclr.soft_info_nce(two[:, j:j + 1], jnp.asarray(positives), labels, tau)
           for j in range(2)]
  np.testing.assert_allclose(nnclr.soft_info_nce(two, jnp.asarray(positives), labels, tau),
                             (per_k[0] + per_k[1]) / 2, rtol=1e-6)


def test_label_smoothing_spreads_mass_and_keeps_rows_summing_to_one():
  labels = np.asarray(mixing.soft_labels(jnp.asarray([0.6, 1.0]), jnp.asarray([1, 1]), 0.1))
  np.testing.assert_allclose(labels, [[0.59, 0.41], [0.05, 0.95]], atol=1e-6)


def _queue(embeddings, ids):
  return {"embeddings": jnp.asarray(embeddings, jnp.float32),
          "ids": jnp.asarray(ids, jnp.int32), "ptr": jnp.zeros([], jnp.int32)}


def test_nearest_neighbours_are_the_true_top_k_and_never_the_example_itself():
  rng = np.random.default_rng(0)
  q, b, d, k = 40, 6, 5, 3
  emb = rng.normal(size=(q, d))
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  ids = rng.integers(0, 12, q)
  ids[:5] = -1  # empty slots
  z = rng.normal(size=(b, d))
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  own = np.arange(b)
  exclude = np.stack([own, (own + 1) % b], axis=1)
  # Plant an exact copy of each example's own (and its partner's) embedding: it must lose.
  for i in range(b):
    emb[5 + i], ids[5 + i] = z[i], i
  found_nn, found, index = nnclr.nearest_neighbours(jnp.asarray(z), jnp.asarray(exclude),
                                                    _queue(emb, ids), k)
  assert found.all()
  for i in range(b):
    allowed = [n for n in range(q) if ids[n] >= 0 and ids[n] not in exclude[i]]
    best = sorted(allowed, key=lambda n: -(z[i] @ emb[n]))[:k]
    assert list(np.asarray(index[i])) == best
    assert not np.isin(ids[np.asarray(index[i])], exclude[i]).any()
    np.testing.assert_allclose(found_nn[i], emb[best], rtol=1e-6)
  # Too few eligible entries: the missing neighbours are flagged.
  _, found, _ = nnclr.nearest_neighbours(jnp.asarray(z[:1]), jnp.asarray([[0, 0]]),
                                         _queue(emb[:7], [-1, -1, 0, 0, 3, -1, 0]), 2)
  assert np.asarray(found).tolist() == [[True, False]]


def test_queue_is_a_fifo_that_wraps():
  queue = nnclr.init_queue(8, 2)
  assert (np.asarray(queue["ids"]) == -1).all()
  batches = [(np.full((4, 2), n, np.float32), np.arange(4 * n, 4 * n + 4)) for n in range(3)]
  pointers = []
  for z, ids in batches:
    queue = nnclr.enqueue(queue, jnp.asarray(z), jnp.asarray(ids))
    pointers.append(int(queue["ptr"]))
  assert pointers == [4, 0, 4]
  # Batch 2 overwrote batch 0, the oldest; batch 1 is still there.
  np.testing.assert_array_equal(queue["ids"], [8, 9, 10, 11, 4, 5, 6, 7])
  np.testing.assert_array_equal(queue["embeddings"][:, 0], [2] * 4 + [1] * 4)
  with pytest.raises(ValueError, match="not a multiple of the batch size 3"):
    nnclr.enqueue(queue, jnp.zeros((3, 2)), jnp.zeros(3, jnp.int32))


# ---------------------------------------------------------------- mixing and augmentation


def _mixing(**kw):
  return ml_collections.ConfigDict({**dict(mode="time", alpha=1.0, width_rule="sqrt",
                                           label_smoothing=0.0), **kw})


@pytest.mark.parametrize("alpha,rule", [(1.0, "sqrt"), (0.4, "sqrt"), (2.0, "linear")])
def test_t_cutmix_box_widths_follow_the_beta_law(alpha, rule):
  n, t = 4000, 1000
  mel = jnp.zeros((n, 2, t))
  mix = jax.jit(lambda r: mixing.sample(r, mel, _mixing(alpha=alpha, width_rule=rule)))(
      jax.random.key(3))
  f0, f1, t0, t1 = np.asarray(mix.box).T
  assert (f0 == 0).all() and (f1 == 2).all()  # full frequency
  assert t0.min() >= 0 and t0.max() < t and (t1 <= t).all()
  # The sampled lambda is Beta(alpha, alpha)...
  sampled = np.asarray(mix.sampled, np.float64)
  assert stats.kstest(sampled, stats.beta(alpha, alpha).cdf).pvalue > 1e-3
  # ...the nominal width is T side(lambda) up to rounding, the start uniform...
  side = np.sqrt(1 - sampled) if rule == "sqrt" else 1 - sampled
  unclipped = t1 < t
  np.testing.assert_allclose((t1 - t0)[unclipped], np.round(side * t)[unclipped], atol=1)
  assert stats.kstest(t0 / t, "uniform").pvalue > 1e-3
  # ...so for unclipped boxes 1 - (w/T)^2 (sqrt) or 1 - w/T (linear) is Beta(alpha, alpha).
  w = (t1 - t0)[unclipped] / t
  recovered = 1 - w ** 2 if rule == "sqrt" else 1 - w
  # Conditioning on "not clipped" favours short boxes: compare with that conditional law.
  law = stats.beta(alpha, alpha).rvs(200_000, random_state=np.random.default_rng(1))
  s = np.random.default_rng(2).integers(0, t, law.size)
  law_side = np.sqrt(1 - law) if rule == "sqrt" else 1 - law
  keep = s + np.round(law_side * t) < t
  assert stats.ks_2samp(recovered, law[keep]).pvalue > 1e-3


def test_t_cutmix_lambda_matches_the_box_and_the_box_comes_from_the_partner():
  rng = np.random.default_rng(0)
  mel = jnp.asarray(rng.normal(size=(16, 8, 50)), jnp.float32)
  mix = mixing.sample(jax.random.key(0), mel, _mixing(alpha=0.5))
  m, x, j = np.asarray(mix.mel), np.asarray(mel), np.asarray(mix.partner)
  assert sorted(j) == list(range(16))
  for i, (f0, f1, t0, t1) in enumerate(np.asarray(mix.box)):
    inside = np.zeros((8, 50), bool)
    inside[f0:f1, t0:t1] = True
    np.testing.assert_array_equal(m[i][inside], x[j[i]][inside])
    np.testing.assert_array_equal(m[i][~inside], x[i][~inside])
    assert mix.lam[i] == pytest.approx(1 - (t1 - t0) / 50)


def test_tf_cutmix_mixup_and_no_mixing():
  rng = np.random.default_rng(1)
  mel = jnp.asarray(rng.normal(size=(32, 20, 40)), jnp.float32)
  tf = mixing.sample(jax.random.key(1), mel, _mixing(mode="time_freq"))
  f0, f1, t0, t1 = np.asarray(tf.box).T
  assert (f1 - f0 < 20).any()  # boxes in frequency too
  np.testing.assert_allclose(tf.lam, 1 - (f1 - f0) * (t1 - t0) / 800, rtol=1e-6)
  up = mixing.sample(jax.random.key(2), mel, _mixing(mode="mixup"))
  lam = np.asarray(up.lam)[:, None, None]
  np.testing.assert_allclose(up.mel, lam * mel + (1 - lam) * np.asarray(mel)[up.partner],
                             rtol=1e-5, atol=1e-6)
  none = mixing.sample(jax.random.key(3), mel, _mixing(mode="none"))
  np.testing.assert_array_equal(none.mel, mel)
  assert (np.asarray(none.lam) == 1).all() and (np.asarray(none.partner) == np.arange(32)).all()


def test_augmentation_chain():
  mel = jnp.asarray(np.random.default_rng(2).normal(size=(64, 20, 50)) + 3.0, jnp.float32)
  off = augment.default_config(background=0.0, time_shift=0.0, gain=0.0, noise=0.0,
                               freq_masks=0, time_masks=0)
  np.testing.assert_array_equal(augment.apply(jax.random.key(0), mel, off), mel)
  shifted = np.asarray(augment.time_shift(jax.random.key(1), mel, 0.2))
  for i in range(64):  # a roll by at most 10 frames
    matches = [s for s in range(-10, 11) if np.array_equal(np.roll(mel[i], s, axis=1),
                                                           shifted[i])]
    assert matches
  masks = np.asarray(augment.band_mask(jax.random.key(2), 2000, 50, 1, 0.2))
  widths = masks.sum(1)
  assert widths.max() == 10 and set(np.unique(widths)) == set(range(11))
  out = np.asarray(augment.apply(jax.random.key(3), mel, augment.default_config(
      background=0.0, time_shift=0.0, gain=0.0, noise=0.0)))
  zeroed = out == 0  # masks fill with the normalised mean; the input has no zeros
  assert zeroed.any() and np.array_equal(out[~zeroed], np.asarray(mel)[~zeroed])
  gained = augment.apply(jax.random.key(4), mel, augment.default_config(
      background=0.0, time_shift=0.0, noise=0.0, freq_masks=0, time_masks=0))
  offset = np.asarray(gained - mel)
  assert np.allclose(offset, offset[:, :1, :1], atol=1e-5) and np.abs(offset).max() <= 0.5
  assert np.abs(offset).max() > 0.45  # 64 draws of U(-0.5, 0.5)
  with pytest.raises(ValueError, match="pass ln_scale"):
    augment.apply(jax.random.key(4), mel, augment.default_config())


def test_background_mix_adds_another_clips_power_at_a_uniform_share():
  rng = np.random.default_rng(3)
  mel = jnp.asarray(rng.normal(size=(4000, 3, 5)), jnp.float32)
  scale = augment.ln_power_scale("ajepa", "recipe")  # 9.14 ln units per normalised unit
  assert scale == pytest.approx(2 * 4.5689974)
  assert augment.ln_power_scale("dasheng", "recipe") == pytest.approx(40 * np.log(10) / 10)
  with pytest.raises(ValueError, match="needs data.normalization 'recipe'"):
    augment.ln_power_scale("ajepa", "dataset")
  out = np.asarray(augment.background_mix(jax.random.key(5), mel, 0.4, scale), np.float64)
  x = np.asarray(mel, np.float64)
  # Recover each clip's partner and share from the formula's power domain:
  # e^(s out) = (1 - l) e^(s x) + l e^(s y) for the partner y = x[(i + r) % B].
  # e^(s out) = (1 - l) e^(s x) + l e^(s y) with y = x[(i - r) % B] for one r in 1..B-1:
  # solved for l, only the right r gives one share per clip across all its bins.
  y = None
  for r in range(1, 4000):
    cand = np.roll(x, r, axis=0)
    share = (np.exp(scale * out[:8]) - np.exp(scale * x[:8])) / (
        np.exp(scale * cand[:8]) - np.exp(scale * x[:8]))
    if np.allclose(share, share[:, :1, :1], rtol=1e-3, atol=1e-6):
      y = cand
      break
  assert y is not None
  share = ((np.exp(scale * out) - np.exp(scale * x)) / (np.exp(scale * y) - np.exp(scale * x)))
  share = np.median(share.reshape(4000, -1), axis=1)
  np.testing.assert_allclose(
      out, np.log((1 - share)[:, None, None] * np.exp(scale * x)
                  + share[:, None, None] * np.exp(scale * y)) / scale, atol=1e-4)
  # Uniform on [0, 0.4]: mean 0.2, std 0.4 / sqrt(12); quartiles 0.1, 0.2, 0.3.
  assert share.min() >= -1e-4 and share.max() <= 0.4 + 1e-4
  assert abs(share.mean() - 0.2) < 0.01 and abs(share.std() - 0.4 / np.sqrt(12)) < 0.01
  np.testing.assert_allclose(np.quantile(share, [0.25, 0.5, 0.75]), [0.1, 0.2, 0.3],
                             atol=0.015)
  np.testing.assert_array_equal(augment.background_mix(jax.random.key(5), mel, 0.0, scale),
                                mel)


# ---------------------------------------------------------------- the objective


def _objective(stage=1):
  config = tiny_uamix_config(stage)
  validation.validate(config)
  obj = objectives.build(config)
  return config, obj, nn.unbox(obj.init(jax.random.key(0))), nn.unbox(obj.init_aux())


@pytest.mark.slow
def test_loss_uses_queue_neighbours_and_enqueues_the_positives():
  config, obj, params, aux = _objective()
  mel = jnp.asarray(np.random.default_rng(0).normal(size=(8, 80, 64)), jnp.float32)
  step = jax.jit(obj.loss)
  batch = {"mel": mel, "id": jnp.arange(8, dtype=jnp.int32)}
  rng = jax.random.key(1)
  loss, (metrics, new_aux) = step(params, aux, batch, rng, 0)
  assert metrics["neighbour_found"] == 0  # empty queue: each anchor stands for itself
  assert np.isfinite(loss) and int(new_aux["queue"]["ptr"]) == 8
  np.testing.assert_array_equal(new_aux["queue"]["ids"][:8], np.arange(8))
  assert (np.asarray(new_aux["queue"]["ids"][8:]) == -1).all()

  # By hand: the same views, the same mix, the positives' embeddings enqueued.
  k_anchor, k_pos, k_mix = jax.random.split(rng, 3)
  u = config.uamix
  mix = mixing.sample(k_mix, augment.apply(k_anchor, mel, u.augment, obj.ln_scale), u.mixing)
  z_mix = obj.embed(params, mix.mel)
  z_pos = obj.embed(params, augment.apply(k_pos, mel, u.augment, obj.ln_scale))
  np.testing.assert_allclose(new_aux["queue"]["embeddings"][:8], z_pos, rtol=1e-4, atol=1e-5)
  labels = mixing.soft_labels(mix.lam, mix.partner)
  np.testing.assert_allclose(loss, nnclr.soft_info_nce(z_mix[:, None], z_pos, labels,
                                                       0.15).mean(), rtol=1e-4)

  # Next batch: other clips find neighbours among the queued ones, each clip's only
  # (and its partner's) excluded.
  other = {"mel": mel[::-1], "id": jnp.arange(8, 16, dtype=jnp.int32)}
  loss2, (metrics2, aux2) = step(params, new_aux, other, jax.random.key(2), 1)
  assert metrics2["neighbour_found"] == 1 and np.isfinite(loss2)
  np.testing.assert_array_equal(aux2["queue"]["ids"], np.arange(16))
  monitors = jax.jit(obj.monitors)(params, aux2, batch, rng, 0)
  assert set(monitors) == {"encoder_feature_std", "encoder_effective_rank",
                           "projection_feature_std", "projection_effective_rank"}


def _adam_moments(opt_state):
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(
      x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]
  assert len(found) == 1
  return found[0].mu


@pytest.mark.parametrize("stage", [1, 2])
def test_frozen_leaves_carry_no_optimizer_state(stage):
  config, obj, params, _ = _objective(stage)
  tx, _ = optimizer.make_optimizer(config.optim, None, 8, 10, 1, None)
  mu = _adam_moments(tx.init(params))
  # Boxed parameters (as the train loop builds its state) give the same structure.
  boxed_mu = _adam_moments(tx.init(obj.init(jax.random.key(0))))
  assert jax.tree.structure(nn.unbox(boxed_mu)) == jax.tree.structure(mu)
  assert len(jax.tree.leaves(mu["head"])) == len(jax.tree.leaves(params["head"]))
  enc = mu["encoder"]
  if stage == 1:
    assert jax.tree.leaves(enc) == []
  else:  # embedding and block 1 frozen; block 2 and the final norm train
    for name in ("patch_embed", "positions"):
      assert jax.tree.leaves(enc.get(name, {})) == []
    assert jax.tree.leaves(enc["transformer"]["block_0"]) == []
    assert len(jax.tree.leaves(enc["transformer"]["block_1"])) == len(
        jax.tree.leaves(params["encoder"]["transformer"]["block_1"]))
    assert len(jax.tree.leaves(enc["transformer"]["norm"])) == 2


def test_config_errors_are_clear():
  c = tiny_uamix_config()
  c.uamix.queue_size = 48  # = the 48 pretraining clips
  c.uamix.mixing.update(width_rule="cube", mode="boxes", alpha=0.0, label_smoothing=1.0)
  c.uamix.update(temperature=0.0, topk=0)
  c.uamix.augment.update(time_shift=2.0, freq_masks=-1)
  c.init_from = ""
  c.data.normalization = "dataset"
  with pytest.raises(fields.ConfigError) as err:
    validation.validate(c)
  message = str(err.value)
  for part in ("uamix.queue_size 48 must be smaller than the 48 training examples",
               "uamix.mixing.width_rule must be one of ('sqrt', 'linear'), got 'cube'",
               "uamix.mixing.mode must be one of", "uamix.mixing.alpha", "label_smoothing",
               "uamix.temperature must be > 0", "uamix.topk", "uamix.augment.time_shift",
               "uamix.augment.freq_masks", "init_from must name the pretrained MAE",
               "uamix.augment.background mixes powers"):
    assert part in message, part
  c = tiny_uamix_config()
  c.uamix.queue_size = 12
  with pytest.raises(fields.ConfigError, match="positive multiple of train.batch_size 8"):
    validation.validate(c)
  c = tiny_uamix_config()
  c.data.dir = "/prepared/elsewhere"  # size known only once the data is read
  with pytest.raises(fields.ConfigError, match="must be smaller than the 10 training"):
    validation.validate_dataset(c, 10)
  validation.validate_dataset(c, 17)
  with pytest.raises(fields.ConfigError, match="choose one of stage1 and stage2"):
    fields.load("configs/uamix.py:stage1,stage2")


def test_both_demo_stages_tune_without_five_pitch_classes_of_the_corpus():
  from data_pipelines import synthetic
  one, two = (fields.load(f"configs/uamix.py:stage{k},demo") for k in (1, 2))
  assert one.data.exclude_classes == two.data.exclude_classes
  held = fields.parse_classes(two.data.exclude_classes)
  assert list(held) == ["pitch"] and len(held["pitch"]) == 5  # 5-way episodes among them
  assert set(held["pitch"]) < set(synthetic.TASKS["pitch"])
  assert fields.load("configs/uamix.py:stage2").data.exclude_classes == ""


def test_recipe_variants():
  load = lambda v: fields.load(f"configs/uamix.py:{v}")  # noqa: E731
  s1, s2 = load("stage1"), load("stage2")
  assert (s1.optim.frozen_layers, s2.optim.frozen_layers) == (14, 7)  # ViT-B: 12 blocks
  assert (s1.optim.layer_decay, s2.optim.layer_decay) == (1.0, 0.65)
  # lr 1e-4 at batch 512 and at batch 128.
  assert optimizer.peak_learning_rate(s1.optim.base_lr, s1.train.batch_size) == pytest.approx(1e-4)
  assert optimizer.peak_learning_rate(s2.optim.base_lr, s2.train.batch_size) == pytest.approx(1e-4)
  assert (s1.train.epochs, s2.train.epochs) == (40, 160)
  assert s2.init_from == "runs/uamix_stage1"
  assert (s1.uamix.temperature, s1.uamix.topk, s1.uamix.mixing.alpha) == (0.15, 1, 1.0)
  demo = load("stage2,demo,mix=time_freq,width=linear,init=/x")
  assert (demo.optim.frozen_layers, demo.init_from) == (4, "/x")
  assert (demo.uamix.mixing.mode, demo.uamix.mixing.width_rule) == ("time_freq", "linear")
  validation.validate(demo)
  validation.validate(load("stage1,demo,mix=mixup"))
  assert load("stage1,mix=mixup").uamix.mixing.label_smoothing == 0.1


# ---------------------------------------------------------------- runs: warm start, stages


class StopAfter:
  """Sends SIGTERM as the n-th training batch is read: the loop then checkpoints the step
  before it and stops."""

  def __init__(self, monkeypatch, n):
    self.count, real = 0, jax.make_array_from_process_local_data

    def spy(sharding, local, *args, **kwargs):
      if np.ndim(local) == 3:
        self.count += 1
        if self.count == n:
          os.kill(os.getpid(), signal.SIGTERM)
      return real(sharding, local, *args, **kwargs)

    monkeypatch.setattr(jax, "make_array_from_process_local_data", spy)


def _encoder(workdir):
  return jax.tree.map(np.asarray, export.load_encoder(workdir / "export")[2])


def _final(workdir, entry):
  return jax.tree.map(np.asarray, checkpoint.latest_entry(workdir / "checkpoints", entry))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A tiny MAE (2 blocks), uaMix stage 1 from it, stage 2 from stage 1."""
  root = tmp_path_factory.mktemp("uamix")
  mae = tiny_mae_config(checkpoint_every=100)
  mae.model.depth = 2
  loop.train(mae, root / "mae")
  first = loop.train(tiny_uamix_config(1, str(root / "mae"), checkpoint_every=100),
                     root / "stage1")
  second = loop.train(tiny_uamix_config(2, str(root / "stage1"), checkpoint_every=100),
                      root / "stage2")
  return root, first, second


@pytest.mark.slow
def test_stage1_trains_the_head_only_from_the_mae_encoder(runs):
  root, first, _ = runs
  assert (first.step, first.interrupted) == (6, False)
  jax.tree.map(np.testing.assert_array_equal, _encoder(root / "stage1"), _encoder(root / "mae"))
  lines = [json.loads(x) for x in (root / "stage1" / "metrics.jsonl").read_text().splitlines()]
  for key in ("loss", "neighbour_found", "lambda", "queue_filled", "encoder_effective_rank",
              "projection_effective_rank"):
    assert np.isfinite(lines[-1][key]), key
  assert lines[-1]["neighbour_found"] == 1.0 and lines[-1]["queue_filled"] == 1.0
  # The head moved away from its initialisation.
  obj = objectives.build(tiny_uamix_config(1))
  init_head = jax.tree.map(np.asarray, nn.unbox(obj.init(jax.random.key(0)))["head"])
  trained = _final(root / "stage1", "params")["head"]
  assert not np.allclose(trained["dense_0"]["kernel"], init_head["dense_0"]["kernel"])


def test_stage2_starts_from_stage1_and_keeps_the_lower_half(runs):
  root, _, second = runs
  assert (second.step, second.interrupted) == (6, False)
  before, after = _encoder(root / "stage1"), _encoder(root / "stage2")
  assert "patch_embed" in after
  for name in set(after) - {"transformer"}:  # the embedding (and learned positions)
    jax.tree.map(np.testing.assert_array_equal, after[name], before[name])
  jax.tree.map(np.testing.assert_array_equal, after["transformer"]["block_0"],
               before["transformer"]["block_0"])
  for name in ("block_1", "norm"):
    for a, b in zip(jax.tree.leaves(after["transformer"][name]),
                    jax.tree.leaves(before["transformer"][name])):
      assert not np.array_equal(a, b)
  # Stage 2's start: stage 1's encoder and head (the MAE decoder is not wanted).
  loaded = warm_start.load(tiny_uamix_config(2, str(root / "stage1")))
  assert set(loaded) == {"encoder", "head"}
  jax.tree.map(np.testing.assert_array_equal, loaded["head"],
               _final(root / "stage1", "params")["head"])
  # From the MAE run: its encoder; its decoder is no entry of this objective.
  from_mae = warm_start.load(tiny_uamix_config(1, str(root / "mae")))
  assert "head" not in from_mae and "decoder" not in warm_start.merge({"head": {}}, from_mae)


@pytest.mark.slow
def test_interrupted_stage2_resumes_to_the_same_encoder_and_queue(runs, tmp_path, monkeypatch):
  root, _, _ = runs
  config = tiny_uamix_config(2, str(root / "stage1"), checkpoint_every=100)
  StopAfter(monkeypatch, 5)
  first = loop.train(config, tmp_path)
  assert first.interrupted and first.step == 4
  queue = _final(tmp_path, "aux")["queue"]
  assert int(queue["ptr"]) == 0 and (queue["ids"] >= 0).all()  # 4 batches of 8 in 16: wrapped
  monkeypatch.undo()
  second = loop.train(config, tmp_path)
  assert second.step == 6 and not second.interrupted
  jax.tree.map(np.testing.assert_array_equal, _encoder(tmp_path), _encoder(root / "stage2"))
  jax.tree.map(np.testing.assert_array_equal, _final(tmp_path, "aux"),
               _final(root / "stage2", "aux"))


def test_warm_start_refuses_an_incompatible_or_missing_source(runs, tmp_path):
  root, _, _ = runs
  config = tiny_uamix_config(1, str(root / "mae"))
  config.model.width = 64
  with pytest.raises(fields.ConfigError, match="model.width: 32 in the source, 64 here"):
    loop.train(config, tmp_path / "a")
  with pytest.raises(fields.ConfigError, match="no encoder export there"):
    loop.train(tiny_uamix_config(1, str(tmp_path / "nothing")), tmp_path / "b")
  # An export folder itself works as a source (encoder only).
  assert set(warm_start.load(tiny_uamix_config(1, str(root / "mae" / "export")))) == {"encoder"}
