"""The unlabelled pretraining corpus: 4-second clips of game music and sound effects,
music on hold, ringtones, desktop sound themes and Finnish read speech, from packages no
task uses (sources.SOURCES), as 16 kHz mono FLAC for `python -m data_pipelines.prepare`."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from benchmarks.real_audio import clips, sources, synth

CLIP_S = 4.0
MIN_CLIP_S = 0.5  # shorter pieces (a file's tail, a click) are left out
FINNISH_VOICES = ("suo_fi_lj_diphone", "hy_fi_mv_diphone")
SPEECH_LINES = 90  # per Finnish voice
# source -> (files, at most this many clips per file; None: the whole file in clips)
MUSIC_CLIPS_PER_TRACK = 18
MOH_CLIPS_PER_TRACK = 36


def _spans(seconds: float, at_most: int | None) -> list[float]:
  """Start times of CLIP_S clips: every clip of the file, or `at_most` spread evenly."""
  whole = max(1, int(seconds // CLIP_S))
  if at_most is None or whole <= at_most:
    return [i * CLIP_S for i in range(whole)]
  return [float(t) for t in np.linspace(0, seconds - CLIP_S, at_most).round(2)]


def _usable(wave) -> bool:
  return len(wave) >= MIN_CLIP_S * clips.SAMPLE_RATE and not clips.is_silent(wave)


def _recorded(name: str, files: list[Path], at_most: int | None, out: Path) -> list[dict]:
  rows = []
  for path in files:
    for start in _spans(clips.duration(path), at_most):
      wave = clips.read_span(path, start, CLIP_S)
      if not _usable(wave):
        continue
      clip = out / f"{name}__{path.stem}__{int(start * 1000):07d}.flac"
      clips.write_corpus_clip(clip, wave)
      rows.append({"file": clip.name, "source": name, "seconds": len(wave) / clips.SAMPLE_RATE})
  return rows


def license_lines(n: int, path: Path = sources.LICENSE_TEXT) -> list[str]:
  """The first n sentences of at least 6 words of a license text (read aloud)."""
  text = re.sub(r"\s+", " ", path.read_text(encoding="utf-8", errors="replace"))
  sentences = [s.strip() for s in re.split(r"(?<=[.;:])\s", text)]
  return [s for s in sentences if len(s.split()) >= 6][:n]


def _speech(out: Path) -> list[dict]:
  rows = []
  lines = license_lines(SPEECH_LINES * len(FINNISH_VOICES))
  for v, voice in enumerate(FINNISH_VOICES):
    mine = lines[v::len(FINNISH_VOICES)]
    waves = synth.festival_say(voice, [synth.Utterance(t, 1.0) for t in mine])
    for i, wave in enumerate(waves):
      wave = clips.trim_silence(wave)[:round(CLIP_S * clips.SAMPLE_RATE)]
      if not _usable(wave):
        continue
      clip = out / f"finnish_speech__{voice}__{i:03d}.flac"
      clips.write_corpus_clip(clip, wave)
      rows.append({"file": clip.name, "source": "finnish_speech",
                   "seconds": len(wave) / clips.SAMPLE_RATE})
  return rows


def corpus_sources() -> dict[str, tuple[list[Path], int | None]]:
  return {
      "colobot_music": (sorted((sources.COLOBOT / "music").glob("*.ogg")),
                        MUSIC_CLIPS_PER_TRACK),
      "colobot_sounds": (sorted((sources.COLOBOT / "sounds").glob("*.wav")), None),
      "music_on_hold": (sorted(sources.MOH.glob("*.wav")), MOH_CLIPS_PER_TRACK),
      "lomiri": (sorted(sources.LOMIRI.glob("*/*.ogg")), 8),
      "deepin": (sorted(sources.DEEPIN.glob("*.wav")), None),
      "oxygen": (sorted(sources.OXYGEN.glob("Oxygen-*.ogg")), None),
  }


def build_corpus(out: Path) -> list[dict]:
  """Writes the corpus clips into `out`; returns one row per clip (file, source, seconds)."""
  out.mkdir(parents=True)
  rows = []
  for name, (files, at_most) in corpus_sources().items():
    rows += _recorded(name, files, at_most, out)
  return rows + _speech(out)
