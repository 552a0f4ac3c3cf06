"""The Grain training pipeline: determinism, crops, padding, gain, resuming, many hosts."""
import dataclasses
import itertools

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import soundfile as sf

from data_pipelines import tfds_audio
from data_pipelines.frontends import AUDIO_JEPA
from data_pipelines.pipeline import (
    audio_train_dataset,
    crop,
    mono_at_rate,
    train_dataset,
)
from data_pipelines.shards import ShardSource, write_shards

FRAMES = 32
NUM_EXAMPLES = 12
SHORT_IDS = (3, 8)  # clips shorter than FRAMES


def _mel(rng, frames):
  return rng.uniform(-14.0, 6.0, (80, frames)).astype(np.float16)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
  rng = np.random.default_rng(0)
  examples = [(i, _mel(rng, 20 if i in SHORT_IDS else int(rng.integers(40, 90))), {})
              for i in range(NUM_EXAMPLES)]
  out = tmp_path_factory.mktemp("pipeline") / "shards"
  write_shards(out, examples, AUDIO_JEPA, source="test", label_maps={}, max_shard_bytes=50_000)
  return out


@pytest.fixture(scope="module")
def stored(shard_dir):
  source = ShardSource(shard_dir)
  return {r["id"]: r["mel"].astype(np.float32) for r in (source[i] for i in range(len(source)))}


def _batches(shard_dir, count, **kwargs):
  kwargs = {"frames": FRAMES, "global_batch_size": 4, "seed": 0, **kwargs}
  return list(itertools.islice(iter(train_dataset(shard_dir, **kwargs)), count))


def _unnormalize(shard_dir, mel):
  metadata = ShardSource(shard_dir).metadata
  return mel * metadata["std"] + metadata["mean"]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["mel"], y["mel"])
    np.testing.assert_array_equal(x["id"], y["id"])


def test_batch_format(shard_dir):
  (batch,) = _batches(shard_dir, 1)
  assert batch["mel"].shape == (4, 80, FRAMES) and batch["mel"].dtype == np.float32
  assert batch["id"].shape == (4,) and batch["id"].dtype == np.int32


def test_same_seed_same_batches_other_seed_other_batches(shard_dir):
  _assert_same(_batches(shard_dir, 4), _batches(shard_dir, 4))
  other = _batches(shard_dir, 4, seed=1)
  assert any(not np.array_equal(a["mel"], b["mel"])
             for a, b in zip(_batches(shard_dir, 4), other))


def test_epochs_are_reshuffled_permutations(shard_dir):
  ids = np.concatenate([b["id"] for b in _batches(shard_dir, 9)])  # 3 epochs of 12
  epochs = ids.reshape(3, NUM_EXAMPLES)
  for epoch in epochs:
    assert sorted(epoch) == list(range(NUM_EXAMPLES))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


@pytest.mark.parametrize("normalization", ["dataset", "recipe"])
def test_crops_come_from_the_clip_and_short_clips_are_padded_with_the_floor(
        shard_dir, stored, normalization):
  starts = set()
  for batch in _batches(shard_dir, 6, normalization=normalization):
    for mel, example_id in zip(batch["mel"], batch["id"]):
      if normalization == "dataset":
        mel = _unnormalize(shard_dir, mel)
      else:
        mel = mel * AUDIO_JEPA.norm_std + AUDIO_JEPA.norm_mean
      clip = stored[int(example_id)]
      if example_id in SHORT_IDS:
        np.testing.assert_allclose(mel[:, :20], clip, atol=1e-4)
        np.testing.assert_allclose(mel[:, 20:], AUDIO_JEPA.floor, atol=1e-4)
        continue
      errors = [np.abs(mel - clip[:, s:s + FRAMES]).max()
                for s in range(clip.shape[1] - FRAMES + 1)]
      assert min(errors) < 1e-4
      starts.add(int(np.argmin(errors)))
  assert len(starts) > 5  # offsets vary


def test_gain_in_the_log_domain_is_exactly_a_gain_on_the_waveform():
  rng = np.random.default_rng(0)
  wave = (0.1 * rng.standard_normal(8000)).astype(np.float64)
  wave[2000:3000] = 0.0  # digital silence stays silence
  for gain_db in (-6.0, 4.5):
    np.testing.assert_allclose(
        AUDIO_JEPA.apply_gain_db(AUDIO_JEPA.logmel(wave), gain_db),
        AUDIO_JEPA.logmel(wave * 10 ** (gain_db / 20)), atol=1e-4)


def test_pipeline_gain_jitter(shard_dir):
  # Same seed: same crops (drawn before the gain), so the jittered batch is the plain
  # one with one gain per example.
  gains = []
  for plain, jittered in zip(_batches(shard_dir, 3), _batches(shard_dir, 3, gain_jitter_db=6)):
    for x, y in zip(_unnormalize(shard_dir, plain["mel"]),
                    _unnormalize(shard_dir, jittered["mel"])):
      top = np.unravel_index(np.argmax(x), x.shape)
      eps = AUDIO_JEPA.log_eps
      gain_db = 10 * np.log10((np.exp(y[top]) - eps) / (np.exp(x[top]) - eps))
      np.testing.assert_allclose(y, AUDIO_JEPA.apply_gain_db(x, gain_db), atol=1e-3)
      gains.append(gain_db)
  assert max(np.abs(gains)) <= 6.0 + 1e-3 and np.std(gains) > 1.0


def test_restored_iterator_continues_exactly(shard_dir, tmp_path):
  ds = train_dataset(shard_dir, frames=FRAMES, global_batch_size=4, seed=3, gain_jitter_db=3)
  it = iter(ds)
  for _ in range(5):  # into the second epoch
    next(it)
  state = it.get_state()
  manager = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
  manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  expected = [next(it) for _ in range(4)]

  fresh = iter(ds)
  fresh.set_state(state)
  _assert_same([next(fresh) for _ in range(4)], expected)

  restored = manager.restore(5, args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointRestore(iter(ds))))["data"]
  _assert_same([next(restored) for _ in range(4)], expected)
  manager.close()


def test_two_hosts_split_each_global_batch(shard_dir):
  kwargs = {"global_batch_size": 6, "gain_jitter_db": 3}
  single = _batches(shard_dir, 4, **kwargs)
  hosts = [_batches(shard_dir, 4, process_index=p, process_count=2, **kwargs) for p in (0, 1)]
  for whole, first, second in zip(single, *hosts):
    assert first["mel"].shape[0] == second["mel"].shape[0] == 3
    assert not set(first["id"]) & set(second["id"])  # 6 of 12: within one epoch
    np.testing.assert_array_equal(np.concatenate([first["id"], second["id"]]), whole["id"])
    np.testing.assert_array_equal(np.concatenate([first["mel"], second["mel"]]),
                                  whole["mel"])


def test_frontend_mismatch_is_refused(shard_dir, tmp_path):
  with pytest.raises(ValueError, match="holds 'audio_jepa' features but the 'dasheng'"):
    train_dataset(shard_dir, frames=FRAMES, global_batch_size=4, seed=0,
                  expected_frontend="dasheng")
  stale = dataclasses.replace(AUDIO_JEPA, fmin=0.0)
  write_shards(tmp_path / "stale", [(0, np.zeros((80, 40), np.float32), {})], stale,
               source="t", label_maps={})
  with pytest.raises(ValueError, match="differ from the current recipe in fmin"):
    train_dataset(tmp_path / "stale", frames=FRAMES, global_batch_size=4, seed=0,
                  expected_frontend="audio_jepa")
  train_dataset(shard_dir, frames=FRAMES, global_batch_size=4, seed=0,
                expected_frontend="audio_jepa")


def test_bad_arguments(shard_dir):
  with pytest.raises(ValueError, match="multiple of process_count 4"):
    train_dataset(shard_dir, frames=FRAMES, global_batch_size=6, seed=0, process_count=4)
  with pytest.raises(ValueError, match="process_index 2"):
    train_dataset(shard_dir, frames=FRAMES, global_batch_size=4, seed=0, process_index=2,
                  process_count=2)
  with pytest.raises(ValueError, match="unknown normalization 'batch'"):
    train_dataset(shard_dir, frames=FRAMES, global_batch_size=4, seed=0,
                  normalization="batch")


# Cyclic crops (data.cyclic_crop, A-JEPA): the clip rolled by a random offset first.


def _frame_index_clip(length):
  """(4, T) float16 clip whose frame j holds j (exact in float16): a window names the
  clip frames it shows."""
  return np.broadcast_to(np.arange(length, dtype=np.float16), (4, length)).copy()


def test_cyclic_crop_rolls_by_a_uniform_offset_then_pads_at_the_end():
  from scipy import stats
  length, frames, pad, draws = 50, 64, -7.3, 5000
  clip = _frame_index_clip(length)
  rng = np.random.default_rng(1234)
  shifts = []
  for _ in range(draws):
    window = crop(clip, frames, pad, rng, cyclic=True)
    shift = int(-window[0, 0]) % length  # frame 0 of np.roll(clip, s) is frame -s mod T
    expected = np.pad(np.roll(clip, shift, axis=1).astype(np.float32),
                      ((0, 0), (0, frames - length)), constant_values=pad)
    assert window.dtype == np.float32
    np.testing.assert_array_equal(window, expected)  # padding (exact float32 pad) at the end
    shifts.append(shift)
  counts = np.bincount(shifts, minlength=length)
  assert counts.min() > 0
  # Uniform over the clip's T frames: chi-square against T equal bins (100 expected each).
  assert stats.chisquare(counts).pvalue > 1e-3
  assert stats.kstest((np.array(shifts) + 0.5) / length, "uniform").pvalue > 1e-3


def test_cyclic_crop_of_a_longer_clip_is_a_cyclic_window_from_a_uniform_start():
  from scipy import stats
  length, frames, draws = 90, 32, 4500
  clip = _frame_index_clip(length)
  rng = np.random.default_rng(99)
  starts = []
  for _ in range(draws):
    window = crop(clip, frames, -7.3, rng, cyclic=True)
    start = int(window[0, 0])
    np.testing.assert_array_equal(window, clip[:, (start + np.arange(frames)) % length])
    starts.append(start)
  counts = np.bincount(starts, minlength=length)
  assert stats.chisquare(counts).pvalue > 1e-3
  assert counts[length - frames + 1:].sum() > 0  # windows that wrap around the clip's end


def _plain_crop_reference(mel, frames, pad_value, rng):
  """The crop as it was before cyclic crops existed."""
  if mel.shape[1] < frames:
    mel = np.pad(mel.astype(np.float32), ((0, 0), (0, frames - mel.shape[1])),
                 constant_values=pad_value)
  start = rng.integers(0, mel.shape[1] - frames + 1)
  return mel[:, start:start + frames].astype(np.float32)


def test_without_cyclic_crop_crops_and_draws_are_the_plain_ones(shard_dir):
  source_rng = np.random.default_rng(3)
  for length in (20, 32, 50, 90):
    mel = _mel(source_rng, length)
    for seed in range(20):
      rngs = [np.random.default_rng(seed) for _ in range(3)]
      windows = (crop(mel, FRAMES, -7.3, rngs[0]),
                 crop(mel, FRAMES, -7.3, rngs[1], cyclic=False),
                 _plain_crop_reference(mel, FRAMES, -7.3, rngs[2]))
      for window in windows[1:]:
        np.testing.assert_array_equal(window, windows[0])
      # the same number of draws: the gain drawn next is the same too
      assert len({r.uniform() for r in rngs}) == 1
  kwargs = {"gain_jitter_db": 3.0, "seed": 5}
  _assert_same(_batches(shard_dir, 6, cyclic_crop=False, **kwargs),
               _batches(shard_dir, 6, **kwargs))


def test_cyclic_crop_pipeline_rolls_clips_and_is_seeded_and_resumable(shard_dir, stored):
  shifts, wrapped = set(), 0
  for batch in _batches(shard_dir, 6, cyclic_crop=True):
    for mel, example_id in zip(_unnormalize(shard_dir, batch["mel"]), batch["id"]):
      clip = stored[int(example_id)]
      length = clip.shape[1]
      if example_id in SHORT_IDS:  # rolled, then padded with the floor at the end
        errors = [np.abs(mel[:, :length] - np.roll(clip, s, axis=1)).max()
                  for s in range(length)]
        assert min(errors) < 1e-4
        shifts.add(int(np.argmin(errors)))
        np.testing.assert_allclose(mel[:, length:], AUDIO_JEPA.floor, atol=1e-4)
        continue
      errors = [np.abs(mel - clip[:, (s + np.arange(FRAMES)) % length]).max()
                for s in range(length)]
      assert min(errors) < 1e-4
      wrapped += int(np.argmin(errors)) > length - FRAMES
  assert len(shifts) > 2 and wrapped > 0
  kwargs = {"cyclic_crop": True, "gain_jitter_db": 3.0, "seed": 4}
  _assert_same(_batches(shard_dir, 4, **kwargs), _batches(shard_dir, 4, **kwargs))
  assert any(not np.array_equal(a["mel"], b["mel"]) for a, b in zip(
      _batches(shard_dir, 4, **kwargs), _batches(shard_dir, 4, **{**kwargs, "seed": 6})))
  ds = train_dataset(shard_dir, frames=FRAMES, global_batch_size=4, **kwargs)
  it = iter(ds)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  fresh = iter(ds)
  fresh.set_state(state)
  _assert_same([next(fresh) for _ in range(3)], expected)


# Raw audio read when training (a TFDS split): the same pipeline after the log-mel.


@pytest.fixture(scope="module")
def tfds_audio_source(tmp_path_factory):
  rng = np.random.default_rng(5)
  folder = tmp_path_factory.mktemp("tfds_pipeline") / "clips"
  hop = AUDIO_JEPA.hop_length
  for i, frames in enumerate((20, 40, 55, 70, 26, 90, 45, 60)):  # 20 and 26 < FRAMES
    label = ("a", "b")[i % 2]
    (folder / label).mkdir(parents=True, exist_ok=True)
    samples = (frames - 1) * hop
    wave = rng.uniform(-0.5, 0.5, (samples, 2) if i == 3 else samples)  # 3 is stereo
    sf.write(folder / label / f"{i}.wav", wave, 16000, subtype="PCM_16")
  # Stored at 8 kHz, so the pipeline resamples to the front end's 16 kHz when it reads.
  name = tfds_audio.build_audio_folder(folder, folder.parent / "data", sample_rate=8000)
  return tfds_audio.open_source(name, folder.parent / "data", "train")


def _by_hand_logmel(source, index):
  wave, rate, _ = source.load(index)
  return AUDIO_JEPA.logmel(mono_at_rate(wave, rate, AUDIO_JEPA.sample_rate))


def _audio_batches(source, count, **kwargs):
  kwargs = {"frontend": "audio_jepa", "frames": FRAMES, "global_batch_size": 4, "seed": 0,
            **kwargs}
  return list(itertools.islice(iter(audio_train_dataset(source, **kwargs)), count))


def test_mono_at_rate():
  rng = np.random.default_rng(0)
  stereo = rng.uniform(-1, 1, (800, 2)).astype(np.float32)
  np.testing.assert_array_equal(mono_at_rate(stereo, 16000, 16000), stereo.mean(axis=1))
  tone = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000).astype(np.float32)
  up = mono_at_rate(tone, 8000, 16000)
  assert up.shape == (16000,) and up.dtype == np.float32
  np.testing.assert_allclose(up[1000:-1000], np.sin(2 * np.pi * 440 * np.arange(16000)
                                                    / 16000)[1000:-1000], atol=1e-3)
  assert mono_at_rate(np.array([1.5, -2.0]), 16000, 16000).tolist() == [1.0, -1.0]


def test_audio_pipeline_crops_the_log_mel_computed_by_hand(tfds_audio_source):
  source = tfds_audio_source
  mels = {i: _by_hand_logmel(source, i) for i in range(len(source))}
  mean, std = AUDIO_JEPA.norm_mean, AUDIO_JEPA.norm_std
  starts, seen = set(), set()
  for batch in _audio_batches(source, 6):
    for mel, index in zip(batch["mel"], batch["id"]):
      clip = mels[int(index)]
      if clip.shape[1] < FRAMES:
        clip = np.pad(clip, ((0, 0), (0, FRAMES - clip.shape[1])),
                      constant_values=AUDIO_JEPA.floor)
      windows = [((clip[:, s:s + FRAMES] - mean) / std).astype(np.float32)
                 for s in range(clip.shape[1] - FRAMES + 1)]
      matches = [s for s, window in enumerate(windows) if np.array_equal(mel, window)]
      assert len(matches) >= 1
      starts.add(matches[0])
      seen.add(int(index))
  assert seen == set(range(len(source))) and len(starts) > 4


def test_audio_pipeline_is_the_shard_pipeline_on_the_same_log_mels(tfds_audio_source,
                                                                     tmp_path):
  # Shards of the same log-mels, written in source order with id = index: same shuffle,
  # crops, gains and host rows; values differ only by the shards' float16 storage.
  source = tfds_audio_source
  shards = tmp_path / "shards"
  write_shards(shards, [(i, _by_hand_logmel(source, i), {}) for i in range(len(source))],
               AUDIO_JEPA, source="test", label_maps={})
  kwargs = {"global_batch_size": 4, "seed": 7, "gain_jitter_db": 4.0,
            "normalization": "recipe"}
  for host in ({}, {"process_index": 1, "process_count": 2}):
    from_audio = _audio_batches(source, 6, **kwargs, **host)
    from_shards = _batches(shards, 6, **kwargs, **host)
    for a, b in zip(from_audio, from_shards):
      np.testing.assert_array_equal(a["id"], b["id"])
      np.testing.assert_allclose(a["mel"], b["mel"], atol=3e-3)


def test_audio_pipeline_errors(tfds_audio_source):
  with pytest.raises(ValueError, match="normalization 'dataset' needs the statistics"):
    _audio_batches(tfds_audio_source, 1, normalization="dataset")
  with pytest.raises(ValueError, match="Unknown front end 'mfcc'"):
    _audio_batches(tfds_audio_source, 1, frontend="mfcc")
  with pytest.raises(ValueError, match="multiple of process_count 3"):
    _audio_batches(tfds_audio_source, 1, process_count=3)


def test_worker_processes_give_the_same_batches(shard_dir):
  # Restoring a worker iterator from its state gives the same batches too (a test of it
  # passed) but restarts the workers one after the other, 10-20 s: too slow for this file.
  kwargs = {"gain_jitter_db": 3.0, "seed": 3}
  _assert_same(_batches(shard_dir, 7, worker_count=2, **kwargs), _batches(shard_dir, 7, **kwargs))


def test_audio_pipeline_in_worker_processes(tfds_audio_source):
  # The TFDS source goes to the worker pickled as its name, data_dir and split, and reopens
  # the files there. One worker: the interleaving of several is tested on shards above.
  kwargs = {"gain_jitter_db": 3.0, "seed": 11}
  _assert_same(_audio_batches(tfds_audio_source, 4, worker_count=1, **kwargs),
               _audio_batches(tfds_audio_source, 4, **kwargs))


# Classes held out of training (data.exclude_classes).

def _labelled_shards(path):
  """12 clips; pitch class i % 4 of (low, mid, high, top), source i % 3 of (a, b, c)."""
  rng = np.random.default_rng(1)
  examples = [(100 + i, _mel(rng, 40), {"pitch": i % 4, "source": i % 3}) for i in range(12)]
  write_shards(path, examples, AUDIO_JEPA, source="test", max_shard_bytes=30_000,
               label_maps={"pitch": ["low", "mid", "high", "top"], "source": ["a", "b", "c"]})
  return path


def test_held_out_classes_are_never_read(tmp_path):
  shard_dir = _labelled_shards(tmp_path / "labelled")
  source = ShardSource(shard_dir)
  kept = source.indices_without({"pitch": {1, 3}, "source": {0}})
  # Kept: i % 4 in {0, 2} and i % 3 != 0.
  assert [source[int(i)]["id"] for i in kept] == [102, 104, 108, 110]
  ids = np.concatenate([b["id"] for b in _batches(shard_dir, 6, global_batch_size=2,
                                                  indices=kept)])
  # Three epochs of the four kept clips, each a permutation of them.
  for epoch in ids.reshape(3, 4):
    assert sorted(epoch) == [102, 104, 108, 110]
  with pytest.raises(ValueError, match="no label for envelope"):
    source.indices_without({"envelope": {0}})


def test_exclude_classes_config_resolves_names_and_counts_the_rest(tmp_path):
  from tiny import tiny_config

  from jepa_jax.config import fields, validation
  from jepa_jax.training import datasets
  assert fields.parse_classes("pitch: low, top ;source:c") == {
      "pitch": ("low", "top"), "source": ("c",)}
  for bad in ("pitch", "pitch:", ":low", "pitch:low;pitch:top"):
    with pytest.raises(fields.ConfigError):
      fields.parse_classes(bad)
  config = tiny_config()
  config.data.dir = str(_labelled_shards(tmp_path / "labelled"))
  config.data.exclude_classes = "pitch:low,top"
  data = datasets.resolve(config)
  assert data.num_examples == 6 and list(data.indices) == [1, 2, 5, 6, 9, 10]
  for spec, message in (("pitch:bass", "pitch has no class 'bass'; its classes: low, mid"),
                        ("genre:rock", "has no label task 'genre'; its tasks: pitch, source"),
                        ("pitch:low,mid,high,top", "leaves none of the 12 records")):
    config.data.exclude_classes = spec
    with pytest.raises(datasets.DataError, match=message):
      datasets.resolve(config)
  config.data.exclude_classes = "pitch"
  with pytest.raises(fields.ConfigError, match="data.exclude_classes: classes are written"):
    validation.validate(config)
