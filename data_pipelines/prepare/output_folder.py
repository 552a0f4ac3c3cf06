"""The output folder: its files, refusing another run's folder, which units are done, and
the merge of the unit sidecars into examples.csv, errors.csv, warnings.csv, metadata.json."""
from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import re
import shutil
from pathlib import Path

from data_pipelines import shards
from data_pipelines.prepare.errors import PrepareError
from data_pipelines.prepare.labels import EXTRA_LABEL_COLUMNS, LABEL_TASK
from data_pipelines.prepare.plan import Plan, Unit, plan_record

UNITS_DIR = "units"
PLAN_FILE = "plan.json"
EXAMPLES_FILE, ERRORS_FILE, WARNINGS_FILE = "examples.csv", "errors.csv", "warnings.csv"
_UNIT_SHARD = re.compile(r"unit-\d+-\d+\.array_record")


def unit_shard_name(unit: Unit, part: int) -> str:
  return f"{unit.name}-{part:02d}.array_record"


def check_output(out_dir: Path, record: dict) -> None:
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


def load_done(out_dir: Path, unit: Unit) -> dict | None:
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


def remove_stale(out_dir: Path, done: dict[int, dict], units: tuple[Unit, ...]) -> None:
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
def locked(out_dir: Path):
  """One prepare at a time per output folder."""
  (out_dir / UNITS_DIR).mkdir(parents=True, exist_ok=True)
  with open(out_dir / UNITS_DIR / ".lock", "a") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise PrepareError(f"another prepare is writing {out_dir}; wait for it to finish")
    yield


def write_text(path: Path, text: str) -> None:
  """Writes under a temporary name, then renames: a reader never sees half a file."""
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def _csv_text(header: list[str], rows) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  return out.getvalue()


def merge(plan: Plan, out_dir: Path, sidecars: list[dict], labels_mode: str) -> dict:
  """Writes examples.csv, errors.csv, warnings.csv and, last, metadata.json."""
  errors = sorted(list(plan.planning_errors) + [tuple(e) for s in sidecars for e in s["errors"]])
  warnings = [tuple(w) for s in sidecars for w in s["warnings"]]
  write_text(out_dir / ERRORS_FILE, _csv_text(["path", "reason"], errors))
  write_text(out_dir / WARNINGS_FILE, _csv_text(["path", "reason"], warnings))
  count = sum(s["num_examples"] for s in sidecars)
  if count == 0:
    raise PrepareError(f"no usable audio: all {len(plan.items)} input files failed; see "
                       f"{out_dir / ERRORS_FILE}")
  write_text(out_dir / EXAMPLES_FILE, _csv_text(
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
          **plan_record(plan, labels_mode), "plan_fingerprint": plan.fingerprint,
          "num_inputs": len(plan.items), "num_errors": len(errors),
          "num_warnings": len(warnings), "ignored_unlabelled_files": plan.ignored,
          "files": {"examples": EXAMPLES_FILE, "errors": ERRORS_FILE,
                    "warnings": WARNINGS_FILE}},
  }
  write_text(out_dir / shards.METADATA_FILE, json.dumps(metadata, indent=2))
  return metadata
