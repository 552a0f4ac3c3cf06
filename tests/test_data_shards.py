"""Mel shards: round trip, metadata statistics, atomic writes, clear errors."""
import json

import grain
import numpy as np
import pytest
from array_record.python.array_record_data_source import ArrayRecordDataSource

from data_pipelines.frontends import AUDIO_JEPA
from data_pipelines.shards import Moments, PartWriter, ShardSource, read_metadata, write_shards

LABEL_MAPS = {"colour": ["red", "green", "blue"]}


def _examples(count=12, seed=0):
  rng = np.random.default_rng(seed)
  return [(100 + i, rng.uniform(-16, 6, (80, int(rng.integers(20, 90)))).astype(np.float32),
           {"colour": int(rng.integers(3))}) for i in range(count)]


def test_round_trip_and_metadata(tmp_path):
  examples = _examples()
  metadata = write_shards(tmp_path / "out", iter(examples), AUDIO_JEPA, source="test",
                          label_maps=LABEL_MAPS, max_shard_bytes=40_000)
  assert metadata == read_metadata(tmp_path / "out")
  assert len(metadata["shards"]) > 2  # ~10 kB records, 40 kB shards
  assert metadata["shards"][0] == f"shard-00000-of-{len(metadata['shards']):05d}.array_record"
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
      metadata["shards"] + ["metadata.json"])
  assert metadata["num_examples"] == 12 and metadata["source"] == "test"
  assert metadata["frontend"] == AUDIO_JEPA.to_dict() and metadata["label_maps"] == LABEL_MAPS
  assert metadata["total_seconds"] == pytest.approx(
      sum((mel.shape[1] - 1) * 160 / 16000 for _, mel, _ in examples))
  stored = np.concatenate([mel.astype(np.float16).ravel() for _, mel, _ in examples])
  assert metadata["mean"] == pytest.approx(stored.astype(np.float64).mean(), rel=1e-12)
  assert metadata["std"] == pytest.approx(stored.astype(np.float64).std(), rel=1e-9)

  source = ShardSource(tmp_path / "out")
  assert len(source) == 12
  for i, (example_id, mel, labels) in enumerate(examples):
    record = source[i]
    assert record["id"] == example_id and record["labels"] == labels
    assert record["mel"].dtype == np.float16 and record["mel"].shape == mel.shape
    np.testing.assert_array_equal(record["mel"], mel.astype(np.float16))
    np.testing.assert_allclose(record["mel"], mel, atol=2e-2)  # float16 precision
  assert [r["id"] for r in grain.MapDataset.source(source)] == [e[0] for e in examples]


def test_a_failed_write_leaves_nothing(tmp_path):
  def failing():
    yield from _examples(3)
    raise RuntimeError("decoder crashed")

  with pytest.raises(RuntimeError, match="decoder crashed"):
    write_shards(tmp_path / "out", failing(), AUDIO_JEPA, source="t", label_maps=LABEL_MAPS)
  assert list(tmp_path.iterdir()) == []


def test_refuses_existing_output_and_bad_examples(tmp_path):
  (tmp_path / "out").mkdir()
  with pytest.raises(FileExistsError, match="out already exists"):
    write_shards(tmp_path / "out", _examples(), AUDIO_JEPA, source="t", label_maps=LABEL_MAPS)
  bad_shape = [(7, np.zeros((64, 10), np.float32), {})]
  with pytest.raises(ValueError, match=r"example 7: mel must have shape \(80, frames\)"):
    write_shards(tmp_path / "a", bad_shape, AUDIO_JEPA, source="t", label_maps=LABEL_MAPS)
  bad_label = [(8, np.zeros((80, 10), np.float32), {"colour": 3})]
  with pytest.raises(ValueError, match="example 8: label colour=3"):
    write_shards(tmp_path / "b", bad_label, AUDIO_JEPA, source="t", label_maps=LABEL_MAPS)
  twice = _examples(2) + _examples(1)
  with pytest.raises(ValueError, match="id 100 appears twice"):
    write_shards(tmp_path / "c", twice, AUDIO_JEPA, source="t", label_maps=LABEL_MAPS)
  with pytest.raises(ValueError, match="no examples"):
    write_shards(tmp_path / "d", [], AUDIO_JEPA, source="t", label_maps=LABEL_MAPS)
  assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_metadata_errors_name_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path} is not a mel shard directory"):
    read_metadata(tmp_path)
  (tmp_path / "metadata.json").write_text("{not json")
  with pytest.raises(ValueError, match="metadata.json is corrupt"):
    read_metadata(tmp_path)
  (tmp_path / "metadata.json").write_text(json.dumps({"version": 1}))
  with pytest.raises(ValueError, match="lacks frontend"):
    ShardSource(tmp_path)


def test_moments_merge_like_one_pass():
  rng = np.random.default_rng(1)
  chunks = [rng.normal(-7, 4, (80, n)).astype(np.float16) for n in (5, 50, 13)]
  parts = []
  for chunk in chunks:
    m = Moments()
    m.add(chunk)
    parts.append(Moments.from_dict(json.loads(json.dumps(m.to_dict()))))
  merged = Moments()
  for m in parts:
    merged.merge(m)
  values = np.concatenate([c.astype(np.float64).ravel() for c in chunks])
  assert merged.count == values.size
  mean, std = merged.mean_std()
  assert mean == pytest.approx(values.mean(), rel=1e-12)
  assert std == pytest.approx(values.std(), rel=1e-9)


def test_part_writer_bounds_file_sizes(tmp_path):
  records = [bytes([i]) * size for i, size in enumerate([300, 300, 300, 1000, 10])]
  with PartWriter(lambda i: tmp_path / f"p{i}.ar", max_shard_bytes=700) as writer:
    for record in records:
      writer.write(record)
  # 300 + 300 fit in 700; the third starts a file; 1000 exceeds the bound alone.
  assert [p.name for p in writer.parts] == ["p0.ar", "p1.ar", "p2.ar", "p3.ar"]
  contents = [[bytes(r) for r in ArrayRecordDataSource([str(p)])] for p in writer.parts]
  assert contents == [records[:2], records[2:3], records[3:4], records[4:]]


def _as_old_shards(shard_dir):
  """The shards as written before the front end recorded its mel scale and normalisation."""
  path = shard_dir / "metadata.json"
  metadata = json.loads(path.read_text())
  for key in ("mel_scale", "mel_norm"):
    del metadata["frontend"][key]
  path.write_text(json.dumps(metadata))


def test_shards_of_the_old_audio_jepa_filterbank_are_refused(tmp_path):
  """audio_jepa shards written before its filterbank became M2D's (Slaney, area-
  normalised) hold HTK features of peak-1 triangles: training refuses them, naming the
  settings and asking for a rebuild; Dasheng's old shards hold today's features."""
  from data_pipelines import pipeline
  from data_pipelines.frontends import DASHENG

  old = tmp_path / "old"
  write_shards(old, iter(_examples(4)), AUDIO_JEPA, source="t", label_maps=LABEL_MAPS)
  _as_old_shards(old)
  with pytest.raises(ValueError, match=r"differ from the current recipe in mel_scale, "
                     r"mel_norm \(its metadata predates mel_scale, mel_norm: made with "
                     r"mel_scale='htk', mel_norm=None\); rebuild the shards"):
    pipeline.check_frontend(read_metadata(old), old, "audio_jepa")
  with pytest.raises(ValueError, match="rebuild the shards"):
    pipeline.train_dataset(old, frames=32, global_batch_size=2, seed=0,
                           expected_frontend="audio_jepa")
  dasheng = tmp_path / "dasheng"
  write_shards(dasheng, iter((i, m[:64] - 60.0, lab) for i, m, lab in _examples(4)),
               DASHENG, source="t", label_maps=LABEL_MAPS)
  _as_old_shards(dasheng)
  pipeline.check_frontend(read_metadata(dasheng), dasheng, "dasheng")
  batch = next(iter(pipeline.train_dataset(dasheng, frames=32, global_batch_size=2, seed=0,
                                           expected_frontend="dasheng")))
  assert batch["mel"].shape == (2, 64, 32)


def test_evaluation_shards_must_match_the_encoders_recorded_front_end(tmp_path):
  """Labelled shards of the old audio_jepa filterbank evaluate an encoder trained on it
  (an export recording the old front end) and are refused for one trained on today's."""
  from jepa_jax.evaluation import task_data

  folder = tmp_path / "shards"
  write_shards(folder, iter((i, m, {"label": i % 2})
                           for i, (_, m, _) in enumerate(_examples(4))),
               AUDIO_JEPA, source="t", label_maps={"label": ["a", "b"]})
  _as_old_shards(folder)
  old_frontend = json.loads((folder / "metadata.json").read_text())["frontend"]
  meta = {"normalization": {"mean": -5.0, "std": 4.0}, "frames": 64}
  _, mels = task_data.load_mels(folder, {**meta, "frontend": old_frontend})
  assert len(mels) == 4
  with pytest.raises(ValueError, match=r"differing in mel_norm, mel_scale\): prepare the task "
                     r"again with --frontend=audio_jepa"):
    task_data.load_mels(folder, {**meta, "frontend": AUDIO_JEPA.to_dict()})
