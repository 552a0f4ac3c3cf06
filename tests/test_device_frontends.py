"""The jitted jax.numpy front ends against the float64 NumPy recipes."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines import device_frontends
from data_pipelines.frontends import AJEPA, AUDIO_JEPA, DASHENG, DbMel
from tests.frontend_signals import speech_like

ALL = [AUDIO_JEPA, AJEPA, DASHENG]


def _numpy_batch(fe, waves):
  return np.stack([fe.logmel(w) for w in waves]).astype(np.float64)


def _within_80_db(fe, ref):
  """Bins whose power is within 80 dB (a factor 1e8) of their clip's loudest bin."""
  span = 80.0 if isinstance(fe, DbMel) else 8 * math.log(10)
  return ref >= ref.max(axis=(1, 2), keepdims=True) - span


@pytest.fixture(scope="module")
def clips():
  """Speech-like clips with silence gaps at different levels, one with a DC offset."""
  rng = np.random.default_rng(0)
  waves = [speech_like(rng, 2.0, level) for level in (0.0, -12.0, -30.0, -55.0)]
  waves.append(speech_like(rng, 2.0, -20.0) + np.float32(0.05))
  return np.stack(waves)


@pytest.mark.parametrize("fe", ALL, ids=lambda f: f.name)
def test_device_matches_numpy_on_real_looking_clips(fe, clips):
  got = np.asarray(device_frontends.logmel(fe, jnp.asarray(clips)), np.float64)
  ref = _numpy_batch(fe, clips)
  assert got.shape == ref.shape == (len(clips), fe.n_mels, fe.num_frames(clips.shape[1]))
  audible = _within_80_db(fe, ref)
  assert audible.mean() > 0.5
  error = np.abs(got - ref)[audible]
  # In feature units, so dB for dasheng (4.3x ln): these clips reach 2.5e-4 (ln) and
  # 5.5e-4 dB; the worst of 32 ten-second clips measured was 1.1e-3 dB.
  assert error.max() <= 1e-3 and error.mean() <= 1e-4, (error.max(), error.mean())
  # Quieter bins stay close too; digital silence is the floor on both sides.
  assert np.abs(got - ref).max() <= 0.05


@pytest.mark.filterwarnings("ignore:n_fft=.* is too large")  # librosa, on the NumPy side
@pytest.mark.parametrize("fe", ALL, ids=lambda f: f.name)
@pytest.mark.parametrize("samples", [400, 1001, 16007])  # 400: one Kaldi frame; < n_fft
def test_shapes_and_short_clips(fe, samples):
  waves = np.random.default_rng(samples).uniform(-0.5, 0.5, (2, samples)).astype(np.float32)
  got = np.asarray(device_frontends.logmel(fe, jnp.asarray(waves)))
  assert got.dtype == np.float32 and got.shape == (2, fe.n_mels, fe.num_frames(samples))
  ref = _numpy_batch(fe, waves)
  np.testing.assert_allclose(got, ref, atol=1e-3 if isinstance(fe, DbMel) else 2e-4)


@pytest.mark.parametrize("fe", ALL, ids=lambda f: f.name)
def test_silence_is_the_floor(fe):
  got = device_frontends.logmel(fe, jnp.zeros((2, 4000)))
  np.testing.assert_allclose(np.asarray(got), fe.floor, atol=1e-5)


def test_dasheng_top_db_is_per_clip_not_per_batch():
  # torchaudio clamps a (batch, mels, frames) tensor at the batch max - top_db; the recipe
  # clamps each clip at its own max, so a clip's features do not depend on its batch mates.
  rng = np.random.default_rng(1)
  loud = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000).astype(np.float32)
  quiet = speech_like(rng, 1.0, -30.0)
  both = np.asarray(device_frontends.logmel(DASHENG, jnp.asarray(np.stack([loud, quiet]))))
  alone = np.asarray(device_frontends.logmel(DASHENG, jnp.asarray(quiet[None])))
  np.testing.assert_array_equal(both[1], alone[0])
  assert both[0].max() - 120 > both[1].min()  # a batch-wide clamp would have changed it


def test_jits_inside_other_functions_and_recompiles_per_recipe():
  waves = jnp.asarray(speech_like(np.random.default_rng(2), 0.5, -6.0)[None])
  outer = jax.jit(lambda w: device_frontends.logmel(AUDIO_JEPA, w) * 2.0)
  np.testing.assert_allclose(np.asarray(outer(waves)),
                             2.0 * np.asarray(device_frontends.logmel(AUDIO_JEPA, waves)),
                             rtol=1e-6)
  narrow = dataclasses.replace(AUDIO_JEPA, n_mels=40)
  assert device_frontends.logmel(narrow, waves).shape == (1, 40, AUDIO_JEPA.frames(0.5))


@pytest.mark.parametrize("length,hop,samples", [(400, 160, 5000), (512, 160, 5003),
                                                (4, 4, 16), (5, 2, 11)])
def test_frames_of_cuts_frames_every_hop(length, hop, samples):
  waves = np.arange(2 * samples, dtype=np.float32).reshape(2, samples)
  count = 1 + (samples - length) // hop
  want = np.lib.stride_tricks.sliding_window_view(waves, length, axis=1)[:, ::hop][:, :count]
  got = np.asarray(device_frontends.frames_of(jnp.asarray(waves), length, hop, count))
  np.testing.assert_array_equal(got, want)


def test_rejects_bad_batches():
  with pytest.raises(ValueError, match=r"\(batch, samples\)"):
    device_frontends.logmel(AUDIO_JEPA, jnp.zeros(1000))
  with pytest.raises(ValueError, match="float samples"):
    device_frontends.logmel(AUDIO_JEPA, jnp.zeros((1, 1000), jnp.int32))
  with pytest.raises(ValueError, match="at least 400 samples"):
    device_frontends.logmel(AJEPA, jnp.zeros((1, 399)))
