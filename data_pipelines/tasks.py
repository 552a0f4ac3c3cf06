"""The one labelled-task format: a folder of audio plus `meta.csv`.

meta.csv has the columns `filename,label[,fold][,split]`: filename relative to the folder,
label one class name or several separated by `;` (multi-label), fold any name, split one
of train / valid / test. Empty fold or split cells mean "not given" for that row.
"""
from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

META_FILE = "meta.csv"
REQUIRED_COLUMNS = ("filename", "label")
OPTIONAL_COLUMNS = ("fold", "split")
SPLITS = ("train", "valid", "test")
LABEL_SEPARATOR = ";"


@dataclasses.dataclass(frozen=True)
class TaskRow:
  path: Path  # the audio file; absolute once read, relative to the task folder allowed on write
  labels: tuple[str, ...]
  fold: str | None = None
  split: str | None = None


@dataclasses.dataclass(frozen=True)
class Task:
  dir: Path
  rows: tuple[TaskRow, ...]
  label_names: tuple[str, ...]  # sorted
  multilabel: bool


def _check_row(where: str, labels: tuple[str, ...], split: str | None) -> None:
  if not labels or any(not label for label in labels):
    raise ValueError(f"{where}: empty label; every row needs at least one class name "
                     f"(several separated by '{LABEL_SEPARATOR}').")
  if split is not None and split not in SPLITS:
    raise ValueError(f"{where}: unknown split {split!r}; use one of {', '.join(SPLITS)} "
                     f"or leave it empty.")


def _check_files_exist(meta: Path, rows: Iterable[TaskRow]) -> None:
  missing = [str(row.path) for row in rows if not row.path.is_file()]
  if missing:
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    shown = ", ".join(missing[:5]) + more
    raise FileNotFoundError(f"{meta} names {len(missing)} missing audio file(s): {shown}.")


def _parse_row(where: str, task_dir: Path, record: dict) -> TaskRow:
  filename = record["filename"].strip()
  if not filename:
    raise ValueError(f"{where}: empty filename.")
  labels = tuple(label.strip() for label in record["label"].split(LABEL_SEPARATOR))
  fold = (record.get("fold") or "").strip() or None
  split = (record.get("split") or "").strip() or None
  _check_row(where, labels, split)
  return TaskRow(task_dir / filename, labels, fold, split)


def read_task(task_dir: str | Path) -> Task:
  task_dir = Path(task_dir).absolute()
  meta = task_dir / META_FILE
  if not meta.is_file():
    raise FileNotFoundError(
        f"{task_dir} is not a task folder: it has no {META_FILE} (columns "
        f"{','.join(REQUIRED_COLUMNS)}[,{'][,'.join(OPTIONAL_COLUMNS)}]).")
  with meta.open(newline="") as f:
    reader = csv.DictReader(f)
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
      raise ValueError(
          f"{meta}: header {','.join(columns) or '(empty)'} "
          + (f"lacks {', '.join(missing)} " if missing else "")
          + (f"has unknown {', '.join(unknown)} " if unknown else "")
          + f"(columns: {','.join(REQUIRED_COLUMNS)}[,{'][,'.join(OPTIONAL_COLUMNS)}]).")
    reader.fieldnames = columns
    rows = tuple(_parse_row(f"{meta}:{reader.line_num}", task_dir, record)
                 for record in reader)
  if not rows:
    raise ValueError(f"{meta} has no rows.")
  _check_files_exist(meta, rows)
  return Task(
      dir=task_dir, rows=rows,
      label_names=tuple(sorted({label for row in rows for label in row.labels})),
      multilabel=any(len(row.labels) > 1 for row in rows))


def _relative_name(task_dir: Path, path: Path) -> str:
  path = path if path.is_absolute() else task_dir / path
  try:
    return PurePosixPath(path.relative_to(task_dir)).as_posix()
  except ValueError:
    raise ValueError(f"{path} is outside the task folder {task_dir}; put (or link) the "
                     f"audio inside it.") from None


def write_task(task_dir: str | Path, rows: Iterable[TaskRow]) -> Path:
  """Writes `task_dir/meta.csv` for audio already in the folder; returns its path."""
  task_dir = Path(task_dir).absolute()
  meta = task_dir / META_FILE
  rows = [dataclasses.replace(row, path=task_dir / _relative_name(task_dir, Path(row.path)))
          for row in rows]
  if not rows:
    raise ValueError(f"no rows to write to {meta}.")
  for i, row in enumerate(rows):
    _check_row(f"row {i} ({row.path})", row.labels, row.split)
    if any(LABEL_SEPARATOR in label for label in row.labels):
      raise ValueError(f"row {i} ({row.path}): a label contains '{LABEL_SEPARATOR}', "
                       f"which separates labels.")
  _check_files_exist(meta, rows)
  columns = list(REQUIRED_COLUMNS) + [
      c for c in OPTIONAL_COLUMNS if any(getattr(row, c) is not None for row in rows)]
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(columns)
  for row in rows:
    cells = {"filename": _relative_name(task_dir, row.path),
             "label": LABEL_SEPARATOR.join(row.labels),
             "fold": row.fold or "", "split": row.split or ""}
    writer.writerow([cells[c] for c in columns])
  meta.write_text(out.getvalue())
  return meta

def class_indices(classes: dict[str, tuple[str, ...]], label_maps: dict[str, list[str]],
                  where: str) -> dict[str, set[int]]:
  """{task: class names} -> {task: indices in label_maps[task]}; unknown names are errors."""
  out = {}
  for task, names in classes.items():
    if task not in label_maps:
      raise ValueError(f"{where} has no label task {task!r}; its tasks: "
                       f"{', '.join(label_maps) or 'none'}")
    unknown = [n for n in names if n not in label_maps[task]]
    if unknown:
      raise ValueError(f"{where}: task {task} has no class {', '.join(map(repr, unknown))}; "
                       f"its classes: {', '.join(label_maps[task])}")
    out[task] = {label_maps[task].index(n) for n in names}
  return out
