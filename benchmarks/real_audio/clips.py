"""Reading spans of source audio at 16 kHz mono and writing benchmark clips."""
from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from data_pipelines import audio_io

SAMPLE_RATE = 16000
SILENT_PEAK = 10 ** (-50 / 20)  # a clip whose peak stays below -50 dBFS is dropped
TASK_PEAK_DBFS = (-18.0, -3.0)  # task clips' peaks, drawn per clip: level is no cue


def read_span(path: str | Path, start_s: float = 0.0, seconds: float | None = None
              ) -> np.ndarray:
  """`seconds` of `path` from `start_s` (to the end when None) as float32 mono 16 kHz."""
  with sf.SoundFile(str(path)) as f:
    rate = f.samplerate
    f.seek(min(int(start_s * rate), f.frames))
    x = f.read(-1 if seconds is None else int(seconds * rate), dtype="float32",
               always_2d=True)
  x = x.mean(axis=1)
  if rate != SAMPLE_RATE:
    x = librosa.resample(x, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
  return x.astype(np.float32)


def duration(path: str | Path) -> float:
  return sf.info(str(path)).duration


def is_silent(wave: np.ndarray) -> bool:
  return wave.size == 0 or float(np.max(np.abs(wave))) < SILENT_PEAK


def trim_silence(wave: np.ndarray, top_db: float = 50.0) -> np.ndarray:
  """The wave without leading and trailing parts `top_db` below its peak."""
  if is_silent(wave):
    return wave
  _, (start, stop) = librosa.effects.trim(wave, top_db=top_db, frame_length=400,
                                          hop_length=160)
  return wave[start:stop]


def at_peak(wave: np.ndarray, peak_dbfs: float) -> np.ndarray:
  """The wave scaled so its largest sample is at `peak_dbfs`."""
  return (wave * (10 ** (peak_dbfs / 20) / np.max(np.abs(wave)))).astype(np.float32)


def write_task_clip(path: Path, wave: np.ndarray, rng: np.random.Generator) -> None:
  """A task clip as 16-bit WAV, its peak at a random level in TASK_PEAK_DBFS."""
  audio_io.write_wav(path, at_peak(wave, float(rng.uniform(*TASK_PEAK_DBFS))), SAMPLE_RATE)


def write_corpus_clip(path: Path, wave: np.ndarray) -> None:
  """A pretraining clip as 16-bit FLAC, at its source's level."""
  sf.write(str(path), np.clip(wave, -1, 1), SAMPLE_RATE, subtype="PCM_16", format="FLAC")
