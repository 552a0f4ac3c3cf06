"""Labelled evaluation data as an encoder's input, from any source the evaluation reads
(the kind found from the path):

  a task folder: audio files plus meta.csv (`filename,label[,fold][,split]`, multi-label
    classes separated by ';'; filenames relative to the folder or its audio/ subfolder;
    other columns kept as information), the house's format (data_pipelines.tasks);
  a HEAR 2021 task folder (task_metadata.json, labelvocabulary.csv, per-split label
    files, audio under 16000/<split>/), as hear-preprocess writes it (hear_tasks);
  an EVAR metadata CSV (`file_name,label` and `split` or `fold`, extra columns kept),
    its audio under an audio root given with it (TaskSource; evar_tasks);
  prepared mel shards whose metadata has a `label` label map (and `fold` / `split` maps
    when the labels CSV had them), as `python -m data_pipelines.prepare --labels=CSV`
    writes; segments of a file split at --max_seconds are joined back into one clip.

An optional `task.json` beside meta.csv / metadata.json / task_metadata.json sets the
task's clip length `unit_sec` (EVAR's per-task setting): clips are cut to it, from the
start for embeddings and evaluation, at a random offset for fine-tuning batches, and
padded when shorter. Without it every clip is used whole (a HEAR task: its
sample_duration). Its other keys are kept as information (`LabelledTask.info`) with a
warning; a key that looks like a misspelt `unit_sec` is an error.

Padding, wherever a clip or its last chunk is padded (here, features.chunk, fine-tuning,
HEAR), is `pad_value(frontend_meta, clip)`: the front end's `pad_value` of that clip, the
value training crops pad it with, as encoder input.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np

from data_pipelines import audio_io, frontends, shards
from data_pipelines import tasks as tasks_lib
from jepa_jax.evaluation import evar_tasks, hear_tasks, labelled_task
from jepa_jax.evaluation.labelled_task import LabelledTask, fingerprint

TASK_SETTINGS_FILE = "task.json"
TASK_SETTINGS = ("unit_sec",)
KINDS = (f"a task folder (audio + {tasks_lib.META_FILE}), a HEAR task folder "
         f"({hear_tasks.METADATA_FILE}), an EVAR metadata .csv or a labelled mel shard "
         f"directory")


@dataclasses.dataclass(frozen=True)
class TaskSource:
  """A task's path with the folder an EVAR metadata CSV's file names are relative to
  (None: the CSV's own folder); any other source is its path alone."""
  path: Path
  audio_root: Path | None = None


def sources(paths: list, audio_root: str | Path | None = None) -> list:
  """The task sources a command names: each path, an EVAR CSV with `audio_root` (which
  applies to the CSVs only, so it must name at least one)."""
  if audio_root is None:
    return list(paths)
  if not any(evar_tasks.is_task(Path(p)) for p in paths):
    raise ValueError("--audio_root applies to EVAR metadata CSVs (--task=FILE.csv); no "
                     "task given is one")
  if not Path(audio_root).is_dir():
    raise FileNotFoundError(f"--audio_root {audio_root} is not a folder")
  return [TaskSource(Path(p), Path(audio_root)) if evar_tasks.is_task(Path(p)) else p
          for p in paths]


def _settings(source: Path, unit_sec: float | None) -> tuple[float | None, dict]:
  """unit_sec from the argument, else from the source's task.json, else None; and
  task.json's other keys (information, with a warning)."""
  path = source / TASK_SETTINGS_FILE
  extra = {}
  if path.is_file():
    try:
      settings = json.loads(path.read_text())
    except json.JSONDecodeError as err:
      raise ValueError(f"{path} is not valid JSON ({err}); write e.g. "
                       f"{{\"unit_sec\": 5.0}}") from err
    if not isinstance(settings, dict):
      raise ValueError(f"{path} holds no JSON object; write e.g. {{\"unit_sec\": 5.0}}")
    for key in settings:
      if key not in TASK_SETTINGS and (meant := tasks_lib.misspelt(key, TASK_SETTINGS,
                                                                  settings)):
        raise ValueError(f"{path}: key {key!r} looks like a misspelt {meant!r}; rename it "
                         f"(known: {', '.join(TASK_SETTINGS)}; others are kept as "
                         f"information)")
    extra = {k: v for k, v in settings.items() if k not in TASK_SETTINGS}
    labelled_task.warn_unused(path, "key(s)", sorted(extra))
    if unit_sec is None:
      unit_sec = settings.get("unit_sec")
  if unit_sec is not None and not (isinstance(unit_sec, (int, float)) and unit_sec > 0):
    raise ValueError(f"unit_sec of task {source} must be a positive number of seconds, "
                     f"got {unit_sec!r}")
  return (None if unit_sec is None else float(unit_sec)), extra


def _from_folder(source: Path, unit_sec: float | None) -> tuple[LabelledTask, list[Path]]:
  task = tasks_lib.read_task(source)
  meta = (source / tasks_lib.META_FILE).read_text()
  paths = [r.path for r in task.rows]
  labelled_task.warn_unused(source / tasks_lib.META_FILE, "column(s)", task.extra)
  return LabelledTask(
      name=source.name, source=source, labels=tuple(r.labels for r in task.rows),
      folds=tuple(r.fold for r in task.rows), splits=tuple(r.split for r in task.rows),
      label_names=task.label_names, multilabel=task.multilabel, unit_sec=unit_sec,
      fingerprint=fingerprint("folder", meta, labelled_task.file_stats(paths), unit_sec),
      columns={c: tuple(r.extra[i] for r in task.rows)
               for i, c in enumerate(task.extra)}), paths


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


def read(source, unit_sec: float | None = None) -> LabelledTask:
  """The task at `source` (a path of any kind KINDS lists, or a TaskSource)."""
  return _open(source, unit_sec)[0]


def _open(source, unit_sec: float | None):
  audio_root = source.audio_root if isinstance(source, TaskSource) else None
  source = Path(source.path if isinstance(source, TaskSource) else source).absolute()
  if evar_tasks.is_task(source):
    return evar_tasks.read(source, audio_root, unit_sec)
  if not source.is_dir():
    raise FileNotFoundError(f"task {source} does not exist; give {KINDS}")
  unit_sec, extra = _settings(source, unit_sec)
  if (source / shards.METADATA_FILE).is_file():
    task, handle = _from_shards(source, unit_sec)
  elif (source / tasks_lib.META_FILE).is_file():
    task, handle = _from_folder(source, unit_sec)
  elif hear_tasks.is_task(source):
    task, handle = hear_tasks.read(source, unit_sec)
  else:
    raise FileNotFoundError(f"{source} is none of {KINDS} (it has no {tasks_lib.META_FILE}, "
                            f"{hear_tasks.METADATA_FILE} or {shards.METADATA_FILE})")
  return (dataclasses.replace(task, info={**task.info, **extra}) if extra else task), handle


def reported(result: dict, task: LabelledTask) -> dict:
  """A protocol's result with the scores the task's metadata asks for (a HEAR task's
  `evaluation` list), in its order, and `metrics`: each of its names with the library
  score reporting it (None: none here). Tasks that name no metrics keep every score."""
  chosen = [score for _, score in task.metrics if score in result["scores"]]
  if not chosen:
    return result
  return {**result, "scores": {s: result["scores"][s] for s in dict.fromkeys(chosen)},
          "metrics": dict(task.metrics)}


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
  (leave one fold out, folds never reshuffled) for a fold column. Validation: the valid
  split, or 10 % of train held out when there is none; with folds, 10 % of the other
  folds' rows held out, or for a HEAR k-fold task (validation NEXT_FOLD) the next fold
  in sorted order, as hear-eval-kit's data_splits_from_folds."""
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
  rows = {f: np.array([i for i, v in enumerate(task.folds) if v == f], int) for f in folds}
  out = []
  for k, fold in enumerate(folds):
    if task.validation == labelled_task.NEXT_FOLD:
      valid = folds[(k + 1) % len(folds)]
      train = np.sort(np.concatenate([rows[f] for f in folds if f not in (fold, valid)]))
      out.append((train, rows[valid], rows[fold]))
    else:
      rest = np.array([i for i, f in enumerate(task.folds) if f != fold], int)
      out.append((*_holdout(rest, rng), rows[fold]))
  return out
