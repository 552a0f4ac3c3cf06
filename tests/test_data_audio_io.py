"""Audio decoding: round trips, downmix, resampling, and errors that name the file."""
import numpy as np
import pytest
import soundfile as sf

from data_pipelines.audio_io import AudioError, load_audio, write_wav


def _sine(freq, seconds, rate, amplitude=0.5):
  return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(
      np.float32)


def test_wav_round_trip_is_16_bit(tmp_path):
  wave = _sine(440, 0.5, 16000)
  write_wav(tmp_path / "a.wav", wave, 16000)
  assert sf.info(tmp_path / "a.wav").subtype == "PCM_16"
  loaded = load_audio(tmp_path / "a.wav", 16000)
  assert loaded.dtype == np.float32 and loaded.shape == wave.shape
  np.testing.assert_allclose(loaded, wave, atol=1 / 32768)


def test_downmix_and_resample(tmp_path):
  left, right = _sine(1000, 1.0, 8000, 0.6), _sine(1000, 1.0, 8000, 0.2)
  sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 8000, subtype="FLOAT")
  wave = load_audio(tmp_path / "stereo.wav", 16000)
  assert wave.shape == (16000,)
  spectrum = np.abs(np.fft.rfft(wave))
  assert np.argmax(spectrum) == 1000  # 1 Hz bins: the tone kept its frequency
  rms = np.sqrt(np.mean(wave[1000:-1000].astype(np.float64) ** 2))
  assert rms == pytest.approx(0.4 / np.sqrt(2), rel=1e-2)  # the mean of the channels


def test_errors_name_the_file(tmp_path):
  with pytest.raises(AudioError, match="missing.wav: no such file"):
    load_audio(tmp_path / "missing.wav", 16000)
  (tmp_path / "junk.wav").write_bytes(b"RIFF0000WAVEjunk")
  with pytest.raises(AudioError, match="junk.wav: unreadable"):
    load_audio(tmp_path / "junk.wav", 16000)
  sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
  with pytest.raises(AudioError, match="empty.wav: no samples"):
    load_audio(tmp_path / "empty.wav", 16000)
  sf.write(tmp_path / "nan.wav", np.array([0.0, np.nan, 0.1], np.float32), 16000,
           subtype="FLOAT")
  with pytest.raises(AudioError, match="nan.wav: contains NaN"):
    load_audio(tmp_path / "nan.wav", 16000)


def test_write_wav_rejects_bad_waves(tmp_path):
  with pytest.raises(ValueError, match="mono"):
    write_wav(tmp_path / "a.wav", np.zeros((2, 10)), 16000)
  with pytest.raises(ValueError, match="NaN"):
    write_wav(tmp_path / "a.wav", np.array([np.nan]), 16000)
