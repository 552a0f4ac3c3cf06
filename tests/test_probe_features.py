"""Linear probe against scikit-learn; clip embeddings against a direct computation."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from data_pipelines import tasks as tasks_lib
from jepa_jax import features, linear_eval, models, patches, probe, vit


def _blobs(n, d, classes, seed, spread=2.5):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, d)) * spread / np.sqrt(d) * 3
  y = rng.integers(0, classes, n)
  return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_linear_probe_matches_logistic_regression():
  x, y = _blobs(900, 20, 4, 0)
  train, valid, test = (probe.Split(x[a:b], y[a:b]) for a, b in ((0, 600), (600, 750), (750, 900)))
  ours = probe.linear_probe(train, valid, test, 4, seeds=3, lr=1e-2, max_epochs=100,
                            patience=20, batch_size=64)
  scaler = StandardScaler().fit(train.x)
  ref = LogisticRegression(max_iter=2000).fit(scaler.transform(train.x), train.y)
  ref_acc = ref.score(scaler.transform(test.x), test.y)
  assert len(ours["per_seed"]) == 3 and ours["std"] >= 0
  assert abs(ours["mean"] - ref_acc) < 0.03, (ours, ref_acc)
  assert ref_acc > 0.6  # the task is not trivial either way


def test_early_stopping_restores_the_best_epoch_and_stops_after_patience():
  x, y = _blobs(400, 30, 3, 1, spread=1.0)
  keys = jax.random.split(jax.random.key(0), 2)
  patience, epochs = 5, 120
  classes = jnp.arange(8) < 3
  best, history = probe._fit(keys, jnp.asarray(x[:300]), jnp.asarray(y[:300]),
                             jnp.asarray(x[300:]), jnp.asarray(y[300:]), classes,
                             lr=3e-2, max_epochs=epochs, patience=patience, batch_size=32)
  history = np.asarray(history)
  for seed in range(2):
    params = jax.tree.map(lambda a: a[seed], best)
    logits = probe._logits(params, jnp.asarray(x[300:]), classes)
    assert int(logits.argmax(-1).max()) < 3  # padded classes are never predicted
    acc = float((logits.argmax(-1) == y[300:]).mean())
    assert acc == pytest.approx(history[seed].max())
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


def _task(folder, rows):
  """A task folder of silent clips with rows (filename, label, fold, split)."""
  import soundfile
  folder.mkdir()
  for name, *_ in rows:
    soundfile.write(folder / name, np.zeros(160, np.float32), 16000)
  tasks_lib.write_task(folder, [tasks_lib.TaskRow(folder / r[0], (r[1],), *r[2:]) for r in rows])
  return tasks_lib.read_task(folder)


def test_task_splits_from_split_and_fold_columns(tmp_path):
  split_task = _task(tmp_path / "s", [(f"{i}.wav", "a", None, s) for i, s in
                                      enumerate(["train"] * 20 + ["test"] * 5)])
  (tr, va, te), = linear_eval.task_splits(split_task)
  assert len(te) == 5 and len(va) == 2 and len(tr) == 18 and not set(tr) & set(va)
  fold_task = _task(tmp_path / "f", [(f"{i}.wav", "a", str(i % 3), None) for i in range(30)])
  splits = linear_eval.task_splits(fold_task)
  assert len(splits) == 3
  for k, (tr, va, te) in enumerate(splits):
    assert all(i % 3 == k for i in te) and not (set(tr) | set(va)) & set(te)
    assert len(tr) + len(va) + len(te) == 30
  with pytest.raises(ValueError, match="split column"):
    linear_eval.task_splits(_task(tmp_path / "n", [("0.wav", "a", None, None)]))
