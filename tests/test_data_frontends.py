"""Log-mel front ends against first principles: the M2D recipe (audio_jepa), Kaldi fbank
as AudioMAE calls it (ajepa), torchaudio mel + dB with top_db (dasheng)."""
import dataclasses
import json
import math

import librosa
import numpy as np
import pytest

from data_pipelines import pipeline
from data_pipelines.frontends import (
  AJEPA,
  AUDIO_JEPA,
  DASHENG,
  FRONTENDS,
  DbMel,
  FrontEnd,
  KaldiFbank,
  LnMel,
  get_frontend,
)
from data_pipelines.shards import write_shards
from tests.frontend_signals import speech_like

EPS32 = float(np.finfo(np.float32).eps)
LN_EPS32 = math.log(EPS32)
ALL = [AUDIO_JEPA, AJEPA, DASHENG]


def _htk_mel(hz):
  return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _htk_hz(mel):
  return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


def _htk_edges_hz(fe: FrontEnd) -> np.ndarray:
  return _htk_hz(np.linspace(_htk_mel(fe.fmin), _htk_mel(fe.fmax), fe.n_mels + 2))


# Slaney's Auditory Toolbox mel scale: 3 mels per 200 Hz up to 1 kHz, then 27 mels per
# factor 6.4 of frequency.
_SLANEY_STEP, _SLANEY_KNEE = 200.0 / 3, 1000.0


def _slaney_mel(hz):
  hz = np.asarray(hz, np.float64)
  log_part = 15.0 + 27.0 * np.log(np.maximum(hz, _SLANEY_KNEE) / _SLANEY_KNEE) / np.log(6.4)
  return np.where(hz < _SLANEY_KNEE, hz / _SLANEY_STEP, log_part)


def _slaney_hz(mel):
  mel = np.asarray(mel, np.float64)
  return np.where(mel < 15.0, mel * _SLANEY_STEP,
                  _SLANEY_KNEE * np.exp((mel - 15.0) * np.log(6.4) / 27.0))


def _edges_hz(fe: FrontEnd) -> np.ndarray:
  """The n_mels + 2 band edges in Hz, equally spaced on the recipe's mel scale."""
  if fe.mel_scale == "htk":
    return _htk_edges_hz(fe)
  return _slaney_hz(np.linspace(_slaney_mel(fe.fmin), _slaney_mel(fe.fmax), fe.n_mels + 2))


def _direct_mel_power_frame(fe: FrontEnd, wave: np.ndarray, frame: int) -> np.ndarray:
  """One frame from the definition: reflect-padded centred periodic-Hann frame, |FFT|^2,
  triangles in Hz between edges equally spaced on the recipe's mel scale, of peak 1 or
  (mel_norm "slaney") of area 1 in Hz: scaled by 2 / (upper - lower edge)."""
  padded = np.pad(wave.astype(np.float64), fe.n_fft // 2, mode="reflect")
  n = np.arange(fe.win_length)
  window = 0.5 - 0.5 * np.cos(2 * np.pi * n / fe.win_length)  # periodic Hann
  segment = padded[frame * fe.hop_length:frame * fe.hop_length + fe.n_fft] * window
  power = np.abs(np.fft.rfft(segment)) ** 2
  bin_hz = np.arange(fe.n_fft // 2 + 1) * fe.sample_rate / fe.n_fft
  edges = _edges_hz(fe)
  lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  weights = np.maximum(0.0, np.minimum((bin_hz - lower) / (centre - lower),
                                       (upper - bin_hz) / (upper - centre)))
  if fe.mel_norm == "slaney":
    weights *= 2.0 / (upper - lower)
  return weights @ power


def _sine_plus_noise(seconds=0.5, seed=0):
  rng = np.random.default_rng(seed)
  n = int(seconds * 16000)
  t = np.arange(n) / 16000
  return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


# --- Kaldi, step by step from feature-window.cc and mel-computations.cc -------------------

def _kaldi_mel_scale(hz: float) -> float:
  return 1127.0 * math.log(1.0 + hz / 700.0)  # MelBanks::MelScale


def _kaldi_mel_banks(num_bins: int, padded_length: int, sample_freq: float, low_freq: float,
                     high_freq: float) -> np.ndarray:
  """MelBanks::MelBanks, bank by bank and FFT bin by FFT bin (bins 0 .. padded / 2 - 1;
  the Nyquist bin, which the power spectrum also has, gets no weight)."""
  num_fft_bins = padded_length // 2
  fft_bin_width = sample_freq / padded_length
  mel_low, mel_high = _kaldi_mel_scale(low_freq), _kaldi_mel_scale(high_freq)
  mel_delta = (mel_high - mel_low) / (num_bins + 1)
  banks = np.zeros((num_bins, num_fft_bins + 1))
  for b in range(num_bins):
    left = mel_low + b * mel_delta
    centre = mel_low + (b + 1) * mel_delta
    right = mel_low + (b + 2) * mel_delta
    for i in range(num_fft_bins):
      mel = _kaldi_mel_scale(fft_bin_width * i)
      if left < mel < right:
        if mel <= centre:
          banks[b, i] = (mel - left) / (centre - left)
        else:
          banks[b, i] = (right - mel) / (right - centre)
  return banks


def _kaldi_fbank_reference(wave: np.ndarray, num_bins=128, sample_freq=16000.0,
                           frame_length=400, frame_shift=160, preemph=0.97,
                           low_freq=20.0, high_freq=8000.0) -> np.ndarray:
  """AudioMAE: wave - wave.mean(), then kaldi fbank (dither 0, remove_dc_offset, povey
  replaced by hanning, round_to_power_of_two, snip_edges, use_power, use_log_fbank).
  Returns (num_bins, frames) like the project's convention."""
  wave = wave.astype(np.float64)
  wave = wave - wave.mean()
  num_frames = 1 + (len(wave) - frame_length) // frame_shift  # NumFrames, snip_edges
  padded_length = 1
  while padded_length < frame_length:  # RoundUpToNearestPowerOfTwo
    padded_length *= 2
  banks = _kaldi_mel_banks(num_bins, padded_length, sample_freq, low_freq, high_freq)
  hanning = np.array([0.5 - 0.5 * math.cos(2 * math.pi / (frame_length - 1) * i)
                      for i in range(frame_length)])
  out = np.empty((num_frames, num_bins))
  for f in range(num_frames):
    x = wave[f * frame_shift:f * frame_shift + frame_length].copy()  # ExtractWindow
    x -= x.mean()  # remove_dc_offset
    for i in range(frame_length - 1, 0, -1):  # Preemphasize
      x[i] -= preemph * x[i - 1]
    x[0] -= preemph * x[0]
    x *= hanning
    padded = np.zeros(padded_length)
    padded[:frame_length] = x
    power = np.abs(np.fft.fft(padded)[:padded_length // 2 + 1]) ** 2  # ComputePowerSpectrum
    out[f] = np.log(np.maximum(banks @ power, EPS32))  # log(max(energy, epsilon))
  return out.T


@pytest.mark.parametrize("signal", ["sine_noise", "speech", "speech_dc_offset", "quiet"])
def test_ajepa_matches_kaldi_step_by_step(signal):
  rng = np.random.default_rng(3)
  wave = {"sine_noise": _sine_plus_noise(0.3),
          "speech": speech_like(rng, 0.4, -6.0, gap_seconds=0.05),
          "speech_dc_offset": speech_like(rng, 0.4, -20.0, gap_seconds=0.05) + 0.25,
          "quiet": speech_like(rng, 0.4, -50.0, gap_seconds=0.05)}[signal]
  want = _kaldi_fbank_reference(wave)
  got = AJEPA.logmel(wave)
  assert got.shape == want.shape == (128, 1 + (len(wave) - 400) // 160)
  np.testing.assert_allclose(got, want, atol=1e-5)
  if signal == "quiet":  # some bins clamped at ln(eps), some not
    assert 0.05 < np.mean(got <= LN_EPS32 + 1e-6) < 0.95


def test_ajepa_filterbank_is_kaldis():
  np.testing.assert_allclose(AJEPA.filterbank,
                             _kaldi_mel_banks(128, 512, 16000.0, 20.0, 8000.0), atol=1e-12)
  assert AJEPA.filterbank.shape == (128, 257) and not AJEPA.filterbank[:, -1].any()


def test_ajepa_matches_torchaudio_when_installed():
  torch = pytest.importorskip("torch")
  kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
  wave = speech_like(np.random.default_rng(5), 1.0, -10.0)
  tensor = torch.from_numpy(wave - wave.mean())[None]
  want = kaldi.fbank(tensor, htk_compat=True, sample_frequency=16000, use_energy=False,
                     window_type="hanning", num_mel_bins=128, dither=0.0,
                     frame_shift=10).numpy().T
  got = AJEPA.logmel(wave)
  loud = want >= want.max() - 8 * math.log(10)  # float32 torch: compare audible bins
  np.testing.assert_allclose(got[loud], want[loud], atol=2e-3)


def test_ajepa_recipe_is_audiomae():
  assert (AJEPA.sample_rate, AJEPA.win_length, AJEPA.hop_length, AJEPA.n_fft) == (
      16000, 400, 160, 512)
  assert (AJEPA.n_mels, AJEPA.fmin, AJEPA.fmax, AJEPA.preemphasis) == (128, 20.0, 8000.0, 0.97)
  assert AJEPA.log_floor == EPS32
  # AudioMAE normalises (x - (-4.2677393)) / (4.5689974 * 2).
  x = np.float64(1.5)
  assert (x - AJEPA.norm_mean) / AJEPA.norm_std == pytest.approx(
      (x + 4.2677393) / (4.5689974 * 2), rel=1e-12)
  assert AJEPA.frames(10.0) == 998 and AJEPA.frames(10.24) == 1022


@pytest.mark.parametrize("samples,frames", [(400, 1), (559, 1), (560, 2), (16000, 98),
                                            (160000, 998)])
def test_kaldi_frame_count(samples, frames):
  assert AJEPA.num_frames(samples) == frames == 1 + (samples - 400) // 160
  assert AJEPA.logmel(np.full(samples, 0.1, np.float32)).shape == (128, frames)


def test_kaldi_needs_one_whole_frame():
  assert AJEPA.num_frames(399) == 0
  with pytest.raises(ValueError, match="at least 400 samples"):
    AJEPA.logmel(np.zeros(399, np.float32))


def _kaldi_bank_centre_hz(b: int) -> float:
  low, high = _kaldi_mel_scale(20.0), _kaldi_mel_scale(8000.0)
  return 700.0 * (math.exp((low + (b + 1) * (high - low) / 129) / 1127.0) - 1.0)


def test_kaldi_1khz_sine_peaks_in_the_banks_around_1khz():
  # mel(1000 Hz) = 1127 ln(1 + 1000/700) = 1000.0; bank centres are 31.75 + (b + 1) 21.77
  # mel apart, so 1 kHz lies between the centres of banks 43 (989.6) and 44 (1011.4).
  assert _kaldi_bank_centre_hz(43) < 1000.0 < _kaldi_bank_centre_hz(44)
  wave = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(8000) / 16000)
  profile = AJEPA.logmel(wave).mean(axis=1)
  assert set(np.argsort(profile)[-2:]) == {43, 44}


@pytest.mark.parametrize("bank", [10, 60, 110])
def test_kaldi_sine_at_a_bank_centre_peaks_in_that_bank(bank):
  wave = 0.5 * np.sin(2 * np.pi * _kaldi_bank_centre_hz(bank) * np.arange(8000) / 16000)
  assert np.argmax(AJEPA.logmel(wave).mean(axis=1)) == bank


def test_kaldi_silence_and_constant_offsets_are_ln_eps():
  for wave in (np.zeros(4000, np.float32), np.full(4000, 0.3, np.float32)):
    np.testing.assert_allclose(AJEPA.logmel(wave), LN_EPS32, atol=1e-6)
  assert AJEPA.floor == pytest.approx(LN_EPS32)


def test_kaldi_features_ignore_a_dc_offset():
  wave = speech_like(np.random.default_rng(1), 1.0, -12.0).astype(np.float64)
  np.testing.assert_allclose(AJEPA.logmel(wave + 0.2), AJEPA.logmel(wave), atol=1e-6)


# --- the centred recipes: audio_jepa (ln) and dasheng (dB) -----------------------------------

def test_audio_jepa_recipe_is_m2d():
  fe = get_frontend("audio_jepa")
  assert (fe.sample_rate, fe.n_fft, fe.win_length, fe.hop_length, fe.n_mels) == (
      16000, 400, 400, 160, 80)
  assert (fe.fmin, fe.fmax, fe.norm_mean, fe.norm_std) == (50.0, 8000.0, -7.06, 4.20)
  assert fe.log_eps == pytest.approx(1.1920929e-07, rel=1e-7)


def test_dasheng_recipe_is_dashengs():
  fe = get_frontend("dasheng")
  assert (fe.sample_rate, fe.n_fft, fe.win_length, fe.hop_length, fe.n_mels) == (
      16000, 512, 512, 160, 64)
  assert (fe.fmin, fe.fmax, fe.amin, fe.top_db) == (0.0, 8000.0, 1e-10, 120.0)
  assert fe.frames(10.0) == 1001 and fe.floor == -100.0


@pytest.mark.parametrize("frame", [0, 1, 37])  # 0 and 1 include the reflect padding
def test_audio_jepa_matches_direct_computation(frame):
  wave = _sine_plus_noise()
  want = np.log(_direct_mel_power_frame(AUDIO_JEPA, wave, frame) + AUDIO_JEPA.log_eps)
  np.testing.assert_allclose(AUDIO_JEPA.logmel(wave)[:, frame], want, atol=1e-4)


def test_audio_jepa_filterbank_is_m2ds_slaney_area_normalised():
  """M2D's wav_to_lms: nnAudio MelSpectrogram at its defaults htk=False, norm=1, which
  nnAudio builds as librosa's mel(htk=False, norm="slaney")."""
  fe = AUDIO_JEPA
  assert (fe.mel_scale, fe.mel_norm) == ("slaney", "slaney")
  want = librosa.filters.mel(sr=fe.sample_rate, n_fft=fe.n_fft, n_mels=fe.n_mels,
                             fmin=fe.fmin, fmax=fe.fmax, htk=False, norm="slaney",
                             dtype=np.float64)
  np.testing.assert_allclose(fe.filterbank, want, rtol=1e-12, atol=0)
  htk = librosa.filters.mel(sr=fe.sample_rate, n_fft=fe.n_fft, n_mels=fe.n_mels,
                            fmin=fe.fmin, fmax=fe.fmax, htk=True, norm=None, dtype=np.float64)
  assert not np.allclose(fe.filterbank, htk)


def test_dasheng_filterbank_is_unchanged_htk_of_peak_one():
  fe = DASHENG
  assert (fe.mel_scale, fe.mel_norm) == ("htk", None)
  want = librosa.filters.mel(sr=fe.sample_rate, n_fft=fe.n_fft, n_mels=fe.n_mels,
                             fmin=fe.fmin, fmax=fe.fmax, htk=True, norm=None, dtype=np.float64)
  np.testing.assert_allclose(fe.filterbank, want, rtol=1e-12, atol=0)


def test_audio_jepa_matches_nnaudio_when_installed():
  """M2D's own call: nnAudio.features.MelSpectrogram(sr, n_fft, win_length, hop_length,
  n_mels, fmin, fmax, center=True, power=2), then (x + eps).log()."""
  torch = pytest.importorskip("torch")
  nn_features = pytest.importorskip("nnAudio.features")
  fe = AUDIO_JEPA
  to_spec = nn_features.MelSpectrogram(
      sr=fe.sample_rate, n_fft=fe.n_fft, win_length=fe.win_length, hop_length=fe.hop_length,
      n_mels=fe.n_mels, fmin=fe.fmin, fmax=fe.fmax, center=True, power=2, verbose=False)
  wave = speech_like(np.random.default_rng(3), 1.0, -10.0)
  want = (to_spec(torch.tensor(wave, dtype=torch.float32))[0].double()
          + torch.finfo().eps).log().numpy()
  np.testing.assert_allclose(fe.logmel(wave), want, atol=1e-4)


def test_records_written_before_the_mel_fields_are_the_old_htk_recipes():
  """Shard metadata and exports written before mel_scale / mel_norm were recorded were
  computed with HTK triangles of peak 1: `recorded` rebuilds exactly that recipe,
  `from_dict` refuses the record (shards: rebuild them)."""
  for fe in (AUDIO_JEPA, DASHENG):
    old = {k: v for k, v in fe.to_dict().items() if k not in ("mel_scale", "mel_norm")}
    then = FrontEnd.recorded(json.loads(json.dumps(old)))
    assert then == dataclasses.replace(fe, mel_scale="htk", mel_norm=None)
    with pytest.raises(ValueError, match=r"lacks \['mel_norm', 'mel_scale'\].*rebuild the shards"):
      FrontEnd.from_dict(old)
  assert FrontEnd.recorded(
      {k: v for k, v in DASHENG.to_dict().items() if k != "mel_norm"}) == DASHENG
  assert FrontEnd.recorded(AJEPA.to_dict()) == AJEPA  # nothing added to other kinds
  with pytest.raises(ValueError, match="mel_scale must be one of"):
    dataclasses.replace(AUDIO_JEPA, mel_scale="kaldi")


@pytest.mark.parametrize("frame", [0, 1, 37])
def test_dasheng_matches_direct_computation(frame):
  wave = _sine_plus_noise()
  got = DASHENG.logmel(wave)
  want = 10 * np.log10(np.maximum(_direct_mel_power_frame(DASHENG, wave, frame), 1e-10))
  want = np.maximum(want, got.max() - 120.0)
  np.testing.assert_allclose(got[:, frame], want, atol=1e-4)


@pytest.mark.parametrize("peak_dbfs", [0.0, -40.0, -110.0])
def test_dasheng_matches_librosa_power_to_db(peak_dbfs):
  wave = speech_like(np.random.default_rng(2), 1.0, peak_dbfs)
  power = librosa.feature.melspectrogram(
      y=wave.astype(np.float64), sr=16000, n_fft=512, hop_length=160, win_length=512,
      window="hann", center=True, pad_mode="reflect", power=2.0, n_mels=64, fmin=0.0,
      fmax=8000.0, htk=True, norm=None)
  want = librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=120.0)
  np.testing.assert_allclose(DASHENG.logmel(wave), want, atol=2e-4)


def test_dasheng_top_db_clamp_is_relative_to_the_clip_max():
  rng = np.random.default_rng(4)
  loud = DASHENG.logmel(speech_like(rng, 1.0, 0.0))  # max ~ 40 dB: top_db binds
  assert loud.max() > 20.0
  assert loud.min() == pytest.approx(loud.max() - 120.0, abs=1e-4)
  quiet = DASHENG.logmel(speech_like(rng, 1.0, -40.0))  # max < 20 dB: amin floor binds
  assert quiet.max() < 20.0 and quiet.min() == pytest.approx(-100.0)


@pytest.mark.parametrize("fe", [AUDIO_JEPA, DASHENG], ids=lambda f: f.name)
@pytest.mark.parametrize("band", [20, 45, 62])
def test_sine_peaks_in_the_mel_band_centred_on_its_frequency(fe, band):
  freq = _edges_hz(fe)[1:-1][band]
  wave = 0.5 * np.sin(2 * np.pi * freq * np.arange(16000) / 16000)
  mel = fe.logmel(wave)
  assert mel.shape == (fe.n_mels, fe.frames(1.0)) and mel.dtype == np.float32
  assert np.argmax(mel[:, 5:-5].mean(axis=1)) == band


@pytest.mark.parametrize("fe", [AUDIO_JEPA, DASHENG], ids=lambda f: f.name)
@pytest.mark.parametrize("seconds", [0.5, 1.0, 2.1, 4.0])
def test_centred_frames_formula(fe, seconds):
  n = int(round(seconds * fe.sample_rate))
  assert fe.logmel(np.zeros(n, np.float32)).shape[1] == fe.frames(seconds) == 1 + n // 160


def test_audio_jepa_silence_is_the_floor():
  assert AUDIO_JEPA.floor == pytest.approx(LN_EPS32)
  np.testing.assert_allclose(AUDIO_JEPA.logmel(np.zeros(4000, np.float32)), AUDIO_JEPA.floor,
                             atol=1e-6)


# --- the interface the pipeline uses: pad_value and apply_gain_db ------------------------------

def _silent_frames(fe: FrontEnd, start: int, stop: int) -> slice:
  """Frames whose samples all lie in [start, stop)."""
  if isinstance(fe, KaldiFbank):
    return slice(math.ceil(start / fe.hop_length), (stop - fe.win_length) // fe.hop_length + 1)
  half = fe.n_fft // 2
  return slice(math.ceil((start + half) / fe.hop_length), (stop - half) // fe.hop_length + 1)


@pytest.mark.parametrize("peak_dbfs", [0.0, -50.0])
@pytest.mark.parametrize("fe", ALL, ids=lambda f: f.name)
def test_pad_value_is_digital_silence_appended_to_the_clip(fe, peak_dbfs):
  wave = speech_like(np.random.default_rng(6), 1.0, peak_dbfs, gap_seconds=0.05)
  mel = fe.logmel(wave)
  longer = fe.logmel(np.concatenate([wave, np.zeros(8000, np.float32)]))
  silent = longer[:, _silent_frames(fe, len(wave), len(wave) + 8000)]
  assert silent.shape[1] > 30
  np.testing.assert_allclose(silent, fe.pad_value(mel), atol=1e-5)
  if isinstance(fe, DbMel) and peak_dbfs == 0.0:  # silence tracks the clip's max
    assert fe.pad_value(mel) == pytest.approx(mel.max() - 120.0) and fe.pad_value(mel) > -100


def _gain_check_mask(fe: FrontEnd, mel: np.ndarray) -> np.ndarray:
  """Bins whose power is known from the features: all of them for ln(P + eps), those above
  the floor for the clamped logs (bins at the floor are checked as digital silence)."""
  if isinstance(fe, LnMel):
    return np.ones(mel.shape, bool)
  return ~fe.at_floor(mel)


@pytest.mark.parametrize("gain_db", [-6.0, -1.5, 4.5, 6.0])
@pytest.mark.parametrize("peak_dbfs", [-1.0, -40.0])
@pytest.mark.parametrize("fe", ALL, ids=lambda f: f.name)
def test_gain_in_the_feature_domain_is_exactly_a_gain_on_the_waveform(fe, peak_dbfs, gain_db):
  wave = speech_like(np.random.default_rng(7), 1.0, peak_dbfs)
  mel = fe.logmel(wave)
  got = fe.apply_gain_db(mel, gain_db)
  want = fe.logmel(wave.astype(np.float64) * 10 ** (gain_db / 20))
  assert got.dtype == np.float32 and got.shape == mel.shape
  check = _gain_check_mask(fe, mel)
  assert check.mean() > 0.1
  atol = 2e-4 if isinstance(fe, DbMel) else 2e-5  # float32 features; dB values are ~10x ln
  np.testing.assert_allclose(got[check], want[check], atol=atol)
  # The gap of digital silence inside the clip (frames wholly in it) stays silence.
  start = int(np.flatnonzero(wave == 0)[0])
  gap = _silent_frames(fe, start, start + int(0.3 * 16000) - 1)
  np.testing.assert_allclose(got[:, gap], want[:, gap], atol=atol)


@pytest.mark.parametrize("gain_db", [-6.0, -30.0])
def test_dasheng_gain_moves_the_top_db_clamp_down_to_the_amin_floor(gain_db):
  wave = np.sin(2 * np.pi * 1000.0 * np.arange(16000) / 16000)  # full scale: max ~ 42 dB
  wave[4000:8000] = 0.0
  mel = DASHENG.logmel(wave)
  clamped = mel <= mel.max() - 120.0 + 1e-4
  assert mel.max() > 40.0 and clamped.mean() > 0.2
  got = DASHENG.apply_gain_db(mel, gain_db)
  # Louder than 20 dB the clip stays clamped at max - 120; below, the amin floor binds.
  np.testing.assert_allclose(got[clamped], max(-100.0, mel.max() + gain_db - 120.0), atol=1e-4)
  np.testing.assert_allclose(got, DASHENG.logmel(wave * 10 ** (gain_db / 20)), atol=2e-4)


@pytest.mark.parametrize("fe", [AJEPA, DASHENG], ids=lambda f: f.name)
def test_gain_keeps_float16_stored_silence_at_the_floor(fe):
  wave = speech_like(np.random.default_rng(9), 1.0, -60.0)
  stored = fe.logmel(wave).astype(np.float16)  # as the shards keep it
  at_floor = fe.logmel(wave) <= fe.floor + 1e-6
  assert at_floor.any()
  louder = fe.apply_gain_db(stored, 3.0)
  np.testing.assert_array_equal(louder[at_floor], np.float32(fe.floor))


@pytest.mark.parametrize("fe", [AJEPA, DASHENG], ids=lambda f: f.name)
def test_pipeline_pads_with_the_recipe_silence_and_jitters_gain(fe, tmp_path):
  rng = np.random.default_rng(11)
  clips = {i: fe.logmel(speech_like(rng, 0.5, -3.0 - 20 * i, gap_seconds=0.05))
           for i in range(3)}
  write_shards(tmp_path / "s", [(i, m.astype(np.float16), {}) for i, m in clips.items()], fe,
               source="test", label_maps={})
  frames = max(m.shape[1] for m in clips.values()) + 10  # every clip gets padded
  for gain in (0.0, 6.0):
    ds = pipeline.train_dataset(tmp_path / "s", frames=frames, global_batch_size=3, seed=0,
                                normalization="recipe", gain_jitter_db=gain,
                                expected_frontend=fe.name)
    batch = next(iter(ds))
    for mel, example_id in zip(batch["mel"], batch["id"]):
      mel = mel * fe.norm_std + fe.norm_mean
      stored = clips[int(example_id)].astype(np.float16).astype(np.float32)
      length = stored.shape[1]
      if gain == 0.0:
        np.testing.assert_allclose(mel[:, :length], stored, atol=1e-4)
        np.testing.assert_allclose(mel[:, length:], fe.pad_value(stored), atol=1e-4)
      else:  # the padding moves with the gain exactly as silence appended to the clip would
        top = np.unravel_index(np.argmax(stored), stored.shape)
        gain_db = (mel[top] - stored[top]) * (10 / math.log(10) if fe is AJEPA else 1.0)
        assert abs(gain_db) <= 6.0 + 1e-3
        padded = np.pad(stored, ((0, 0), (0, frames - length)),
                        constant_values=fe.pad_value(stored))
        np.testing.assert_allclose(mel, fe.apply_gain_db(padded, gain_db), atol=1e-3)


# --- metadata, registry, bad input ---------------------------------------------------------------

@pytest.mark.parametrize("fe", ALL, ids=lambda f: f.name)
def test_to_dict_is_json_and_round_trips(fe):
  d = json.loads(json.dumps(fe.to_dict()))
  assert FrontEnd.from_dict(d) == fe and type(FrontEnd.from_dict(d)) is type(fe)
  assert set(d) == {"kind"} | {f.name for f in dataclasses.fields(fe)}
  assert d["kind"] == {"audio_jepa": "ln_mel", "ajepa": "kaldi_fbank", "dasheng": "db_mel"}[
      fe.name]


def test_from_dict_rejects_other_versions():
  old = {k: v for k, v in AUDIO_JEPA.to_dict().items() if k != "kind"}
  with pytest.raises(ValueError, match="kind None; known kinds: db_mel, kaldi_fbank, ln_mel"):
    FrontEnd.from_dict(old)
  with pytest.raises(ValueError, match=r"lacks \['top_db'\]"):
    FrontEnd.from_dict({k: v for k, v in DASHENG.to_dict().items() if k != "top_db"})


def test_registry_and_unknown_name_lists_known_names():
  assert sorted(FRONTENDS) == ["ajepa", "audio_jepa", "dasheng"]
  assert all(get_frontend(name).name == name for name in FRONTENDS)
  with pytest.raises(ValueError, match="known: ajepa, audio_jepa, dasheng"):
    get_frontend("nope")


def test_bad_recipes_are_refused():
  with pytest.raises(TypeError, match="abstract"):
    FrontEnd(**{k: v for k, v in AUDIO_JEPA.to_dict().items() if k not in ("kind", "log_eps")})
  with pytest.raises(ValueError, match="fmax <= sample_rate / 2"):
    dataclasses.replace(DASHENG, fmax=9000.0)
  with pytest.raises(ValueError, match="next power of two, 512"):
    dataclasses.replace(AJEPA, n_fft=400)


@pytest.mark.parametrize("fe", ALL, ids=lambda f: f.name)
def test_rejects_bad_waves(fe):
  with pytest.raises(ValueError, match="mono"):
    fe.logmel(np.zeros((2, 1000), np.float32))
  with pytest.raises(ValueError, match="mono"):
    fe.logmel(np.zeros(0, np.float32))
  with pytest.raises(ValueError, match="NaN"):
    fe.logmel(np.array([0.0, np.nan] * 500, np.float32))
  with pytest.raises(ValueError, match="float samples"):
    fe.logmel(np.zeros(1000, np.complex64))
  with pytest.raises(ValueError, match="int16: divide by 32768"):
    fe.logmel(np.zeros(1000, np.int16))
