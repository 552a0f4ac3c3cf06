"""A run: check the request, plan it, resume what the output folder holds, run the pending
units, merge, and sum it up (`prepare()`, what the command line calls)."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from data_pipelines import shards
from data_pipelines.prepare import output_folder
from data_pipelines.prepare.errors import ItemFailed, PrepareError
from data_pipelines.prepare.plan import Options, Plan, make_plan, plan_record
from data_pipelines.prepare.sources import FolderSource, TfdsSource
from data_pipelines.prepare.units import UnitContext
from data_pipelines.prepare.workers import run_units

ON_ERROR = ("skip", "fail")


@dataclasses.dataclass(frozen=True)
class Summary:
  state: str  # "prepared", "up to date" or "partial" (unit_limit reached)
  output: Path
  num_examples: int
  num_items: int
  errors: list[tuple[str, str]]
  warnings: list[tuple[str, str]]
  units_done_now: int
  units_total: int
  ignored: int  # audio files the labels CSV does not name
  seconds: float  # wall time of this run


def _progress(total: int, initial: int, enabled: bool):
  return tqdm(total=total, initial=initial, unit="file", desc="prepare", file=sys.stderr,
              disable=None if enabled else True, dynamic_ncols=True, smoothing=0.1)


def prepare(output: str | Path, *, input_dir: str | Path | None = None,
            tfds: tuple[str, str, str] | None = None, labels_csv: str | Path | None = None,
            labels_from: str | None = None, options: Options = Options(),
            workers: int | None = None, on_error: str = "skip",
            unit_limit: int | None = None, progress: bool = True, log=None) -> Summary:
  """Prepares `input_dir` (or the TFDS (name, data_dir, split)) into mel shards in `output`.

  Resumes what an earlier run with the same input and options left. `unit_limit` runs at
  most that many units now (the rest wait for a later run). Raises PrepareError for
  unusable options, input or output, ItemFailed under on_error="fail", and
  KeyboardInterrupt when interrupted (finished units are kept).
  """
  started = time.perf_counter()
  log = log or (lambda message: print(message, file=sys.stderr, flush=True))
  source, labels_mode = _source(input_dir, tfds, labels_csv, labels_from)
  if on_error not in ON_ERROR:
    raise PrepareError(f"--on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
  workers = len(os.sched_getaffinity(0)) if workers is None else workers
  if workers < 1:
    raise PrepareError(f"--workers must be >= 1, got {workers}")
  out_dir = Path(output).absolute()
  plan = make_plan(source, options, labels_csv=labels_csv and Path(labels_csv),
                   labels_from=labels_from)
  record = plan_record(plan, labels_mode)
  output_folder.check_output(out_dir, record)
  if on_error == "fail" and plan.planning_errors:
    raise ItemFailed(*plan.planning_errors[0])
  with output_folder.locked(out_dir):
    done = {u.index: s for u in plan.units
            if (s := output_folder.load_done(out_dir, u)) is not None}
    metadata_path = out_dir / shards.METADATA_FILE
    if len(done) == len(plan.units) and _up_to_date(metadata_path, plan):
      metadata = json.loads(metadata_path.read_text())
      log(f"nothing to do: {out_dir} is up to date ({metadata['num_examples']} examples, "
          f"{metadata['prepare']['num_errors']} errors, "
          f"{metadata['prepare']['num_warnings']} warnings)")
      sidecars = [done[u.index] for u in plan.units]
      return _summary(plan, out_dir, sidecars, "up to date", 0, started)
    metadata_path.unlink(missing_ok=True)  # it no longer describes the folder
    output_folder.remove_stale(out_dir, done, plan.units)
    output_folder.write_text(out_dir / output_folder.UNITS_DIR / output_folder.PLAN_FILE,
                             json.dumps(record, indent=2))
    pending = [u for u in plan.units if u.index not in done]
    if unit_limit is not None:
      pending = pending[:unit_limit]
    workers = min(workers, max(len(pending), 1))
    log(f"prepare: {len(plan.items)} inputs in {len(plan.units)} units, {len(done)} done "
        f"before, {len(pending)} to do now with {workers} worker(s) -> {out_dir}")
    ctx = UnitContext(plan.source, plan.options, plan.frontend, plan.label_maps,
                      len(plan.items), out_dir, on_error == "fail")
    done_items = sum(len(plan.units[u].items) for u in done)
    make_bar = functools.partial(_progress, len(plan.items), done_items, progress)
    for sidecar in run_units(ctx, pending, workers, make_bar):
      done[sidecar["unit"]] = sidecar
    if len(done) < len(plan.units):
      log(f"stopped after {len(pending)} units by the unit limit: {len(done)} of "
          f"{len(plan.units)} done; run again to continue")
      return _summary(plan, out_dir, list(done.values()), "partial", len(pending), started)
    sidecars = [done[u.index] for u in plan.units]
    output_folder.merge(plan, out_dir, sidecars, labels_mode)
  summary = _summary(plan, out_dir, sidecars, "prepared", len(pending), started)
  log(_describe(summary))
  return summary


def _up_to_date(metadata_path: Path, plan: Plan) -> bool:
  try:
    metadata = json.loads(metadata_path.read_text())
  except (OSError, json.JSONDecodeError):
    return False
  return metadata.get("prepare", {}).get("plan_fingerprint") == plan.fingerprint


def _source(input_dir, tfds, labels_csv, labels_from) -> tuple[FolderSource | TfdsSource, str]:
  if (input_dir is None) == (tfds is None):
    raise PrepareError("give exactly one of --input (an audio folder) or --tfds (a TFDS "
                       "dataset name with --data_dir)")
  if labels_csv is not None and labels_from is not None:
    raise PrepareError("give at most one of --labels and --labels_from")
  if labels_from not in (None, "folders"):
    raise PrepareError(f"--labels_from takes 'folders', got {labels_from!r}")
  if tfds is not None:
    if labels_csv is not None or labels_from is not None:
      raise PrepareError("--labels and --labels_from are for --input folders; a TFDS "
                         "dataset brings its own labels")
    name, data_dir, split = tfds
    if not data_dir:
      raise PrepareError("--tfds needs --data_dir (the folder holding the TFDS dataset)")
    return TfdsSource(name, str(Path(data_dir).absolute()), split), "tfds"
  root = Path(input_dir).absolute()
  if not root.is_dir():
    raise PrepareError(f"--input {input_dir} is not a folder" + (
        "" if root.exists() else " (it does not exist)"))
  if labels_csv is not None and not Path(labels_csv).is_file():
    raise PrepareError(f"--labels {labels_csv} is not a file")
  mode = "csv" if labels_csv is not None else (labels_from or "none")
  return FolderSource(root), mode


def _summary(plan: Plan, out_dir: Path, sidecars: list[dict], state: str, units_now: int,
             started: float) -> Summary:
  errors = sorted(list(plan.planning_errors) + [tuple(e) for s in sidecars for e in s["errors"]])
  return Summary(state, out_dir, sum(s["num_examples"] for s in sidecars), len(plan.items),
                 errors, [tuple(w) for s in sidecars for w in s["warnings"]], units_now,
                 len(plan.units), plan.ignored, time.perf_counter() - started)


def _kinds(entries: list[tuple[str, str]]) -> str:
  """'3 truncated, 2 empty file' : reasons counted with their details left out."""
  kinds = Counter(re.sub(r"\d+(\.\d+)?", "N", reason.split(" (")[0]).split(": ")[-1]
                  for _, reason in entries)
  return ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())


def _describe(summary: Summary) -> str:
  lines = [f"prepared {summary.num_examples} examples from {summary.num_items} inputs into "
           f"{summary.output} in {summary.seconds:.1f} s ({summary.units_done_now} of "
           f"{summary.units_total} units done in this run)",
           f"errors: {len(summary.errors)} (skipped; listed in {output_folder.ERRORS_FILE})"
           + (f": {_kinds(summary.errors)}" if summary.errors else ""),
           f"warnings: {len(summary.warnings)} (listed in {output_folder.WARNINGS_FILE})"
           + (f": {_kinds(summary.warnings)}" if summary.warnings else "")]
  if summary.ignored:
    lines.append(f"ignored: {summary.ignored} audio files that --labels does not name")
  return "\n".join(lines)
