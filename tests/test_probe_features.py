"""Heads on frozen features (linear and MLP protocols) against scikit-learn and hand
computations; clip embeddings against a direct computation."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from jepa_jax import models
from jepa_jax.evaluation import features, probe
from jepa_jax.models import patches, vit


def _blobs(n, d, classes, seed, spread=2.5):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, d)) * spread / np.sqrt(d) * 3
  y = rng.integers(0, classes, n)
  return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def _splits(x, y, cuts=(600, 750)):
  a, b = cuts
  return probe.Split(x[:a], y[:a]), probe.Split(x[a:b], y[a:b]), probe.Split(x[b:], y[b:])


def test_linear_probe_matches_logistic_regression():
  x, y = _blobs(900, 20, 4, 0)
  train, valid, test = _splits(x, y)
  ours = probe.train_probe(probe.LINEAR, train, valid, test, 4, False, seeds=3, lrs=(1e-2,),
                           max_epochs=100, patience=20, batch_size=64)
  acc = [s["accuracy"] for s in ours["per_seed"]]
  scaler = StandardScaler().fit(train.x)
  ref = LogisticRegression(max_iter=2000).fit(scaler.transform(train.x), train.y)
  ref_acc = ref.score(scaler.transform(test.x), test.y)
  assert len(acc) == 3 and ours["lr"] == 1e-2
  assert abs(np.mean(acc) - ref_acc) < 0.03, (acc, ref_acc)
  assert ref_acc > 0.6  # the task is not trivial either way


def _multilabel_blobs(n, d, classes, seed):
  """Each class present with probability 0.3; a present class adds its centre."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, d)) * 1.2
  y = (rng.random((n, classes)) < 0.3).astype(np.float32)
  return (y @ centres + rng.normal(size=(n, d))).astype(np.float32), y


def test_multilabel_linear_probe_matches_one_vs_rest_logistic_regression():
  from sklearn.metrics import average_precision_score
  from sklearn.multiclass import OneVsRestClassifier
  x, y = _multilabel_blobs(900, 16, 5, 3)
  train, valid, test = _splits(x, y)
  ours = probe.train_probe(probe.LINEAR, train, valid, test, 5, True, seeds=2, lrs=(1e-2,),
                           max_epochs=100, patience=20, batch_size=64)
  scaler = StandardScaler().fit(train.x)
  ref = OneVsRestClassifier(LogisticRegression(max_iter=2000)).fit(
      scaler.transform(train.x), train.y)
  ref_map = average_precision_score(test.y, ref.decision_function(scaler.transform(test.x)),
                                    average="macro")
  got = [s["mAP"] for s in ours["per_seed"]]
  assert abs(np.mean(got) - ref_map) < 0.03, (got, ref_map)
  assert all(s["d_prime"] > 1 for s in ours["per_seed"])


@pytest.mark.slow
def test_mlp_head_learns_what_a_linear_head_cannot():
  """XOR of two features: no linear head beats chance by much; the HEAR MLP does."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(900, 4)).astype(np.float32)
  y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int32)
  train, valid, test = _splits(x, y)
  kw = dict(seeds=2, max_epochs=60, patience=10, batch_size=128)
  lin = probe.train_probe(probe.LINEAR, train, valid, test, 2, False, lrs=(1e-2,), **kw)
  mlp = probe.train_probe(probe.mlp_probe(1), train, valid, test, 2, False,
                          lrs=probe.MLP_LEARNING_RATES, **kw)
  assert np.mean([s["accuracy"] for s in lin["per_seed"]]) < 0.65
  assert np.mean([s["accuracy"] for s in mlp["per_seed"]]) > 0.9
  assert mlp["lr"] in probe.MLP_LEARNING_RATES


def test_mlp_probe_layers_batchnorm_and_dropout():
  kind = probe.mlp_probe(2)
  params, stats = probe.init(kind, jax.random.key(0), 6, 3)
  assert [p["w"].shape for p in params["layers"]] == [(6, 1024), (1024, 1024), (1024, 3)]
  x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 6)) * 3 + 1, jnp.float32)
  # Inference with fresh statistics (mean 0, var 1) is the plain MLP with ReLU.
  h = x
  for layer in params["layers"][:-1]:
    h = jax.nn.relu((h @ layer["w"] + layer["b"]) / np.sqrt(1 + probe.BN_EPS))
  expected = h @ params["layers"][-1]["w"] + params["layers"][-1]["b"]
  got, same = probe.apply(kind, params, stats, x)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  # Training normalises with the batch's statistics and moves the running ones by 0.1.
  _, new = probe.apply(kind, params, stats, x, train=True, key=jax.random.key(1))
  z = x @ params["layers"][0]["w"] + params["layers"][0]["b"]
  np.testing.assert_allclose(new[0]["mean"], 0.1 * z.mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(new[0]["var"], 0.9 + 0.1 * z.var(0, ddof=1), rtol=1e-4)
  # Dropout: different keys drop different units; the same key gives the same output.
  a, _ = probe.apply(kind, params, stats, x, train=True, key=jax.random.key(1))
  b, _ = probe.apply(kind, params, stats, x, train=True, key=jax.random.key(2))
  c, _ = probe.apply(kind, params, stats, x, train=True, key=jax.random.key(1))
  assert not np.allclose(a, b) and np.array_equal(a, c)


def test_early_stopping_restores_the_best_epoch_and_stops_after_patience():
  x, y = _blobs(400, 30, 3, 1, spread=1.0)
  keys = jax.random.split(jax.random.key(0), 2)
  patience, epochs = 5, 120
  classes = jnp.arange(8) < 3
  (best, stats), history, best_score = probe.fit(
      probe.LINEAR, keys, jnp.full(2, 3e-2), jnp.asarray(x[:300]), jnp.asarray(y[:300]),
      jnp.asarray(x[300:]), jnp.asarray(y[300:]), classes, multilabel=False,
      max_epochs=epochs, patience=patience, batch_size=32)
  history = np.asarray(history)
  for seed in range(2):
    params = jax.tree.map(lambda a: a[seed], best)
    logits, _ = probe.apply(probe.LINEAR, params, [], jnp.asarray(x[300:]))
    logits = jnp.where(classes, logits, -1e9)
    assert int(logits.argmax(-1).max()) < 3  # padded classes are never predicted
    acc = float((logits.argmax(-1) == y[300:]).mean())
    assert acc == pytest.approx(history[seed].max()) == pytest.approx(float(best_score[seed]))
    # The last improvement reaches the maximum (ties improve on a lower loss); `patience`
    # epochs later training stops and the weights stay frozen.
    last_best = int(np.flatnonzero(history[seed] == history[seed].max())[-1])
    stop = last_best + patience
    assert stop < epochs - 1
    assert (history[seed, stop:] == history[seed, stop]).all()


def test_chunking_counts_real_time_patches():
  mels = [np.zeros((80, 40)), np.zeros((80, 64)), np.zeros((80, 65))]
  chunks, owner, cols = features.chunk(mels, frames=32, patch_frames=16, pad_value=-3.0)
  assert chunks.shape == (2 + 2 + 3, 80, 32)
  np.testing.assert_array_equal(owner, [0, 0, 1, 1, 2, 2, 2])
  # 40 frames = 32 + 8: the second chunk has one real (partial) patch of 2.
  np.testing.assert_array_equal(cols, [2, 1, 2, 2, 2, 2, 1])
  assert (chunks[1][:, 8:] == -3.0).all() and (chunks[1][:, :8] == 0).all()


def test_clip_embedding_is_time_mean_of_frequency_concatenated_tokens():
  enc = vit.Encoder(grid=(5, 2), patch_shape=(16, 16), width=8, depth=1, num_heads=2, mlp_dim=16)
  params = jax.jit(lambda r: nn.unbox(models.init_encoder(enc, r)))(jax.random.key(0))
  rng = np.random.default_rng(0)
  mel = rng.normal(size=(80, 40)).astype(np.float32)  # chunks of 32: 32 + 8 frames
  got = features.clip_embeddings(enc, params, [mel], frames=32, pad_value=-1.0, batch_size=4)
  padded = np.full((80, 64), -1.0, np.float32)
  padded[:, :40] = mel
  chunks = np.stack([padded[:, :32], padded[:, 32:]])
  z = np.asarray(enc.apply({"params": params}, patches.patchify(jnp.asarray(chunks), (16, 16))))
  z = z.reshape(2, 5, 2, 8).transpose(0, 2, 1, 3).reshape(2, 2, 40)  # (chunk, time, f*D)
  expected = (z[0, 0] + z[0, 1] + z[1, 0]) / 3  # chunk 2's second column is padding
  np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-6)
  assert got.shape == (1, 40)
