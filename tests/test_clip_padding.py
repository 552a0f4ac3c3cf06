"""One pad value per clip, the same in training and in every evaluation path: digital
silence appended to that clip (FrontEnd.pad_value). For Dasheng's dB features that is the
clip max - 120 dB when above the -100 dB floor, so a short loud clip is padded well above
the floor wherever it is padded: training crops, task clips cut to unit_sec, embedding
chunks, HEAR, fine-tuning batches and evaluation chunks."""
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from data_pipelines import audio_io, pipeline, shards
from data_pipelines import tasks as tasks_lib
from data_pipelines.frontends import DASHENG
from jepa_jax import export, hear, models
from jepa_jax.config import shapes
from jepa_jax.evaluation import embeddings, features, finetune, task_data
from tests.tiny import load_config_module

SR = 16000
FRAMES = 64  # 16 tokens of 64 mels x 4 frames
# A learned per-bin input transform (Dasheng's BatchNorm, folded): the pad is per bin too.
META = {"frontend": DASHENG.to_dict(), "frames": FRAMES,
        "normalization": {"mean": DASHENG.norm_mean, "std": DASHENG.norm_std},
        "input_norm": {"scale": np.linspace(0.5, 1.5, 64).tolist(),
                       "shift": np.linspace(-0.2, 0.2, 64).tolist()}}
# (amplitude, seconds) of each clip: loud ones (max ~ +40 dB: pad ~ -80 dB) and quiet ones
# (pad at the -100 dB floor), all shorter than a chunk (0.64 s).
CLIPS = [(0.9, 0.25), (1e-3, 0.3), (0.5, 0.41), (1e-3, 0.2), (0.9, 0.33), (1e-3, 0.27),
         (0.7, 0.22), (1e-3, 0.37)]


def _tone(amplitude: float, seconds: float, index: int) -> np.ndarray:
  t = np.arange(int(seconds * SR)) / SR
  return (amplitude * np.sin(2 * np.pi * (300 + 150 * index) * t)).astype(np.float32)


def expected_pad(raw: np.ndarray, meta: dict = META) -> np.ndarray:
  """(64, 1): max(-100 dB, clip max - 120 dB), as encoder input."""
  value = max(-100.0, float(raw.max()) - 120.0)
  return task_data.normalize(np.full((64, 1), value), meta)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
  folder = tmp_path_factory.mktemp("dasheng_task")
  (folder / "audio").mkdir()
  rows = []
  for i, (amplitude, seconds) in enumerate(CLIPS):
    name = Path("audio") / f"clip{i}.wav"
    audio_io.write_wav(folder / name, _tone(amplitude, seconds, i), SR)
    rows.append(tasks_lib.TaskRow(name, ("loud" if amplitude > 0.1 else "quiet",),
                                  split=("train", "train", "valid", "test")[(i // 2) % 4]))
  tasks_lib.write_task(folder, rows)
  return folder


@pytest.fixture(scope="module")
def raw_clips(task_dir) -> list[np.ndarray]:
  """Each clip's Dasheng features as the evaluation reads them (from the 16-bit WAV)."""
  return [DASHENG.logmel(audio_io.load_audio(row.path, SR))
          for row in tasks_lib.read_task(task_dir).rows]


def test_the_expected_pads_are_per_clip_and_above_the_floor_for_loud_clips(raw_clips):
  floor = task_data.normalize(np.full((64, 1), DASHENG.floor), META)
  for (amplitude, _), raw in zip(CLIPS, raw_clips):
    loud = amplitude > 0.1
    assert (raw.max() - 120.0 > -95.0) == loud  # the pad is well above the floor, or at it
    assert np.allclose(expected_pad(raw), floor) != loud
    np.testing.assert_allclose(task_data.pad_value(META, raw), expected_pad(raw), rtol=1e-6)


def test_training_crops_pad_each_clip_with_its_own_value(tmp_path, raw_clips):
  """The training pipeline (FrontEnd.pad_value of the stored clip) and the evaluation's
  pad_value give one value per clip."""
  out = tmp_path / "shards"
  shards.write_shards(out, ((i, raw, {}) for i, raw in enumerate(raw_clips)), DASHENG,
                      source="t", label_maps={})
  source = shards.ShardSource(out)
  batch = next(iter(pipeline.train_dataset(out, frames=FRAMES, global_batch_size=8, seed=0,
                                           normalization="recipe")))
  recipe = {k: v for k, v in META.items() if k != "input_norm"}  # what the batches have
  for mel, clip_id in zip(batch["mel"], batch["id"]):
    stored = np.asarray(source[int(clip_id)]["mel"], np.float32)
    want = task_data.pad_value(recipe, stored)
    assert want[0, 0] == pytest.approx(expected_pad(stored, recipe)[0, 0], abs=1e-6)
    np.testing.assert_allclose(mel[:, stored.shape[1]:],
                               np.broadcast_to(want, (64, FRAMES - stored.shape[1])),
                               atol=1e-6)


def test_task_clips_cut_to_unit_sec_are_padded_with_their_own_value(task_dir, raw_clips):
  task, mels, pads = task_data.load_clips(task_dir, META, unit_sec=0.5)
  for mel, pad, raw in zip(mels, pads, raw_clips):
    assert mel.shape[1] == DASHENG.frames(0.5) > raw.shape[1]
    np.testing.assert_allclose(pad, expected_pad(raw), rtol=1e-6)
    np.testing.assert_allclose(mel[:, raw.shape[1]:],
                               np.broadcast_to(pad, (64, mel.shape[1] - raw.shape[1])),
                               rtol=1e-6)


def _spy_on_chunks(monkeypatch) -> list:
  """Records (clips, chunks) of every features.chunk call."""
  calls, real = [], features.chunk

  def spy(mels, frames, patch_frames, pad_value):
    out = real(mels, frames, patch_frames, pad_value)
    calls.append(([m.shape[1] for m in mels], out[0]))
    return out
  monkeypatch.setattr(features, "chunk", spy)
  return calls


def _check_chunks(calls, pads_of_clips) -> None:
  """Every clip (shorter than a chunk: chunk k is clip k) padded with its own pad."""
  assert calls
  for lengths, chunks in calls:
    assert len(chunks) == len(lengths) == len(pads_of_clips)
    for chunk, length, pad in zip(chunks, lengths, pads_of_clips):
      np.testing.assert_allclose(chunk[:, length:],
                                 np.broadcast_to(pad, (64, FRAMES - length)), rtol=1e-5)


@pytest.fixture(scope="module")
def dasheng_run(tmp_path_factory):
  """A workdir holding the export of a tiny random-init Dasheng encoder."""
  config = load_config_module("dasheng").get_config("demo")
  config.data.frames = FRAMES
  config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64)
  encoder = models.build_encoder(config, shapes.grid(config))
  params = nn.unbox(models.init_encoder(encoder, jax.random.key(0)))
  root = tmp_path_factory.mktemp("dasheng_run")
  export.export_encoder(root / "export", config, params, META)
  return root


def test_embeddings_pad_each_clip_with_its_own_value(dasheng_run, task_dir, raw_clips,
                                                     monkeypatch):
  calls = _spy_on_chunks(monkeypatch)
  _, meta, sets = embeddings.load_feature_sets(dasheng_run)
  (_, x), = embeddings.embed_tasks(dasheng_run, [task_dir], sets, meta, chunk_batch=8,
                                   cache=False)
  assert x["trained"].shape == (len(CLIPS), 32)
  _check_chunks(calls, [expected_pad(raw) for raw in raw_clips])


def test_hear_pads_each_sound_with_its_own_value(dasheng_run, monkeypatch):
  # The JAX model, whose chunks are spied on; the torch model (with torch installed)
  # equals it, padding included (tests/test_hear.py, test_convert_export.py).
  monkeypatch.setattr(hear, "_torch_model_class", lambda: None)
  model = hear.load_model(str(dasheng_run), batch_size=8)
  length = int(0.3 * SR)
  audio = np.stack([_tone(a, 0.3, i) for i, (a, _) in enumerate(CLIPS)])
  raws = [DASHENG.logmel(wave) for wave in audio]
  assert audio.shape[1] == length
  calls = _spy_on_chunks(monkeypatch)
  hear.get_scene_embeddings(audio, model)
  _check_chunks(calls, [expected_pad(raw) for raw in raws])
  calls.clear()
  hear.get_timestamp_embeddings(audio, model)
  passes = model.passes
  _check_chunks(calls, [expected_pad(raw) for raw in raws for _ in range(passes)])


def test_finetuning_batches_and_evaluation_chunks_pad_each_clip_with_its_own_value(
    dasheng_run, task_dir, raw_clips, monkeypatch):
  _, encoder, params, meta = export.load_encoder(dasheng_run / "export")
  task, mels, pads = task_data.load_clips(task_dir, meta, whole=True)
  by_clip = {id(mel): expected_pad(raw) for mel, raw in zip(mels, raw_clips)}
  crops, real_crop = [], finetune.random_crop

  def spy_crop(mel, window, frames, pad, rng):
    out = real_crop(mel, window, frames, pad, rng)
    crops.append(out)
    np.testing.assert_allclose(out[:, mel.shape[1]:],
                               np.broadcast_to(by_clip[id(mel)], (64, frames - mel.shape[1])),
                               rtol=1e-5)
    return out
  monkeypatch.setattr(finetune, "random_crop", spy_crop)
  calls = _spy_on_chunks(monkeypatch)
  finetune.finetune_task(encoder, params, meta, task, mels,
                         dict(epochs=1, batch_size=4, seeds=1, warmup_epochs=0.0),
                         pads=pads)
  assert len(crops) == 4  # one epoch of the 4 training clips
  valid = [i for i, s in enumerate(task.splits) if s == "valid"]
  test = [i for i, s in enumerate(task.splits) if s == "test"]
  assert len(calls) == 2  # the valid and test chunks, cut once
  _check_chunks(calls[:1], [expected_pad(raw_clips[i]) for i in valid])
  _check_chunks(calls[1:], [expected_pad(raw_clips[i]) for i in test])
