"""Class labels of --input files: the label columns and the --labels CSV reader."""
from __future__ import annotations

import csv
import io
from pathlib import Path, PurePosixPath

from data_pipelines.prepare.errors import PrepareError

LABEL_TASK = "label"
EXTRA_LABEL_COLUMNS = ("fold", "split")  # recorded as label tasks of their own
NAME_TASKS = (LABEL_TASK,) + EXTRA_LABEL_COLUMNS  # the class-name columns of examples.csv


def read_labels_csv(csv_path: Path, root: Path) -> tuple[dict[str, dict[str, str]],
                                                           list[tuple[str, str]], set[str]]:
  """{filename: {task: class}} for usable rows, (path, reason) for the others, and every
  filename the CSV names."""
  reader = _csv_reader(csv_path)
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


def _csv_reader(csv_path: Path) -> csv.DictReader:
  """A reader over the CSV's rows, its header checked and its column names stripped."""
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
  return reader
