"""The embedded default data: synthetic pretraining shards plus three probe tasks.

Built once into a cache folder keyed by everything that determines its content, then
reused. Layout of a corpus folder:

    pretrain/                    mel shards of stream-0 clips (labels kept in the records)
    probe_audio/clip-NNNNNN.wav  stream-1 clips, 16-bit WAV, written once
    tasks/<task>/meta.csv        one task folder per label task (pitch, source, envelope),
    tasks/<task>/audio/*.wav     hard links to probe_audio (copies where links fail)
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

from data_pipelines import atomic_build, audio_io, shards, synthetic, tasks
from data_pipelines.frontends import FrontEnd, get_frontend

# Bump when the folder layout or the splits change: cached corpora are keyed by it.
LAYOUT_VERSION = 1
PRETRAIN_STREAM = 0
PROBE_STREAM = 1
_CHUNK_CLIPS = 50  # clips per worker task: ~0.5 s of work, so process overhead is small


@dataclasses.dataclass(frozen=True)
class DefaultCorpus:
  pretrain: Path  # a mel shard directory
  tasks: dict[str, Path]  # label task name -> task folder


def default_cache_dir() -> Path:
  """$JEPA_JAX_CACHE, else $XDG_CACHE_HOME/jepa_jax, else ~/.cache/jepa_jax."""
  if os.environ.get("JEPA_JAX_CACHE"):
    return Path(os.environ["JEPA_JAX_CACHE"])
  xdg = os.environ.get("XDG_CACHE_HOME")
  return (Path(xdg) if xdg else Path.home() / ".cache") / "jepa_jax"


def corpus_key(seed: int, num_pretrain: int, num_probe: int, frontend: FrontEnd) -> str:
  """Short hash of everything the corpus content depends on."""
  spec = {"layout": LAYOUT_VERSION, "generator": synthetic.GENERATOR_VERSION,
          "shards": shards.FORMAT_VERSION, "seed": seed, "num_pretrain": num_pretrain,
          "num_probe": num_probe, "frontend": frontend.to_dict()}
  return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def probe_split(index: int, total: int) -> str:
  """First 2/3 of the clips train, next 1/6 valid, last 1/6 test (by index)."""
  if index < 2 * total // 3:
    return "train"
  return "valid" if index < 5 * total // 6 else "test"


def _layout(root: Path) -> DefaultCorpus:
  return DefaultCorpus(pretrain=root / "pretrain",
                       tasks={task: root / "tasks" / task for task in synthetic.TASKS})


def _clip_name(index: int) -> str:
  return f"clip-{index:06d}.wav"


# --- work done in worker processes (module-level so `spawn` can import it) ---------------

def _pretrain_chunk(args: tuple[int, int, int, FrontEnd]) -> list:
  seed, start, stop, frontend = args
  examples = []
  for index in range(start, stop):
    wave, labels = synthetic.generate_clip(seed, PRETRAIN_STREAM, index)
    # float16 is what the shards store; it halves what travels back from the worker.
    examples.append((index, frontend.logmel(wave).astype("float16"), labels))
  return examples


def _probe_chunk(args: tuple[int, int, int, Path]) -> list[dict[str, int]]:
  seed, start, stop, audio_dir = args
  labels = []
  for index in range(start, stop):
    wave, clip_labels = synthetic.generate_clip(seed, PROBE_STREAM, index)
    audio_io.write_wav(audio_dir / _clip_name(index), wave, synthetic.SAMPLE_RATE)
    labels.append(clip_labels)
  return labels


# --- building ------------------------------------------------------------------------------

def _chunks(total: int) -> list[tuple[int, int]]:
  return [(start, min(start + _CHUNK_CLIPS, total)) for start in range(0, total, _CHUNK_CLIPS)]


def _link_or_copy(src: Path, dst: Path) -> None:
  try:
    os.link(src, dst)
  except OSError:  # e.g. a file system without hard links
    shutil.copyfile(src, dst)


def _write_task_folders(root: Path, labels: list[dict[str, int]]) -> None:
  for task, names in synthetic.TASKS.items():
    task_dir = root / "tasks" / task
    (task_dir / "audio").mkdir(parents=True)
    rows = []
    for index, clip_labels in enumerate(labels):
      name = _clip_name(index)
      _link_or_copy(root / "probe_audio" / name, task_dir / "audio" / name)
      rows.append(tasks.TaskRow(Path("audio") / name, (names[clip_labels[task]],),
                                split=probe_split(index, len(labels))))
    tasks.write_task(task_dir, rows)


def _build(root: Path, seed: int, num_pretrain: int, num_probe: int, frontend: FrontEnd,
           workers: int) -> None:
  (root / "probe_audio").mkdir(parents=True)
  pool = (concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn"))  # the parent may hold jax
      if workers > 1 else None)
  run = pool.map if pool else map
  try:
    # Both are submitted now (pool.map is eager), so workers never wait on the writer.
    pretrain = run(_pretrain_chunk, [(seed, a, b, frontend) for a, b in _chunks(num_pretrain)])
    probe = run(_probe_chunk,
                [(seed, a, b, root / "probe_audio") for a, b in _chunks(num_probe)])
    shards.write_shards(
        root / "pretrain", (example for chunk in pretrain for example in chunk), frontend,
        source=f"jepa_jax synthetic corpus v{synthetic.GENERATOR_VERSION}, seed {seed}, "
               f"stream {PRETRAIN_STREAM}",
        label_maps={task: list(names) for task, names in synthetic.TASKS.items()})
    labels = [clip_labels for chunk in probe for clip_labels in chunk]
  finally:
    if pool:
      pool.shutdown(cancel_futures=True)
  _write_task_folders(root, labels)


def _disk_bytes(root: Path) -> int:
  """Bytes on disk, counting hard-linked files once."""
  seen, total = set(), 0
  for path in root.rglob("*"):
    stat = path.lstat()
    if path.is_file() and (stat.st_dev, stat.st_ino) not in seen:
      seen.add((stat.st_dev, stat.st_ino))
      total += stat.st_size
  return total


def _check_complete(corpus: DefaultCorpus, root: Path) -> None:
  needed = [corpus.pretrain / shards.METADATA_FILE] + [
      task_dir / tasks.META_FILE for task_dir in corpus.tasks.values()]
  missing = [str(p.relative_to(root)) for p in needed if not p.is_file()]
  if missing:
    raise RuntimeError(f"the default corpus in {root} is incomplete (no "
                       f"{', '.join(missing)}); delete that folder to rebuild it.")


def ensure_default_corpus(cache_dir: str | Path | None = None, *, num_pretrain: int = 3000,
                          num_probe: int = 1200, seed: int = 0, frontend: str = "audio_jepa",
                          workers: int = 2) -> DefaultCorpus:
  """Returns the default corpus for these settings, building it first if it is not cached."""
  frontend_spec = get_frontend(frontend)
  if frontend_spec.sample_rate != synthetic.SAMPLE_RATE:
    raise ValueError(f"front end {frontend!r} works at {frontend_spec.sample_rate} Hz; the "
                     f"synthetic corpus is {synthetic.SAMPLE_RATE} Hz.")
  if num_pretrain < 1 or num_probe < 6:
    raise ValueError(f"need num_pretrain >= 1 and num_probe >= 6 (so every split has a "
                     f"clip), got {num_pretrain} and {num_probe}.")
  if workers < 1:
    raise ValueError(f"workers must be >= 1, got {workers}.")
  cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
  root = cache_dir / f"default-corpus-{corpus_key(seed, num_pretrain, num_probe, frontend_spec)}"
  corpus = _layout(root)
  if root.exists():
    _check_complete(corpus, root)
    return corpus

  print(f"jepa_jax: building the default corpus ({num_pretrain} pretraining + {num_probe} "
        f"probe clips, {workers} worker(s)) in {root} ...", file=sys.stderr, flush=True)
  started = time.perf_counter()
  atomic_build.build_atomically(
      root, lambda tmp: _build(tmp, seed, num_pretrain, num_probe, frontend_spec, workers),
      Path.exists)
  print(f"jepa_jax: default corpus ready in {time.perf_counter() - started:.0f} s "
        f"({_disk_bytes(root) / 2**20:.0f} MiB): {root}", file=sys.stderr, flush=True)
  return corpus
