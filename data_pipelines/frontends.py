"""Log-mel front ends: waveform -> (n_mels, frames) features, one recipe per paper.

A `FrontEnd` is the whole recipe, written into every shard's metadata so a model trained
on one front end can refuse shards made with another.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import librosa
import numpy as np
import scipy.sparse


@dataclasses.dataclass(frozen=True)
class FrontEnd:
  """A log-mel recipe: centred Hann STFT -> power -> HTK mel (no filter norm) -> ln."""

  name: str
  sample_rate: int
  n_fft: int
  win_length: int
  hop_length: int
  n_mels: int
  fmin: float
  fmax: float
  log_eps: float  # feature = ln(mel_power + log_eps)
  norm_mean: float  # the recipe's scalar normalisation constants
  norm_std: float

  @functools.cached_property
  def _mel_filterbank(self) -> scipy.sparse.csr_array:
    # htk=True, norm=None is torchaudio's MelSpectrogram default, which M2D uses.
    # Sparse: each FFT bin feeds at most two triangles, so the product is a few % of
    # the dense work and never starts BLAS threads (3x slower in busy worker pools).
    return scipy.sparse.csr_array(librosa.filters.mel(
        sr=self.sample_rate, n_fft=self.n_fft, n_mels=self.n_mels, fmin=self.fmin,
        fmax=self.fmax, htk=True, norm=None, dtype=np.float64))

  def logmel(self, wave: np.ndarray) -> np.ndarray:
    """Mono float 1-D waveform at `sample_rate` -> (n_mels, frames) float32."""
    wave = np.asarray(wave)
    if wave.ndim != 1 or wave.size == 0:
      raise ValueError(
          f"{self.name} front end expects a non-empty mono 1-D waveform, got shape "
          f"{wave.shape}; downmix and flatten it first (audio_io.load_audio does).")
    if not np.all(np.isfinite(wave)):
      raise ValueError(f"{self.name} front end got NaN or inf samples.")
    # float64 costs nothing here and keeps quiet bins exact down to log_eps.
    spec = librosa.stft(
        wave.astype(np.float64), n_fft=self.n_fft, hop_length=self.hop_length,
        win_length=self.win_length, window="hann", center=True, pad_mode="reflect")
    power = spec.real**2 + spec.imag**2
    return np.log(self._mel_filterbank @ power + self.log_eps).astype(np.float32)

  @property
  def floor(self) -> float:
    """Feature value of digital silence: ln(log_eps)."""
    return math.log(self.log_eps)

  def frames(self, seconds: float) -> int:
    """Frames `logmel` gives for a clip of that many seconds (centred STFT)."""
    return 1 + int(round(seconds * self.sample_rate)) // self.hop_length

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


# M2D's settings, which Audio-JEPA uses (SPEC section 1). eps is float32 machine epsilon,
# as torch.finfo().eps in M2D's `(lms + eps).log()`.
AUDIO_JEPA = FrontEnd(
    name="audio_jepa", sample_rate=16000, n_fft=400, win_length=400, hop_length=160,
    n_mels=80, fmin=50.0, fmax=8000.0, log_eps=float(np.finfo(np.float32).eps),
    norm_mean=-7.06, norm_std=4.20)

FRONTENDS: dict[str, FrontEnd] = {f.name: f for f in (AUDIO_JEPA,)}


def get_frontend(name: str) -> FrontEnd:
  try:
    return FRONTENDS[name]
  except KeyError:
    raise ValueError(
        f"Unknown front end {name!r}; known: {', '.join(sorted(FRONTENDS))}.") from None
