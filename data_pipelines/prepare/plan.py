"""The plan of a run: options, the input items cut into work units, their fingerprints."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

from data_pipelines import audio_io
from data_pipelines.frontends import FrontEnd, get_frontend
from data_pipelines.prepare.errors import PrepareError
from data_pipelines.prepare.labels import LABEL_TASK
from data_pipelines.prepare.sources import FolderSource, Item, TfdsSource, folder_items

# Bump when the same input and options would give different output: older folders redo.
PREPARE_VERSION = 1
MAX_FILES_PER_UNIT = 256  # ~1.5 s of work for 10 s clips: process overheads vanish
TARGET_UNITS = 64  # smaller corpora get smaller units: a smooth bar, busy workers


@dataclasses.dataclass(frozen=True)
class Options:
  frontend: str = "audio_jepa"
  max_seconds: float = 60.0  # longer files are split into segments; 0: never split
  min_seconds: float = 0.1  # shorter files are errors
  drop_silent: bool = False
  max_shard_mb: float = 256.0

  def check(self) -> None:
    if self.max_seconds < 0 or not math.isfinite(self.max_seconds):
      raise PrepareError(f"--max_seconds must be >= 0 (0: never split), got {self.max_seconds}")
    if self.min_seconds < 0 or (self.max_seconds and self.min_seconds > self.max_seconds):
      raise PrepareError(f"--min_seconds must be in [0, --max_seconds], got {self.min_seconds}")
    if not self.max_shard_mb > 0:
      raise PrepareError(f"--max_shard_mb must be > 0, got {self.max_shard_mb}")


@dataclasses.dataclass(frozen=True)
class Unit:
  index: int
  items: tuple[Item, ...]
  fingerprint: str

  @property
  def name(self) -> str:
    return f"unit-{self.index:05d}"


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything a run needs, identical in every run on the same input and options."""
  source: FolderSource | TfdsSource
  options: Options
  frontend: FrontEnd
  items: tuple[Item, ...]
  label_maps: dict[str, list[str]]
  planning_errors: tuple[tuple[str, str], ...]  # (path, reason) found before decoding
  ignored: int  # audio files the labels CSV does not name
  units: tuple[Unit, ...]

  @property
  def fingerprint(self) -> str:
    return _digest([u.fingerprint for u in self.units], self.planning_errors, self.ignored)


def _digest(*parts) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _label_maps(items: list[Item]) -> dict[str, list[str]]:
  tasks: dict[str, set[str]] = {}
  for item in items:
    for task, name in item.labels:
      tasks.setdefault(task, set()).add(name)
  return {task: sorted(names) for task, names in sorted(tasks.items())}


def _units(items: list[Item], fingerprint_base: list) -> tuple[Unit, ...]:
  per_unit = min(MAX_FILES_PER_UNIT, max(1, math.ceil(len(items) / TARGET_UNITS)))
  units = []
  for u, start in enumerate(range(0, len(items), per_unit)):
    chunk = tuple(items[start:start + per_unit])
    units.append(Unit(u, chunk, _digest(fingerprint_base, len(items), [
        (i.index, i.key, i.labels, i.stamp) for i in chunk])))
  return tuple(units)


def make_plan(source: FolderSource | TfdsSource, options: Options, *,
              labels_csv: Path | None = None, labels_from: str | None = None) -> Plan:
  options.check()
  try:
    frontend = get_frontend(options.frontend)
  except ValueError as e:
    raise PrepareError(str(e)) from None
  if isinstance(source, FolderSource):
    items, problems, ignored = folder_items(source.root, labels_csv, labels_from)
    if not items and not problems:
      raise PrepareError(
          f"no audio files under {source.root}" + (
              f" named by --labels {labels_csv}" if labels_csv else
              f" (looked for {', '.join(audio_io.AUDIO_EXTENSIONS)})"))
    label_maps = _label_maps(items)
  else:
    opened = source.open()
    items, problems, ignored = [Item(i, str(i)) for i in range(len(opened))], [], 0
    if not items:
      raise PrepareError(f"TFDS {source.name} split {source.split!r} in {source.data_dir} "
                         f"has no examples")
    names = getattr(opened, "label_names", None)
    label_maps = {LABEL_TASK: list(names)} if names else {}
  base = [PREPARE_VERSION, dataclasses.asdict(options), frontend.to_dict(), label_maps,
          source.describe()]
  return Plan(source, options, frontend, tuple(items), label_maps, tuple(problems), ignored,
              _units(items, base))


def plan_record(plan: Plan, labels_mode: str) -> dict:
  """What the output folder records of the plan (units/plan.json, metadata's "prepare")."""
  return {"prepare_version": PREPARE_VERSION, "source": plan.source.describe(),
          "labels": labels_mode, "options": dataclasses.asdict(plan.options),
          "frontend": plan.frontend.to_dict()}
