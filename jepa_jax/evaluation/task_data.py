"""Labelled evaluation data as an encoder's input, from either source the evaluation reads:

  a task folder: audio files plus meta.csv (`filename,label[,fold][,split]`, multi-label
    classes separated by ';'), the one labelled-task format (data_pipelines.tasks);
  prepared mel shards whose metadata has a `label` label map (and `fold` / `split` maps
    when the labels CSV had them), as `python -m data_pipelines.prepare --labels=CSV`
    writes; segments of a file split at --max_seconds are joined back into one clip.

An optional `task.json` beside meta.csv / metadata.json sets the task's clip length
`unit_sec` (EVAR's per-task setting): clips are cut to it, from the start for embeddings
and evaluation, at a random offset for fine-tuning batches, and padded when shorter.
Without it every clip is used whole.

Padding, wherever a clip or its last chunk is padded (here, features.chunk, fine-tuning,
HEAR), is `pad_value(frontend_meta, clip)`: the front end's `pad_value` of that clip, the
value training crops pad it with, as encoder input.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from data_pipelines import audio_io, frontends, shards
from data_pipelines import tasks as tasks_lib

TASK_SETTINGS_FILE = "task.json"
TASK_SETTINGS = ("unit_sec",)


@dataclasses.dataclass(frozen=True)
class LabelledTask:
  name: str
  source: Path             # the task folder or shard directory
  labels: tuple[tuple[str, ...], ...]  # class names of each clip
  folds: tuple[str | None, ...]
  splits: tuple[str | None, ...]
  label_names: tuple[str, ...]  # sorted
  multilabel: bool
  unit_sec: float | None
  fingerprint: str         # changes whenever the clips, labels or settings change

  def __len__(self) -> int:
    return len(self.labels)

  def targets(self) -> np.ndarray:
    """(n,) class indices, or (n, classes) multi-hot float32 for a multi-label task."""
    index = {name: i for i, name in enumerate(self.label_names)}
    if not self.multilabel:
      return np.array([index[labels[0]] for labels in self.labels], np.int32)
    y = np.zeros((len(self.labels), len(self.label_names)), np.float32)
    for row, labels in enumerate(self.labels):
      y[row, [index[label] for label in labels]] = 1.0
    return y


def _settings(source: Path, unit_sec: float | None) -> float | None:
  """unit_sec from the argument, else from the source's task.json, else None."""
  path = source / TASK_SETTINGS_FILE
  if unit_sec is None and path.is_file():
    try:
      settings = json.loads(path.read_text())
    except json.JSONDecodeError as err:
      raise ValueError(f"{path} is not valid JSON ({err}); write e.g. "
                       f"{{\"unit_sec\": 5.0}}") from err
    unknown = sorted(set(settings) - set(TASK_SETTINGS))
    if unknown:
      raise ValueError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: "
                       f"{', '.join(TASK_SETTINGS)}")
    unit_sec = settings.get("unit_sec")
  if unit_sec is not None and not (isinstance(unit_sec, (int, float)) and unit_sec > 0):
    raise ValueError(f"unit_sec of task {source} must be a positive number of seconds, "
                     f"got {unit_sec!r}")
  return None if unit_sec is None else float(unit_sec)


def fingerprint(*parts) -> str:
  """A short stable hash of JSON-able parts (what a cache key or a task's identity hashes)."""
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _from_folder(source: Path, unit_sec: float | None) -> tuple[LabelledTask, list[Path]]:
  task = tasks_lib.read_task(source)
  files = [(str(r.path), r.path.stat().st_size, r.path.stat().st_mtime_ns) for r in task.rows]
  meta = (source / tasks_lib.META_FILE).read_text()
  return LabelledTask(
      name=source.name, source=source, labels=tuple(r.labels for r in task.rows),
      folds=tuple(r.fold for r in task.rows), splits=tuple(r.split for r in task.rows),
      label_names=task.label_names, multilabel=task.multilabel, unit_sec=unit_sec,
      fingerprint=fingerprint("folder", meta, files, unit_sec)), [r.path for r in task.rows]


def _shard_clips(source: Path, num_examples: int) -> list[list[int]]:
  """Record ids of each clip, in segment order: examples.csv groups the segments of one
  file; without it every record is a clip of its own."""
  path = source / "examples.csv"
  if not path.is_file():
    return [[i] for i in range(num_examples)]
  clips: dict[str, list[tuple[int, int]]] = {}
  with path.open(newline="") as f:
    for row in csv.DictReader(f):
      clips.setdefault(row["path"], []).append((int(row["segment"] or 0), int(row["id"])))
  return [[i for _, i in sorted(segments)] for segments in clips.values()]


def _from_shards(source: Path, unit_sec: float | None):
  source_records = shards.ShardSource(source)
  metadata = source_records.metadata
  maps = metadata["label_maps"]
  if "label" not in maps:
    raise ValueError(f"{source}: the shards carry no 'label' label map; prepare them with "
                     f"--labels=CSV (filename,label[,fold][,split]) to evaluate on them")
  by_id = {source_records[i]["id"]: i for i in range(len(source_records))}
  clips = [[by_id[i] for i in ids] for ids in _shard_clips(source, len(source_records))]
  first = [source_records[ids[0]]["labels"] for ids in clips]

  def names(task: str) -> tuple[str | None, ...]:
    return tuple(maps[task][lab[task]] if task in maps and task in lab else None
                 for lab in first)

  labels = tuple(tuple(s.strip() for s in name.split(tasks_lib.LABEL_SEPARATOR))
                 for name in names("label"))
  splits = names("split")
  bad = sorted({s for s in splits if s is not None and s not in tasks_lib.SPLITS})
  if bad:
    raise ValueError(f"{source}: unknown split name(s) {bad}; use {', '.join(tasks_lib.SPLITS)}")
  task = LabelledTask(
      name=source.name, source=source, labels=labels, folds=names("fold"), splits=splits,
      label_names=tuple(sorted({n for lab in labels for n in lab})),
      multilabel=any(len(lab) > 1 for lab in labels), unit_sec=unit_sec,
      fingerprint=fingerprint("shards", metadata, unit_sec))
  return task, (source_records, clips)


def read(source: str | Path, unit_sec: float | None = None) -> LabelledTask:
  """The task at `source` (a task folder or a labelled shard directory)."""
  return _open(source, unit_sec)[0]


def _open(source: str | Path, unit_sec: float | None):
  source = Path(source).absolute()
  if not source.is_dir():
    raise FileNotFoundError(f"task {source} does not exist; give a task folder (audio plus "
                            f"{tasks_lib.META_FILE}) or a labelled mel shard directory")
  unit_sec = _settings(source, unit_sec)
  if (source / shards.METADATA_FILE).is_file():
    return _from_shards(source, unit_sec)
  if (source / tasks_lib.META_FILE).is_file():
    return _from_folder(source, unit_sec)
  raise FileNotFoundError(f"{source} is neither a task folder (no {tasks_lib.META_FILE}) nor "
                          f"a mel shard directory (no {shards.METADATA_FILE})")


def normalize(features: np.ndarray, frontend_meta: dict) -> np.ndarray:
  """(n_mels, T) front-end features -> the encoder's input, as in training: the scalar
  normalisation, then the learned per-mel-bin input transform if the export has one."""
  stats = frontend_meta["normalization"]
  x = (np.asarray(features, np.float64) - stats["mean"]) / stats["std"]
  if "input_norm" in frontend_meta:
    t = frontend_meta["input_norm"]
    x = x * np.asarray(t["scale"])[:, None] + np.asarray(t["shift"])[:, None]
  return x.astype(np.float32)


def frontend_of(frontend_meta: dict) -> frontends.FrontEnd:
  """The front end an export recorded, as it computed when the encoder was trained (a
  record older than a front-end field gets that field's value of then, not today's
  recipe: FrontEnd.recorded)."""
  return frontends.FrontEnd.recorded(frontend_meta["frontend"])


def pad_value(frontend_meta: dict, features: np.ndarray) -> np.ndarray:
  """(n_mels, 1): the encoder input of digital silence appended to the clip whose front-end
  features (before normalisation) are `features`: `FrontEnd.pad_value(features)`, the value
  training crops pad that clip with, normalised. The floor for the ln recipes; for
  dasheng's dB the clip max - top_db where that is above the amin floor."""
  frontend = frontend_of(frontend_meta)
  return normalize(np.full((frontend.n_mels, 1), frontend.pad_value(features)), frontend_meta)


def unit_frames(task: LabelledTask, frontend_meta: dict) -> int | None:
  """The task's clip length in front-end frames (None: whole clips)."""
  if task.unit_sec is None:
    return None
  return frontend_of(frontend_meta).frames(task.unit_sec)


def crop(mel: np.ndarray, frames: int | None, pad: np.ndarray, start: int = 0) -> np.ndarray:
  """`frames` columns of `mel` from `start`, padded with `pad` (n_mels, 1) when short."""
  if frames is None:
    return mel
  out = mel[:, start:start + frames]
  if out.shape[1] < frames:
    out = np.concatenate([out, np.broadcast_to(pad, (mel.shape[0], frames - out.shape[1]))], 1)
  return out.astype(np.float32)


def load_mels(source: str | Path, frontend_meta: dict, unit_sec: float | None = None,
              whole: bool = False, memo: dict | None = None
              ) -> tuple[LabelledTask, list[np.ndarray]]:
  """The task and each clip as encoder input (n_mels, T): load_clips without the pads."""
  task, mels, _ = load_clips(source, frontend_meta, unit_sec, whole, memo)
  return task, mels


def load_clips(source: str | Path, frontend_meta: dict, unit_sec: float | None = None,
               whole: bool = False, memo: dict | None = None
               ) -> tuple[LabelledTask, list[np.ndarray], list[np.ndarray]]:
  """The task, each clip as encoder input (n_mels, T), normalised as in training, and
  each clip's pad (`pad_value`, (n_mels, 1)), what it is padded with wherever it is. Clips
  are cut from their start to the task's unit_sec unless `whole` (fine-tuning crops at
  random itself). Shards must come from the encoder's front end. `memo`, shared between
  calls, makes an audio file that several tasks name (by inode: hard links too) load
  once and come back as the same arrays."""
  task, handle = _open(source, unit_sec)
  frontend = frontend_of(frontend_meta)
  frames = None if whole else unit_frames(task, frontend_meta)

  def prepared(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pad = pad_value(frontend_meta, raw)
    return crop(normalize(raw, frontend_meta), frames, pad), pad

  if isinstance(handle, list):  # audio files
    memo = {} if memo is None else memo
    clips = []
    for path in handle:
      st = path.stat()
      key = (st.st_dev, st.st_ino, st.st_mtime_ns, frontend, frames)
      if key not in memo:
        memo[key] = prepared(frontend.logmel(audio_io.load_audio(path, frontend.sample_rate)))
      clips.append(memo[key])
  else:
    records, ids_of_clips = handle
    shard_frontend = frontends.upgrade_record(records.metadata["frontend"])
    if shard_frontend != frontend.to_dict():
      differing = sorted(k for k, v in frontend.to_dict().items() if shard_frontend.get(k) != v)
      raise ValueError(
          f"{task.source} holds mels of front end {shard_frontend.get('name')!r} made with "
          f"other settings than the encoder's {frontend.name!r} input (differing in "
          f"{', '.join(differing)}): prepare the task again with --frontend={frontend.name}"
          + ("" if frontend == frontends.FRONTENDS.get(frontend.name) else
             " (the encoder was trained on an older version of that recipe, which "
             "prepare no longer makes: evaluate it on a task folder of audio)"))
    clips = [prepared(np.concatenate([np.asarray(records[i]["mel"], np.float32)
                                      for i in ids], 1)) for ids in ids_of_clips]
  return task, [mel for mel, _ in clips], [pad for _, pad in clips]


def _holdout(idx: np.ndarray, rng: np.random.Generator, fraction: float = 0.1):
  idx = rng.permutation(idx)
  k = max(1, int(round(len(idx) * fraction)))
  return np.sort(idx[k:]), np.sort(idx[:k])


def splits(task: LabelledTask, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """[(train, valid, test) row indices]: one entry for a split column, one per fold
  (leave one fold out, folds never reshuffled) for a fold column. 10 % of train is held
  out as validation when there is no valid split."""
  rng = np.random.default_rng(seed)
  if any(s is not None for s in task.splits):
    by = {s: np.array([i for i, v in enumerate(task.splits) if v == s], int)
          for s in tasks_lib.SPLITS}
    if not len(by["train"]) or not len(by["test"]):
      raise ValueError(f"task {task.source} needs rows in both the train and test splits")
    if not len(by["valid"]):
      by["train"], by["valid"] = _holdout(by["train"], rng)
    return [(by["train"], by["valid"], by["test"])]
  folds = sorted({f for f in task.folds if f is not None})
  if len(folds) < 2:
    raise ValueError(f"task {task.source}: meta.csv needs a split column (train/valid/test) "
                     f"or a fold column with at least two folds")
  out = []
  for fold in folds:
    test = np.array([i for i, f in enumerate(task.folds) if f == fold], int)
    rest = np.array([i for i, f in enumerate(task.folds) if f != fold], int)
    out.append((*_holdout(rest, rng), test))
  return out

