"""Any audio folder or TFDS dataset -> log-mel shards: `python -m data_pipelines.prepare`.

    python -m data_pipelines.prepare --input=DIR --output=OUT --frontend=audio_jepa \\
        [--labels=CSV | --labels_from=folders] [--workers=N] [--on_error=skip|fail] \\
        [--max_seconds=60] [--min_seconds=0.1] [--drop_silent] [--max_shard_mb=256]
    python -m data_pipelines.prepare --tfds=NAME --data_dir=DIR [--split=train] --output=OUT

Input: every file under --input (recursively, following links to folders) whose extension
is one of audio_io.AUDIO_EXTENSIONS, in sorted order of its path relative to --input. With
--labels, the CSV (`filename,label[,fold][,split]`, filename relative to --input) lists the
files instead; audio files it does not name are ignored (and counted). With
--labels_from=folders, a file's class is the first folder under --input that holds it.
Classes go to metadata `label_maps` ({"label": [names]}, plus "fold"/"split" when the CSV
has them) and each record's labels as indices into those lists.

Bad input (audio_io gives the reasons): a file that cannot be used (empty, no frames,
truncated, corrupt, not audio, unreadable, a broken link, NaN/inf samples, shorter than
--min_seconds, a labels CSV row naming a missing file or with an empty label) is an error;
a file used after a fix (downmixed, resampled, split at --max_seconds, all silent: kept
unless --drop_silent) is a warning. --on_error=skip (default) lists every error in
errors.csv and every warning in warnings.csv and prints counts; --on_error=fail stops at
the first error, naming the file, and keeps the finished units for a later run.

How: the input list is cut into work units of consecutive items. A worker process turns a
unit into its own shard file(s) `unit-UUUUU-PP.array_record` and a sidecar
`units/unit-UUUUU.json` (fingerprint, counts, mel moments, errors, warnings, examples),
both written under temporary names and renamed, so a killed run leaves no half unit that
counts. A unit is done when its sidecar's fingerprint (its items' paths, sizes, mtimes and
labels, the options and the front end) is the current one and its shard files are there.
When every unit is done, the sidecars are merged into `metadata.json` (what
shards.ShardSource reads; written last), `examples.csv` (id, source path, segment, start,
length, shard, labels), `errors.csv` and `warnings.csv` (path, reason).

Running again: with the same input and options, nothing is done and nothing is written. If
files were added, removed or changed, the units whose items changed are redone (adding or
removing a file renumbers the list, so that redoes every unit). Other options or another
--input than the folder was made with are refused, naming what changed.

Example ids: item i of N (0-based, in list order) gives id i to its first segment and
i + s * N to segment s of a file split at --max_seconds, so ids are unique, stable and, for
unsplit files, equal to the file's position. Ids stay below 2**31 (training batches carry
them as int32); a file that would pass that is an error asking for a larger --max_seconds.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import dataclasses
import fcntl
import functools
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np

from data_pipelines import audio_io, shards
from data_pipelines.frontends import FrontEnd, get_frontend

# Bump when the same input and options would give different output: older folders redo.
PREPARE_VERSION = 1
UNITS_DIR = "units"
PLAN_FILE = "plan.json"
EXAMPLES_FILE, ERRORS_FILE, WARNINGS_FILE = "examples.csv", "errors.csv", "warnings.csv"
LABEL_TASK = "label"
EXTRA_LABEL_COLUMNS = ("fold", "split")  # recorded as label tasks of their own
ON_ERROR = ("skip", "fail")
MAX_FILES_PER_UNIT = 256  # ~1.5 s of work for 10 s clips: process overheads vanish
TARGET_UNITS = 64  # smaller corpora get smaller units: a smooth bar, busy workers
MAX_ID = 2**31 - 1
_UNIT_SHARD = re.compile(r"unit-\d+-\d+\.array_record")
_NAME_TASKS = (LABEL_TASK,) + EXTRA_LABEL_COLUMNS  # the class-name columns of examples.csv


class PrepareError(Exception):
  """Input, options or output folder that cannot be used; the message says what to do."""


class ItemFailed(Exception):
  """The first unusable item under --on_error=fail."""

  def __init__(self, key: str, reason: str):
    super().__init__(key, reason)
    self.key, self.reason = key, reason

  def __str__(self) -> str:
    return f"{self.key}: {self.reason}"


class _Stopped(Exception):
  """A worker noticed the stop flag between two files."""


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
class Item:
  index: int  # position in the input list: the id of the item's first example
  key: str  # path relative to --input (POSIX), or the TFDS index
  labels: tuple[tuple[str, str], ...] = ()  # (task, class name)
  stamp: str = ""  # size and mtime: a changed file changes its unit's fingerprint


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


@dataclasses.dataclass(frozen=True)
class Summary:
  state: str  # "prepared", "up to date" or "partial" (unit_limit reached)
  output: Path
  num_examples: int
  num_items: int
  errors: list[tuple[str, str]]
  warnings: list[tuple[str, str]]
  units_done_now: int
  units_total: int
  ignored: int  # audio files the labels CSV does not name
  seconds: float  # wall time of this run


def _digest(*parts) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


# --- sources: where items come from ------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FolderSource:
  root: Path

  def describe(self) -> dict:
    return {"input": str(self.root)}

  def key(self, item: Item) -> str:
    return item.key

  def reader(self, item: Item, sample_rate: int, max_seconds: float):
    return audio_io.AudioReader(self.root / item.key, sample_rate, max_seconds or None), {}


@dataclasses.dataclass(frozen=True)
class TfdsSource:
  """A TFDS dataset read through data_pipelines.tfds_audio (opened lazily per process)."""
  name: str
  data_dir: str
  split: str

  def describe(self) -> dict:
    return {"tfds": self.name, "data_dir": self.data_dir, "split": self.split}

  def open(self):
    return _open_tfds(self.name, self.data_dir, self.split)

  def key(self, item: Item) -> str:
    return str(self.open().key(item.index))

  def reader(self, item: Item, sample_rate: int, max_seconds: float):
    wave, rate, label = self.open().load(item.index)
    reader = audio_io.AudioReader(self.key(item), sample_rate, max_seconds or None,
                                  samples=wave, samples_rate=rate)
    return reader, ({} if label is None else {LABEL_TASK: str(label)})


_TFDS_OPEN: dict[tuple[str, str, str], object] = {}


def _open_tfds(name: str, data_dir: str, split: str):
  """One open tfds_audio source per process (workers reopen it by its three strings)."""
  key = (name, data_dir, split)
  if key not in _TFDS_OPEN:
    try:
      from data_pipelines import tfds_audio
    except ImportError as e:
      raise PrepareError(f"--tfds needs data_pipelines.tfds_audio, which cannot be "
                         f"imported ({e})") from None
    try:
      _TFDS_OPEN[key] = tfds_audio.open_source(name, data_dir, split)
    except (ValueError, OSError) as e:  # no such dataset or split, no audio feature, ...
      raise PrepareError(f"--tfds {name}: {e}") from None
  return _TFDS_OPEN[key]


# --- listing the input -------------------------------------------------------------------

def list_audio_files(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
  """Sorted POSIX paths (relative to root) of files with audio extensions, and
  (path, reason) for folders that cannot be listed. Follows links to folders once."""
  found, problems, seen_dirs = [], [], set()

  def on_error(e: OSError) -> None:
    problems.append((_relative(root, Path(e.filename)), f"folder cannot be listed "
                                                        f"({(e.strerror or str(e)).lower()})"))

  for folder, dirs, files in os.walk(root, onerror=on_error, followlinks=True):
    real = os.path.realpath(folder)
    if real in seen_dirs:  # a link back up the tree
      dirs[:] = []
      continue
    seen_dirs.add(real)
    dirs.sort()
    for name in files:
      if os.path.splitext(name)[1].lower() in audio_io.AUDIO_EXTENSIONS:
        found.append(_relative(root, Path(folder) / name))
  return sorted(found), problems


def _relative(root: Path, path: Path) -> str:
  return PurePosixPath(path.relative_to(root)).as_posix()


def _stamp(path: Path) -> str:
  try:
    info = path.stat()
  except OSError:
    try:
      info = path.lstat()  # a broken link: its own stamp
    except OSError:
      return "missing"
  return f"{info.st_size}:{info.st_mtime_ns}"


def read_labels_csv(csv_path: Path, root: Path) -> tuple[dict[str, dict[str, str]],
                                                           list[tuple[str, str]], set[str]]:
  """{filename: {task: class}} for usable rows, (path, reason) for the others, and every
  filename the CSV names."""
  try:
    text = csv_path.read_text(encoding="utf-8-sig")
  except (OSError, UnicodeDecodeError) as e:
    raise PrepareError(f"cannot read --labels {csv_path} ({e})") from None
  reader = csv.DictReader(io.StringIO(text))
  columns = [c.strip() for c in reader.fieldnames or []]
  known = ("filename", LABEL_TASK) + EXTRA_LABEL_COLUMNS
  missing = [c for c in ("filename", LABEL_TASK) if c not in columns]
  unknown = [c for c in columns if c not in known]
  if missing or unknown:
    raise PrepareError(f"--labels {csv_path}: header {','.join(columns) or '(empty)'} "
                       + (f"lacks {', '.join(missing)} " if missing else "")
                       + (f"has unknown {', '.join(unknown)} " if unknown else "")
                       + f"(columns: filename,label[,{'][,'.join(EXTRA_LABEL_COLUMNS)}])")
  reader.fieldnames = columns
  rows, problems, first_row = {}, [], {}
  for record in reader:
    where = f"labels CSV row {reader.line_num}"
    name = (record.get("filename") or "").strip()
    name = PurePosixPath(name).as_posix() if name else name  # ./a.wav and a.wav: one file
    label = (record.get(LABEL_TASK) or "").strip()
    path = PurePosixPath(name)
    if not name:
      problems.append((f"{csv_path.name}:{reader.line_num}", f"{where}: empty filename"))
    elif path.is_absolute() or ".." in path.parts:
      problems.append((name, f"{where}: the filename must be relative to --input, inside it"))
    elif name in first_row:
      problems.append((name, f"{where}: listed again (first at row {first_row[name]})"))
    elif not label:
      problems.append((name, f"{where}: empty label"))
    elif ";" in label:
      problems.append((name, f"{where}: several labels ({label!r}); mel shards hold one "
                             f"class per task"))
    elif not ((root / name).exists() or (root / name).is_symlink()):
      problems.append((name, f"{where}: named in the labels CSV but not found under --input"))
    else:
      rows[name] = {LABEL_TASK: label} | {
          c: (record.get(c) or "").strip() for c in EXTRA_LABEL_COLUMNS
          if (record.get(c) or "").strip()}
    first_row.setdefault(name, reader.line_num)
  if not rows and not problems:
    raise PrepareError(f"--labels {csv_path} has no rows")
  return rows, problems, set(first_row)


def _label_maps(items: list[Item]) -> dict[str, list[str]]:
  tasks: dict[str, set[str]] = {}
  for item in items:
    for task, name in item.labels:
      tasks.setdefault(task, set()).add(name)
  return {task: sorted(names) for task, names in sorted(tasks.items())}


def _folder_items(root: Path, labels_csv: Path | None, labels_from: str | None):
  files, problems = list_audio_files(root)
  ignored = 0
  if labels_csv is not None:
    rows, row_problems, named = read_labels_csv(labels_csv, root)
    problems += row_problems
    ignored = len(set(files) - named)
    entries = [(name, tuple(sorted(rows[name].items()))) for name in sorted(rows)]
  elif labels_from == "folders":
    entries = []
    for name in files:
      parts = PurePosixPath(name).parts
      if len(parts) < 2:
        problems.append((name, "not inside a class folder (--labels_from=folders takes the "
                               "first folder under --input as the class)"))
      else:
        entries.append((name, ((LABEL_TASK, parts[0]),)))
  else:
    entries = [(name, ()) for name in files]
  items = [Item(i, name, labels, _stamp(root / name))
           for i, (name, labels) in enumerate(entries)]
  return items, sorted(problems), ignored


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
    items, problems, ignored = _folder_items(source.root, labels_csv, labels_from)
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


# --- one unit: decode, mel, write (runs in a worker process) -----------------------------

@dataclasses.dataclass(frozen=True)
class _UnitContext:
  """What every unit of a run shares; sent to each worker once."""
  source: FolderSource | TfdsSource
  options: Options
  frontend: FrontEnd
  label_maps: dict[str, list[str]]
  num_items: int
  out_dir: Path
  fail_fast: bool


def _label_indices(ctx: _UnitContext, names: dict[str, str], where: str) -> dict[str, int]:
  indices = {}
  for task, name in names.items():
    if task not in ctx.label_maps:
      continue  # a TFDS source that does not name its classes: examples.csv keeps them
    try:
      indices[task] = ctx.label_maps[task].index(name)
    except ValueError:
      raise audio_io.AudioError(where, f"{task} {name!r} is not one of the dataset's "
                                       f"{len(ctx.label_maps[task])} classes") from None
  return indices


def _prepare_item(ctx: _UnitContext, item: Item) -> tuple[list, list[str], str]:
  """-> ([(id, segment, start_s, seconds, float16 mel, its Moments, {task: index},
  {task: name})], warnings, key). Raises AudioError when the item cannot be used."""
  options, frontend = ctx.options, ctx.frontend
  key = ctx.source.key(item)
  reader, source_labels = ctx.source.reader(item, frontend.sample_rate, options.max_seconds)
  with reader:
    seconds = reader.frames / reader.source_rate
    if seconds < options.min_seconds:
      raise audio_io.AudioError(key, f"too short ({seconds:.3f} s < --min_seconds="
                                     f"{options.min_seconds:g})")
    last_id = item.index + (len(reader.bounds) - 1) * ctx.num_items
    if last_id > MAX_ID:
      raise audio_io.AudioError(key, f"{len(reader.bounds)} segments would need example ids "
                                     f"beyond 2**31; raise --max_seconds")
    names = dict(item.labels) | source_labels
    indices = _label_indices(ctx, names, key)
    examples = []
    for s, wave in enumerate(reader.segments()):
      mel = frontend.logmel(wave).astype(shards.STORED_DTYPE)
      moments = shards.Moments()
      moments.add(mel)  # of the values as stored, i.e. what training reads
      if not math.isfinite(moments.total_sq) or mel.shape[0] != frontend.n_mels:
        raise audio_io.AudioError(key, f"the {frontend.name} front end gave features of "
                                       f"shape {mel.shape} with NaN or inf values")
      start = reader.bounds[s][0] / reader.source_rate
      examples.append((item.index + s * ctx.num_items, s, start,
                       wave.size / frontend.sample_rate, mel, moments, indices, names))
    warnings = list(reader.warnings)
    if reader.silent:
      action = "dropped (--drop_silent)" if options.drop_silent else "kept"
      warnings.append(f"all silent (no sample reaches {audio_io.SILENCE_DBFS:g} dBFS): "
                      f"{action}")
      if options.drop_silent:
        examples = []
  return examples, warnings, key


def _unit_shard_name(unit: Unit, part: int) -> str:
  return f"{unit.name}-{part:02d}.array_record"


def _run_unit(ctx: _UnitContext, unit: Unit, stop=None) -> dict:
  """Writes the unit's shard file(s) and sidecar; returns the sidecar. `stop` (an Event)
  is checked between files: set, the unit is abandoned and leaves nothing behind."""
  units_dir = ctx.out_dir / UNITS_DIR
  tmp = units_dir / f".tmp-{unit.name}-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  try:
    errors, warnings, rows, moments, seconds = [], [], [], shards.Moments(), 0.0
    with shards.PartWriter(lambda p: tmp / _unit_shard_name(unit, p),
                           int(ctx.options.max_shard_mb * 2**20),
                           options=shards.WRITER_OPTIONS) as writer:
      for item in unit.items:
        if stop is not None and stop.is_set():
          raise _Stopped()
        try:
          examples, item_warnings, key = _prepare_item(ctx, item)
        except audio_io.AudioError as e:
          key, reason = _error_key(ctx, item), e.reason
        except Exception as e:  # noqa: BLE001 - a decoder bug must not sink the corpus
          key, reason = _error_key(ctx, item), f"failed ({type(e).__name__}: {e})"
        else:
          warnings += [(key, w) for w in item_warnings]
          for example_id, segment, start, length, mel, mel_moments, indices, names in examples:
            writer.write(shards.encode_record(example_id, mel, indices))
            moments.merge(mel_moments)
            seconds += length
            rows.append([example_id, key, segment, round(start, 6), round(length, 6),
                         writer.parts[-1].name] + [names.get(t, "") for t in _NAME_TASKS])
          continue
        if ctx.fail_fast:
          raise ItemFailed(key, reason)
        errors.append((key, reason))
    shard_files = []
    for part in writer.parts:
      shard_files.append({"name": part.name, "bytes": part.stat().st_size})
      os.replace(part, ctx.out_dir / part.name)
    sidecar = {"unit": unit.index, "fingerprint": unit.fingerprint, "shards": shard_files,
               "num_examples": len(rows), "seconds": seconds, "moments": moments.to_dict(),
               "errors": errors, "warnings": warnings, "examples": rows}
    (tmp / "sidecar.json").write_text(json.dumps(sidecar))
    os.replace(tmp / "sidecar.json", units_dir / f"{unit.name}.json")  # the unit is done
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return sidecar


def _error_key(ctx: _UnitContext, item: Item) -> str:
  try:
    return ctx.source.key(item)
  except Exception:  # noqa: BLE001 - reading a TFDS key may be what failed
    return f"index {item.index}"


# --- worker processes ----------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(ctx: _UnitContext, stop) -> None:
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
  signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler (fork copies it)
  _TFDS_OPEN.clear()  # a forked copy of the parent's reader may share its threads' state
  _WORKER.update(ctx=ctx, stop=stop)


def _run_unit_in_worker(unit: Unit) -> dict:
  return _run_unit(_WORKER["ctx"], unit, _WORKER["stop"])


def _warm_up(frontend: FrontEnd) -> None:
  """Runs the decode -> resample -> mel path once on a quarter second of silence: librosa
  imports its parts lazily (seconds), and forked workers then inherit them all."""
  reader = audio_io.AudioReader("warm-up", frontend.sample_rate,
                                samples=np.zeros(11025, np.float32), samples_rate=44100)
  with reader:
    for wave in reader.segments():
      frontend.logmel(wave)


def _mp_context():
  """fork starts workers in milliseconds with everything imported and warmed up. A parent
  that holds jax (threads, device state) must not fork: a fork server, started clean,
  imports the decode and mel modules once and the workers fork from it."""
  if "jax" not in sys.modules and sys.platform == "linux":
    return multiprocessing.get_context("fork")
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload(
      ["data_pipelines.prepare", "librosa.core.spectrum", "librosa.core.audio"])
  return context


# --- the output folder ---------------------------------------------------------------------

def _plan_record(plan: Plan, labels_mode: str) -> dict:
  return {"prepare_version": PREPARE_VERSION, "source": plan.source.describe(),
          "labels": labels_mode, "options": dataclasses.asdict(plan.options),
          "frontend": plan.frontend.to_dict()}


def _check_output(out_dir: Path, record: dict) -> None:
  """Refuses an output folder that is a file, someone else's folder, or was made with
  other options or from another input."""
  if out_dir.exists() and not out_dir.is_dir():
    raise PrepareError(f"--output {out_dir} is a file; give a folder")
  plan_path = out_dir / UNITS_DIR / PLAN_FILE
  if not plan_path.is_file():  # a first run killed at once leaves only units/
    if out_dir.is_dir() and any(p.name != UNITS_DIR for p in out_dir.iterdir()):
      raise PrepareError(f"--output {out_dir} is not empty and was not made by prepare; "
                         f"give a new or empty folder")
    return
  try:
    old = json.loads(plan_path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise PrepareError(f"{plan_path} is unreadable ({e}); delete {out_dir} to start over")
  changes = _differences(old, record)
  if changes:
    raise PrepareError(f"{out_dir} was prepared with other settings ({'; '.join(changes)}); "
                       f"use another --output, or delete {out_dir} to start over")


def _differences(old: dict, new: dict) -> list[str]:
  changes = []
  for section in ("prepare_version", "source", "labels"):
    if old.get(section) != new[section]:
      changes.append(f"{section} was {old.get(section)}, now {new[section]}")
  old_options = old.get("options", {})
  for name, value in new["options"].items():
    if old_options.get(name) != value:
      changes.append(f"--{name} was {old_options.get(name)}, now {value}")
  if old.get("frontend") != new["frontend"] and old_options.get("frontend") == new[
      "options"]["frontend"]:
    differing = sorted(k for k, v in new["frontend"].items()
                       if old.get("frontend", {}).get(k) != v)
    changes.append(f"the {new['options']['frontend']} recipe changed in {', '.join(differing)}")
  return changes


def _load_done(out_dir: Path, unit: Unit) -> dict | None:
  """The unit's sidecar if the unit is done with its current fingerprint, else None."""
  try:
    sidecar = json.loads((out_dir / UNITS_DIR / f"{unit.name}.json").read_text())
  except (OSError, json.JSONDecodeError):
    return None
  if sidecar.get("fingerprint") != unit.fingerprint:
    return None
  for shard in sidecar["shards"]:
    path = out_dir / shard["name"]
    if not path.is_file() or path.stat().st_size != shard["bytes"]:
      return None
  return sidecar


def _remove_stale(out_dir: Path, done: dict[int, dict], units: tuple[Unit, ...]) -> None:
  """Deletes shard files, sidecars and temporaries no done unit owns (a changed input or
  a killed run leaves them)."""
  keep = {shard["name"] for sidecar in done.values() for shard in sidecar["shards"]}
  for path in out_dir.iterdir():
    if _UNIT_SHARD.fullmatch(path.name) and path.name not in keep:
      path.unlink()
  current = {f"{units[u].name}.json" for u in done}
  for path in (out_dir / UNITS_DIR).iterdir():
    if path.name.startswith(".tmp-"):
      shutil.rmtree(path, ignore_errors=True)
    elif path.name.startswith("unit-") and path.name not in current:
      path.unlink()


@contextlib.contextmanager
def _locked(out_dir: Path):
  """One prepare at a time per output folder."""
  (out_dir / UNITS_DIR).mkdir(parents=True, exist_ok=True)
  with open(out_dir / UNITS_DIR / ".lock", "a") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise PrepareError(f"another prepare is writing {out_dir}; wait for it to finish")
    yield


def _write_text(path: Path, text: str) -> None:
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def _csv_text(header: list[str], rows) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  return out.getvalue()


def _merge(plan: Plan, out_dir: Path, sidecars: list[dict], labels_mode: str) -> dict:
  """Writes examples.csv, errors.csv, warnings.csv and, last, metadata.json."""
  errors = sorted(list(plan.planning_errors) + [tuple(e) for s in sidecars for e in s["errors"]])
  warnings = [tuple(w) for s in sidecars for w in s["warnings"]]
  _write_text(out_dir / ERRORS_FILE, _csv_text(["path", "reason"], errors))
  _write_text(out_dir / WARNINGS_FILE, _csv_text(["path", "reason"], warnings))
  count = sum(s["num_examples"] for s in sidecars)
  if count == 0:
    raise PrepareError(f"no usable audio: all {len(plan.items)} input files failed; see "
                       f"{out_dir / ERRORS_FILE}")
  _write_text(out_dir / EXAMPLES_FILE, _csv_text(
      ["id", "path", "segment", "start_seconds", "seconds", "shard", LABEL_TASK,
       *EXTRA_LABEL_COLUMNS], (row for s in sidecars for row in s["examples"])))
  moments = shards.Moments()
  for s in sidecars:
    moments.merge(shards.Moments.from_dict(s["moments"]))
  mean, std = moments.mean_std()
  source = plan.source.describe()
  metadata = {
      "version": shards.FORMAT_VERSION, "frontend": plan.frontend.to_dict(),
      "num_examples": count, "total_seconds": sum(s["seconds"] for s in sidecars),
      "mean": mean, "std": std, "label_maps": plan.label_maps,
      "source": source.get("input") or f"tfds:{source['tfds']}/{source['split']}",
      "shards": [shard["name"] for s in sidecars for shard in s["shards"]],
      "prepare": {
          **_plan_record(plan, labels_mode), "plan_fingerprint": plan.fingerprint,
          "num_inputs": len(plan.items), "num_errors": len(errors),
          "num_warnings": len(warnings), "ignored_unlabelled_files": plan.ignored,
          "files": {"examples": EXAMPLES_FILE, "errors": ERRORS_FILE,
                    "warnings": WARNINGS_FILE}},
  }
  _write_text(out_dir / shards.METADATA_FILE, json.dumps(metadata, indent=2))
  return metadata


# --- running -------------------------------------------------------------------------------

def _progress(total: int, initial: int, enabled: bool):
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, unit="file", desc="prepare", file=sys.stderr,
              disable=None if enabled else True, dynamic_ncols=True, smoothing=0.1)


def _run_units(ctx: _UnitContext, pending: list[Unit], workers: int, make_bar) -> list[dict]:
  """Runs the pending units; returns their sidecars in completion order. Raises ItemFailed
  (fail policy) or KeyboardInterrupt after stopping every worker."""
  finished = []
  if not pending:
    return finished
  _warm_up(ctx.frontend)
  if workers == 1:
    with make_bar() as bar:
      for unit in pending:
        finished.append(_run_unit(ctx, unit))
        bar.update(len(unit.items))
    return finished
  mp = _mp_context()
  stop = mp.Event()
  pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=mp,
                                                initializer=_init_worker, initargs=(ctx, stop))
  try:
    # Submitting starts the workers, before the bar starts its monitor thread.
    futures = {pool.submit(_run_unit_in_worker, unit): unit for unit in pending}
    with make_bar() as bar:
      for future in concurrent.futures.as_completed(futures):
        finished.append(future.result())
        bar.update(len(futures[future].items))
  except (concurrent.futures.process.BrokenProcessPool, BrokenPipeError) as e:
    raise PrepareError(f"a worker process died or could not start ({e}; killed, or out of "
                       f"memory on a huge file?); finished units are kept: run the same "
                       f"command again to resume, with fewer --workers if memory is short"
                       ) from None
  finally:
    stop.set()  # a no-op after success; otherwise running units stop at their next file
    pool.shutdown(wait=True, cancel_futures=True)
  return finished


def prepare(output: str | Path, *, input_dir: str | Path | None = None,
            tfds: tuple[str, str, str] | None = None, labels_csv: str | Path | None = None,
            labels_from: str | None = None, options: Options = Options(),
            workers: int | None = None, on_error: str = "skip",
            unit_limit: int | None = None, progress: bool = True, log=None) -> Summary:
  """Prepares `input_dir` (or the TFDS (name, data_dir, split)) into mel shards in `output`.

  Resumes what an earlier run with the same input and options left. `unit_limit` runs at
  most that many units now (the rest wait for a later run). Raises PrepareError for
  unusable options, input or output, ItemFailed under on_error="fail", and
  KeyboardInterrupt when interrupted (finished units are kept).
  """
  started = time.perf_counter()
  log = log or (lambda message: print(message, file=sys.stderr, flush=True))
  source, labels_mode = _source(input_dir, tfds, labels_csv, labels_from)
  if on_error not in ON_ERROR:
    raise PrepareError(f"--on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
  workers = len(os.sched_getaffinity(0)) if workers is None else workers
  if workers < 1:
    raise PrepareError(f"--workers must be >= 1, got {workers}")
  out_dir = Path(output).absolute()
  plan = make_plan(source, options, labels_csv=labels_csv and Path(labels_csv),
                   labels_from=labels_from)
  record = _plan_record(plan, labels_mode)
  _check_output(out_dir, record)
  if on_error == "fail" and plan.planning_errors:
    raise ItemFailed(*plan.planning_errors[0])
  with _locked(out_dir):
    done = {u.index: s for u in plan.units if (s := _load_done(out_dir, u)) is not None}
    metadata_path = out_dir / shards.METADATA_FILE
    if len(done) == len(plan.units) and _up_to_date(metadata_path, plan):
      metadata = json.loads(metadata_path.read_text())
      log(f"nothing to do: {out_dir} is up to date ({metadata['num_examples']} examples, "
          f"{metadata['prepare']['num_errors']} errors, "
          f"{metadata['prepare']['num_warnings']} warnings)")
      sidecars = [done[u.index] for u in plan.units]
      return _summary(plan, out_dir, sidecars, "up to date", 0, started)
    metadata_path.unlink(missing_ok=True)  # it no longer describes the folder
    _remove_stale(out_dir, done, plan.units)
    _write_text(out_dir / UNITS_DIR / PLAN_FILE, json.dumps(record, indent=2))
    pending = [u for u in plan.units if u.index not in done]
    if unit_limit is not None:
      pending = pending[:unit_limit]
    workers = min(workers, max(len(pending), 1))
    log(f"prepare: {len(plan.items)} inputs in {len(plan.units)} units, {len(done)} done "
        f"before, {len(pending)} to do now with {workers} worker(s) -> {out_dir}")
    ctx = _UnitContext(plan.source, plan.options, plan.frontend, plan.label_maps,
                       len(plan.items), out_dir, on_error == "fail")
    done_items = sum(len(plan.units[u].items) for u in done)
    make_bar = functools.partial(_progress, len(plan.items), done_items, progress)
    for sidecar in _run_units(ctx, pending, workers, make_bar):
      done[sidecar["unit"]] = sidecar
    if len(done) < len(plan.units):
      log(f"stopped after {len(pending)} units by the unit limit: {len(done)} of "
          f"{len(plan.units)} done; run again to continue")
      return _summary(plan, out_dir, list(done.values()), "partial", len(pending), started)
    sidecars = [done[u.index] for u in plan.units]
    _merge(plan, out_dir, sidecars, labels_mode)
  summary = _summary(plan, out_dir, sidecars, "prepared", len(pending), started)
  log(_describe(summary))
  return summary


def _up_to_date(metadata_path: Path, plan: Plan) -> bool:
  try:
    metadata = json.loads(metadata_path.read_text())
  except (OSError, json.JSONDecodeError):
    return False
  return metadata.get("prepare", {}).get("plan_fingerprint") == plan.fingerprint


def _source(input_dir, tfds, labels_csv, labels_from) -> tuple[FolderSource | TfdsSource, str]:
  if (input_dir is None) == (tfds is None):
    raise PrepareError("give exactly one of --input (an audio folder) or --tfds (a TFDS "
                       "dataset name with --data_dir)")
  if labels_csv is not None and labels_from is not None:
    raise PrepareError("give at most one of --labels and --labels_from")
  if labels_from not in (None, "folders"):
    raise PrepareError(f"--labels_from takes 'folders', got {labels_from!r}")
  if tfds is not None:
    if labels_csv is not None or labels_from is not None:
      raise PrepareError("--labels and --labels_from are for --input folders; a TFDS "
                         "dataset brings its own labels")
    name, data_dir, split = tfds
    if not data_dir:
      raise PrepareError("--tfds needs --data_dir (the folder holding the TFDS dataset)")
    return TfdsSource(name, str(Path(data_dir).absolute()), split), "tfds"
  root = Path(input_dir).absolute()
  if not root.is_dir():
    raise PrepareError(f"--input {input_dir} is not a folder" + (
        "" if root.exists() else " (it does not exist)"))
  if labels_csv is not None and not Path(labels_csv).is_file():
    raise PrepareError(f"--labels {labels_csv} is not a file")
  mode = "csv" if labels_csv is not None else (labels_from or "none")
  return FolderSource(root), mode


def _summary(plan: Plan, out_dir: Path, sidecars: list[dict], state: str, units_now: int,
             started: float) -> Summary:
  errors = sorted(list(plan.planning_errors) + [tuple(e) for s in sidecars for e in s["errors"]])
  return Summary(state, out_dir, sum(s["num_examples"] for s in sidecars), len(plan.items),
                 errors, [tuple(w) for s in sidecars for w in s["warnings"]], units_now,
                 len(plan.units), plan.ignored, time.perf_counter() - started)


def _kinds(entries: list[tuple[str, str]]) -> str:
  """'3 truncated, 2 empty file' : reasons counted with their details left out."""
  kinds = Counter(re.sub(r"\d+(\.\d+)?", "N", reason.split(" (")[0]).split(": ")[-1]
                  for _, reason in entries)
  return ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())


def _describe(summary: Summary) -> str:
  lines = [f"prepared {summary.num_examples} examples from {summary.num_items} inputs into "
           f"{summary.output} in {summary.seconds:.1f} s ({summary.units_done_now} of "
           f"{summary.units_total} units done in this run)",
           f"errors: {len(summary.errors)} (skipped; listed in {ERRORS_FILE})"
           + (f": {_kinds(summary.errors)}" if summary.errors else ""),
           f"warnings: {len(summary.warnings)} (listed in {WARNINGS_FILE})"
           + (f": {_kinds(summary.warnings)}" if summary.warnings else "")]
  if summary.ignored:
    lines.append(f"ignored: {summary.ignored} audio files that --labels does not name")
  return "\n".join(lines)


# --- command line --------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
  def error(self, message: str) -> None:  # one line, not usage + message
    print(f"error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog="python -m data_pipelines.prepare", description=__doc__.split("\n")[0],
              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--input", help="folder of audio files (searched recursively)")
  p.add_argument("--tfds", help="TFDS dataset name (instead of --input)")
  p.add_argument("--data_dir", help="folder holding the TFDS dataset")
  p.add_argument("--split", default="train", help="TFDS split (default train)")
  p.add_argument("--output", required=True, help="folder for the shards")
  p.add_argument("--frontend", default=Options.frontend, help="log-mel recipe")
  p.add_argument("--labels", help="CSV filename,label[,fold][,split] (relative to --input)")
  p.add_argument("--labels_from", choices=["folders"], help="class = first sub-folder")
  p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
  p.add_argument("--on_error", choices=ON_ERROR, default="skip",
                 help="skip: list unusable files in errors.csv; fail: stop at the first")
  p.add_argument("--max_seconds", type=float, default=Options.max_seconds,
                 help="split longer files into segments of at most this (0: never)")
  p.add_argument("--min_seconds", type=float, default=Options.min_seconds,
                 help="shorter files are errors")
  p.add_argument("--drop_silent", action="store_true",
                 help=f"drop all-silent clips (below {audio_io.SILENCE_DBFS:g} dBFS)")
  p.add_argument("--max_shard_mb", type=float, default=Options.max_shard_mb,
                 help="largest shard file (MiB)")
  p.add_argument("--no_progress", action="store_true", help="no progress bar")
  return p


def _raise_interrupt(signum, frame) -> None:
  raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  signal.signal(signal.SIGTERM, _raise_interrupt)  # kill: stop cleanly, keep finished units
  options = Options(frontend=args.frontend, max_seconds=args.max_seconds,
                    min_seconds=args.min_seconds, drop_silent=args.drop_silent,
                    max_shard_mb=args.max_shard_mb)
  try:
    prepare(args.output, input_dir=args.input,
            tfds=(args.tfds, args.data_dir, args.split) if args.tfds else None,
            labels_csv=args.labels, labels_from=args.labels_from, options=options,
            workers=args.workers, on_error=args.on_error, progress=not args.no_progress)
  except PrepareError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except ItemFailed as e:
    print(f"error: {e} (--on_error=fail stopped here; finished units are kept: fix or "
          f"remove the file, or use --on_error=skip, and run again)", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted: finished units are kept; run the same command again to resume",
          file=sys.stderr)
    return 130
  except OSError as e:  # e.g. a full disk or a read-only --output
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
