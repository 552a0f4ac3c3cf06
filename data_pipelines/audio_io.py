"""Reading and writing audio files: float32 mono waveforms in [-1, 1]."""
from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import soundfile as sf


class AudioError(ValueError):
  """A file that cannot be used as audio; says which file and why."""

  def __init__(self, path: str | Path, reason: str):
    self.path = Path(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
  """Decodes `path` to float32 mono at `sample_rate`: channels averaged, soxr resampling."""
  path = Path(path)
  if not path.is_file():
    raise AudioError(path, "no such file")
  try:
    wave, file_rate = sf.read(path, dtype="float32", always_2d=True)
  except sf.SoundFileError as e:
    raise AudioError(path, f"unreadable or corrupt audio ({e})") from e
  if wave.shape[0] == 0:
    raise AudioError(path, "no samples")
  if not np.all(np.isfinite(wave)):
    raise AudioError(path, "contains NaN or inf samples")
  wave = wave.mean(axis=1)
  if file_rate != sample_rate:
    wave = librosa.resample(wave, orig_sr=file_rate, target_sr=sample_rate, res_type="soxr_hq")
  # Float files and resampling ringing can step slightly outside the integer formats' range.
  return np.clip(wave, -1.0, 1.0).astype(np.float32)


def write_wav(path: str | Path, wave: np.ndarray, sample_rate: int) -> None:
  """Writes a mono waveform as 16-bit PCM WAV (soundfile clips it to [-1, 1])."""
  wave = np.asarray(wave)
  if wave.ndim != 1:
    raise ValueError(f"{path}: write_wav takes a mono 1-D waveform, got shape {wave.shape}.")
  if not np.all(np.isfinite(wave)):
    raise ValueError(f"{path}: waveform contains NaN or inf samples.")
  sf.write(path, wave, sample_rate, subtype="PCM_16", format="WAV")
