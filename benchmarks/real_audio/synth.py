"""The programs that render task audio: fluidsynth (SoundFont notes), flite and
festival (speech). Each call writes into a scratch folder and returns waveforms at
16 kHz mono."""
from __future__ import annotations

import dataclasses
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.real_audio import clips, midi

DRUM_CHANNEL = 9  # fluidsynth plays bank 128 (drum kits) on MIDI channel 10


@dataclasses.dataclass(frozen=True)
class Note:
  bank: int
  program: int
  key: int
  velocity: int


def _run(command: list[str], what: str) -> None:
  done = subprocess.run(command, capture_output=True, text=True)
  if done.returncode != 0:
    raise RuntimeError(f"{what} failed (exit {done.returncode}): "
                       f"{(done.stderr or done.stdout).strip()[-300:]}")


def note_events(notes: list[Note], slot_ms: int, hold_ms: int) -> list[tuple[int, bytes]]:
  """MIDI events playing note i at i * slot_ms for hold_ms, then silencing the channel
  just before the next slot (reverb and chorus are off, so nothing rings over)."""
  events = []
  for i, note in enumerate(notes):
    channel = DRUM_CHANNEL if note.bank == 128 else 0
    t = i * slot_ms
    events += [(t, midi.bank_select(channel, note.bank)),
               (t, midi.program_change(channel, note.program)),
               (t, midi.note_on(channel, note.key, note.velocity)),
               (t + hold_ms, midi.note_off(channel, note.key)),
               (t + slot_ms - 20, midi.sound_off(channel))]
  return events


def render_notes(soundfont: Path, notes: list[Note], slot_s: float, hold_s: float,
                 clip_s: float) -> list[np.ndarray]:
  """Each note rendered by fluidsynth from `soundfont`, cut to `clip_s` from its onset."""
  slot_ms, hold_ms = round(slot_s * 1000), round(hold_s * 1000)
  with tempfile.TemporaryDirectory() as tmp:
    song, out = Path(tmp) / "notes.mid", Path(tmp) / "notes.wav"
    song.write_bytes(midi.midi_file(note_events(notes, slot_ms, hold_ms)))
    _run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.5",
          "-r", str(clips.SAMPLE_RATE), "-T", "wav", "-O", "s16", "-F", str(out),
          str(soundfont), str(song)], f"fluidsynth on {soundfont.name}")
    wave = clips.read_span(out)
  step, length = round(slot_s * clips.SAMPLE_RATE), round(clip_s * clips.SAMPLE_RATE)
  return [wave[i * step:i * step + length] for i in range(len(notes))]


@dataclasses.dataclass(frozen=True)
class Utterance:
  text: str
  stretch: float  # duration stretch: > 1 speaks slower


def flite_say(voice: str, utterances: list[Utterance]) -> list[np.ndarray]:
  """Each utterance spoken by flite's built-in `voice` (one process each: flite starts in
  milliseconds)."""
  waves = []
  with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "say.wav"
    for u in utterances:
      _run(["flite", "-voice", voice, "--setf", f"duration_stretch={u.stretch:.3f}",
            "-t", u.text, "-o", str(out)], f"flite -voice {voice}")
      waves.append(clips.read_span(out))
  return waves


def _scheme_string(text: str) -> str:
  return '"' + text.replace("\\", " ").replace('"', " ") + '"'


def festival_say(voice: str, utterances: list[Utterance],
                 encoding: str = "latin-1") -> list[np.ndarray]:
  """Each utterance spoken by festival's `voice` (e.g. kal_diphone), all in one festival
  process (it takes about half a second to start)."""
  with tempfile.TemporaryDirectory() as tmp:
    lines = [f"(voice_{voice})"]
    for i, u in enumerate(utterances):
      lines += [f"(Parameter.set 'Duration_Stretch {u.stretch:.3f})",
                f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(u.text)})) "
                f"\"{tmp}/{i}.wav\" 'riff)"]
    script = Path(tmp) / "say.scm"
    script.write_bytes("\n".join(lines).encode(encoding, errors="replace"))
    _run(["festival", "--batch", str(script)], f"festival voice {voice}")
    return [clips.read_span(Path(tmp) / f"{i}.wav") for i in range(len(utterances))]
