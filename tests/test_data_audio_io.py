"""Audio decoding: round trips, downmix, resampling, splitting, silence, and one clear
reason for every kind of unusable file."""
import os

import numpy as np
import pytest
import soundfile as sf

from data_pipelines import audio_io
from data_pipelines.audio_io import AudioError, AudioReader, load_audio, segment_bounds, write_wav
from tests.audio_faults import deny_opening


def _sine(freq, seconds, rate, amplitude=0.5):
  return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(
      np.float32)


def _reason(path, rate=16000):
  with pytest.raises(AudioError) as info:
    load_audio(path, rate)
  assert info.value.path == path and str(info.value).startswith(f"{path}: ")
  return info.value.reason


def test_wav_round_trip_is_16_bit(tmp_path):
  wave = _sine(440, 0.5, 16000)
  write_wav(tmp_path / "a.wav", wave, 16000)
  assert sf.info(tmp_path / "a.wav").subtype == "PCM_16"
  loaded = load_audio(tmp_path / "a.wav", 16000)
  assert loaded.dtype == np.float32 and loaded.shape == wave.shape
  np.testing.assert_allclose(loaded, wave, atol=1 / 32768)


def test_16_bit_files_decode_exactly_as_libsndfile_converts_them(tmp_path):
  pcm = np.random.default_rng(0).integers(-32768, 32767, (4000, 2), dtype=np.int16)
  sf.write(tmp_path / "s.wav", pcm, 16000, subtype="PCM_16")
  sf.write(tmp_path / "m.flac", pcm[:, 0], 16000, subtype="PCM_16")
  by_libsndfile = sf.read(tmp_path / "s.wav", dtype="float32")[0]
  np.testing.assert_array_equal(load_audio(tmp_path / "s.wav", 16000),
                                by_libsndfile.mean(axis=1, dtype=np.float32))
  np.testing.assert_array_equal(load_audio(tmp_path / "m.flac", 16000), by_libsndfile[:, 0])
  np.testing.assert_array_equal(load_audio(tmp_path / "m.flac", 16000), pcm[:, 0] / 32768)


def test_downmix_and_resample(tmp_path):
  left, right = _sine(1000, 1.0, 8000, 0.6), _sine(1000, 1.0, 8000, 0.2)
  sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 8000, subtype="FLOAT")
  wave = load_audio(tmp_path / "stereo.wav", 16000)
  assert wave.shape == (16000,)
  spectrum = np.abs(np.fft.rfft(wave))
  assert np.argmax(spectrum) == 1000  # 1 Hz bins: the tone kept its frequency
  rms = np.sqrt(np.mean(wave[1000:-1000].astype(np.float64) ** 2))
  assert rms == pytest.approx(0.4 / np.sqrt(2), rel=1e-2)  # the mean of the channels
  with AudioReader(tmp_path / "stereo.wav", 16000) as reader:
    assert reader.warnings == ["2 channels: downmixed to mono",
                               "sample rate 8000 Hz: resampled to 16000 Hz"]


def test_compressed_formats_decode(tmp_path):
  """The libsndfile here reads FLAC, Ogg Vorbis, Opus and MP3, each close to the source."""
  wave = _sine(440, 1.0, 48000, 0.3)
  for name, format_, subtype in [("a.flac", "FLAC", "PCM_16"), ("a.ogg", "OGG", "VORBIS"),
                                 ("a.opus", "OGG", "OPUS"), ("a.mp3", "MP3", "MPEG_LAYER_III")]:
    sf.write(tmp_path / name, wave, 48000, format=format_, subtype=subtype)
    loaded = load_audio(tmp_path / name, 16000)
    assert abs(len(loaded) - 16000) <= 1152, name  # codecs may pad a frame
    rms = np.sqrt(np.mean(loaded[2000:14000].astype(np.float64) ** 2))
    assert rms == pytest.approx(0.3 / np.sqrt(2), rel=0.05), name


def test_segments_split_long_files_evenly(tmp_path):
  assert segment_bounds(400_000, 16000, 10) == [(0, 133333), (133333, 266667), (266667, 400000)]
  assert segment_bounds(160_000, 16000, 10) == [(0, 160_000)]  # exactly max: one segment
  assert segment_bounds(160_001, 16000, 10) == [(0, 80000), (80000, 160_001)]
  assert segment_bounds(400_000, 16000, None) == [(0, 400_000)]
  wave = np.random.default_rng(0).uniform(-0.5, 0.5, 25 * 16000).astype(np.float32)
  sf.write(tmp_path / "long.wav", wave, 16000, subtype="FLOAT")
  with AudioReader(tmp_path / "long.wav", 16000, max_seconds=10) as reader:
    segments = list(reader.segments())
    assert reader.warnings == ["25.0 s long: split into 3 segments of at most 10 s"]
  assert [len(s) for s in segments] == [133333, 133334, 133333]
  np.testing.assert_array_equal(np.concatenate(segments), wave)


def test_silence_is_below_minus_90_dbfs(tmp_path):
  one_lsb, two_lsb = 1 / 32768, 2 / 32768  # -90.3 and -84.3 dBFS
  sf.write(tmp_path / "quiet.wav", np.tile([one_lsb, -one_lsb, 0.0], 3000), 16000,
           subtype="PCM_16")
  sf.write(tmp_path / "audible.wav", np.tile([two_lsb, 0.0], 3000), 16000, subtype="PCM_16")
  for name, silent in [("quiet.wav", True), ("audible.wav", False)]:
    with AudioReader(tmp_path / name, 16000) as reader:
      list(reader.segments())
      assert reader.silent is silent, name


def test_decoded_samples_from_elsewhere():
  pcm = np.array([[16384, -32768], [0, 8192]], np.int16)
  with AudioReader("tfds/3", 16000, samples=pcm, samples_rate=16000) as reader:
    (wave,) = reader.segments()
    assert reader.warnings == ["2 channels: downmixed to mono"]
  np.testing.assert_array_equal(wave, [(0.5 - 1.0) / 2, 0.125])
  with pytest.raises(AudioError, match="tfds/4: not a waveform"):
    AudioReader("tfds/4", 16000, samples=np.zeros((2, 2, 2)), samples_rate=16000)
  with pytest.raises(AudioError, match="tfds/5: no usable sample rate"):
    AudioReader("tfds/5", 16000, samples=np.zeros(10), samples_rate=0)


def test_every_unusable_kind_has_its_reason(tmp_path):
  assert _reason(tmp_path / "missing.wav") == "no such file"
  os.symlink("nowhere.wav", tmp_path / "link.wav")
  assert _reason(tmp_path / "link.wav") == (
      "broken symbolic link (its target nowhere.wav does not exist)")
  (tmp_path / "folder.wav").mkdir()
  assert _reason(tmp_path / "folder.wav") == "not a regular file"
  (tmp_path / "empty.wav").write_bytes(b"")
  assert _reason(tmp_path / "empty.wav") == "empty file (0 bytes)"
  sf.write(tmp_path / "zero.wav", np.zeros(0, np.float32), 16000)
  assert _reason(tmp_path / "zero.wav").startswith("no audio frames")
  (tmp_path / "text.wav").write_text("filename,label\na.wav,dog\n")
  assert _reason(tmp_path / "text.wav") == "not an audio file (the content looks like text)"
  for name in ("photo.flac", "photo.mp3"):  # libsndfile's own words differ by extension
    (tmp_path / name).write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(300))
    assert _reason(tmp_path / name) == "not an audio file (the content looks like a JPEG image)"
  (tmp_path / "noise.wav").write_bytes(bytes(range(256)) * 4)
  assert _reason(tmp_path / "noise.wav") == (
      "not an audio file (libsndfile does not recognise the format)")
  (tmp_path / "junk.wav").write_bytes(b"RIFF0000WAVEjunk")
  assert _reason(tmp_path / "junk.wav").startswith("corrupt audio (libsndfile: ")
  sf.write(tmp_path / "nan.wav", np.array([0.0, np.nan, 0.1], np.float32), 16000,
           subtype="FLOAT")
  assert _reason(tmp_path / "nan.wav") == "contains NaN or inf samples"
  sf.write(tmp_path / "inf.wav", np.array([0.0, np.inf, 0.1], np.float32), 16000,
           subtype="FLOAT")
  assert _reason(tmp_path / "inf.wav") == "contains NaN or inf samples"


def test_truncated_and_corrupt_files(tmp_path):
  wave = _sine(440, 2.0, 16000, 0.3)
  for name in ("a.wav", "a.aiff", "a.flac", "a.mp3", "a.ogg"):
    sf.write(tmp_path / name, wave, 16000)
    data = (tmp_path / name).read_bytes()
    (tmp_path / f"cut-{name}").write_bytes(data[:len(data) // 2])
  # libsndfile reads a cut WAV or AIFF without complaint, as a shorter file; the header
  # still says how much data there should be: 64,000 bytes, of which the cut file holds
  # its length less the 44-byte WAV header (the AIFF header is 54 bytes here, with 8 more
  # for the SSND offset fields).
  cut_wav = len((tmp_path / "cut-a.wav").read_bytes())
  assert _reason(tmp_path / "cut-a.wav") == (
      f"truncated (the header promises 64000 bytes of audio data, the file holds "
      f"{cut_wav - 44})")
  assert _reason(tmp_path / "cut-a.aiff").startswith(
      "truncated (the header promises 64008 bytes of audio data")
  assert _reason(tmp_path / "cut-a.flac") == (
      "corrupt or truncated audio (libsndfile: flac decoder lost sync)")
  assert _reason(tmp_path / "cut-a.mp3").startswith(
      "truncated (the header promises 32000 samples, only ")
  assert _reason(tmp_path / "cut-a.ogg").startswith("corrupt audio (libsndfile: ")
  flac = bytearray((tmp_path / "a.flac").read_bytes())
  flac[len(flac) // 2:len(flac) // 2 + 500] = bytes(range(250)) * 2
  (tmp_path / "corrupt.flac").write_bytes(bytes(flac))
  assert _reason(tmp_path / "corrupt.flac").startswith("corrupt or truncated audio")


def test_unreadable_file(tmp_path, monkeypatch):
  write_wav(tmp_path / "locked.wav", _sine(440, 0.5, 16000), 16000)
  if os.geteuid() != 0:  # root reads any file: there only the simulated case below runs
    os.chmod(tmp_path / "locked.wav", 0)
    assert _reason(tmp_path / "locked.wav") == "unreadable (permission denied)"
    os.chmod(tmp_path / "locked.wav", 0o644)
  deny_opening(monkeypatch, "locked.wav")
  assert _reason(tmp_path / "locked.wav") == "unreadable (permission denied)"


def test_m4a_without_ffmpeg_names_the_missing_decoder(tmp_path, monkeypatch):
  (tmp_path / "a.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(100))
  monkeypatch.setattr(audio_io.shutil, "which", lambda name: None)
  assert _reason(tmp_path / "a.m4a") == (
      "cannot decode .m4a files: libsndfile does not read them and ffmpeg is not installed "
      "(install ffmpeg, e.g. apt-get install ffmpeg, to include them)")


def test_write_wav_rejects_bad_waves(tmp_path):
  with pytest.raises(ValueError, match="mono"):
    write_wav(tmp_path / "a.wav", np.zeros((2, 10)), 16000)
  with pytest.raises(ValueError, match="NaN"):
    write_wav(tmp_path / "a.wav", np.array([np.nan]), 16000)
