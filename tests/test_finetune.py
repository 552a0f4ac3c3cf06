"""Fine-tuning: regularised masking in the ViT, the train step's pieces (layer decay,
mixup, token dropping, balanced sampling, schedule, crops), whole runs on separable
synthetic tasks, reproducibility and settings errors."""
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from data_pipelines import frontends
from jepa_jax import models
from jepa_jax.config import fields, shapes, validation
from jepa_jax.evaluation import finetune, task_data
from jepa_jax.models import attention, vit
from jepa_jax.optim import layerwise
from tests.tiny import tiny_config

FRONTEND_META = {"frontend": frontends.get_frontend("audio_jepa").to_dict(),
                 "normalization": {"mean": -7.0, "std": 4.0}, "frames": 64}
# audio_jepa pads every clip with its floor: the clip's features do not matter.
PAD = task_data.pad_value(FRONTEND_META, np.zeros((80, 1), np.float32))


def _pads(mels):
  return [PAD] * len(mels)


def _tokens(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# One compile per shape instead of one per operation.
_key_masks = jax.jit(attention.regularised_key_masks, static_argnums=(1, 2, 3))


def _params(module, *args, seed=0):
  """Plain parameters of `module`: unit norms, zero biases, N(0, 0.05) elsewhere (cheaper
  than compiling flax's initialisers)."""
  abstract = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), *args))["params"])
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = path[-1].key
    if name in ("scale", "bias"):
      return jnp.full(s.shape, 1.0 if name == "scale" else 0.0, s.dtype)
    return jnp.asarray(rng.normal(0.0, 0.05, s.shape), s.dtype)
  return jax.tree_util.tree_map_with_path(leaf, abstract)


# ---- regularised masking in the ViT ----
# Every test samples (depth 4, batch 2, 6 tokens) masks: one compile of the sampler.
DEPTH, TOKENS = 4, 6
VALID = jnp.array([[True] * 6, [True] * 4 + [False] * 2])


def _masks(seed, rate=0.34, valid=VALID):
  return _key_masks(jax.random.key(seed), DEPTH, 2, TOKENS, rate, valid)


def test_regularised_masks_drop_floor_rate_times_valid_keys_differently_per_layer():
  masks = np.asarray(_masks(0))
  assert masks.shape == (4, 2, 6) and masks.dtype == bool
  dropped = (~masks & np.asarray(VALID)[None]).sum(-1)
  np.testing.assert_array_equal(dropped, np.broadcast_to([2, 1], (4, 2)))  # floor(.34 n)
  assert masks[:, 1, 4:].all()  # padding is never chosen
  for b in range(2):  # each layer draws its own mask
    assert len({masks[i, b].tobytes() for i in range(DEPTH)}) > 1
  np.testing.assert_array_equal(
      (~np.asarray(_masks(1, rate=0.5)) & np.asarray(VALID)[None]).sum(-1),
      np.broadcast_to([3, 2], (4, 2)))
  # A rate that would drop every key leaves one.
  masks = np.asarray(_masks(2, rate=0.99))
  np.testing.assert_array_equal((masks & np.asarray(VALID)[None]).sum(-1), np.ones((4, 2)))
  # Without `valid` every token counts.
  masks = np.asarray(attention.regularised_key_masks(jax.random.key(3), 2, 3, 20, 0.25))
  np.testing.assert_array_equal(masks.sum(-1), np.full((2, 3), 15))


def test_regularised_masks_choose_keys_uniformly():
  counts = sum((~np.asarray(_masks(seed))).sum(0) for seed in range(400))
  for b, n, k in ((0, 6, 2), (1, 4, 1)):
    trials, p = 400 * DEPTH, k / n
    sigma = np.sqrt(trials * p * (1 - p))
    assert np.abs(counts[b, :n] - trials * p).max() < 4 * sigma, (counts[b], trials * p)
  assert (counts[1, 4:] == 0).all()


def test_a_dropped_key_gets_no_attention_but_its_query_still_attends():
  attn = attention.Attention(num_heads=2)
  x = _tokens((2, 6, 16))
  params = _params(attn, x)
  mask = _masks(4)[0]
  apply = jax.jit(lambda x, m: attn.apply({"params": params}, x, m))
  out = apply(x, mask)
  b, j = 0, int(np.flatnonzero(~np.asarray(mask[0]))[0])
  moved = apply(x.at[b, j].add(10.0), mask)  # changes the dropped token's key and value
  others = np.arange(6) != j
  np.testing.assert_allclose(moved[b, others], out[b, others], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(moved[1], out[1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(moved[b, j], out[b, j], atol=1e-3)  # its own query still works
  # Without the mask the key is seen by everyone.
  plain = jnp.ones_like(mask)
  assert not np.allclose(apply(x.at[b, j].add(10.0), plain)[b, others],
                         apply(x, plain)[b, others], atol=1e-3)


def _encoder_pair():
  kw = dict(grid=(2, 3), patch_shape=(4, 4), width=16, depth=DEPTH, num_heads=2, mlp_dim=32)
  return vit.Encoder(**kw), vit.Encoder(**kw, scan=True, remat="full")


def test_without_layer_masks_the_encoder_is_plain_attention():
  enc, _ = _encoder_pair()
  x = _tokens((2, 6, 16), 1)
  params = _params(enc, x)
  apply = jax.jit(lambda m: enc.apply({"params": params}, x, None, VALID, m))
  plain = jax.jit(lambda: enc.apply({"params": params}, x, None, VALID))()
  np.testing.assert_allclose(apply(jnp.ones((DEPTH, 2, 6), bool)), plain, rtol=1e-6, atol=1e-6)
  assert not np.allclose(apply(_masks(5)), plain, atol=1e-3)
  with pytest.raises(ValueError, match="layer_key_masks of shape"):
    enc.apply({"params": params}, x, None, None, _masks(5)[:2])


def test_scanned_and_unrolled_stacks_apply_the_same_layer_masks():
  plain, scanned = _encoder_pair()
  x, idx = _tokens((2, 6, 16), 2), jnp.array([[0, 2, 5, 1, 3, 4], [3, 4, 1, 0, 2, 5]])
  params = _params(plain, x)
  masks = _masks(6)
  run = jax.jit(lambda p, m: plain.apply({"params": p}, x, idx, VALID, m))
  want = run(params, masks)
  got = jax.jit(lambda p: scanned.apply({"params": p}, x, idx, VALID, masks))(
      vit.stack_layers(params))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert not np.allclose(run(params, masks[::-1]), want, atol=1e-4)  # order matters
  # Shifted windows scan in (unshifted, shifted) pairs: mask i still reaches block i.
  windows = attention.Windows((2, 3), (1, 3), (0, 1))
  stack = lambda **s: vit.Transformer(depth=DEPTH, num_heads=2, mlp_dim=32,  # noqa: E731
                                      windows=windows, **s)
  params = _params(stack(), x)
  want = jax.jit(lambda: stack().apply({"params": params}, x, VALID, masks))()
  got = jax.jit(lambda: stack(scan=True, remat="full").apply(
      {"params": vit.stack_layers(params, period=2)}, x, VALID, masks))()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---- pieces of the train step ----

def _encoder(depth=1, **model):
  c = tiny_config()
  c.model.update(depth=depth, **model)
  enc = models.build_encoder(c, shapes.grid(c))
  n = enc.grid[0] * enc.grid[1]
  return enc, _params(enc, jnp.zeros((1, n, 256)))


def test_layer_decay_scales_each_layers_update():
  """AdamW's first step moves every parameter by lr (wd 0); the decay multiplies it by
  decay ** (L + 1 - layer): head and final norm 1, block i decay ** (L - i), embedding
  decay ** (L + 1), in either layer layout."""
  depth, decay = 3, 0.5
  enc, enc_params = _encoder(depth)
  s = finetune.settings_of(dict(layer_decay=decay, weight_decay=0.0))
  tx = finetune.make_optimizer(finetune.StepOptions.of(s, False))
  head = {"fc_norm": {"scale": jnp.ones(32), "bias": jnp.zeros(32)},
          "linear": {"kernel": jnp.zeros((32, 3)), "bias": jnp.zeros(3)}}
  for layout in (lambda p: p, vit.stack_layers):
    params = {"encoder": layout(enc_params), "head": head}
    grads = jax.tree.map(jnp.ones_like, params)
    updates = jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params)
    size = jax.tree.map(lambda u: -np.asarray(u), vit.unstack_layers(updates))
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4)  # noqa: E731
    close(size["head"]["linear"]["kernel"], 1.0)
    close(size["encoder"]["transformer"]["norm"]["scale"], 1.0)
    for i in range(depth):
      close(size["encoder"]["transformer"][f"block_{i}"]["mlp"]["fc1"]["kernel"],
            decay ** (depth - i))
    close(size["encoder"]["patch_embed"]["kernel"], decay ** (depth + 1))
  factor = layerwise.layer_factor(decay)
  np.testing.assert_allclose(factor(np.arange(depth + 2), depth), decay ** (4 - np.arange(5)))


def test_mixup_gives_convex_combinations_of_pairs_of_the_batch():
  x, y = _tokens((16, 3, 4), 8), jax.nn.one_hot(jnp.arange(16) % 5, 5)
  xm, ym, lam = jax.jit(lambda r: finetune.mixup(r, x, y, 0.5))(jax.random.key(9))
  lam = np.asarray(lam)
  assert ((lam >= 0) & (lam <= 1)).all() and lam.std() > 0.1  # Beta(0.5, 0.5): spread out
  for i in range(16):
    residual = [np.abs(xm[i] - (lam[i] * x[i] + (1 - lam[i]) * x[j])).max() for j in range(16)]
    j = int(np.argmin(residual))
    assert residual[j] < 1e-5
    np.testing.assert_allclose(ym[i], lam[i] * y[i] + (1 - lam[i]) * y[j], atol=1e-6)
  np.testing.assert_allclose(ym.sum(-1), 1.0, rtol=1e-6)  # soft targets stay distributions


def test_token_dropping_keeps_whole_rows_and_columns():
  grid = (5, 13)
  assert (finetune.kept(5, 0.2), finetune.kept(13, 0.2), finetune.kept(4, 0.9)) == (4, 10, 1)
  drop = jax.jit(finetune.drop_tokens, static_argnums=(1, 2, 3, 4))
  idx = np.asarray(drop(jax.random.key(10), 6, grid, 0.2, 0.2))
  assert idx.shape == (6, 40)
  shapes = set()
  for row in idx:
    f, t = np.divmod(row, grid[1])
    rows, cols = np.unique(f), np.unique(t)
    assert (len(rows), len(cols)) == (4, 10)
    np.testing.assert_array_equal(row, (rows[:, None] * grid[1] + cols[None, :]).ravel())
    shapes.add((tuple(rows), tuple(cols)))
  assert len(shapes) > 1  # each example drops its own
  np.testing.assert_array_equal(drop(jax.random.key(0), 2, grid, 0.0, 0.0),
                                np.tile(np.arange(65), (2, 1)))


def test_train_step_drops_tokens_and_asks_for_one_mask_per_layer(monkeypatch):
  enc, enc_params = _encoder(depth=2)
  calls = []
  real = attention.regularised_key_masks

  def spy(rng, depth, batch, tokens, rate, valid=None):
    calls.append((depth, batch, tokens, rate))
    return real(rng, depth, batch, tokens, rate, valid)
  monkeypatch.setattr(attention, "regularised_key_masks", spy)
  params = {"encoder": enc_params,
            "classifier": _params(finetune.Classifier(3), jnp.zeros((1, 1, 32)))}
  batch = {"mel": jnp.zeros((4, 80, 64)), "y": jnp.zeros((4, 3)), "w": jnp.ones(4)}
  for rm_rate in (0.1, 0.0):
    opts = finetune.StepOptions.of(finetune.settings_of(dict(rm_rate=rm_rate)), False)
    opt_state = finetune.make_optimizer(opts).init(params)
    jax.eval_shape(lambda p, o, opts=opts: finetune.train_step(
        enc, finetune.Classifier(3), opts, p, o, batch, 1e-3, jax.random.key(0)), params, opt_state)
  assert calls == [(2, 4, 4 * 3, 0.1)]  # kept(5) x kept(4) tokens; none with rm_rate 0


def test_balanced_sampling_draws_examples_by_summed_inverse_class_counts():
  y = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]], np.float32)
  w = finetune.balanced_weights(y)
  np.testing.assert_allclose(w, [1 / 4, 1 / 4, 1 / 4, 1 / 4 + 1 / 2, 1 / 2, 1.0])
  rng = np.random.default_rng(0)
  draws = np.concatenate([finetune.epoch_order(rng, len(y), w) for _ in range(3000)])
  p = w / w.sum()
  count = np.bincount(draws, minlength=len(y))
  sigma = np.sqrt(len(draws) * p * (1 - p))
  assert (np.abs(count - len(draws) * p) < 4 * sigma).all(), (count, len(draws) * p)
  # Same seed, same epochs; unweighted epochs are permutations.
  a, b = (finetune.epoch_order(np.random.default_rng(5), 6, w) for _ in range(2))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(np.sort(finetune.epoch_order(rng, 6)), np.arange(6))


def test_learning_rates_are_optax_warmup_cosine_at_the_scaled_peak():
  s = finetune.settings_of(dict(epochs=5, warmup_epochs=1.5, base_lr=0.4, batch_size=64))
  lrs = finetune.learning_rates(s, steps_per_epoch=4)
  schedule = optax.warmup_cosine_decay_schedule(0.0, 0.1, 6, 20, 0.0)
  np.testing.assert_allclose(lrs, [schedule(i) for i in range(20)], rtol=1e-5, atol=1e-9)


def test_training_crops_and_evaluation_chunks():
  pad = PAD
  task = _task(n_per=1)[0]
  assert finetune.train_window(task, FRONTEND_META) == 64
  short = _task(n_per=1, unit_sec=0.3)[0]
  window = finetune.train_window(short, FRONTEND_META)
  assert window == task_data.unit_frames(short, FRONTEND_META) < 64
  mel = np.arange(100, dtype=np.float32)[None].repeat(80, 0)
  rng = np.random.default_rng(0)
  crops = [finetune.random_crop(mel, window, 64, pad, rng) for _ in range(50)]
  assert all(c.shape == (80, 64) for c in crops)
  starts = {int(c[0, 0]) for c in crops}
  assert len(starts) > 5 and max(starts) <= 100 - window
  assert all((c[:, window:] == pad).all() for c in crops)  # padded to model length
  np.testing.assert_array_equal(finetune.random_crop(mel[:, :10], 64, 64, pad, rng)[:, 10:],
                                np.broadcast_to(pad, (80, 54)))
  chunks, owner, weight = finetune.eval_chunks([mel, mel[:, :20]], None, 64, 16, pad)
  assert chunks.shape == (3, 80, 64)
  np.testing.assert_array_equal(owner, [0, 0, 1])
  np.testing.assert_array_equal(weight, [4, 3, 2])  # time patches holding audio
  rows = list(finetune.batches(np.arange(5), 4))
  np.testing.assert_array_equal(rows[1][0], [4, 4, 4, 4])
  np.testing.assert_array_equal(rows[1][1], [1, 0, 0, 0])


# ---- whole runs ----

def _task(n_per=8, classes=3, multilabel=False, folds=False, unit_sec=None, amp=0.5):
  """(task, whole clips): clips of 40-120 frames of noise; class c raises the mel bins
  whose place inside a 16-bin patch is in sub-band c (4 bins), so every patch carries
  the class. Every other clip of a multi-label task also has the next class."""
  rng = np.random.default_rng(0)
  names = tuple(f"c{c}" for c in range(classes))
  labels, mels = [], []
  for i in range(n_per * classes):
    c = i % classes
    row = (names[c], names[(c + 1) % classes]) if multilabel and i % 2 else (names[c],)
    mel = rng.normal(size=(80, int(rng.integers(40, 120)))).astype(np.float32)
    for name in row:
      mel[(np.arange(80) % 16) // 4 == names.index(name)] += amp
    labels.append(row)
    mels.append(mel)
  n = len(labels)
  if folds:
    fold_of, split_of = [str(i % 2) for i in range(n)], [None] * n
  else:  # per class: 4 train, 1 valid, 1 test in every 6 clips
    pattern = ("train", "train", "train", "valid", "test", "train")
    fold_of, split_of = [None] * n, [pattern[(i // classes) % 6] for i in range(n)]
  task = task_data.LabelledTask(
      name="synthetic", source=Path("/nonexistent"), labels=tuple(labels),
      folds=tuple(fold_of), splits=tuple(split_of), label_names=names, multilabel=multilabel,
      unit_sec=unit_sec, fingerprint="synthetic")
  return task, mels


SETTINGS = dict(epochs=6, batch_size=8, seeds=1, warmup_epochs=1.0, base_lr=0.1, mixup=0.0)


def test_finetuning_learns_a_separable_task_over_folds():
  enc, params = _encoder()
  task, mels = _task(n_per=24, folds=True)
  events = []
  out = finetune.finetune_task(enc, params, FRONTEND_META, task, mels, SETTINGS,
                               progress=events.append, pads=_pads(mels))
  assert out["headline"] == "accuracy"
  assert [(r["seed"], r["fold"]) for r in out["runs"]] == [(0, 0), (0, 1)]
  assert len(events) == 2 * SETTINGS["epochs"]
  assert out["scores"]["accuracy"]["mean"] > 0.8  # chance: 1/3
  for run in out["runs"]:
    losses = [h["loss"] for h in run["history"]]
    assert losses[-1] < 0.8 * losses[0]
    best = max(h["valid"]["accuracy"] for h in run["history"])
    assert run["valid"]["accuracy"] == best
    assert run["history"][run["best_epoch"] - 1]["valid"] == run["valid"]
  np.testing.assert_allclose(out["scores"]["accuracy"]["per_seed"],
                             [np.mean([r["test"]["accuracy"] for r in out["runs"]])])


def test_same_seed_same_result_and_other_seeds_differ():
  enc, params = _encoder()
  task, mels = _task(n_per=6)
  settings = {**SETTINGS, "epochs": 2}
  first = finetune.finetune_task(enc, params, FRONTEND_META, task, mels, settings,
                                 pads=_pads(mels))
  again = finetune.finetune_task(enc, params, FRONTEND_META, task, mels, settings,
                                 pads=_pads(mels))
  assert first == again
  other = finetune.finetune_task(enc, params, FRONTEND_META, task, mels,
                                 {**settings, "seed": 1}, pads=_pads(mels))
  assert other["runs"][0]["history"] != first["runs"][0]["history"]
  # The given encoder parameters are left as they were (the step donates its own copy).
  np.testing.assert_array_equal(params["patch_embed"]["kernel"],
                                _encoder()[1]["patch_embed"]["kernel"])


def test_multilabel_finetuning_with_mixup_and_balanced_sampling():
  enc, params = _encoder()
  task, mels = _task(n_per=12, multilabel=True, amp=1.0)
  out = finetune.finetune_task(enc, params, FRONTEND_META, task, mels,
                               {**SETTINGS, "epochs": 4, "mixup": 0.5, "seeds": 2},
                               pads=_pads(mels))
  assert out["headline"] == "mAP"
  assert set(out["scores"]) == {"mAP", "d_prime"}
  assert len(out["scores"]["mAP"]["per_seed"]) == 2
  assert out["scores"]["mAP"]["mean"] > 0.8  # chance: about 0.5 (measured with lr ~ 0)


def test_bad_settings_are_clear_config_errors():
  with pytest.raises(fields.ConfigError, match="unknown field.* epoch;"):
    finetune.settings_of({"epoch": 3})
  with pytest.raises(fields.ConfigError) as err:
    finetune.settings_of(dict(epochs=0, rm_rate=1.0, drop_time=-0.1, balanced_sampling="yes",
                              layer_decay=0.0, batch_size=2.5, mixup=-1))
  for message in ("finetune.epochs must be an integer >= 1, got 0",
                  "finetune.rm_rate is a fraction of tokens in [0, 1)",
                  "finetune.drop_time is a fraction", "finetune.balanced_sampling must be",
                  "finetune.layer_decay must be in (0, 1]", "finetune.batch_size must be an "
                  "integer", "finetune.mixup is the Beta"):
    assert message in str(err.value)
  c = tiny_config()
  validation.validate(c)
  assert c.finetune.rm_rate == 0.1 and c.finetune.layer_decay == 0.75
  c.finetune.warmup_epochs = 30.0
  with pytest.raises(fields.ConfigError, match="finetune.warmup_epochs must be in"):
    validation.validate(c)
  # A run resumes whatever its fine-tuning settings.
  now = tiny_config()
  now.finetune.epochs = 3
  assert fields.resume_differences(fields.to_dict(tiny_config()),
                                   fields.to_dict(now)) == []
  enc, params = _encoder()
  task, mels = _task(n_per=2)
  with pytest.raises(ValueError, match="does not match the encoder"):
    finetune.finetune_task(enc, params, {**FRONTEND_META, "frames": 32}, task, mels, {},
                           pads=_pads(mels))
