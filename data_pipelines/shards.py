"""Mel shards: log-mel examples in ArrayRecord files plus a metadata.json.

A shard directory holds `shard-NNNNN-of-MMMMM.array_record` files and `metadata.json`
(front end, counts, the data's mean/std, label maps). Each record is a little-endian
uint32 header length, a JSON header (id, labels, shape, dtype) and the raw float16 mel:
no pickle, readable from any language.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from array_record.python.array_record_data_source import ArrayRecordDataSource
from array_record.python.array_record_module import ArrayRecordWriter

from data_pipelines.frontends import FrontEnd

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
# float16 halves the disk; log-mels need ~3 significant digits.
STORED_DTYPE = np.dtype("<f2")
_HEADER_SIZE = struct.Struct("<I")
# group_size:1 makes every record its own chunk, which Grain's random access needs.
# Uncompressed: zstd saves only ~17-21 % on float16 log-mels, at ~0.45 ms CPU per 10 s clip
# to write and 3.5x slower reads in training (measured with benchmarks/prepare.py).
WRITER_OPTIONS = "group_size:1,uncompressed"
_METADATA_KEYS = ("version", "frontend", "num_examples", "total_seconds", "mean", "std",
                  "label_maps", "source", "shards")


def encode_record(example_id: int, mel: np.ndarray, labels: dict[str, int]) -> bytes:
  mel = np.ascontiguousarray(mel, dtype=STORED_DTYPE)
  header = json.dumps({"id": int(example_id), "labels": {t: int(v) for t, v in labels.items()},
                       "shape": list(mel.shape), "dtype": STORED_DTYPE.str}).encode()
  return _HEADER_SIZE.pack(len(header)) + header + mel.tobytes()


def decode_record(record: bytes) -> dict:
  """-> {"mel": float16 (n_mels, frames) read-only view, "id": int, "labels": dict}."""
  (size,) = _HEADER_SIZE.unpack_from(record)
  header = json.loads(record[_HEADER_SIZE.size:_HEADER_SIZE.size + size])
  mel = np.frombuffer(record, dtype=header["dtype"], offset=_HEADER_SIZE.size + size)
  return {"mel": mel.reshape(header["shape"]), "id": header["id"], "labels": header["labels"]}


def check_example(example_id, mel: np.ndarray, labels: dict, frontend: FrontEnd,
                  label_maps: dict) -> None:
  where = f"example {example_id}"
  if mel.ndim != 2 or mel.shape[0] != frontend.n_mels or mel.shape[1] == 0:
    raise ValueError(f"{where}: mel must have shape ({frontend.n_mels}, frames) for front "
                     f"end {frontend.name!r}, got {mel.shape}.")
  if not np.all(np.isfinite(mel)):
    raise ValueError(f"{where}: mel contains NaN or inf values, or values beyond float16.")
  for task, value in labels.items():
    if task not in label_maps:
      raise ValueError(f"{where}: label task {task!r} is not in label_maps "
                       f"({', '.join(label_maps) or 'empty'}).")
    if not 0 <= value < len(label_maps[task]):
      raise ValueError(f"{where}: label {task}={value} is outside label_maps[{task!r}] "
                       f"(0..{len(label_maps[task]) - 1}).")


class Moments:
  """Count, sum and sum of squares in float64: scalar mean/std of all values seen.

  Mergeable (`merge`) and serialisable (`to_dict`/`from_dict`), so parallel writers can
  each keep their own and the totals are exact sums of theirs.
  """

  def __init__(self, count: int = 0, total: float = 0.0, total_sq: float = 0.0):
    self.count, self.total, self.total_sq = count, total, total_sq

  def add(self, values: np.ndarray) -> None:
    values = np.asarray(values).astype(np.float64).ravel()
    self.count += values.size
    self.total += float(values.sum())
    self.total_sq += float(np.einsum("i,i->", values, values))  # no temporary, no BLAS

  def merge(self, other: Moments) -> None:
    self.count += other.count
    self.total += other.total
    self.total_sq += other.total_sq

  def mean_std(self) -> tuple[float, float]:
    mean = self.total / self.count
    return mean, float(np.sqrt(max(self.total_sq / self.count - mean**2, 0.0)))

  def to_dict(self) -> dict:
    return {"count": self.count, "total": self.total, "total_sq": self.total_sq}

  @classmethod
  def from_dict(cls, d: dict) -> Moments:
    return cls(int(d["count"]), float(d["total"]), float(d["total_sq"]))


class PartWriter:
  """Appends records to ArrayRecord files named by `part_path(i)`, starting file i + 1
  before file i would pass `max_shard_bytes` (a larger record gets a file of its own)."""

  def __init__(self, part_path, max_shard_bytes: int, options: str = WRITER_OPTIONS):
    self._part_path, self._max_bytes, self._options = part_path, max_shard_bytes, options
    self.parts: list[Path] = []
    self._writer, self._bytes = None, 0

  def write(self, record: bytes) -> None:
    if self._writer is None or self._bytes + len(record) > self._max_bytes:
      self._close_part()
      self.parts.append(Path(self._part_path(len(self.parts))))
      self._writer, self._bytes = ArrayRecordWriter(str(self.parts[-1]), self._options), 0
    self._writer.write(record)
    self._bytes += len(record)

  def _close_part(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def close(self) -> list[Path]:
    self._close_part()
    return self.parts

  def __enter__(self) -> PartWriter:
    return self

  def __exit__(self, *exc) -> None:
    self._close_part()


def _write_records(directory: Path, examples, frontend: FrontEnd, label_maps: dict,
                   max_shard_bytes: int) -> tuple[list[Path], int, float, Moments]:
  """Writes part-NNNNN files of at most max_shard_bytes each (or one record when larger)."""
  seen_ids, moments, frames_total = set(), Moments(), 0
  with PartWriter(lambda i: directory / f"part-{i:05d}.array_record",
                  max_shard_bytes) as writer:
    for example_id, mel, labels in examples:
      mel = np.asarray(mel).astype(STORED_DTYPE)
      check_example(example_id, mel, labels, frontend, label_maps)
      if example_id in seen_ids:
        raise ValueError(f"example id {example_id} appears twice; ids must be unique.")
      seen_ids.add(example_id)
      writer.write(encode_record(example_id, mel, labels))
      moments.add(mel)  # the values as stored, i.e. what training reads
      frames_total += mel.shape[1] - 1  # a centred STFT of n samples gives 1 + n // hop
  return (writer.parts, len(seen_ids), frames_total * frontend.hop_length / frontend.sample_rate,
          moments)


def write_shards(out_dir: str | Path, examples: Iterable[tuple[int, np.ndarray, dict]],
                 frontend: FrontEnd, *, source: str, label_maps: dict[str, list[str]],
                 max_shard_bytes: int = 256 * 2**20) -> dict:
  """Writes (example_id, mel (n_mels, frames), {task: class index}) examples as shards.

  Everything is written into a hidden sibling directory that is renamed to `out_dir`
  at the end, so a crash never leaves a half-written corpus. Returns the metadata.
  """
  out_dir = Path(out_dir)
  if out_dir.exists():
    raise FileExistsError(f"{out_dir} already exists; remove it or choose another output.")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
  tmp.mkdir()
  try:
    parts, count, seconds, moments = _write_records(
        tmp, examples, frontend, label_maps, max_shard_bytes)
    if count == 0:
      raise ValueError(f"no examples to write to {out_dir}.")
    shards = [f"shard-{i:05d}-of-{len(parts):05d}.array_record" for i in range(len(parts))]
    for part, name in zip(parts, shards):
      part.rename(tmp / name)
    mean, std = moments.mean_std()
    metadata = {
        "version": FORMAT_VERSION, "frontend": frontend.to_dict(), "num_examples": count,
        "total_seconds": seconds, "mean": mean, "std": std,
        "label_maps": {task: list(names) for task, names in label_maps.items()},
        "source": source, "shards": shards,
    }
    (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    tmp.rename(out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return metadata


def read_metadata(shard_dir: str | Path) -> dict:
  path = Path(shard_dir) / METADATA_FILE
  if not path.is_file():
    raise FileNotFoundError(
        f"{shard_dir} is not a mel shard directory: it has no {METADATA_FILE} (make one "
        f"with `python -m data_pipelines.prepare` or data_pipelines.shards.write_shards).")
  try:
    metadata = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is corrupt ({e}); rebuild the shards in {shard_dir}.") from e
  missing = [key for key in _METADATA_KEYS if key not in metadata]
  if missing:
    raise ValueError(f"{path} lacks {', '.join(missing)}; rebuild the shards in {shard_dir}.")
  if metadata["version"] != FORMAT_VERSION:
    raise ValueError(f"{path} has shard format version {metadata['version']}, this code "
                     f"reads version {FORMAT_VERSION}; rebuild the shards in {shard_dir}.")
  return metadata


class ShardSource:
  """Random access to a shard directory's examples; a data source for grain.MapDataset."""

  def __init__(self, shard_dir: str | Path):
    self.shard_dir = Path(shard_dir)
    self.metadata = read_metadata(self.shard_dir)
    paths = [self.shard_dir / name for name in self.metadata["shards"]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
      raise FileNotFoundError(f"{self.shard_dir} lacks shard files named in its "
                              f"{METADATA_FILE}: {', '.join(missing)}.")
    self._records = ArrayRecordDataSource([str(p) for p in paths])
    if len(self._records) != self.metadata["num_examples"]:
      raise ValueError(f"{self.shard_dir} holds {len(self._records)} records but its "
                       f"{METADATA_FILE} says {self.metadata['num_examples']}; rebuild it.")

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    return decode_record(self._records[index])

  def __repr__(self) -> str:
    return f"ShardSource({str(self.shard_dir)!r})"

  def indices_without(self, excluded: dict[str, set[int]]) -> np.ndarray:
    """Indices of the records whose label of no task in `excluded` is one of its classes
    (reads every record once)."""
    keep = []
    for index in range(len(self)):
      labels = self[index]["labels"]
      missing = sorted(set(excluded) - set(labels))
      if missing:
        raise ValueError(f"{self.shard_dir} record {index} has no label for "
                         f"{', '.join(missing)}: only labelled shards can hold classes out.")
      if not any(labels[task] in classes for task, classes in excluded.items()):
        keep.append(index)
    return np.asarray(keep, np.int64)


class Subset:
  """The records of a data source at `indices`, renumbered 0..len - 1."""

  def __init__(self, source, indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict:
    return self.source[int(self.indices[index])]

  def __repr__(self) -> str:
    return f"Subset({self.source!r}, {len(self.indices)} records)"
