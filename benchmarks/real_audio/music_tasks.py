"""The rendered-instrument tasks: instrument family and pitch class (General MIDI
programs of the MuseScore General SoundFont) and drum type (two recorded multi-velocity
drum kits, and the acoustic kits of MuseScore General and of csound's GM bank).

A clip's group is the program (or drum kit piece) that played it, and programs or pieces
that play any common recorded sample are merged into one group (SoundFont.samples), so a
recording never straddles folds."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.real_audio import folds, soundfont, sources, synth
from benchmarks.real_audio.task_clips import Clip, Task

# GM family -> (programs, lowest and highest MIDI key played); synthesiser programs and
# timpani are left out.
FAMILIES = {
    "piano": (range(0, 8), (36, 84)),
    "chromatic_percussion": (range(8, 16), (60, 96)),
    "organ": (range(16, 24), (36, 84)),
    "guitar": (range(24, 32), (40, 76)),
    "bass": (range(32, 38), (28, 55)),
    "strings": (range(40, 47), (40, 84)),
    "brass": (range(56, 62), (40, 76)),
    "reed": (range(64, 72), (48, 84)),
    "pipe": (range(72, 80), (60, 96)),
}
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
NOTE_SLOT_S, NOTE_HOLD_S, NOTE_CLIP_S = 2.0, 1.2, 1.9

# drum type -> GM drum keys
DRUM_KEYS = {"kick": (35, 36), "snare": (38, 40), "hihat_closed": (42, 44),
             "hihat_open": (46,), "tom": (41, 45, 48), "crash": (49, 57), "ride": (51, 59)}
DRUM_VELOCITIES = (40, 64, 88, 112, 127)
ACOUSTIC_KITS = (0, 8, 16, 32, 40)  # GM kit numbers: standard, room, power, jazz, brush
DRUM_SLOT_S, DRUM_HOLD_S, DRUM_CLIP_S = 1.6, 0.3, 1.5


def note_plan(seed: int) -> list[tuple[str, int, synth.Note]]:
  """(family, program, note): each program plays each pitch class once, in an octave
  drawn within its family's range, at a velocity drawn in 70..115."""
  rng = np.random.default_rng(seed)
  plan = []
  for family, (programs, (low, high)) in FAMILIES.items():
    for program in programs:
      for pc in range(12):
        keys = [k for k in range(low, high + 1) if k % 12 == pc]
        plan.append((family, program, synth.Note(0, program, int(rng.choice(keys)),
                                                 int(rng.integers(70, 116)))))
  return plan


def _merged(members: dict[str, set]) -> dict[str, str]:
  return folds.merged_groups(members)


def note_tasks(seed: int, path: Path = sources.MUSESCORE) -> tuple[Task, Task]:
  """Instrument family and pitch class, the same rendered notes labelled two ways."""
  bank = soundfont.read(path)
  plan = note_plan(seed)
  used: dict[str, set] = {}
  for _, program, note in plan:
    used.setdefault(f"program{program:03d}", set()).update(
        bank.samples(0, program, note.key, note.velocity))
  group = _merged(used)
  waves = synth.render_notes(path, [n for *_, n in plan], NOTE_SLOT_S, NOTE_HOLD_S,
                             NOTE_CLIP_S)
  family_clips, pitch_clips = [], []
  for (family, program, note), wave in zip(plan, waves):
    key = f"notes/p{program:03d}_k{note.key:03d}"
    g = group[f"program{program:03d}"]
    family_clips.append(Clip(key, wave, family, g))
    pitch_clips.append(Clip(key, wave, PITCH_CLASSES[note.key % 12], g))
  return (Task("instrument_family", 2.0, "GM instrument family (9) of a rendered note, "
               "MuseScore General; group: program (merged where samples are shared)",
               tuple(family_clips)),
          Task("pitch_class", 2.0, "pitch class (12) of a rendered note, octave and "
               "instrument varying; group: program (merged where samples are shared)",
               tuple(pitch_clips)))


def drum_kits() -> list[tuple[str, Path, int, int]]:
  """(kit name, SoundFont, bank, program) of every kit the drum task plays."""
  kits = [(p.stem.replace("_LV2", "").lower(), p, 0, 0) for p in sources.AVL_KITS]
  for name, path in (("musescore", sources.MUSESCORE), ("csound", sources.CSOUND_BANK)):
    kits += [(f"{name}_kit{k:03d}", path, 128, k) for k in ACOUSTIC_KITS]
  return kits


def drum_task(seed: int) -> Task:
  """Every kit's pieces for each drum type at 5 velocities. A piece whose samples another
  piece already plays in full is not played again (GM banks reuse one kick in several
  kits); pieces sharing some sample are merged into one group."""
  del seed  # the plan is fixed; levels are drawn when clips are written
  banks: dict[Path, soundfont.SoundFont] = {}
  pieces = []  # (piece, kit path, drum type, notes)
  used: dict[str, set] = {}
  seen: list[set] = []
  for kit, path, bank_no, program in drum_kits():
    bank = banks.setdefault(path, soundfont.read(path))
    if (bank_no, program) not in bank.presets:
      continue
    for drum, keys in DRUM_KEYS.items():
      for key in keys:
        samples = {(path.name, s) for v in DRUM_VELOCITIES
                   for s in bank.samples(bank_no, program, key, v)}
        if not samples or samples in seen:
          continue
        seen.append(samples)
        piece = f"{kit}_k{key:03d}"
        used[piece] = samples
        pieces.append((piece, path, drum, [synth.Note(bank_no, program, key, v)
                                           for v in DRUM_VELOCITIES]))
  group = _merged(used)
  out = []
  for path in dict.fromkeys(p for _, p, _, _ in pieces):
    mine = [p for p in pieces if p[1] == path]
    waves = iter(synth.render_notes(path, [n for *_, notes in mine for n in notes],
                                    DRUM_SLOT_S, DRUM_HOLD_S, DRUM_CLIP_S))
    for piece, _, drum, notes in mine:
      for note in notes:
        out.append(Clip(f"drums/{piece}_v{note.velocity:03d}", next(waves), drum, group[piece]))
  return Task("drum_type", 1.5, "drum type (7) of one hit, 2 recorded kits and 10 GM "
              "kits at 5 velocities; group: kit piece (merged where samples are shared)",
              tuple(out))
