"""One work unit: decode its items, compute their log-mels and write the unit's shard
file(s) and sidecar. Runs in a worker process (or in the parent with one worker)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

from data_pipelines import audio_io, shards
from data_pipelines.frontends import FrontEnd
from data_pipelines.prepare.errors import ItemFailed
from data_pipelines.prepare.labels import NAME_TASKS
from data_pipelines.prepare.output_folder import UNITS_DIR, unit_shard_name
from data_pipelines.prepare.plan import Options, Unit
from data_pipelines.prepare.sources import FolderSource, Item, TfdsSource

MAX_ID = 2**31 - 1  # training batches carry example ids as int32


class _Stopped(Exception):
  """A worker noticed the stop flag between two files."""


@dataclasses.dataclass(frozen=True)
class UnitContext:
  """What every unit of a run shares; sent to each worker once."""
  source: FolderSource | TfdsSource
  options: Options
  frontend: FrontEnd
  label_maps: dict[str, list[str]]
  num_items: int
  out_dir: Path
  fail_fast: bool


def _label_indices(ctx: UnitContext, names: dict[str, str], where: str) -> dict[str, int]:
  indices = {}
  for task, name in names.items():
    if task not in ctx.label_maps:
      continue  # a TFDS source that does not name its classes: examples.csv keeps them
    try:
      indices[task] = ctx.label_maps[task].index(name)
    except ValueError:
      raise audio_io.AudioError(where, f"{task} {name!r} is not one of the dataset's "
                                       f"{len(ctx.label_maps[task])} classes") from None
  return indices


def _prepare_item(ctx: UnitContext, item: Item) -> tuple[list, list[str], str]:
  """-> ([(id, segment, start_s, seconds, float16 mel, its Moments, {task: index},
  {task: name})], warnings, key). Raises AudioError when the item cannot be used."""
  options, frontend = ctx.options, ctx.frontend
  key = ctx.source.key(item)
  reader, source_labels = ctx.source.reader(item, frontend.sample_rate, options.max_seconds)
  with reader:
    seconds = reader.frames / reader.source_rate
    if seconds < options.min_seconds:
      raise audio_io.AudioError(key, f"too short ({seconds:.3f} s < --min_seconds="
                                     f"{options.min_seconds:g})")
    last_id = item.index + (len(reader.bounds) - 1) * ctx.num_items
    if last_id > MAX_ID:
      raise audio_io.AudioError(key, f"{len(reader.bounds)} segments would need example ids "
                                     f"beyond 2**31; raise --max_seconds")
    names = dict(item.labels) | source_labels
    indices = _label_indices(ctx, names, key)
    examples = []
    for s, wave in enumerate(reader.segments()):
      mel = frontend.logmel(wave).astype(shards.STORED_DTYPE)
      moments = shards.Moments()
      moments.add(mel)  # of the values as stored, i.e. what training reads
      if not math.isfinite(moments.total_sq) or mel.shape[0] != frontend.n_mels:
        raise audio_io.AudioError(key, f"the {frontend.name} front end gave features of "
                                       f"shape {mel.shape} with NaN or inf values")
      start = reader.bounds[s][0] / reader.source_rate
      examples.append((item.index + s * ctx.num_items, s, start,
                       wave.size / frontend.sample_rate, mel, moments, indices, names))
    warnings = list(reader.warnings)
    if reader.silent:
      action = "dropped (--drop_silent)" if options.drop_silent else "kept"
      warnings.append(f"all silent (no sample reaches {audio_io.SILENCE_DBFS:g} dBFS): "
                      f"{action}")
      if options.drop_silent:
        examples = []
  return examples, warnings, key


def run_unit(ctx: UnitContext, unit: Unit, stop=None) -> dict:
  """Writes the unit's shard file(s) and sidecar; returns the sidecar. `stop` (an Event)
  is checked between files: set, the unit is abandoned and leaves nothing behind."""
  units_dir = ctx.out_dir / UNITS_DIR
  tmp = units_dir / f".tmp-{unit.name}-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  try:
    errors, warnings, rows, moments, seconds = [], [], [], shards.Moments(), 0.0
    with shards.PartWriter(lambda p: tmp / unit_shard_name(unit, p),
                           int(ctx.options.max_shard_mb * 2**20),
                           options=shards.WRITER_OPTIONS) as writer:
      for item in unit.items:
        if stop is not None and stop.is_set():
          raise _Stopped()
        try:
          examples, item_warnings, key = _prepare_item(ctx, item)
        except audio_io.AudioError as e:
          key, reason = _error_key(ctx, item), e.reason
        except Exception as e:  # noqa: BLE001 - a decoder bug must not sink the corpus
          key, reason = _error_key(ctx, item), f"failed ({type(e).__name__}: {e})"
        else:
          warnings += [(key, w) for w in item_warnings]
          for example_id, segment, start, length, mel, mel_moments, indices, names in examples:
            writer.write(shards.encode_record(example_id, mel, indices))
            moments.merge(mel_moments)
            seconds += length
            rows.append([example_id, key, segment, round(start, 6), round(length, 6),
                         writer.parts[-1].name] + [names.get(t, "") for t in NAME_TASKS])
          continue
        if ctx.fail_fast:
          raise ItemFailed(key, reason)
        errors.append((key, reason))
    shard_files = []
    for part in writer.parts:
      shard_files.append({"name": part.name, "bytes": part.stat().st_size})
      os.replace(part, ctx.out_dir / part.name)
    sidecar = {"unit": unit.index, "fingerprint": unit.fingerprint, "shards": shard_files,
               "num_examples": len(rows), "seconds": seconds, "moments": moments.to_dict(),
               "errors": errors, "warnings": warnings, "examples": rows}
    (tmp / "sidecar.json").write_text(json.dumps(sidecar))
    os.replace(tmp / "sidecar.json", units_dir / f"{unit.name}.json")  # the unit is done
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return sidecar


def _error_key(ctx: UnitContext, item: Item) -> str:
  try:
    return ctx.source.key(item)
  except Exception:  # noqa: BLE001 - reading a TFDS key may be what failed
    return f"index {item.index}"
