"""Grain training pipeline: mel shards -> random crops -> normalised host-local batches.

Every random choice is a function of (seed, global position in the shuffled, repeated
stream), and global batch b is the positions [b * B, (b + 1) * B). Host p of P takes rows
[p * B / P, (p + 1) * B / P) of each global batch, so P hosts together see exactly the
batches one host would. A resumed run starts at global batch `start_batch` (the number it
consumed), so it continues exactly whatever the process count that saved it.

`audio_train_dataset` runs the same pipeline on raw audio (a TFDS split, see tfds_audio):
the log-mel of each clip is computed when it is read, by the worker processes if any.
"""
from __future__ import annotations

import functools
from pathlib import Path

import grain
import librosa
import numpy as np
from absl import flags

from data_pipelines.frontends import FrontEnd, get_frontend, upgrade_record
from data_pipelines.shards import ShardSource, Subset

NORMALIZATIONS = ("dataset", "recipe")
_READ_AHEAD_BYTES = 1 << 30  # batches prepared ahead of use, per process


def check_frontend(metadata: dict, shard_dir: str | Path, expected: str) -> None:
  """Refuses shards made with another front end than `expected` (or with old settings)."""
  stored = metadata["frontend"]
  if stored["name"] != expected:
    raise ValueError(
        f"{shard_dir} holds {stored['name']!r} features but the {expected!r} front end is "
        f"expected; make shards with --frontend={expected} or pick a matching config.")
  # A field the metadata predates holds what that version computed (LEGACY_FIELDS): shards
  # whose features today's recipe still makes pass, the others differ in that field.
  recorded = upgrade_record(stored)
  differing = [k for k, v in get_frontend(expected).to_dict().items() if recorded.get(k) != v]
  if differing:
    predates = [k for k in differing if k not in stored]
    raise ValueError(
        f"{shard_dir} was made with {expected!r} settings that differ from the current "
        f"recipe in {', '.join(differing)}"
        + (f" (its metadata predates {', '.join(predates)}: made with "
           f"{', '.join(f'{k}={recorded[k]!r}' for k in predates)})" if predates else "")
        + "; rebuild the shards.")


def crop(mel: np.ndarray, frames: int, pad_value: float, rng: np.random.Generator,
         cyclic: bool = False) -> np.ndarray:
  """A random `frames`-long window of a (n_mels, T) mel; shorter clips padded with
  `pad_value`, the value of digital silence (`FrontEnd.pad_value`), not 0: a log-domain
  0 is a loud value.

  `cyclic` (A-JEPA's "segment extracted cyclically from a random start time"): the clip
  is first rolled by a uniform offset in [0, T) frames (np.roll, content wraps around),
  then padded at the end and cropped as above; without it no offset is drawn, so the
  crop and every later draw are those of the plain crop.
  """
  if cyclic:
    return _cyclic_crop(mel, frames, pad_value, rng)
  if mel.shape[1] < frames:  # pad in float32: a float16 pad would round pad_value
    mel = np.pad(mel.astype(np.float32), ((0, 0), (0, frames - mel.shape[1])),
                 constant_values=pad_value)
  start = rng.integers(0, mel.shape[1] - frames + 1)
  # Cast only the window: converting the whole (float16) clip first cost 5x more.
  return mel[:, start:start + frames].astype(np.float32)


def _cyclic_crop(mel: np.ndarray, frames: int, pad_value: float, rng: np.random.Generator
                 ) -> np.ndarray:
  """crop(cyclic=True): the window of pad(np.roll(mel, shift, axis=1)), gathering only
  its own frames (no copy of the whole rolled clip)."""
  length = mel.shape[1]
  shift = int(rng.integers(0, max(length, 1)))
  start = int(rng.integers(0, max(length, frames) - frames + 1))
  # Frame j of the rolled clip is frame (j - shift) mod T of the clip; j >= T is padding.
  source = (np.arange(start, min(start + frames, length)) - shift) % max(length, 1)
  window = mel[:, source].astype(np.float32)  # pad in float32, as crop
  if window.shape[1] < frames:
    window = np.pad(window, ((0, 0), (0, frames - window.shape[1])),
                    constant_values=pad_value)
  return window


def _crop_and_jitter(example: dict, rng: np.random.Generator, *, frames: int,
                     frontend: FrontEnd, gain_jitter_db: float,
                     cyclic_crop: bool = False) -> dict:
  mel = crop(example["mel"], frames, frontend.pad_value(example["mel"]), rng,
             cyclic=cyclic_crop)
  if gain_jitter_db > 0:
    mel = frontend.apply_gain_db(mel, rng.uniform(-gain_jitter_db, gain_jitter_db))
  return {"mel": mel, "id": np.int32(example["id"])}


def _normalize(example: dict, *, mean: float, std: float) -> dict:
  return {"mel": ((example["mel"] - mean) / std).astype(np.float32), "id": example["id"]}


def normalization_stats(metadata: dict, normalization: str) -> tuple[float, float]:
  """(mean, std): measured on the shards ("dataset") or the recipe's constants ("recipe")."""
  if normalization == "dataset":
    return metadata["mean"], metadata["std"]
  if normalization == "recipe":
    return metadata["frontend"]["norm_mean"], metadata["frontend"]["norm_std"]
  raise ValueError(f"unknown normalization {normalization!r}; use one of "
                   f"{', '.join(NORMALIZATIONS)}.")


def _check_train_arguments(*, frames: int, global_batch_size: int, process_index: int,
                           process_count: int, gain_jitter_db: float, worker_count: int,
                           start_batch: int = 0) -> None:
  if global_batch_size < 1 or process_count < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple "
                     f"of process_count {process_count}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is outside 0..{process_count - 1}.")
  if frames < 1 or gain_jitter_db < 0 or worker_count < 0 or start_batch < 0:
    raise ValueError(f"need frames >= 1, gain_jitter_db >= 0, worker_count >= 0, "
                     f"start_batch >= 0; got {frames}, {gain_jitter_db}, {worker_count}, "
                     f"{start_batch}.")
  if worker_count > 0 and not flags.FLAGS.is_parsed():
    raise RuntimeError("Grain's worker processes read absl flags, which are not parsed yet: "
                       "run under absl.app.run or call absl.flags.FLAGS.mark_as_parsed().")


def train_dataset(shard_dir: str | Path, *, frames: int, global_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1,
                  normalization: str = "dataset", gain_jitter_db: float = 0.0,
                  worker_count: int = 0, expected_frontend: str | None = None,
                  indices: np.ndarray | None = None, cyclic_crop: bool = False,
                  start_batch: int = 0) -> grain.IterDataset:
  """Endless {"mel": float32 (B_local, n_mels, frames), "id": int32 (B_local,)} batches,
  this host's rows of global batches start_batch, start_batch + 1, ...

  B_local = global_batch_size // process_count. Epochs are reshuffled; crop offsets and
  gains (uniform in +-gain_jitter_db dB) are redrawn for every position. `cyclic_crop`:
  each clip is first rolled by a uniform offset of its frames (content wraps around, the
  padding stays at the end; see `crop`). `indices`: train on those records only (e.g.
  ShardSource.indices_without held-out classes); ids stay the records' own.
  """
  _check_train_arguments(frames=frames, global_batch_size=global_batch_size,
                         process_index=process_index, process_count=process_count,
                         gain_jitter_db=gain_jitter_db, worker_count=worker_count,
                         start_batch=start_batch)
  source = ShardSource(shard_dir)
  metadata = source.metadata
  if expected_frontend is not None:
    check_frontend(metadata, shard_dir, expected_frontend)
  mean, std = normalization_stats(metadata, normalization)
  if indices is not None:
    if len(indices) == 0:
      raise ValueError(f"no records of {shard_dir} are left to train on.")
    source = Subset(source, indices)
  return _train_batches(
      source, FrontEnd.recorded(metadata["frontend"]), mean, std, frames=frames,
      global_batch_size=global_batch_size, seed=seed, process_index=process_index,
      process_count=process_count, gain_jitter_db=gain_jitter_db, worker_count=worker_count,
      cyclic_crop=cyclic_crop, start_batch=start_batch)


def mono_at_rate(wave: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
  """(samples,) or (samples, channels) at `rate` -> float32 mono at `sample_rate`, as
  audio_io.load_audio makes it from a file: channels averaged, soxr, clipped to [-1, 1]."""
  wave = np.asarray(wave, dtype=np.float32)
  if wave.ndim == 2:
    wave = wave.mean(axis=1, dtype=np.float32)
  if rate != sample_rate:
    wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
  return np.clip(wave, -1.0, 1.0).astype(np.float32)


class LogMelSource:
  """Log-mels computed when read, from an audio source (`len()` and `load(i) -> (waveform,
  sample_rate, label)`, e.g. tfds_audio.open_source): {"mel": (n_mels, T), "id": i}.

  Picklable when the audio source is, so Grain workers compute the features in parallel.
  """

  def __init__(self, audio_source, frontend: FrontEnd):
    self.audio_source, self.frontend = audio_source, frontend

  def __len__(self) -> int:
    return len(self.audio_source)

  def __getitem__(self, index: int) -> dict:
    wave, rate, _ = self.audio_source.load(index)
    try:
      mel = self.frontend.logmel(mono_at_rate(wave, rate, self.frontend.sample_rate))
    except ValueError as e:  # bad audio stops training, naming the example
      raise ValueError(f"{self.audio_source!r} example {index}: {e}") from e
    return {"mel": mel, "id": int(index)}

  def __repr__(self) -> str:
    return f"LogMelSource({self.audio_source!r}, {self.frontend.name!r})"


def audio_train_dataset(audio_source, *, frontend: str, frames: int, global_batch_size: int,
                        seed: int, process_index: int = 0, process_count: int = 1,
                        normalization: str = "recipe", gain_jitter_db: float = 0.0,
                        worker_count: int = 0, cyclic_crop: bool = False,
                        start_batch: int = 0) -> grain.IterDataset:
  """train_dataset over raw audio (e.g. a TFDS split, data_pipelines.tfds_audio): the
  `frontend` log-mel of each whole clip is computed when read, then the same crops, gains,
  normalisation, batches and host slices as from shards; "id" is the index in the source.
  """
  _check_train_arguments(frames=frames, global_batch_size=global_batch_size,
                         process_index=process_index, process_count=process_count,
                         gain_jitter_db=gain_jitter_db, worker_count=worker_count,
                         start_batch=start_batch)
  if normalization == "dataset":
    raise ValueError("normalization 'dataset' needs the statistics measured when shards are "
                     "written; audio read directly has none: use 'recipe' or prepare shards "
                     "(python -m data_pipelines.prepare).")
  recipe = get_frontend(frontend)
  mean, std = normalization_stats({"frontend": recipe.to_dict()}, normalization)
  if len(audio_source) == 0:
    raise ValueError(f"{audio_source!r} holds no examples.")
  return _train_batches(
      LogMelSource(audio_source, recipe), recipe, mean, std, frames=frames,
      global_batch_size=global_batch_size, seed=seed, process_index=process_index,
      process_count=process_count, gain_jitter_db=gain_jitter_db, worker_count=worker_count,
      cyclic_crop=cyclic_crop, start_batch=start_batch)


def _train_batches(source, frontend: FrontEnd, mean: float, std: float, *, frames: int,
                   global_batch_size: int, seed: int, process_index: int, process_count: int,
                   gain_jitter_db: float, worker_count: int, cyclic_crop: bool = False,
                   start_batch: int = 0) -> grain.IterDataset:
  """source ({"mel", "id"} by index) -> this host's rows of global batches start_batch,
  start_batch + 1, ..."""
  local_batch_size = global_batch_size // process_count
  # Grain shuffles epoch e with seed + e: hashing the seed keeps runs with neighbouring
  # seeds from replaying each other's epoch orders.
  shuffle_seed, augment_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
  ds = grain.MapDataset.source(source).shuffle(shuffle_seed).repeat()  # reshuffled per epoch
  ds = ds.random_map(functools.partial(
      _crop_and_jitter, frames=frames, frontend=frontend,
      gain_jitter_db=gain_jitter_db, cyclic_crop=cyclic_crop), seed=augment_seed)
  ds = ds.map(functools.partial(_normalize, mean=mean, std=std))
  # Resuming: positions before start_batch * B were consumed (by any number of hosts).
  # Slicing keeps every position's own shuffle and random draws; nothing before is read.
  ds = ds[start_batch * global_batch_size:]
  # Global batch b is local batches b * P .. b * P + P - 1; this host takes the p-th.
  # MapDatasets are lazy, so rows of other hosts are never read.
  ds = ds.batch(local_batch_size, drop_remainder=True)
  ds = ds[process_index::process_count]
  # Read-ahead is counted in batches: Grain's default of 500 would hold 68 GB of batches of
  # 2048 x 80 x 208 and make the first batch wait for 15 others. Bounded by bytes instead.
  batch_bytes = local_batch_size * frontend.n_mels * frames * 4
  read_ahead = max(2, min(64, _READ_AHEAD_BYTES // batch_bytes))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=min(16, read_ahead),
                                            prefetch_buffer_size=read_ahead))
  if worker_count > 0:
    # Grain's default of one ready batch per worker starved the consumer (half the rate
    # of four on a busy CPU).
    ready = max(1, min(4, _READ_AHEAD_BYTES // 4 // batch_bytes))
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                     per_worker_buffer_size=ready))
  return it
