"""The two fixed baseline features of a clip (16 kHz mono):

  log-mel: centred periodic-Hann STFT (n_fft 400, hop 160, zero padded by 200 at both
    ends), power spectrum, 80 Slaney mels 50-8000 Hz (area-normalised, librosa's default
    and the audio_jepa front end's), ln(mel + 1e-6); mean and std over time (160 values);
  MFCC: the first 20 coefficients of the orthonormal DCT-II of that log-mel, with deltas
    and delta-deltas (regression over +-2 frames, edge frames repeated, as HTK and Kaldi);
    mean and std over time (120 values).
"""
from __future__ import annotations

import functools

import librosa
import numpy as np
import scipy.fft

SAMPLE_RATE, N_FFT, HOP, N_MELS, FMIN, FMAX = 16000, 400, 160, 80, 50.0, 8000.0
LOG_OFFSET = 1e-6
N_MFCC = 20
DELTA_WIDTH = 2


@functools.cache
def mel_filterbank() -> np.ndarray:
  """(80, 201) Slaney-scale, area-normalised triangles on the power spectrum."""
  return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN,
                             fmax=FMAX, htk=False, norm="slaney", dtype=np.float64)


def power_spectrogram(wave: np.ndarray) -> np.ndarray:
  """(201, frames) |STFT|^2; frames = 1 + len(wave) // 160."""
  x = np.pad(np.asarray(wave, np.float64), N_FFT // 2)
  window = np.hanning(N_FFT + 1)[:-1]  # periodic Hann
  frames = 1 + (len(x) - N_FFT) // HOP
  idx = np.arange(N_FFT)[None, :] + HOP * np.arange(frames)[:, None]
  return (np.abs(np.fft.rfft(x[idx] * window, axis=1)) ** 2).T


def log_mel(wave: np.ndarray) -> np.ndarray:
  """(80, frames) ln(mel power + 1e-6)."""
  return np.log(mel_filterbank() @ power_spectrogram(wave) + LOG_OFFSET)


def deltas(x: np.ndarray, width: int = DELTA_WIDTH) -> np.ndarray:
  """(..., frames) -> sum_n n (x[t+n] - x[t-n]) / (2 sum_n n^2), n = 1..width, with the
  first and last frames repeated beyond the ends."""
  padded = np.concatenate([np.repeat(x[..., :1], width, -1), x,
                           np.repeat(x[..., -1:], width, -1)], -1)
  t = x.shape[-1]
  num = sum(n * (padded[..., width + n:width + n + t] - padded[..., width - n:width - n + t])
            for n in range(1, width + 1))
  return num / (2 * sum(n * n for n in range(1, width + 1)))


def mfcc(logmel: np.ndarray) -> np.ndarray:
  """(20, frames) orthonormal DCT-II over the mel axis, first 20 coefficients."""
  return scipy.fft.dct(logmel, type=2, norm="ortho", axis=0)[:N_MFCC]


def mean_std(x: np.ndarray) -> np.ndarray:
  """(d, frames) -> (2d,) the mean then the (population) std over time."""
  return np.concatenate([x.mean(axis=1), x.std(axis=1)])


def logmel_features(wave: np.ndarray) -> np.ndarray:
  return mean_std(log_mel(wave))


def mfcc_features(wave: np.ndarray) -> np.ndarray:
  c = mfcc(log_mel(wave))
  d = deltas(c)
  return mean_std(np.concatenate([c, d, deltas(d)]))


FEATURES = {"logmel": logmel_features, "mfcc": mfcc_features}
