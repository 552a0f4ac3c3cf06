"""The HEAR API (jepa_jax.hear) on a random-init tiny encoder export: what hear-eval-kit
and hear-validator check, plus the shifted-pass timestamp embeddings. `model` is what
load_model returns (the PyTorch model when torch is installed), `plain` the JAX model;
references come from the JAX features of `plain`."""
import dataclasses
import os
from fractions import Fraction

import flax.linen as nn
import jax
import numpy as np
import pytest

from data_pipelines import frontends
from jepa_jax import export, hear, models
from jepa_jax.config import shapes
from jepa_jax.evaluation import features, task_data
from tests.tiny import tiny_config

SR = 16000
HOP_MS = 40.0      # 16-frame patches at a 10 ms hop, 4 passes
FIRST_MS = 75.0    # centre of frames 0..15 of the centred STFT: 7.5 frames


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A training workdir holding only export/: the tiny Audio-JEPA encoder, random init."""
  config = tiny_config()
  encoder = models.build_encoder(config, shapes.grid(config))
  params = nn.unbox(models.init_encoder(encoder, jax.random.key(0)))
  frontend = frontends.get_frontend(config.data.frontend)
  meta = {"frontend": frontend.to_dict(), "frames": config.data.frames,
          "normalization": {"mean": frontend.norm_mean, "std": frontend.norm_std}}
  root = tmp_path_factory.mktemp("hear_run")
  export.export_encoder(root / "export", config, params, meta)
  return root


@pytest.fixture(scope="module")
def model(workdir):
  return hear.load_model(str(workdir), batch_size=16)


@pytest.fixture(scope="module")
def plain(workdir):
  """The JAX HearModel, as load_model returns it without torch."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(hear, "_torch_model_class", lambda: None)
    return hear.load_model(workdir / "export", batch_size=16)


def noise(n_sounds: int, seconds: float, seed: int = 0) -> np.ndarray:
  """White noise in [-1, 1], as hear-validator feeds (length int(seconds * 16000))."""
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (n_sounds, int(seconds * SR))).astype(np.float32)


def encoder_input(model, wave: np.ndarray) -> np.ndarray:
  m = jax_model(model)
  return task_data.normalize(m.frontend.logmel(wave), m.frontend_meta)


def clip_pad(model, wave: np.ndarray) -> np.ndarray:
  """What the sound's last chunk is padded with: its own pad value, as encoder input."""
  m = jax_model(model)
  return task_data.pad_value(m.frontend_meta, m.frontend.logmel(wave))


def jax_model(model) -> hear.HearModel:
  """The HearModel of either kind (a TorchHearModel's holds no JAX parameters)."""
  return hear._unwrap(model)


def test_attributes(model):
  assert model.sample_rate == SR and isinstance(model.sample_rate, int)
  assert isinstance(model.scene_embedding_size, int)
  assert isinstance(model.timestamp_embedding_size, int)
  assert model.scene_embedding_size == model.timestamp_embedding_size == 5 * 32
  m = jax_model(model)
  assert (m.passes, m.shift_frames, m.timestamp_hop_ms) == (4, 4, HOP_MS)
  assert os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")  # set (here or before) on import


@pytest.mark.parametrize("seconds", [1.07, 1.98, 4.0])
def test_shapes_dtypes_and_timestamps(model, seconds):
  audio = noise(2, seconds)
  scene = hear.get_scene_embeddings(audio, model)
  emb, ts = hear.get_timestamp_embeddings(audio, model)
  assert scene.shape == (2, model.scene_embedding_size) and scene.dtype == np.float32
  duration_ms = 1000 * audio.shape[1] / SR
  n = int((duration_ms - FIRST_MS) // HOP_MS) + 1  # centres within the sound
  assert emb.shape == (2, n, model.timestamp_embedding_size) and emb.dtype == np.float32
  assert ts.shape == (2, n)
  assert np.all(np.isfinite(emb)) and np.all(np.isfinite(scene))
  assert np.all(np.diff(ts) == HOP_MS) and HOP_MS <= 50
  assert np.all(ts[:, 0] == FIRST_MS)
  # hear-validator: the last timestamp within the sound and at most 2 hops before its end.
  assert np.all(ts[:, -1] <= duration_ms) and np.all(ts[:, -1] > duration_ms - HOP_MS)


def test_ten_minutes_no_drift(model):
  audio = 0.1 * noise(1, 600.0, seed=3)
  emb, ts = hear.get_timestamp_embeddings(audio, model)
  n = (600_000 - 75) // 40 + 1
  assert emb.shape == (1, n, model.timestamp_embedding_size) and emb.dtype == np.float32
  assert np.all(np.isfinite(emb))
  # Each timestamp is first + index * hop from integers: 75 + 40 i ms exactly.
  assert np.array_equal(ts[0], 75.0 + 40.0 * np.arange(n))
  assert ts[0, -1] == 599_995.0
  scene = hear.get_scene_embeddings(audio, model)
  assert scene.shape == (1, model.scene_embedding_size) and np.all(np.isfinite(scene))


def test_shifted_passes(model, plain):
  """Timestamp embedding k * K + j is patch k of the log-mel with j * 16 / K leading frames
  dropped, each centred where the timestamp says."""
  m = plain
  audio = noise(1, 2.37, seed=1)  # 238 frames: 4 chunks, cut differently by each pass
  emb, ts = hear.get_timestamp_embeddings(audio, model)
  mel = encoder_input(model, audio[0])
  k_passes, shift = m.passes, m.shift_frames
  for j in range(k_passes):
    ref = features.frame_embeddings(m.encoder, m.params, [mel[:, j * shift:]], m.frames,
                                    clip_pad(model, audio[0]), m.batch_size, "concat")[0]
    mine = emb[0, j::k_passes]
    assert len(mine) <= len(ref)
    np.testing.assert_allclose(mine, ref[:len(mine)], rtol=1e-5, atol=1e-5)
  assert not np.allclose(emb[0, 0], emb[0, 1], atol=1e-3)  # the passes differ
  i = np.arange(ts.shape[1])
  hop_length = m.frontend.hop_length
  expected = [float(Fraction((2 * int(k) * shift + 15) * hop_length * 1000, 2 * SR))
              for k in i]
  assert np.array_equal(ts[0], expected)


def test_scene_is_time_mean(model, plain):
  m = plain
  audio = noise(2, 1.5, seed=2)
  scene = hear.get_scene_embeddings(audio, model)
  mels = [encoder_input(model, wave) for wave in audio]
  pads = [clip_pad(model, wave) for wave in audio]
  frames = features.frame_embeddings(m.encoder, m.params, mels, m.frames, pads,
                                     m.batch_size, "concat")
  np.testing.assert_allclose(scene, np.stack([f.mean(0) for f in frames]), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(hear.get_scene_embeddings(audio, plain), features.clip_embeddings(
      m.encoder, m.params, mels, m.frames, pads, m.batch_size, "concat"), rtol=1e-6,
      atol=1e-7)


def test_batch_independence_and_determinism(model, monkeypatch):
  audio = noise(3, 1.2, seed=4)
  audio[2] *= 0.01  # a quiet neighbour
  scene = hear.get_scene_embeddings(audio, model)
  emb, ts = hear.get_timestamp_embeddings(audio, model)
  alone_scene = hear.get_scene_embeddings(audio[1:2], model)
  alone_emb, alone_ts = hear.get_timestamp_embeddings(audio[1:2], model)
  np.testing.assert_allclose(scene[1:2], alone_scene, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(emb[1:2], alone_emb, rtol=1e-5, atol=1e-5)
  assert np.array_equal(ts[1:2], alone_ts)
  again_emb, again_ts = hear.get_timestamp_embeddings(audio, model)
  assert np.array_equal(emb, again_emb) and np.array_equal(ts, again_ts)
  assert np.array_equal(scene, hear.get_scene_embeddings(audio, model))
  monkeypatch.setattr(hear, "_GROUP_FRAMES", 1)  # one sound per encoder group
  np.testing.assert_allclose(hear.get_timestamp_embeddings(audio, model)[0], emb,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:n_fft=.*too large:UserWarning")  # librosa, short input
def test_short_audio(model):
  for n in (0, 100, 1199):  # shorter than the first centre (75 ms = 1200 samples)
    emb, ts = hear.get_timestamp_embeddings(np.zeros((2, n), np.float32), model)
    assert emb.shape == (2, 1, model.timestamp_embedding_size) and ts.tolist() == [[75.0]] * 2
    assert hear.get_scene_embeddings(np.zeros((2, n), np.float32), model).shape == (2, 160)
  # Kaldi fbank needs 400 samples: shorter sounds are zero-padded to one frame.
  m = dataclasses.replace(jax_model(model), frontend=frontends.AJEPA, frontend_meta={
      "frontend": frontends.AJEPA.to_dict(), "frames": 64,
      "normalization": {"mean": 0.0, "std": 1.0}})
  (mel,), _ = hear._inputs(m, np.zeros((1, 10), np.float32))
  assert mel.shape == (128, 1)


def test_bad_input(model, tmp_path):
  with pytest.raises(ValueError, match=r"shape \(n_sounds, n_samples\).*audio\[None\]"):
    hear.get_scene_embeddings(np.zeros(16000, np.float32), model)
  with pytest.raises(ValueError, match=r"shape \(n_sounds, n_samples\)"):
    hear.get_timestamp_embeddings(np.zeros((1, 2, 16000), np.float32), model)
  bad = noise(3, 0.5)
  bad[1, 7] = np.nan
  with pytest.raises(ValueError, match=r"NaN or inf samples \(sound\(s\) \[1\]"):
    hear.get_timestamp_embeddings(bad, model)
  with pytest.raises(ValueError, match="float samples"):
    hear.get_scene_embeddings(np.zeros((1, 16000), np.int16), model)
  missing = tmp_path / "no_such_run"
  with pytest.raises(FileNotFoundError, match=f"{missing}.*does not exist.*export/"):
    hear.load_model(missing)
  with pytest.raises(FileNotFoundError, match="holds no encoder export"):
    hear.load_model(tmp_path)
  with pytest.raises(FileNotFoundError, match="needs a model path"):
    hear.load_model()


def test_export_dir_and_plain_model(plain, model):
  """load_model takes export/ itself; without torch it returns the plain HearModel, whose
  embeddings the PyTorch model's equal within float32 rounding."""
  assert isinstance(plain, hear.HearModel) and plain.params is not None
  assert (plain.sample_rate, plain.scene_embedding_size) == (SR, 160)
  audio = noise(1, 1.0, seed=5)
  np.testing.assert_allclose(hear.get_scene_embeddings(audio, plain),
                             hear.get_scene_embeddings(audio, model), rtol=1e-5, atol=1e-5)


def test_a_training_workdir_is_read_for_its_export(workdir, plain, tmp_path):
  """A real workdir holds its own config.json (the training config) beside export/:
  load_model reads export/, not the workdir's config as an export's (which died in
  orbax's "Checkpoint at RUN/encoder not found")."""
  run = tmp_path / "run"
  run.mkdir()
  (run / "export").symlink_to(workdir / "export")
  (run / "config.json").write_text((workdir / "export" / "config.json").read_text())
  (run / "checkpoints").mkdir()
  loaded = hear.load_model(str(run), batch_size=16)
  assert jax_model(loaded).export_dir == run / "export"
  audio = noise(1, 0.8, seed=7)
  np.testing.assert_allclose(hear.get_scene_embeddings(audio, loaded),
                             hear.get_scene_embeddings(audio, plain), rtol=1e-5, atol=1e-5)
  (run / "export").unlink()  # a run that never finished: its config.json is no export
  with pytest.raises(FileNotFoundError, match="holds no encoder export"):
    hear.load_model(run)


def test_passes_and_grid():
  assert hear.passes_for(16, 160, SR) == 4    # 160 ms patches: 40 ms
  assert hear.passes_for(10, 160, SR) == 2    # 100 ms: 50 ms
  assert hear.passes_for(14, 160, SR) == 7    # 3 does not divide 14: 20 ms
  assert hear.passes_for(4, 160, SR) == 1     # 40 ms patches need no shift
  assert hear.passes_for(2, 1600, SR) == 2    # 100 ms frames: the finest grid there is
  # Kaldi frames are centred (win - 1) / 2 samples in: 199.5 + 7.5 * 160 samples.
  first, step, count = hear.timestamp_grid(frontends.AJEPA, 16, 4, 16000)
  assert Fraction(first * 1000, 2 * SR) == Fraction("87.46875")
  assert (Fraction(step * 1000, 2 * SR), count) == (40, (2 * 16000 - first) // step + 1)


def test_torch_round_trip(model):
  torch = pytest.importorskip("torch")
  assert isinstance(model, torch.nn.Module) and list(model.parameters())
  assert model.to("cpu") is model
  audio = noise(2, 1.07, seed=6)
  scene = hear.get_scene_embeddings(torch.from_numpy(audio), model)
  emb, ts = hear.get_timestamp_embeddings(torch.from_numpy(audio).double(), model)
  assert isinstance(scene, torch.Tensor) and scene.dtype == torch.float32
  assert isinstance(emb, torch.Tensor) and emb.dtype == torch.float32
  assert isinstance(ts, torch.Tensor) and scene.device == torch.device("cpu")
  ref_emb, ref_ts = hear.get_timestamp_embeddings(audio, model)
  assert np.array_equal(scene.numpy(), hear.get_scene_embeddings(audio, model))
  assert np.array_equal(emb.numpy(), ref_emb) and np.array_equal(ts.numpy(), ref_ts)
  with pytest.raises(ValueError, match="float samples"):
    hear.get_scene_embeddings(torch.zeros((1, 100), dtype=torch.int16), model)


def test_an_old_export_embeds_with_the_filterbank_it_was_trained_with(model, tmp_path):
  """tests/fixtures/v0_workdir/export recorded audio_jepa before its filterbank became
  M2D's (Slaney, area-normalised) and before frontend.json said which: HEAR and the
  evaluation rebuild the HTK triangles of peak 1 it was trained on; today's export (the
  `model` fixture) gets today's filterbank."""
  import json
  from pathlib import Path

  import librosa

  from data_pipelines import audio_io
  from data_pipelines import tasks as tasks_lib

  old_export = Path(__file__).parent / "fixtures" / "v0_workdir" / "export"
  meta = json.loads((old_export / "frontend.json").read_text())
  assert "mel_scale" not in meta["frontend"]
  old = jax_model(hear.load_model(old_export, batch_size=16))
  fe = frontends.AUDIO_JEPA
  htk = librosa.filters.mel(sr=SR, n_fft=fe.n_fft, n_mels=fe.n_mels, fmin=fe.fmin,
                            fmax=fe.fmax, htk=True, norm=None, dtype=np.float64)
  np.testing.assert_allclose(old.frontend.filterbank, htk, rtol=1e-12, atol=0)
  np.testing.assert_allclose(jax_model(model).frontend.filterbank, fe.filterbank)
  assert not np.allclose(fe.filterbank, htk)
  then = dataclasses.replace(fe, mel_scale="htk", mel_norm=None)
  wave = noise(1, 0.5, seed=6)[0]
  (mel,), _ = hear._inputs(old, wave[None])
  np.testing.assert_allclose(mel, task_data.normalize(then.logmel(wave), meta), rtol=1e-6)
  # The evaluation's task clips, alike.
  (tmp_path / "audio").mkdir()
  audio_io.write_wav(tmp_path / "audio" / "a.wav", wave, SR)
  tasks_lib.write_task(tmp_path, [tasks_lib.TaskRow(Path("audio") / "a.wav", ("x",))])
  _, (clip,) = task_data.load_mels(tmp_path, meta)
  loaded = audio_io.load_audio(tmp_path / "audio" / "a.wav", SR)
  np.testing.assert_allclose(clip, task_data.normalize(then.logmel(loaded), meta), rtol=1e-6)
  assert not np.allclose(clip, task_data.normalize(fe.logmel(loaded), meta), atol=1e-2)


def test_torch_mode_computes_in_pytorch_with_the_jax_values(model, plain):
  """With torch installed, load_model's model is a torch.nn.Module holding the encoder's
  parameters (torch_encoder.AudioEncoder, timm's key names), computing in PyTorch: the
  same shapes, timestamps and, within float32 rounding, values as the JAX model."""
  torch = pytest.importorskip("torch")
  names = dict(model.named_parameters())
  assert "audio_encoder.encoder.blocks.0.attn.qkv.weight" in names
  jax_count = sum(np.size(p) for p in jax.tree.leaves(plain.params))
  pos = names["audio_encoder.encoder.pos_embed"]  # the sin-cos table: a parameter in timm
  assert sum(p.numel() for p in names.values()) == jax_count + pos.numel()
  audio = torch.from_numpy(noise(3, 2.37, seed=8))
  scene = hear.get_scene_embeddings(audio, model)
  emb, ts = hear.get_timestamp_embeddings(audio, model)
  ref_scene = hear.get_scene_embeddings(audio.numpy(), plain)
  ref_emb, ref_ts = hear.get_timestamp_embeddings(audio.numpy(), plain)
  assert scene.shape == (3, 160) and emb.shape == ref_emb.shape == (3, 58, 160)
  assert np.array_equal(ts.numpy(), ref_ts)
  for name, got, ref in (("scene", scene.numpy(), ref_scene), ("timestamp", emb.numpy(), ref_emb)):
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    print(f"HEAR torch vs JAX {name} embeddings: max abs diff / max abs = {rel:.2e}")
    assert rel <= 1e-4
  with torch.no_grad():  # the computation is PyTorch's: perturbing a weight changes it
    model.audio_encoder.encoder.norm.bias.add_(1.0)
  try:
    assert not np.allclose(hear.get_scene_embeddings(audio, model).numpy(), ref_scene, atol=0.5)
  finally:
    with torch.no_grad():
      model.audio_encoder.encoder.norm.bias.sub_(1.0)
