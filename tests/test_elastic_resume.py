"""Elastic resume: a checkpoint records how many global batches its run consumed, and any
number of processes rebuilds its data from there (the runs themselves, saved by two
processes and resumed on one and the reverse, are in test_multiprocess.py)."""
import itertools

import grain
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from data_pipelines.frontends import AUDIO_JEPA
from data_pipelines.pipeline import train_dataset
from data_pipelines.shards import write_shards
from jepa_jax.training import checkpoint, loop
from tests.tiny import tiny_config

FRAMES = 32
BATCH = 4  # global; 12 examples: three batches an epoch


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
  rng = np.random.default_rng(1)
  examples = [(i, rng.uniform(-14.0, 6.0, (80, int(rng.integers(20, 90)))).astype(np.float16),
               {}) for i in range(12)]
  out = tmp_path_factory.mktemp("elastic") / "shards"
  write_shards(out, examples, AUDIO_JEPA, source="test", label_maps={}, max_shard_bytes=50_000)
  return out


def _batches(shard_dir, start_batch, count, process_count=1, worker_count=0):
  """The global batches start_batch .. start_batch + count - 1 as `process_count` hosts read
  them, their rows put together."""
  hosts = [list(itertools.islice(iter(train_dataset(
      shard_dir, frames=FRAMES, global_batch_size=BATCH, seed=5, gain_jitter_db=3.0,
      process_index=p, process_count=process_count, worker_count=worker_count,
      start_batch=start_batch)), count)) for p in range(process_count)]
  return [{k: np.concatenate([b[k] for b in rows]) for k in ("mel", "id")}
          for rows in zip(*hosts)]


@pytest.mark.parametrize("process_count, worker_count", [(1, 0), (2, 0), (2, 1)])
def test_a_started_stream_reads_on_from_its_global_batch(shard_dir, process_count,
                                                         worker_count):
  """Global batches 4.. (into the second epoch) from start_batch=4 on any number of hosts,
  with worker processes too, are those of one host that read from batch 0: nothing read
  twice, nothing skipped, every crop and gain drawn as before."""
  whole = _batches(shard_dir, 0, 7)
  started = _batches(shard_dir, 4, 3, process_count, worker_count)
  for a, b in zip(started, whole[4:], strict=True):
    np.testing.assert_array_equal(a["id"], b["id"])
    np.testing.assert_array_equal(a["mel"], b["mel"])


def test_the_data_position_is_checked_against_the_step_and_the_batch_size(tmp_path):
  config = tiny_config()  # train.batch_size 8
  assert loop._data_start(config, tmp_path, 4, checkpoint.DataPosition(4, 8)) == 4
  assert loop._data_start(config, tmp_path, 4, checkpoint.DataPosition(4, None)) == 4
  with pytest.raises(loop.IncompatibleWorkdirError,
                     match=r"read global batches of 16 examples, this config's "
                           r"train.batch_size is 8"):
    loop._data_start(config, tmp_path, 4, checkpoint.DataPosition(4, 16))
  with pytest.raises(loop.IncompatibleWorkdirError, match="records 3 global batches read"):
    loop._data_start(config, tmp_path, 4, checkpoint.DataPosition(3, 8))


def _state(step):
  return {"step": jnp.int32(step), "params": {"w": jnp.arange(6.0).reshape(2, 3)}}


def test_checkpoints_keep_their_data_position(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", keep=2)
  ckpt.save(5, _state(5), checkpoint.DataPosition(5, BATCH))
  ckpt.wait()
  assert (tmp_path / "checkpoints" / "5" / checkpoint.POSITION).is_dir()
  assert not (tmp_path / "checkpoints" / "5" / checkpoint.GRAIN_STATE).exists()
  step, state, position = ckpt.restore_intact(_state(0), print)
  ckpt.close()
  assert (step, int(state["step"]), position) == (5, 5, checkpoint.DataPosition(5, BATCH))


@pytest.mark.parametrize("batches_read, readable", [(3, True), (2, False)])
def test_a_checkpoint_with_grains_iterator_state_resumes_at_its_step(
    shard_dir, tmp_path, batches_read, readable):
  """Checkpoints written before data positions hold Grain's state of each process's
  iterator: their position is the step (one global batch a step), which that state must
  count too."""
  iterator = iter(train_dataset(shard_dir, frames=FRAMES, global_batch_size=BATCH, seed=5))
  for _ in range(batches_read):
    next(iterator)
  manager = ocp.CheckpointManager(tmp_path / "checkpoints")
  manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(_state(3)),
                                          data=grain.checkpoint.CheckpointSave(iterator)))
  manager.wait_until_finished()
  manager.close()
  assert (tmp_path / "checkpoints" / "3" / checkpoint.GRAIN_STATE).is_dir()
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", keep=2)
  if readable:
    state, position = ckpt.restore(3, _state(0))
    assert (int(state["step"]), position) == (3, checkpoint.DataPosition(3, None))
  else:
    with pytest.raises(ValueError, match=r"counts 2 batches read, not one a step \(3\)"):
      ckpt.restore(3, _state(0))
  ckpt.close()
