"""HEAR 2021 task folders, as hear-preprocess writes them (hearpreprocess/pipeline.py,
FinalCombine), read into a LabelledTask:

  TASK/task_metadata.json   the task's config: embedding_type (scene | event),
                            prediction_type (multiclass | multilabel), split_mode
                            (trainvaltest | new_split_kfold | presplit_kfold), splits
                            (train, valid, test or fold00, fold01, ...), nfolds, evaluation
                            (metric names, the first one HEAR's primary), sample_duration
  TASK/labelvocabulary.csv  idx,label
  TASK/<split>.json         {filename: [label, ...]} per split (a scene task)
  TASK/<rate>/<split>/<filename>   the audio, at 16000 and/or 48000 Hz (16000 read where
                            present; the front end resamples either)

Only scene tasks (one label set per clip); event tasks (timestamped labels) are refused.
Splits as hear-eval-kit's get_splits_from_metadata: trainvaltest is one run; k-fold runs
test on each fold in turn, validate on the next one and train on the rest. The clip length
is sample_duration (clips are already trimmed to it) unless --unit_sec or a task.json sets
it. Metrics: each name of `evaluation` is reported by the library score of that name
(SCORES) where this task's prediction type has one; the others are named in a warning.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from jepa_jax.evaluation import labelled_task

METADATA_FILE = "task_metadata.json"
VOCABULARY_FILE = "labelvocabulary.csv"
RATES = ("16000", "48000")  # the audio folder read, first present (the front ends are 16 kHz)
TRAINVALTEST = ("train", "valid", "test")
KFOLD_MODES = ("new_split_kfold", "presplit_kfold")
PREDICTION_TYPES = ("multiclass", "multilabel")
# HEAR's score names (heareval/score.py available_scores) -> the library's score of the
# same definition. chroma_acc, aucroc and the event scores have none here.
SCORES = {"top1_acc": "accuracy", "pitch_acc": "accuracy", "mAP": "mAP", "d_prime": "d_prime"}


def is_task(path: Path) -> bool:
  return (path / METADATA_FILE).is_file()


def _json(path: Path, what: str):
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing: a HEAR task folder has {what}")
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise ValueError(f"{path} is not valid JSON ({err})") from None


def read_metadata(task_dir: Path) -> dict:
  """task_metadata.json, checked: a scene task of a known prediction type and split mode."""
  path = task_dir / METADATA_FILE
  metadata = _json(path, "its config there")
  if not isinstance(metadata, dict):
    raise ValueError(f"{path} holds no JSON object")
  if metadata.get("embedding_type") == "event":
    raise ValueError(f"{task_dir} is a HEAR event task (timestamped labels): event tasks "
                     f"are not supported yet; evaluate HEAR scene tasks")
  for key, known in (("embedding_type", ("scene",)), ("prediction_type", PREDICTION_TYPES),
                     ("split_mode", ("trainvaltest",) + KFOLD_MODES)):
    if metadata.get(key) not in known:
      raise ValueError(f"{path}: {key} is {metadata.get(key)!r}; known: {', '.join(known)}")
  return metadata


def split_names(metadata: dict, where: Path) -> tuple[str, ...]:
  """The task's splits: `splits` as written, else what split_mode and nfolds make."""
  kfold = metadata["split_mode"] in KFOLD_MODES
  nfolds = metadata.get("nfolds")
  splits = metadata.get("splits")
  if splits is None:
    if not kfold:
      splits = TRAINVALTEST
    elif isinstance(nfolds, int):
      splits = [f"fold{i:02d}" for i in range(nfolds)]
    else:
      raise ValueError(f"{where}: split_mode {metadata['split_mode']} needs `splits` or "
                       f"`nfolds`")
  if not (isinstance(splits, list | tuple) and all(isinstance(s, str) for s in splits)):
    raise ValueError(f"{where}: splits must be a list of names, got {splits!r}")
  if not kfold and (set(splits) - set(TRAINVALTEST) or not {"train", "test"} <= set(splits)):
    raise ValueError(f"{where}: split_mode trainvaltest needs splits among train, valid, "
                     f"test with train and test, got {', '.join(splits)}")
  if kfold and len(splits) < 3:
    raise ValueError(f"{where}: k-fold validates on the fold after the test fold and "
                     f"trains on the rest, so it needs at least 3 folds, got {len(splits)}")
  if kfold and isinstance(nfolds, int) and nfolds != len(splits):
    raise ValueError(f"{where}: nfolds is {nfolds} but splits names {len(splits)} folds")
  return tuple(splits)


def read_vocabulary(task_dir: Path) -> tuple[str, ...]:
  """labelvocabulary.csv's labels in index order (labels as text, as in the split files)."""
  path = task_dir / VOCABULARY_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing: a HEAR task folder lists its labels there "
                            f"(idx,label)")
  with path.open(newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    if not {"idx", "label"} <= set(reader.fieldnames or []):
      raise ValueError(f"{path}: header {','.join(reader.fieldnames or [])} lacks idx,label")
    try:
      rows = sorted((int(r["idx"]), r["label"]) for r in reader)
    except (TypeError, ValueError):
      raise ValueError(f"{path}: idx must be whole numbers") from None
  if [i for i, _ in rows] != list(range(len(rows))):
    raise ValueError(f"{path}: idx must run 0, 1, ... without gaps")
  if not rows:
    raise ValueError(f"{path} lists no labels")
  return tuple(label for _, label in rows)


def audio_dir(task_dir: Path) -> Path:
  """The folder of per-split audio folders: 16000/, else 48000/, else another rate's."""
  rates = [r for r in RATES if (task_dir / r).is_dir()] + sorted(
      d.name for d in task_dir.iterdir() if d.is_dir() and d.name.isdigit()
      and d.name not in RATES)
  if not rates:
    raise FileNotFoundError(f"{task_dir}: no audio folder (16000/ or 48000/, holding one "
                            f"folder per split) in this HEAR task")
  return task_dir / rates[0]


def read_split(task_dir: Path, split: str) -> dict[str, tuple[str, ...]]:
  """{filename: labels} of one split's label file."""
  path = task_dir / f"{split}.json"
  data = _json(path, f"the labels of split {split} there")
  if not isinstance(data, dict):
    raise ValueError(f"{path} holds no {{filename: [label, ...]}} object")
  out = {}
  for filename, labels in data.items():
    if not isinstance(labels, list) or not labels or any(
        isinstance(label, dict | list) for label in labels):
      raise ValueError(f"{path}: {filename!r} has {labels!r}, not a list of labels (a scene "
                       f"task's labels)")
    out[filename] = tuple(str(label) for label in labels)
  return out


def metrics(names, multilabel: bool) -> tuple[tuple[str, str | None], ...]:
  """(HEAR name, the library score reporting it or None) for each metric name: a score
  only where this task's scores include it (accuracy; mAP and d-prime for multi-label)."""
  computed = ("mAP", "d_prime") if multilabel else ("accuracy",)
  return tuple((str(n), SCORES.get(n) if SCORES.get(n) in computed else None) for n in names)


def read(task_dir: Path, unit_sec: float | None) -> tuple[labelled_task.LabelledTask, list]:
  """The HEAR task at `task_dir` and its audio files; `unit_sec` (None: sample_duration)."""
  metadata = read_metadata(task_dir)
  splits = split_names(metadata, task_dir / METADATA_FILE)
  vocabulary = read_vocabulary(task_dir)
  audio = audio_dir(task_dir)
  multilabel = metadata["prediction_type"] == "multilabel"
  labels, paths, names = [], [], []
  for split in splits:
    for filename, clip_labels in sorted(read_split(task_dir, split).items()):
      unknown = sorted(set(clip_labels) - set(vocabulary))
      if unknown:
        raise ValueError(f"{task_dir / (split + '.json')}: {filename} has label(s) "
                         f"{', '.join(unknown)} missing from {VOCABULARY_FILE}")
      if not multilabel and len(clip_labels) != 1:
        raise ValueError(f"{task_dir / (split + '.json')}: {filename} has "
                         f"{len(clip_labels)} labels in a multiclass task")
      labels.append(clip_labels)
      paths.append(audio / split / filename)
      names.append(split)
  if not paths:
    raise ValueError(f"{task_dir}: the split files name no clips")
  missing = [str(p) for p in paths if not p.is_file()]
  if missing:
    raise FileNotFoundError(f"{task_dir} names {len(missing)} missing audio file(s): "
                            f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
  duration = metadata.get("sample_duration")
  if unit_sec is None and isinstance(duration, int | float) and duration > 0:
    unit_sec = float(duration)
  chosen = metrics(metadata.get("evaluation") or (), multilabel)
  unused = [name for name, score in chosen if score is None]
  if unused:
    labelled_task.warn(f"{task_dir}: HEAR metric(s) {', '.join(unused)} have no score here "
                       f"for a {metadata['prediction_type']} task; reported: "
                       + (", ".join(f"{n} as {s}" for n, s in chosen if s) or
                          "the library's scores"))
  kfold = metadata["split_mode"] in KFOLD_MODES
  task = labelled_task.LabelledTask(
      name=task_dir.name, source=task_dir, labels=tuple(labels),
      folds=tuple(names) if kfold else (None,) * len(names),
      splits=(None,) * len(names) if kfold else tuple(names),
      label_names=vocabulary, multilabel=multilabel, unit_sec=unit_sec,
      fingerprint=labelled_task.fingerprint("hear", metadata, vocabulary, labels, names,
                                            labelled_task.file_stats(paths), unit_sec),
      info=metadata, metrics=chosen,
      validation=labelled_task.NEXT_FOLD if kfold else labelled_task.HOLDOUT)
  return task, paths
