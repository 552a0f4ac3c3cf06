"""Which data a config trains on: prepared shards (`data.dir`) or the embedded corpus."""
import dataclasses
from pathlib import Path

import jax
import ml_collections
import numpy as np

from data_pipelines import default_corpus, frontends, pipeline, shards
from data_pipelines import tasks as tasks_lib
from jepa_jax.config import fields


class DataError(RuntimeError):
  """The configured training data cannot be used (missing, damaged, wrong front end)."""


@dataclasses.dataclass(frozen=True)
class TrainingData:
  shard_dir: Path
  metadata: dict
  probe_tasks: dict[str, Path]  # label task name -> task folder (empty for prepared data)
  indices: np.ndarray | None = None  # the records trained on; None: all

  @property
  def num_examples(self) -> int:
    if self.indices is not None:
      return len(self.indices)
    return int(self.metadata["num_examples"])


def resolve(config: ml_collections.ConfigDict) -> TrainingData:
  """Locate (building the embedded corpus once if needed) and check the training data."""
  try:
    return _resolve(config)
  except (ValueError, FileNotFoundError, RuntimeError) as err:
    raise DataError(str(err)) from err


def _resolve(config: ml_collections.ConfigDict) -> TrainingData:
  if config.data.dir:
    shard_dir = Path(config.data.dir).expanduser()
    metadata = shards.read_metadata(shard_dir)
    tasks = {}
  else:
    s = config.data.synthetic
    corpus = default_corpus.ensure_default_corpus(
        num_pretrain=s.num_pretrain, num_probe=s.num_probe, seed=s.seed,
        frontend=config.data.frontend)
    shard_dir, tasks = corpus.pretrain, corpus.tasks
    metadata = shards.read_metadata(shard_dir)
  pipeline.check_frontend(metadata, shard_dir, config.data.frontend)
  excluded = tasks_lib.class_indices(fields.parse_classes(config.data.exclude_classes),
                                     metadata.get("label_maps", {}), f"{shard_dir}")
  indices = shards.ShardSource(shard_dir).indices_without(excluded) if excluded else None
  if indices is not None and len(indices) == 0:
    raise ValueError(f"data.exclude_classes leaves none of the {metadata['num_examples']} "
                     f"records of {shard_dir}")
  return TrainingData(shard_dir, metadata, tasks, indices)



def frontend_metadata(config: ml_collections.ConfigDict, data: TrainingData) -> dict:
  """What turns audio into encoder input: the front end and the normalisation used in
  training (exported with the encoder so evaluation feeds it the same inputs)."""
  frontend = frontends.get_frontend(config.data.frontend)
  if config.data.normalization == "dataset":
    stats = {"mean": float(data.metadata["mean"]), "std": float(data.metadata["std"])}
  else:
    stats = {"mean": frontend.norm_mean, "std": frontend.norm_std}
  return {"frontend": frontend.to_dict(), "normalization": stats, "frames": config.data.frames}


def train_dataset(config: ml_collections.ConfigDict, data: TrainingData, start_batch: int = 0):
  """This host's rows of global batches start_batch, start_batch + 1, ... (see
  data_pipelines.pipeline)."""
  return pipeline.train_dataset(
      data.shard_dir, frames=config.data.frames, global_batch_size=config.train.batch_size,
      seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), normalization=config.data.normalization,
      gain_jitter_db=config.data.gain_jitter_db, worker_count=config.data.worker_count,
      expected_frontend=config.data.frontend, indices=data.indices,
      cyclic_crop=config.data.cyclic_crop, start_batch=start_batch)
