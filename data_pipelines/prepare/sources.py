"""Where items come from: an audio folder (its files listed, with their labels) or a TFDS
dataset."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path, PurePosixPath

from data_pipelines import audio_io
from data_pipelines.prepare.errors import PrepareError
from data_pipelines.prepare.labels import LABEL_TASK, read_labels_csv


@dataclasses.dataclass(frozen=True)
class Item:
  index: int  # position in the input list: the id of the item's first example
  key: str  # path relative to --input (POSIX), or the TFDS index
  labels: tuple[tuple[str, str], ...] = ()  # (task, class name)
  stamp: str = ""  # size and mtime: a changed file changes its unit's fingerprint


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
      from data_pipelines import tfds_audio  # lazy: it imports tensorflow_datasets
    except ImportError as e:
      raise PrepareError(f"--tfds needs data_pipelines.tfds_audio, which cannot be "
                         f"imported ({e})") from None
    try:
      _TFDS_OPEN[key] = tfds_audio.open_source(name, data_dir, split)
    except (ValueError, OSError) as e:  # no such dataset or split, no audio feature, ...
      raise PrepareError(f"--tfds {name}: {e}") from None
  return _TFDS_OPEN[key]


def forget_open_tfds() -> None:
  """Drops this process's open TFDS sources (a forked worker's copies of the parent's)."""
  _TFDS_OPEN.clear()


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


def folder_items(root: Path, labels_csv: Path | None, labels_from: str | None
                 ) -> tuple[list[Item], list[tuple[str, str]], int]:
  """The items of --input (the files --labels names, or every audio file) with their
  labels, (path, reason) for the files that cannot be items, and how many audio files
  --labels ignores."""
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
