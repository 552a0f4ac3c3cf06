"""The embedded labelled synthetic corpus: 4 s clips of one labelled sound event.

Each clip holds a primary event with three independent labels (pitch bin, source timbre,
amplitude envelope), sometimes a quieter unlabelled distractor event, and a coloured-noise
background. A clip is a pure function of (seed, stream, index), so clips can be made in
any order and in parallel; change GENERATOR_VERSION whenever the output changes, since
cached corpora are keyed by it.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.fft

GENERATOR_VERSION = 1
SAMPLE_RATE = 16000
CLIP_SECONDS = 4.0
CLIP_SAMPLES = int(CLIP_SECONDS * SAMPLE_RATE)

MAX_PARTIAL_HZ = 8000.0  # partials stay strictly below this (the Nyquist frequency)
PITCH_BASE_HZ = 110.0  # pitch class k covers [110 * 2**(k/2), 110 * 2**((k+1)/2)) Hz
NUM_PITCH_CLASSES = 8
RAMP_SECONDS = 0.01  # linear attack and release at event edges, so no event clicks
BACKGROUND_BAND_HZ = (50.0, 8000.0)  # the front end's mel range: SNR counts what it sees


def pitch_bin_hz(k: int) -> tuple[float, float]:
  """Frequency range [low, high) of pitch class k: half an octave."""
  return PITCH_BASE_HZ * 2.0 ** (k / 2), PITCH_BASE_HZ * 2.0 ** ((k + 1) / 2)


def _rms(x: np.ndarray) -> float:
  return float(np.sqrt(np.mean(np.square(x))))


def _times(n: int) -> np.ndarray:
  return np.arange(n) / SAMPLE_RATE


# --- oscillators -------------------------------------------------------------------------

_TABLE_SIZE = 4096  # one period of a harmonic tone; 56+ points per cycle of its top partial


def _cycles(freq_hz: np.ndarray) -> np.ndarray:
  """Running phase, in cycles, of an oscillator with this instantaneous frequency."""
  return np.cumsum(freq_hz) / SAMPLE_RATE


def _num_harmonics(max_f0: float) -> int:
  """How many harmonics of an f0 that reaches max_f0 stay below MAX_PARTIAL_HZ."""
  return int(np.ceil(MAX_PARTIAL_HZ / max_f0)) - 1


def _harmonic_tone(rng: np.random.Generator, cycles: np.ndarray,
                   amplitudes: np.ndarray) -> np.ndarray:
  """sum_k amplitudes[k-1] * sin(2 pi k cycles + random phase_k).

  Read from a one-period wavetable built by an inverse FFT: one table lookup per sample
  instead of one sine per harmonic and sample (70 harmonics at low pitch).
  """
  k = np.arange(1, len(amplitudes) + 1)
  phases = rng.uniform(0.0, 2 * np.pi, len(amplitudes))
  spectrum = np.zeros(_TABLE_SIZE // 2 + 1, np.complex128)
  # irfft turns c_k into (2 / N) |c_k| cos(2 pi k j / N + arg c_k); sin is cos - pi/2.
  spectrum[k] = amplitudes * (_TABLE_SIZE / 2) * np.exp(1j * (phases - np.pi / 2))
  table = np.fft.irfft(spectrum, _TABLE_SIZE)
  table = np.append(table, table[0])  # so index + 1 never wraps
  position = cycles * _TABLE_SIZE  # cycles >= 0
  index = position.astype(np.int64)
  frac = position - index
  index &= _TABLE_SIZE - 1  # modulo one period (the table size is a power of two)
  return table[index] + (table[index + 1] - table[index]) * frac  # linear interpolation


def _band_noise(rng: np.random.Generator, n: int, low_hz: float, high_hz: float,
                slope: float = 0.0) -> np.ndarray:
  """Gaussian noise with power only in [low_hz, high_hz], there ~ 1/f**slope; unit RMS.

  Drawn in the frequency domain: the FFT of white Gaussian noise is independent complex
  Gaussian bins, so masking it is drawing only the bins in the band.
  """
  size = scipy.fft.next_fast_len(n, real=True)  # event lengths can be slow FFT sizes
  freqs = np.fft.rfftfreq(size, 1.0 / SAMPLE_RATE)
  low, high = np.searchsorted(freqs, low_hz), np.searchsorted(freqs, high_hz, side="right")
  spectrum = np.zeros(len(freqs), np.complex128)
  spectrum[low:high] = rng.standard_normal(high - low) + 1j * rng.standard_normal(high - low)
  if slope:
    spectrum[low:high] *= freqs[low:high] ** (-slope / 2)
  noise = np.fft.irfft(spectrum, size)[:n]
  return noise / _rms(noise)


# --- sources: (rng, f0, n) -> waveform ----------------------------------------------------

def flute(rng: np.random.Generator, f0: float, n: int) -> np.ndarray:
  """Harmonics 0.6**(k-1), 5 Hz vibrato of 0.5 %, breath noise above 2 kHz at -25 dB."""
  depth = 0.005
  vibrato = np.sin(2 * np.pi * 5.0 * _times(n) + rng.uniform(0.0, 2 * np.pi))
  cycles = _cycles(f0 * (1.0 + depth * vibrato))
  amplitudes = 0.6 ** np.arange(_num_harmonics(f0 * (1.0 + depth)))
  tone = _harmonic_tone(rng, cycles, amplitudes)
  breath = _band_noise(rng, n, 2000.0, MAX_PARTIAL_HZ)
  return tone + breath * _rms(tone) * 10.0 ** (-25.0 / 20)


def saw(rng: np.random.Generator, f0: float, n: int) -> np.ndarray:
  """All harmonics at 1/k (band-limited sawtooth)."""
  k = np.arange(1, _num_harmonics(f0) + 1)
  return _harmonic_tone(rng, _cycles(np.full(n, f0)), 1.0 / k)


def clarinet(rng: np.random.Generator, f0: float, n: int) -> np.ndarray:
  """Odd harmonics at 1/k (band-limited square-like wave)."""
  k = np.arange(1, _num_harmonics(f0) + 1)
  return _harmonic_tone(rng, _cycles(np.full(n, f0)), np.where(k % 2 == 1, 1.0 / k, 0.0))


BELL_RATIOS = np.array([1.0, 2.76, 5.40, 8.93, 13.34])
BELL_AMPLITUDES = np.array([1.0, 0.6, 0.4, 0.25, 0.15])


def bell(rng: np.random.Generator, f0: float, n: int) -> np.ndarray:
  """Inharmonic partials of a struck bar/bell; those above 8 kHz are dropped."""
  keep = BELL_RATIOS * f0 < MAX_PARTIAL_HZ
  freqs, amplitudes = BELL_RATIOS[keep] * f0, BELL_AMPLITUDES[keep]
  phases = rng.uniform(0.0, 2 * np.pi, len(freqs))
  t = _times(n)
  return sum(a * np.sin(2 * np.pi * f * t + p) for f, a, p in zip(freqs, amplitudes, phases))


def noise_band(rng: np.random.Generator, f0: float, n: int) -> np.ndarray:
  """White noise band-passed to half an octave centred (in log frequency) on f0."""
  return _band_noise(rng, n, f0 * 2.0 ** -0.25, f0 * 2.0 ** 0.25)


def chirp(rng: np.random.Generator, f0: float, n: int) -> np.ndarray:
  """Harmonics 1/k**2 whose f0 sweeps up from f0 * 2**-0.25 to f0 * 2**0.25 every P s."""
  period = rng.uniform(0.4, 1.0)
  sweep = (_times(n) / period) % 1.0
  cycles = _cycles(f0 * 2.0 ** (0.5 * sweep - 0.25))  # phase-continuous across restarts
  k = np.arange(1, _num_harmonics(f0 * 2.0 ** 0.25) + 1)
  return _harmonic_tone(rng, cycles, 1.0 / k**2)


SOURCES: dict[str, Callable[[np.random.Generator, float, int], np.ndarray]] = {
    "flute": flute, "saw": saw, "clarinet": clarinet, "bell": bell,
    "noise_band": noise_band, "chirp": chirp,
}


# --- envelopes: (rng, n) -> gain over event-local time -----------------------------------

def sustained(rng: np.random.Generator, n: int) -> np.ndarray:
  del rng
  return np.ones(n)


def decaying(rng: np.random.Generator, n: int) -> np.ndarray:
  return np.exp(-_times(n) / rng.uniform(0.3, 0.8))


def tremolo(rng: np.random.Generator, n: int) -> np.ndarray:
  rate, depth = rng.uniform(4.0, 10.0), rng.uniform(0.6, 1.0)
  return 1.0 - depth * (0.5 + 0.5 * np.sin(2 * np.pi * rate * _times(n)))


def swell(rng: np.random.Generator, n: int) -> np.ndarray:
  """Linear in dB from -30 dB to 0 dB over the event."""
  del rng
  return 10.0 ** (np.linspace(-30.0, 0.0, n) / 20)


def hits(rng: np.random.Generator, n: int) -> np.ndarray:
  """Percussive hits at 2-5 Hz, onsets jittered by up to 20 % of the period."""
  period = 1.0 / rng.uniform(2.0, 5.0)
  decay = rng.uniform(0.03, 0.08)
  count = int(np.ceil(n / SAMPLE_RATE / period)) + 1
  onsets = np.maximum(period * (np.arange(count) + rng.uniform(-0.2, 0.2, count)), 0.0)
  t = _times(n)
  last = np.searchsorted(onsets, t, side="right") - 1  # the latest hit at or before t
  return np.where(last >= 0, np.exp(-(t - onsets[np.maximum(last, 0)]) / decay), 0.0)


ENVELOPES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "sustained": sustained, "decaying": decaying, "tremolo": tremolo, "swell": swell,
    "hits": hits,
}

TASKS: dict[str, tuple[str, ...]] = {
    "pitch": tuple(
        "{:.0f}-{:.0f}Hz".format(*pitch_bin_hz(k)) for k in range(NUM_PITCH_CLASSES)),
    "source": tuple(SOURCES),
    "envelope": tuple(ENVELOPES),
}


# --- clips ---------------------------------------------------------------------------------

def _edge_ramps(n: int) -> np.ndarray:
  ramp = max(int(RAMP_SECONDS * SAMPLE_RATE), 1)
  i = np.arange(n)
  return np.minimum(1.0, np.minimum(i, n - 1 - i) / ramp)


def _event(rng: np.random.Generator, pitch: int, source: str, envelope: str,
           n: int) -> np.ndarray:
  """One event of n samples with unit RMS over its span."""
  # The central half of the pitch bin, so labels stay clean under vibrato and sweeps.
  f0 = PITCH_BASE_HZ * 2.0 ** ((pitch + rng.uniform(0.25, 0.75)) / 2)
  wave = SOURCES[source](rng, f0, n) * ENVELOPES[envelope](rng, n) * _edge_ramps(n)
  return wave / _rms(wave)


def _random_classes(rng: np.random.Generator) -> dict[str, int]:
  return {task: int(rng.integers(len(names))) for task, names in TASKS.items()}


def _add_event(clip: np.ndarray, rng: np.random.Generator, classes: dict[str, int],
               onset_s: float, duration_s: float, rms: float) -> None:
  start = int(round(onset_s * SAMPLE_RATE))
  n = min(int(round(duration_s * SAMPLE_RATE)), len(clip) - start)
  clip[start:start + n] += rms * _event(
      rng, classes["pitch"], TASKS["source"][classes["source"]],
      TASKS["envelope"][classes["envelope"]], n)


def generate_clip(seed: int, stream: int, index: int) -> tuple[np.ndarray, dict[str, int]]:
  """Clip `index` of `stream` -> (float32 waveform (CLIP_SAMPLES,), {task: class index})."""
  rng = np.random.default_rng([seed, stream, index])
  labels = _random_classes(rng)
  clip = np.zeros(CLIP_SAMPLES)

  level = 0.1 * 10.0 ** (rng.uniform(-20.0, 0.0) / 20)  # primary RMS over its span
  onset = rng.uniform(0.0, 0.5)
  _add_event(clip, rng, labels, onset, rng.uniform(2.5, CLIP_SECONDS - onset), level)

  if rng.random() < 0.5:  # an unlabelled, quieter distractor
    classes = _random_classes(rng)
    onset = rng.uniform(0.0, 3.0)
    duration = min(rng.uniform(0.5, 2.0), CLIP_SECONDS - onset)
    _add_event(clip, rng, classes, onset, duration,
               level * 10.0 ** (-rng.uniform(6.0, 18.0) / 20))

  slope = float(rng.choice([0.0, 1.0, 2.0]))  # white, pink or brown
  snr_db = rng.uniform(5.0, 30.0)
  clip += _band_noise(rng, CLIP_SAMPLES, *BACKGROUND_BAND_HZ, slope) * level * 10.0 ** (
      -snr_db / 20)

  peak = np.max(np.abs(clip))
  if peak > 1.0:
    clip *= 0.99 / peak
  return clip.astype(np.float32), labels
