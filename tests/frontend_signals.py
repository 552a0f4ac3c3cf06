"""Real-looking test waveforms for the front-end tests: speech-like harmonic sweeps with
formants and syllables, coloured noise, a gap of digital silence, at a chosen level."""
import numpy as np

SAMPLE_RATE = 16000


def speech_like(rng: np.random.Generator, seconds: float, peak_dbfs: float,
                gap_seconds: float = 0.3) -> np.ndarray:
  """float32 waveform whose peak is `peak_dbfs` dB full scale, with `gap_seconds` of exact
  zeros somewhere after the first tenth of a second and a faded-out last 50 ms."""
  n = int(seconds * SAMPLE_RATE)
  t = np.arange(n) / SAMPLE_RATE
  f0 = 140 + 60 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)) \
      + 30 * np.sin(2 * np.pi * 3.1 * t)
  phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
  formants = rng.uniform([500, 1200, 2500], [900, 2000, 3500])
  wave = np.zeros(n)
  for k in range(1, 40):  # harmonics below 7.9 kHz: no aliasing
    freq = k * f0
    amp = sum(np.exp(-0.5 * ((freq - f) / 150) ** 2) for f in formants) + 0.02 / k
    wave += np.where(freq < 7900, amp, 0.0) * np.sin(k * phase)
  wave *= np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None) ** 2  # syllables
  noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / np.sqrt(1 + np.arange(n // 2 + 1)
                                                                   / 50), n)
  wave += 0.01 * wave.std() / noise.std() * noise
  gap = int(gap_seconds * SAMPLE_RATE)
  start = int(rng.integers(n // 10, n - gap))
  wave[start:start + gap] = 0.0
  fade = int(0.05 * SAMPLE_RATE)
  wave[-fade:] *= np.linspace(1.0, 0.0, fade)
  return (wave / np.abs(wave).max() * 10 ** (peak_dbfs / 20)).astype(np.float32)
