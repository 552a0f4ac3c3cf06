"""Log-mel front ends: waveform -> (n_mels, frames) features, one recipe per paper.

A recipe is a frozen dataclass holding every parameter; `to_dict()` is written into each
shard's metadata so a model trained on one front end refuses shards made with another.

  name        kind         what it computes (docs/frontends.md)
  audio_jepa  ln_mel       centred Hann STFT 400/400/160, 80 Slaney mels 50-8000 Hz,
                           area-normalised, ln(power + eps)                  (M2D)
  ajepa       kaldi_fbank  Kaldi fbank as AudioMAE calls it: 25 ms frames every 10 ms
                           (snip edges), DC removal, pre-emphasis 0.97, Hanning, 512-point
                           FFT, 128 Kaldi mel banks 20-8000 Hz, ln(max(power, eps))
  dasheng     db_mel       centred Hann STFT 512/512/160, 64 HTK mels of peak 1 0-8000 Hz,
                           10 log10(max(power, 1e-10)) clamped at the clip max - 120 dB

Every recipe has the same interface: `logmel(wave)`, `frames(seconds)`, `floor`,
`pad_value(mel)`, `apply_gain_db(mel, gain_db)`, `to_dict()` / `FrontEnd.from_dict(d)`.
Computed in NumPy float64 (data preparation, evaluation and the HEAR module alike).

A record written before a field existed (shard metadata, an export's frontend.json) lacks
it: `FrontEnd.recorded(d)` rebuilds such a record as that version computed it
(LEGACY_FIELDS), `FrontEnd.from_dict(d)` refuses it.
"""
from __future__ import annotations

import abc
import dataclasses
import functools
import math
from typing import Any, ClassVar

import librosa
import numpy as np
import scipy.sparse

# Shards store features as float16, which rounds by at most 2**-12 relative: a stored value
# within twice that of a recipe's floor is taken to be at the floor.
_FLOOR_RTOL = 2.0**-11


@dataclasses.dataclass(frozen=True)
class FrontEnd(abc.ABC):
  """What every recipe has. Subclasses define the spectrum, the filterbank and the log."""

  kind: ClassVar[str] = ""
  ln_power_per_unit: ClassVar[float]  # ln(power) per feature unit: 1 for ln, ln(10)/10 dB
  name: str
  sample_rate: int
  n_fft: int
  win_length: int
  hop_length: int
  n_mels: int
  fmin: float
  fmax: float
  norm_mean: float  # scalar normalisation: model input = (feature - norm_mean) / norm_std
  norm_std: float

  def __post_init__(self):
    problems = []
    if not 0 < self.win_length <= self.n_fft:
      problems.append(f"need 0 < win_length <= n_fft, got {self.win_length}, {self.n_fft}")
    if self.hop_length < 1 or self.n_mels < 1:
      problems.append(f"need hop_length, n_mels >= 1, got {self.hop_length}, {self.n_mels}")
    if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
      problems.append(f"need 0 <= fmin < fmax <= sample_rate / 2, got {self.fmin}, "
                      f"{self.fmax}, {self.sample_rate}")
    if problems:
      raise ValueError(f"front end {self.name!r}: {'; '.join(problems)}.")

  # --- the recipe, defined by subclasses ---------------------------------------------------

  @property
  def min_samples(self) -> int:
    """The shortest waveform the recipe accepts."""
    return 1

  @abc.abstractmethod
  def num_frames(self, num_samples: int) -> int:
    """Frames `logmel` gives for a waveform of that many samples."""

  @property
  @abc.abstractmethod
  def window(self) -> np.ndarray:
    """The analysis window, zero-padded to n_fft as the FFT sees it (float64)."""

  @property
  @abc.abstractmethod
  def filterbank(self) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float64 weights on the power spectrum."""

  @abc.abstractmethod
  def power_spectrogram(self, wave: np.ndarray) -> np.ndarray:
    """float64 1-D waveform -> (n_fft // 2 + 1, frames) float64 power spectrum."""

  @abc.abstractmethod
  def compress(self, mel_power, xp=np):
    """Mel power (..., n_mels, frames) -> features, with xp = numpy or jax.numpy."""

  @property
  @abc.abstractmethod
  def floor(self) -> float:
    """The lowest feature value the recipe gives (digital silence, before any clamp
    relative to the clip)."""

  def at_floor(self, mel: np.ndarray) -> np.ndarray:
    """Which bins sit at the floor, allowing for float16 storage."""
    return mel <= self.floor + _FLOOR_RTOL * abs(self.floor)

  def pad_value(self, mel: np.ndarray) -> float:
    """The feature value digital silence appended to this clip would have."""
    return self.floor

  @abc.abstractmethod
  def apply_gain_db(self, mel: np.ndarray, gain_db: float) -> np.ndarray:
    """The features of the same sound `gain_db` louder (see each recipe for exactness)."""

  # --- shared machinery ----------------------------------------------------------------------

  @functools.cached_property
  def _sparse_filterbank(self) -> scipy.sparse.csr_array:
    # Each FFT bin feeds at most two triangles, so the sparse product is a few % of the
    # dense work and never starts BLAS threads (3x slower in busy worker pools).
    return scipy.sparse.csr_array(self.filterbank)

  def check_wave(self, wave) -> np.ndarray:
    """The waveform as float64 1-D, or a ValueError saying what is wrong with it."""
    wave = np.asarray(wave)
    if wave.ndim != 1 or wave.size == 0:
      raise ValueError(
          f"{self.name} front end expects a non-empty mono 1-D waveform, got shape "
          f"{wave.shape}; downmix and flatten it first (audio_io.load_audio does).")
    if not np.issubdtype(wave.dtype, np.floating):
      raise ValueError(f"{self.name} front end expects float samples in [-1, 1], got dtype "
                       f"{wave.dtype}; scale integer PCM first (int16: divide by 32768).")
    if wave.size < self.min_samples:
      raise ValueError(
          f"{self.name} front end needs at least {self.min_samples} samples "
          f"({1000 * self.min_samples / self.sample_rate:g} ms), got {wave.size}; pad the clip.")
    if not np.all(np.isfinite(wave)):
      raise ValueError(f"{self.name} front end got NaN or inf samples.")
    return wave.astype(np.float64)

  def logmel(self, wave: np.ndarray) -> np.ndarray:
    """Mono float 1-D waveform at `sample_rate` -> (n_mels, frames) float32."""
    # float64 costs little here and keeps quiet bins exact down to the floor.
    power = self.power_spectrogram(self.check_wave(wave))
    return self.compress(self._sparse_filterbank @ power).astype(np.float32)

  def frames(self, seconds: float) -> int:
    """Frames `logmel` gives for a clip of that many seconds."""
    return self.num_frames(int(round(seconds * self.sample_rate)))

  def to_dict(self) -> dict[str, Any]:
    return {"kind": self.kind, **dataclasses.asdict(self)}

  @staticmethod
  def recorded(d: dict[str, Any]) -> FrontEnd:
    """The recipe a saved record describes, one written before a field existed included
    (the field takes the value that version computed with, LEGACY_FIELDS): how an
    export's features are made again, and what a shard's features were made with."""
    return FrontEnd.from_dict(upgrade_record(d))

  @staticmethod
  def from_dict(d: dict[str, Any]) -> FrontEnd:
    """The recipe `to_dict` wrote (also one that differs from today's registry)."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in _KINDS:
      raise ValueError(
          f"front-end metadata has kind {kind!r}; known kinds: {', '.join(sorted(_KINDS))}. "
          "It was written by another version of jepa_jax: rebuild the shards.")
    cls = _KINDS[kind]
    fields = {f.name for f in dataclasses.fields(cls)}
    if set(d) != fields:
      raise ValueError(
          f"{kind} front-end metadata lacks {sorted(fields - set(d))} and has unexpected "
          f"{sorted(set(d) - fields)}; rebuild the shards.")
    return cls(**d)


def ln_eps_gain_db(mel: np.ndarray, gain_db: float, log_eps: float) -> np.ndarray:
  """ln(power + log_eps) features of the same sound `gain_db` louder, exact for every bin:
  undo the eps, scale the power, redo the eps (digital silence stays silence)."""
  power = np.maximum(np.exp(mel.astype(np.float64)) - log_eps, 0.0)
  return np.log(power * 10.0 ** (gain_db / 10) + log_eps).astype(np.float32)


def _gain_at_floor(mel: np.ndarray, at_floor: np.ndarray, gain_db: float, floor: float,
                   log_unit: float) -> np.ndarray:
  """Features log(max(P, f)) of the sound `gain_db` louder, in units where one decade of
  power is `log_unit` (ln 10 for ln, 10 for dB) and `floor` = log(f).

  Bins above the floor were unclamped: they shift by the gain, and one that falls below
  the floor is clamped again (exact). Bins at the floor are taken to be digital silence
  and stay there: their true power below f is unknown, so a positive gain cannot be
  undone exactly there.
  """
  mel = mel.astype(np.float64)
  shifted = np.maximum(mel + gain_db / 10 * log_unit, floor)
  return np.where(at_floor, floor, shifted)


MEL_SCALES = ("htk", "slaney")
MEL_NORMS = (None, "slaney")


@dataclasses.dataclass(frozen=True)
class CentredStftMel(FrontEnd):
  """Centred (reflect-padded) periodic-Hann STFT -> power -> mel triangles in Hz,
  librosa.filters.mel(htk=mel_scale == "htk", norm=mel_norm):

    mel_scale "htk": 2595 log10(1 + f / 700) (torchaudio MelSpectrogram's default);
              "slaney": linear below 1 kHz, logarithmic above (librosa's and nnAudio's
              default, htk=False);
    mel_norm  None: triangles of peak 1 (torchaudio's default);
              "slaney": area-normalised, each triangle scaled by 2 / its width in Hz
              (librosa norm="slaney", nnAudio norm=1, its default).
  """

  mel_scale: str
  mel_norm: str | None

  def __post_init__(self):
    super().__post_init__()
    if self.mel_scale not in MEL_SCALES or self.mel_norm not in MEL_NORMS:
      raise ValueError(f"front end {self.name!r}: mel_scale must be one of {MEL_SCALES} and "
                       f"mel_norm one of {MEL_NORMS}, got {self.mel_scale!r}, "
                       f"{self.mel_norm!r}.")

  def num_frames(self, num_samples: int) -> int:
    return 1 + num_samples // self.hop_length

  @functools.cached_property
  def window(self) -> np.ndarray:
    hann = librosa.filters.get_window("hann", self.win_length, fftbins=True)
    return librosa.util.pad_center(hann.astype(np.float64), size=self.n_fft)

  @functools.cached_property
  def filterbank(self) -> np.ndarray:
    return librosa.filters.mel(
        sr=self.sample_rate, n_fft=self.n_fft, n_mels=self.n_mels, fmin=self.fmin,
        fmax=self.fmax, htk=self.mel_scale == "htk", norm=self.mel_norm, dtype=np.float64)

  def power_spectrogram(self, wave: np.ndarray) -> np.ndarray:
    spec = librosa.stft(
        wave, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
        window="hann", center=True, pad_mode="reflect")
    return spec.real**2 + spec.imag**2


@dataclasses.dataclass(frozen=True)
class LnMel(CentredStftMel):
  """feature = ln(mel_power + log_eps) (M2D's `(lms + eps).log()`)."""

  kind: ClassVar[str] = "ln_mel"
  ln_power_per_unit: ClassVar[float] = 1.0
  log_eps: float

  def compress(self, mel_power, xp=np):
    return xp.log(mel_power + self.log_eps)

  @property
  def floor(self) -> float:
    return math.log(self.log_eps)

  def apply_gain_db(self, mel: np.ndarray, gain_db: float) -> np.ndarray:
    return ln_eps_gain_db(mel, gain_db, self.log_eps)


@dataclasses.dataclass(frozen=True)
class DbMel(CentredStftMel):
  """feature = max(10 log10(max(mel_power, amin)), clip max - top_db) (torchaudio
  AmplitudeToDB(stype="power", top_db), the max taken per clip).

  Dasheng applies AmplitudeToDB to a (batch, mels, frames) tensor, for which torchaudio
  takes the max over the whole batch; here it is per clip, so a clip's features do not
  depend on the batch it travels in. They differ only where top_db binds.
  """

  kind: ClassVar[str] = "db_mel"
  ln_power_per_unit: ClassVar[float] = math.log(10.0) / 10.0
  amin: float
  top_db: float

  def compress(self, mel_power, xp=np):
    db = 10.0 * xp.log10(xp.maximum(mel_power, self.amin))
    return xp.maximum(db, db.max(axis=(-2, -1), keepdims=True) - self.top_db)

  @property
  def floor(self) -> float:
    return 10.0 * math.log10(self.amin)

  def pad_value(self, mel: np.ndarray) -> float:
    """Silence sits at the amin floor or, in a clip loud enough for top_db to bind,
    at the clip max - top_db."""
    return max(self.floor, float(np.max(mel)) - self.top_db)

  def apply_gain_db(self, mel: np.ndarray, gain_db: float) -> np.ndarray:
    """A gain scales every power, so the clip max and with it the top_db clamp shift by
    the gain: bins above the amin floor shift exactly (those clamped by top_db included).
    Bins at the amin floor stay there (digital silence), then top_db is applied again
    relative to the new max, as `compress` would."""
    db = _gain_at_floor(mel, self.at_floor(mel), gain_db, self.floor, 10.0)
    return np.maximum(db, db.max() - self.top_db).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class KaldiFbank(FrontEnd):
  """Kaldi fbank as torchaudio.compliance.kaldi.fbank(wave, htk_compat=True,
  use_energy=False, window_type="hanning", dither=0.0, frame_shift=10) computes it, the
  call of AudioMAE (and so A-JEPA), transposed to (n_mels, frames):

  frames of win_length every hop_length that fit in the clip (snip_edges: 1 + (n - win)
  // hop frames); per frame: remove the DC offset, pre-emphasise x[i] -= p x[i - 1] with
  x[-1] := x[0] (moot: the window below is 0 at i = 0), multiply by Kaldi's Hanning
  0.5 - 0.5 cos(2 pi i / (win - 1)), zero-pad
  to n_fft (the next power of two), |rfft|^2; mel banks triangular in Kaldi's mel scale
  1127 ln(1 + f / 700) over FFT bins 0 .. n_fft / 2 - 1 (the Nyquist bin has weight 0);
  ln(max(mel_power, log_floor)).

  AudioMAE subtracts the waveform mean before calling fbank; so does this recipe, though
  the per-frame DC removal already makes the features blind to any constant offset (it
  only saves float32 precision on device).
  """

  kind: ClassVar[str] = "kaldi_fbank"
  ln_power_per_unit: ClassVar[float] = 1.0
  preemphasis: float
  log_floor: float  # Kaldi's epsilon: float32 machine epsilon

  def __post_init__(self):
    super().__post_init__()
    if self.n_fft != 1 << (self.win_length - 1).bit_length():
      raise ValueError(f"front end {self.name!r}: Kaldi pads frames to the next power of "
                       f"two, {1 << (self.win_length - 1).bit_length()}; got n_fft {self.n_fft}.")

  @property
  def min_samples(self) -> int:
    return self.win_length  # Kaldi makes no frame from a shorter clip

  def num_frames(self, num_samples: int) -> int:
    if num_samples < self.win_length:
      return 0
    return 1 + (num_samples - self.win_length) // self.hop_length

  @functools.cached_property
  def window(self) -> np.ndarray:
    hanning = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.win_length) / (self.win_length - 1))
    return np.pad(hanning, (0, self.n_fft - self.win_length))

  @functools.cached_property
  def filterbank(self) -> np.ndarray:
    def kaldi_mel(hz):
      return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)
    edges = kaldi_mel(self.fmin) + np.arange(self.n_mels + 2) * (
        (kaldi_mel(self.fmax) - kaldi_mel(self.fmin)) / (self.n_mels + 1))
    bin_mel = kaldi_mel(np.arange(self.n_fft // 2) * self.sample_rate / self.n_fft)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    weights = np.maximum(0.0, np.minimum((bin_mel - left) / (centre - left),
                                         (right - bin_mel) / (right - centre)))
    return np.pad(weights, ((0, 0), (0, 1)))  # the Nyquist bin

  def power_spectrogram(self, wave: np.ndarray) -> np.ndarray:
    p, length = self.preemphasis, self.win_length
    wave = wave - wave.mean()
    frames = np.lib.stride_tricks.sliding_window_view(wave, length)[::self.hop_length]
    dc = frames.mean(axis=1, keepdims=True)
    # Pre-emphasis of a DC-removed frame, rearranged to run once over the waveform (3x
    # faster): y[i] = x[i] - p x[i-1] - (1 - p) dc for i >= 1, y[0] = (1 - p) (x[0] - dc).
    emphasised = np.concatenate([wave[:1], wave[1:] - p * wave[:-1]])
    conditioned = np.lib.stride_tricks.sliding_window_view(
        emphasised, length)[::self.hop_length] - (1 - p) * dc
    conditioned[:, 0] = (1 - p) * (frames[:, 0] - dc[:, 0])
    spec = np.fft.rfft(conditioned * self.window[:length], n=self.n_fft, axis=1)
    return (spec.real**2 + spec.imag**2).T

  def compress(self, mel_power, xp=np):
    return xp.log(xp.maximum(mel_power, self.log_floor))

  @property
  def floor(self) -> float:
    return math.log(self.log_floor)

  def apply_gain_db(self, mel: np.ndarray, gain_db: float) -> np.ndarray:
    """Exact on bins above the floor and, for a cut, everywhere; bins at the floor stay."""
    return _gain_at_floor(mel, self.at_floor(mel), gain_db, self.floor,
                          math.log(10.0)).astype(np.float32)


_KINDS: dict[str, type[FrontEnd]] = {c.kind: c for c in (LnMel, KaldiFbank, DbMel)}

# Fields recorded since: kind -> {field: the value every record written without it was
# computed with}. Records before mel_scale / mel_norm used HTK triangles of peak 1 for
# both centred recipes (right for dasheng; audio_jepa has since switched to M2D's).
LEGACY_FIELDS: dict[str, dict[str, Any]] = {
    kind: {"mel_scale": "htk", "mel_norm": None} for kind in (LnMel.kind, DbMel.kind)}


def upgrade_record(d: dict[str, Any]) -> dict[str, Any]:
  """A copy of a saved front-end record with the fields it predates filled in with
  the values it was computed with (LEGACY_FIELDS); other records unchanged."""
  legacy = LEGACY_FIELDS.get(d.get("kind"), {})
  return {**{k: v for k, v in legacy.items() if k not in d}, **d}

_FLOAT32_EPS = float(np.finfo(np.float32).eps)

# M2D's settings, which Audio-JEPA uses: wav_to_lms calls nnAudio's MelSpectrogram at its
# defaults htk=False, norm=1 (Slaney scale, area-normalised; the statistics -7.06 / 4.20
# are of these features). eps is float32 machine epsilon, as torch.finfo().eps in M2D's
# `(lms + eps).log()`.
AUDIO_JEPA = LnMel(
    name="audio_jepa", sample_rate=16000, n_fft=400, win_length=400, hop_length=160,
    n_mels=80, fmin=50.0, fmax=8000.0, norm_mean=-7.06, norm_std=4.20, mel_scale="slaney",
    mel_norm="slaney", log_eps=_FLOAT32_EPS)

# AudioMAE's call (A-JEPA uses its front end): 25 ms / 10 ms at 16 kHz, Kaldi's default
# 20 Hz low edge and Nyquist high edge. AudioMAE normalises (x - mean) / (2 * std) with
# mean -4.2677393, std 4.5689974: norm_std holds the whole divisor 2 * 4.5689974.
AJEPA = KaldiFbank(
    name="ajepa", sample_rate=16000, n_fft=512, win_length=400, hop_length=160,
    n_mels=128, fmin=20.0, fmax=8000.0, norm_mean=-4.2677393, norm_std=2 * 4.5689974,
    preemphasis=0.97, log_floor=_FLOAT32_EPS)

# Dasheng's MelSpectrogram(n_fft=512, win_length=512, hop_length=160, n_mels=64, f_min=0,
# f_max=8000) + AmplitudeToDB(top_db=120) (amin 1e-10). Dasheng normalises with a learned
# BatchNorm; the scalar constants are its code's fixed alternative Normer(-10, 20), which
# divides by 2 * 20.
DASHENG = DbMel(
    name="dasheng", sample_rate=16000, n_fft=512, win_length=512, hop_length=160,
    n_mels=64, fmin=0.0, fmax=8000.0, norm_mean=-10.0, norm_std=40.0, mel_scale="htk",
    mel_norm=None, amin=1e-10, top_db=120.0)

FRONTENDS: dict[str, FrontEnd] = {f.name: f for f in (AUDIO_JEPA, AJEPA, DASHENG)}


def get_frontend(name: str) -> FrontEnd:
  try:
    return FRONTENDS[name]
  except KeyError:
    raise ValueError(
        f"Unknown front end {name!r}; known: {', '.join(sorted(FRONTENDS))}.") from None
