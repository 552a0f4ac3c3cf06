"""Grain training pipeline: mel shards -> random crops -> normalised host-local batches.

Every random choice is a function of (seed, global position in the shuffled, repeated
stream), and global batch b is the positions [b * B, (b + 1) * B). Host p of P takes rows
[p * B / P, (p + 1) * B / P) of each global batch, so P hosts together see exactly the
batches one host would, and an iterator restored from its state continues exactly.
"""
from __future__ import annotations

import functools
from pathlib import Path

import grain
import numpy as np
from absl import flags

from data_pipelines.frontends import FrontEnd, get_frontend
from data_pipelines.shards import ShardSource

NORMALIZATIONS = ("dataset", "recipe")


def check_frontend(metadata: dict, shard_dir: str | Path, expected: str) -> None:
  """Refuses shards made with another front end than `expected` (or with old settings)."""
  stored = metadata["frontend"]
  if stored["name"] != expected:
    raise ValueError(
        f"{shard_dir} holds {stored['name']!r} features but the {expected!r} front end is "
        f"expected; make shards with --frontend={expected} or pick a matching config.")
  differing = [k for k, v in get_frontend(expected).to_dict().items() if stored.get(k) != v]
  if differing:
    raise ValueError(
        f"{shard_dir} was made with {expected!r} settings that differ from the current "
        f"recipe in {', '.join(differing)}; rebuild the shards.")


def crop(mel: np.ndarray, frames: int, floor: float, rng: np.random.Generator) -> np.ndarray:
  """A random `frames`-long window of a (n_mels, T) mel; shorter clips padded with `floor`.

  Padding with the value of digital silence, not 0: a log-domain 0 is a loud value.
  """
  mel = mel.astype(np.float32)
  if mel.shape[1] < frames:
    mel = np.pad(mel, ((0, 0), (0, frames - mel.shape[1])), constant_values=floor)
  start = rng.integers(0, mel.shape[1] - frames + 1)
  return mel[:, start:start + frames]


def apply_gain_db(mel: np.ndarray, gain_db: float, log_eps: float) -> np.ndarray:
  """The log-mel of the same sound `gain_db` louder: exact, undoing and redoing the eps."""
  power = np.maximum(np.exp(mel.astype(np.float64)) - log_eps, 0.0)
  return np.log(power * 10.0 ** (gain_db / 10) + log_eps).astype(np.float32)


def _crop_and_jitter(example: dict, rng: np.random.Generator, *, frames: int,
                     frontend: FrontEnd, gain_jitter_db: float) -> dict:
  mel = crop(example["mel"], frames, frontend.floor, rng)
  if gain_jitter_db > 0:
    mel = apply_gain_db(mel, rng.uniform(-gain_jitter_db, gain_jitter_db), frontend.log_eps)
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


def train_dataset(shard_dir: str | Path, *, frames: int, global_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1,
                  normalization: str = "dataset", gain_jitter_db: float = 0.0,
                  worker_count: int = 0, expected_frontend: str | None = None
                  ) -> grain.IterDataset:
  """Endless {"mel": float32 (B_local, n_mels, frames), "id": int32 (B_local,)} batches.

  B_local = global_batch_size // process_count. Epochs are reshuffled; crop offsets and
  gains (uniform in +-gain_jitter_db dB) are redrawn for every position.
  """
  if global_batch_size < 1 or process_count < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple "
                     f"of process_count {process_count}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is outside 0..{process_count - 1}.")
  if frames < 1 or gain_jitter_db < 0 or worker_count < 0:
    raise ValueError(f"need frames >= 1, gain_jitter_db >= 0, worker_count >= 0; got "
                     f"{frames}, {gain_jitter_db}, {worker_count}.")
  if worker_count > 0 and not flags.FLAGS.is_parsed():
    raise RuntimeError("Grain's worker processes read absl flags, which are not parsed yet: "
                       "run under absl.app.run or call absl.flags.FLAGS.mark_as_parsed().")
  source = ShardSource(shard_dir)
  metadata = source.metadata
  if expected_frontend is not None:
    check_frontend(metadata, shard_dir, expected_frontend)
  mean, std = normalization_stats(metadata, normalization)
  local_batch_size = global_batch_size // process_count

  # Grain shuffles epoch e with seed + e: hashing the seed keeps runs with neighbouring
  # seeds from replaying each other's epoch orders.
  shuffle_seed, augment_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
  ds = grain.MapDataset.source(source).shuffle(shuffle_seed).repeat()  # reshuffled per epoch
  ds = ds.random_map(functools.partial(
      _crop_and_jitter, frames=frames, frontend=FrontEnd(**metadata["frontend"]),
      gain_jitter_db=gain_jitter_db), seed=augment_seed)
  ds = ds.map(functools.partial(_normalize, mean=mean, std=std))
  # Global batch b is local batches b * P .. b * P + P - 1; this host takes the p-th.
  # MapDatasets are lazy, so rows of other hosts are never read.
  ds = ds.batch(local_batch_size, drop_remainder=True)
  ds = ds[process_index::process_count]
  it = ds.to_iter_dataset()
  if worker_count > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return it
