"""The house's labelled-task format: a folder of audio plus `meta.csv`.

meta.csv has the columns `filename,label[,fold][,split]`: filename relative to the folder
(or to its `audio/` subfolder), label one class name or several separated by `;`
(multi-label), fold any name, split one of train / valid / test. Empty fold or split cells
mean "not given" for that row. Any other column is kept as information (`Task.extra`,
each row's cells in `TaskRow.extra`), unless its name looks like a misspelling of a known
column the header lacks (`lable`, `spilt`, `filenme`): that is an error naming it.
"""
from __future__ import annotations

import csv
import dataclasses
import difflib
import io
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

META_FILE = "meta.csv"
REQUIRED_COLUMNS = ("filename", "label")
OPTIONAL_COLUMNS = ("fold", "split")
SPLITS = ("train", "valid", "test")
LABEL_SEPARATOR = ";"
AUDIO_SUBFOLDER = "audio"  # where a filename is looked up when it is not beside meta.csv
# difflib's similarity from which an unknown name counts as a misspelt known one: catches
# one slip in a short name (lable, spilt: 0.8) and in a long one (filenme, unitsec).
MISSPELT_CUTOFF = 0.8


def misspelt(name: str, known: Iterable[str], present: Iterable[str] = ()) -> str | None:
  """The known name that `name` looks like a misspelling of, or None. Only names not
  `present` count (a `labels` column beside `label` is information, not a typo), and a
  known name followed by more than one character is a name of its own (`folder`,
  `label_id`, `split_key`), while case, one extra letter or a separator are slips
  (`Label`, `folds`, `file_name` -> `filename`)."""
  present = set(present)
  candidates = [k for k in known if k not in present]
  lowered = name.strip().lower()
  for k in candidates:
    if lowered.replace("_", "").replace("-", "") == k.replace("_", "").replace("-", ""):
      return k
  candidates = [k for k in candidates
                if not (lowered.startswith(k) and len(lowered) > len(k) + 1)]
  match = difflib.get_close_matches(lowered, candidates, n=1, cutoff=MISSPELT_CUTOFF)
  return match[0] if match else None


@dataclasses.dataclass(frozen=True)
class TaskRow:
  path: Path  # the audio file; absolute once read, relative to the task folder allowed on write
  labels: tuple[str, ...]
  fold: str | None = None
  split: str | None = None
  extra: tuple[str, ...] = ()  # the row's cells of the task's extra columns, in their order


@dataclasses.dataclass(frozen=True)
class Task:
  dir: Path
  rows: tuple[TaskRow, ...]
  label_names: tuple[str, ...]  # sorted
  multilabel: bool
  extra: tuple[str, ...] = ()  # meta.csv's other columns, kept as information


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
    raise FileNotFoundError(f"{meta} names {len(missing)} missing audio file(s) (looked "
                            f"for beside it and in {AUDIO_SUBFOLDER}/): {shown}.")


def audio_path(task_dir: Path, filename: str) -> Path:
  """A meta.csv filename as a file: beside meta.csv, else in the audio/ subfolder (the
  path beside meta.csv, missing, when neither holds it)."""
  path = task_dir / filename
  if not path.is_file() and (task_dir / AUDIO_SUBFOLDER / filename).is_file():
    return task_dir / AUDIO_SUBFOLDER / filename
  return path


def _parse_row(where: str, task_dir: Path, record: dict, extra: tuple[str, ...]) -> TaskRow:
  filename = (record["filename"] or "").strip()
  if not filename:
    raise ValueError(f"{where}: empty filename.")
  labels = tuple(label.strip() for label in (record["label"] or "").split(LABEL_SEPARATOR))
  fold = (record.get("fold") or "").strip() or None
  split = (record.get("split") or "").strip() or None
  _check_row(where, labels, split)
  return TaskRow(audio_path(task_dir, filename), labels, fold, split,
                 tuple((record.get(c) or "").strip() for c in extra))


def check_columns(where: Path, columns: list[str], required: tuple[str, ...],
                  optional: tuple[str, ...]) -> tuple[str, ...]:
  """The header's extra columns (kept as information); a missing required column or a
  misspelt known one is an error naming it."""
  known = required + optional
  for column in columns:
    if column not in known and (meant := misspelt(column, known, columns)):
      raise ValueError(f"{where}: column {column!r} looks like a misspelt {meant!r}; "
                       f"rename it (columns: {','.join(required)}"
                       f"[,{'][,'.join(optional)}], others are kept as information).")
  missing = [c for c in required if c not in columns]
  if missing:
    raise ValueError(f"{where}: header {','.join(columns) or '(empty)'} lacks "
                     f"{', '.join(missing)} (columns: {','.join(required)}"
                     f"[,{'][,'.join(optional)}]).")
  duplicated = sorted({c for c in columns if columns.count(c) > 1})
  if duplicated:
    raise ValueError(f"{where}: column(s) {', '.join(duplicated)} appear more than once.")
  return tuple(c for c in columns if c not in known)


def read_task(task_dir: str | Path) -> Task:
  task_dir = Path(task_dir).absolute()
  meta = task_dir / META_FILE
  if not meta.is_file():
    raise FileNotFoundError(
        f"{task_dir} is not a task folder: it has no {META_FILE} (columns "
        f"{','.join(REQUIRED_COLUMNS)}[,{'][,'.join(OPTIONAL_COLUMNS)}]).")
  with meta.open(newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    columns = [c.strip() for c in reader.fieldnames or []]
    extra = check_columns(meta, columns, REQUIRED_COLUMNS, OPTIONAL_COLUMNS)
    reader.fieldnames = columns
    rows = tuple(_parse_row(f"{meta}:{reader.line_num}", task_dir, record, extra)
                 for record in reader)
  if not rows:
    raise ValueError(f"{meta} has no rows.")
  _check_files_exist(meta, rows)
  return Task(
      dir=task_dir, rows=rows,
      label_names=tuple(sorted({label for row in rows for label in row.labels})),
      multilabel=any(len(row.labels) > 1 for row in rows), extra=extra)


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
