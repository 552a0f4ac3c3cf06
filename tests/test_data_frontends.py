"""Log-mel front ends against first principles."""
import dataclasses
import json
import math

import numpy as np
import pytest

from data_pipelines.frontends import AUDIO_JEPA, FrontEnd, get_frontend


def _htk_mel(hz):
  return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _htk_hz(mel):
  return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


def _filter_centres_hz(fe: FrontEnd) -> np.ndarray:
  return _htk_hz(np.linspace(_htk_mel(fe.fmin), _htk_mel(fe.fmax), fe.n_mels + 2))[1:-1]


def _direct_logmel_frame(fe: FrontEnd, wave: np.ndarray, frame: int) -> np.ndarray:
  """One frame from the definition: reflect-padded centred Hann frame, |FFT|^2, HTK
  triangles (peak 1, no area normalisation), ln(. + eps)."""
  padded = np.pad(wave.astype(np.float64), fe.n_fft // 2, mode="reflect")
  n = np.arange(fe.win_length)
  window = 0.5 - 0.5 * np.cos(2 * np.pi * n / fe.win_length)  # periodic Hann
  segment = padded[frame * fe.hop_length:frame * fe.hop_length + fe.n_fft] * window
  power = np.abs(np.fft.rfft(segment)) ** 2
  bin_hz = np.arange(fe.n_fft // 2 + 1) * fe.sample_rate / fe.n_fft
  edges = _htk_hz(np.linspace(_htk_mel(fe.fmin), _htk_mel(fe.fmax), fe.n_mels + 2))
  lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  weights = np.maximum(0.0, np.minimum((bin_hz - lower) / (centre - lower),
                                       (upper - bin_hz) / (upper - centre)))
  return np.log(weights @ power + fe.log_eps)


def test_audio_jepa_recipe_is_m2d():
  fe = get_frontend("audio_jepa")
  assert (fe.sample_rate, fe.n_fft, fe.win_length, fe.hop_length, fe.n_mels) == (
      16000, 400, 400, 160, 80)
  assert (fe.fmin, fe.fmax, fe.norm_mean, fe.norm_std) == (50.0, 8000.0, -7.06, 4.20)
  assert fe.log_eps == pytest.approx(1.1920929e-07, rel=1e-7)


@pytest.mark.parametrize("frame", [0, 1, 37])  # 0 and 1 include the reflect padding
def test_logmel_matches_direct_computation(frame):
  rng = np.random.default_rng(0)
  t = np.arange(8000) / 16000
  wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(8000)).astype(
      np.float32)
  got = AUDIO_JEPA.logmel(wave)[:, frame]
  np.testing.assert_allclose(got, _direct_logmel_frame(AUDIO_JEPA, wave, frame), atol=1e-4)


@pytest.mark.parametrize("band", [20, 45, 70])
def test_sine_peaks_in_the_mel_band_centred_on_its_frequency(band):
  freq = _filter_centres_hz(AUDIO_JEPA)[band]
  wave = 0.5 * np.sin(2 * np.pi * freq * np.arange(16000) / 16000)
  mel = AUDIO_JEPA.logmel(wave)
  assert mel.shape == (80, AUDIO_JEPA.frames(1.0)) and mel.dtype == np.float32
  assert np.argmax(mel[:, 5:-5].mean(axis=1)) == band


@pytest.mark.parametrize("seconds", [0.5, 1.0, 2.1, 4.0])
def test_frames_formula(seconds):
  n = int(round(seconds * AUDIO_JEPA.sample_rate))
  assert AUDIO_JEPA.logmel(np.zeros(n, np.float32)).shape[1] == AUDIO_JEPA.frames(seconds)
  assert AUDIO_JEPA.frames(seconds) == 1 + n // 160


def test_silence_is_the_floor():
  assert AUDIO_JEPA.floor == pytest.approx(math.log(np.finfo(np.float32).eps))
  np.testing.assert_allclose(AUDIO_JEPA.logmel(np.zeros(4000, np.float32)), AUDIO_JEPA.floor,
                             atol=1e-6)


def test_to_dict_is_json_and_round_trips():
  d = json.loads(json.dumps(AUDIO_JEPA.to_dict()))
  assert FrontEnd(**d) == AUDIO_JEPA
  assert set(d) == {f.name for f in dataclasses.fields(FrontEnd)}


def test_unknown_frontend_lists_known_names():
  with pytest.raises(ValueError, match="audio_jepa"):
    get_frontend("nope")


def test_rejects_bad_waves():
  with pytest.raises(ValueError, match="mono"):
    AUDIO_JEPA.logmel(np.zeros((2, 1000), np.float32))
  with pytest.raises(ValueError, match="NaN"):
    AUDIO_JEPA.logmel(np.array([0.0, np.nan] * 500, np.float32))
