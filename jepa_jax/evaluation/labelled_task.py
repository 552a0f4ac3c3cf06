"""What every task format reads into (task_data, hear_tasks, evar_tasks): a LabelledTask,
its fingerprint, and the one-line warnings a reader gives about what it keeps unused."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

# How a fold's validation rows are chosen when a task has folds: 10 % of the other folds'
# rows held out (EVAR-style leave-one-fold-out), or the whole next fold (HEAR's k-fold:
# test fold i, valid fold i + 1, train the rest).
HOLDOUT, NEXT_FOLD = "holdout", "next_fold"


@dataclasses.dataclass(frozen=True)
class LabelledTask:
  name: str
  source: Path             # the task folder, shard directory or metadata CSV
  labels: tuple[tuple[str, ...], ...]  # class names of each clip
  folds: tuple[str | None, ...]
  splits: tuple[str | None, ...]
  label_names: tuple[str, ...]  # sorted (a HEAR task: its label vocabulary's order)
  multilabel: bool
  unit_sec: float | None
  fingerprint: str         # changes whenever the clips, labels or settings change
  # Read but unused by the evaluation: settings (task.json's other keys, HEAR's
  # task_metadata.json, where an EVAR CSV's audio lies) and per-clip columns.
  info: dict = dataclasses.field(default_factory=dict)
  columns: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  # The metrics the task's own metadata asks for, each with the library score reporting
  # it (None: no such score here); empty: the library's (accuracy, or mAP and d-prime).
  metrics: tuple[tuple[str, str | None], ...] = ()
  validation: str = HOLDOUT  # HOLDOUT or NEXT_FOLD, for a task with folds

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


def fingerprint(*parts) -> str:
  """A short stable hash of JSON-able parts (what a cache key or a task's identity hashes)."""
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_stats(paths: list[Path]) -> list[tuple[str, int, int]]:
  """(path, size, mtime) of each audio file: what a fingerprint hashes for the audio."""
  return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]


_warned: set[str] = set()


def warn(message: str) -> None:
  """One line on stderr, once per process: a task is read several times per command
  (its fingerprint, then its audio), its warning is worth one line."""
  if message not in _warned:
    _warned.add(message)
    print(f"warning: {message}", file=sys.stderr)


def warn_unused(source: Path, what: str, names) -> None:
  """The warning that `names` (task.json keys, CSV columns) are kept but not used."""
  if names:
    warn(f"{source}: {what} {', '.join(names)} kept as information, not used by the "
         f"evaluation")
