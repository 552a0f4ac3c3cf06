"""EVAR metadata CSVs (nttcslab/eval-audio-repr: evar/metadata/<task>.csv, as
evar/utils/make_metadata.py writes them), read into a LabelledTask.

Columns: `file_name`, relative to the task's audio folder; `label`, one class name, or
several separated by ',' in one quoted cell (multi-label, as fsd50k.csv); `split` (train /
valid / test) or `fold` (leave one fold out). With both, `split` decides, as in EVAR's
WavDataset. Other columns (ESC-50's target, esc10, src_file, take; CREMA-D's speaker_id)
are kept as information; a leading unnamed column (the pandas index that fsd50k.csv and
nsynth.csv carry) is dropped. What EVAR keeps in its task table rather than the CSV comes
from the command line: the clip length (--unit_sec; without it clips are used whole) and
the folder the file names are relative to (--audio_root; default the CSV's folder).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from data_pipelines import tasks as tasks_lib
from jepa_jax.evaluation import labelled_task

REQUIRED_COLUMNS = ("file_name", "label")
OPTIONAL_COLUMNS = ("split", "fold")
LABEL_SEPARATOR = ","  # EVAR's multi-label cells: 'a,b' (data.py splits str(label) on ',')


def is_task(path: Path) -> bool:
  return path.suffix.lower() == ".csv"


def _index_column(name: str) -> bool:
  """A pandas index written with the frame: an empty header cell or 'Unnamed: 0'."""
  return not name or name.startswith("Unnamed: ")


def _rows(csv_path: Path) -> tuple[list[str], list[dict]]:
  """The header (index column dropped, names stripped) and the rows of the CSV."""
  try:
    text = csv_path.read_text(encoding="utf-8-sig")
  except (OSError, UnicodeDecodeError) as err:
    raise ValueError(f"cannot read EVAR metadata {csv_path} ({err})") from None
  reader = csv.reader(io.StringIO(text, newline=""))
  header = [c.strip() for c in next(reader, [])]
  keep = [i for i, c in enumerate(header) if not (i == 0 and _index_column(c))]
  columns = [header[i] for i in keep]
  rows = []
  for line, cells in enumerate(reader, start=2):
    if not any(c.strip() for c in cells):
      continue
    if len(cells) != len(header):
      raise ValueError(f"{csv_path}:{line}: {len(cells)} cells for the {len(header)} "
                       f"columns of the header (a label list must be quoted: \"a,b\")")
    rows.append({"line": line, **{header[i]: cells[i].strip() for i in keep}})
  return columns, rows


def read(csv_path: Path, audio_root: Path | None, unit_sec: float | None
         ) -> tuple[labelled_task.LabelledTask, list[Path]]:
  """The task an EVAR metadata CSV describes, its audio under `audio_root` (None: the
  CSV's folder), and its audio files."""
  if not csv_path.is_file():
    raise FileNotFoundError(f"EVAR metadata {csv_path} does not exist")
  root = (audio_root or csv_path.parent).absolute()
  columns, rows = _rows(csv_path)
  extra = tasks_lib.check_columns(csv_path, columns, REQUIRED_COLUMNS, OPTIONAL_COLUMNS)
  if not rows:
    raise ValueError(f"{csv_path} has no rows")
  labels, folds, splits, paths = [], [], [], []
  for row in rows:
    where = f"{csv_path}:{row['line']}"
    if not row["file_name"]:
      raise ValueError(f"{where}: empty file_name")
    names = tuple(s.strip() for s in row["label"].split(LABEL_SEPARATOR))
    split = row.get("split") or None
    if not all(names):
      raise ValueError(f"{where}: empty label; multi-label rows list classes as \"a,b\"")
    if split is not None and split not in tasks_lib.SPLITS:
      raise ValueError(f"{where}: unknown split {split!r}; use one of "
                       f"{', '.join(tasks_lib.SPLITS)}")
    labels.append(names)
    folds.append(row.get("fold") or None)
    splits.append(split)
    paths.append(root / row["file_name"])
  missing = [str(p) for p in paths if not p.is_file()]
  if missing:
    raise FileNotFoundError(
        f"{csv_path} names {len(missing)} audio file(s) missing under {root}: "
        f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; give --audio_root="
        f"the folder its file_name paths are relative to (EVAR's work/16k/<task>)")
  info_columns = {c: tuple(row.get(c, "") for row in rows) for c in extra}
  if any(s is not None for s in splits):  # EVAR reads folds only from a CSV without splits
    if "fold" in columns:
      info_columns["fold"], extra = tuple(f or "" for f in folds), extra + ("fold",)
    folds = [None] * len(rows)
  labelled_task.warn_unused(csv_path, "column(s)", extra)
  text = csv_path.read_text(encoding="utf-8-sig")
  task = labelled_task.LabelledTask(
      name=csv_path.stem, source=csv_path, labels=tuple(labels), folds=tuple(folds),
      splits=tuple(splits), label_names=tuple(sorted({n for lab in labels for n in lab})),
      multilabel=any(len(lab) > 1 for lab in labels), unit_sec=unit_sec,
      fingerprint=labelled_task.fingerprint("evar", text, str(root),
                                            labelled_task.file_stats(paths), unit_sec),
      info={"audio_root": str(root)},
      columns=info_columns)
  return task, paths
