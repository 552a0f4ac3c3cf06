"""A labelled task before it is written: its clips with label and group, and the writer
that deals groups to folds and writes the task folder (audio/, meta.csv, task.json)."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.real_audio import clips, folds


@dataclasses.dataclass(frozen=True)
class Clip:
  key: str  # unique among all tasks' clips: tasks naming the same key share one file
  wave: np.ndarray = dataclasses.field(repr=False)
  label: str
  group: str  # clips of one group never straddle folds


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  unit_sec: float
  description: str
  clips: tuple[Clip, ...]


def file_name(key: str) -> str:
  return key.replace("/", "__") + ".wav"


def write_task(task: Task, task_dir: Path, written: dict[str, Path], seed: int) -> dict:
  """Writes the task folder; `written` maps clip keys to files already written (a clip of
  another task is hard-linked, not written again). Returns the task's summary."""
  (task_dir / "audio").mkdir(parents=True)
  labels = [c.label for c in task.clips]
  fold_of = folds.grouped_folds(labels, [c.group for c in task.clips])
  rng = np.random.default_rng(seed)
  rows = []
  for clip, fold in zip(task.clips, fold_of):
    path = task_dir / "audio" / file_name(clip.key)
    if clip.key in written:
      try:
        os.link(written[clip.key], path)
      except OSError:  # a file system without hard links
        shutil.copyfile(written[clip.key], path)
    else:
      clips.write_task_clip(path, clip.wave[:round(task.unit_sec * clips.SAMPLE_RATE)], rng)
      written[clip.key] = path
    rows.append((f"audio/{path.name}", clip.label, f"fold{fold + 1}", clip.group))
  with (task_dir / "meta.csv").open("w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(["filename", "label", "fold"])
    writer.writerows(row[:3] for row in rows)
  # Groups live beside meta.csv, not in it, so the folder stays in the basic format.
  with (task_dir / "groups.csv").open("w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(["filename", "group"])
    writer.writerows((row[0], row[3]) for row in rows)
  (task_dir / "task.json").write_text(json.dumps({"unit_sec": task.unit_sec}) + "\n")
  return {"description": task.description, "unit_sec": task.unit_sec,
          "clips": len(rows), "classes": len(set(labels)),
          "groups": len({c.group for c in task.clips}),
          "per_class": dict(sorted(Counter(labels).items())),
          "seconds": round(sum(min(len(c.wave) / clips.SAMPLE_RATE, task.unit_sec)
                               for c in task.clips), 1)}


