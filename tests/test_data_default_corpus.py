"""The embedded default corpus: layout, labels, splits, caching, atomic and parallel builds."""
import os

import numpy as np
import pytest

from data_pipelines import default_corpus, shards, synthetic, tasks
from data_pipelines.audio_io import load_audio
from data_pipelines.default_corpus import ensure_default_corpus, probe_split
from data_pipelines.frontends import AUDIO_JEPA

SIZES = {"num_pretrain": 6, "num_probe": 12}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return ensure_default_corpus(tmp_path_factory.mktemp("cache"), workers=1, **SIZES)


def test_splits_are_exact_thirds_and_sixths():
  splits = [probe_split(i, 1200) for i in range(1200)]
  assert splits == ["train"] * 800 + ["valid"] * 200 + ["test"] * 200
  assert [probe_split(i, 12) for i in (7, 8, 9, 10, 11)] == [
      "train", "valid", "valid", "test", "test"]


def test_pretrain_shards_hold_stream_0_with_labels(corpus):
  source = shards.ShardSource(corpus.pretrain)
  assert source.metadata["num_examples"] == 6 and source.metadata["frontend"]["name"] == (
      "audio_jepa")
  assert source.metadata["label_maps"] == {t: list(n) for t, n in synthetic.TASKS.items()}
  for i in (0, 5):
    wave, labels = synthetic.generate_clip(0, 0, i)
    record = source[i]
    assert record["id"] == i and record["labels"] == labels
    np.testing.assert_allclose(record["mel"], AUDIO_JEPA.logmel(wave), atol=2e-2)


def test_probe_tasks_share_one_copy_of_stream_1(corpus):
  assert set(corpus.tasks) == set(synthetic.TASKS)
  inodes = {}
  for name, task_dir in corpus.tasks.items():
    task = tasks.read_task(task_dir)
    assert len(task.rows) == 12 and not task.multilabel
    assert [row.split for row in task.rows] == ["train"] * 8 + ["valid"] * 2 + ["test"] * 2
    for i, row in enumerate(task.rows):
      _, labels = synthetic.generate_clip(0, 1, i)
      assert row.labels == (synthetic.TASKS[name][labels[name]],)
      inodes.setdefault(i, set()).add(os.stat(row.path).st_ino)
  assert all(len(nodes) == 1 for nodes in inodes.values())  # hard links to one file
  wave, _ = synthetic.generate_clip(0, 1, 3)
  np.testing.assert_allclose(load_audio(tasks.read_task(corpus.tasks["pitch"]).rows[3].path,
                                        16000), wave, atol=1 / 32768)


def test_second_call_reuses_and_settings_change_the_folder(corpus, tmp_path, capsys):
  cache = corpus.pretrain.parent.parent
  assert ensure_default_corpus(cache, workers=1, **SIZES) == corpus
  assert capsys.readouterr().err == ""  # nothing built
  other = ensure_default_corpus(cache, workers=1, seed=1, **SIZES)
  assert other.pretrain.parent != corpus.pretrain.parent
  assert "default corpus ready" in capsys.readouterr().err


def test_cache_dir_from_environment(monkeypatch, tmp_path):
  monkeypatch.setenv("JEPA_JAX_CACHE", str(tmp_path / "a"))
  assert default_corpus.default_cache_dir() == tmp_path / "a"
  monkeypatch.delenv("JEPA_JAX_CACHE")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert default_corpus.default_cache_dir() == tmp_path / "xdg" / "jepa_jax"


def test_a_failed_build_leaves_nothing(monkeypatch, tmp_path):
  real = synthetic.generate_clip

  def failing(seed, stream, index):
    if stream == 1 and index == 4:
      raise RuntimeError("generator crashed")
    return real(seed, stream, index)

  monkeypatch.setattr(synthetic, "generate_clip", failing)
  with pytest.raises(RuntimeError, match="generator crashed"):
    ensure_default_corpus(tmp_path, workers=1, **SIZES)
  assert list(tmp_path.iterdir()) == []


def test_parallel_build_equals_serial_build(corpus, tmp_path):
  parallel = ensure_default_corpus(tmp_path, workers=2, **SIZES)
  serial_source, parallel_source = (shards.ShardSource(c.pretrain) for c in (corpus, parallel))
  assert serial_source.metadata == parallel_source.metadata
  for i in range(len(serial_source)):
    np.testing.assert_array_equal(serial_source[i]["mel"], parallel_source[i]["mel"])
  for name in synthetic.TASKS:
    serial_rows = tasks.read_task(corpus.tasks[name]).rows
    parallel_rows = tasks.read_task(parallel.tasks[name]).rows
    assert [r.labels for r in serial_rows] == [r.labels for r in parallel_rows]
    assert all(a.path.read_bytes() == b.path.read_bytes()
               for a, b in zip(serial_rows, parallel_rows))


def test_a_cache_of_the_old_audio_jepa_filterbank_is_rebuilt_not_used(corpus, tmp_path,
                                                                        capsys):
  """A cache made before audio_jepa's filterbank became M2D's (Slaney, area-normalised):
  its folder is keyed by the old front-end record and its shards hold the old features.
  Today's record keys another folder, so the corpus is built anew there (the quick start
  keeps working) and the old shards, which training would refuse, are left alone."""
  import json
  import shutil
  import types

  from data_pipelines import pipeline

  legacy = {k: v for k, v in AUDIO_JEPA.to_dict().items() if k not in ("mel_scale", "mel_norm")}
  old_key = default_corpus.corpus_key(0, SIZES["num_pretrain"], SIZES["num_probe"],
                                      types.SimpleNamespace(to_dict=lambda: legacy))
  cache = tmp_path / "cache"
  old_root = cache / f"default-corpus-{old_key}"
  shutil.copytree(corpus.pretrain.parent, old_root)
  metadata_path = old_root / "pretrain" / shards.METADATA_FILE
  metadata_path.write_text(json.dumps({**json.loads(metadata_path.read_text()),
                                       "frontend": legacy}))
  capsys.readouterr()
  fresh = ensure_default_corpus(cache, workers=1, **SIZES)
  assert fresh.pretrain.parent != old_root
  assert "default corpus ready" in capsys.readouterr().err  # built, not reused
  fresh_metadata = shards.read_metadata(fresh.pretrain)
  assert fresh_metadata["frontend"] == AUDIO_JEPA.to_dict()
  pipeline.check_frontend(fresh_metadata, fresh.pretrain, "audio_jepa")
  with pytest.raises(ValueError, match="rebuild the shards"):
    pipeline.check_frontend(shards.read_metadata(old_root / "pretrain"), old_root, "audio_jepa")
