"""Builds the real-audio development benchmark from Debian packages, offline, into a cache:

    python benchmarks/real_audio/build.py [--install] [--cache_dir=DIR] [--workers=2]

Without --install, missing packages are named in one line and the command exits 2; with
it, `apt-get install -y --no-install-recommends <packages>` runs first (printed). The
built copy lives in <cache>/real_audio/<key> (<cache>: $JEPA_JAX_CACHE, else
~/.cache/jepa_jax, as the embedded corpus), the key hashing BUILD_VERSION, the seed and
the installed package versions, so a second build is instant. Layout:

    corpus/*.flac                 unlabelled 4 s clips, 16 kHz mono (data_pipelines.prepare)
    tasks/<task>/audio/*.wav      labelled clips, 16 kHz mono 16-bit
    tasks/<task>/meta.csv         filename,label,fold (5 folds, grouped)
    tasks/<task>/task.json        {"unit_sec": ...}
    tasks/<task>/groups.csv       filename,group (what the folds keep together)
    manifest.json                 packages and versions, tasks, corpus minutes, build time

Prints the folder's path on stdout (last line). Then e.g.
    python -m data_pipelines.prepare --input=<path>/corpus --output=real_shards
    python benchmarks/real_audio/baselines.py --root=<path>
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from absl import flags  # noqa: E402

from benchmarks.real_audio import corpus, music_tasks, sources, speech_tasks, task_clips  # noqa: E402
from data_pipelines import atomic_build, cli_flags  # noqa: E402
from data_pipelines.default_corpus import default_cache_dir  # noqa: E402

# Bump when what is built changes (sources, clip plans, layout): cached copies are keyed by it.
BUILD_VERSION = 1
SEED = 0
TASK_BUILDERS = {  # job -> function(seed) -> task(s); jobs run in parallel
    "spoken_language": speech_tasks.language_task,
    "speaker": speech_tasks.speaker_task,
    "keyword": speech_tasks.keyword_task,
    "notes": music_tasks.note_tasks,
    "drum_type": music_tasks.drum_task,
}


def cache_key(versions: dict[str, str | None], seed: int) -> str:
  spec = {"build": BUILD_VERSION, "seed": seed, "packages": versions}
  return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _task_job(args: tuple[str, Path, int]) -> dict:
  """Builds and writes one job's task(s) into root/tasks; returns {task: summary}."""
  job, root, seed = args
  built = TASK_BUILDERS[job](seed)
  written: dict[str, Path] = {}
  return {task.name: task_clips.write_task(task, root / "tasks" / task.name, written, seed)
          for task in (built if isinstance(built, tuple) else (built,))}


def _corpus_job(args: tuple[str, Path, int]) -> dict:
  _, root, _ = args
  rows = corpus.build_corpus(root / "corpus")
  minutes: dict[str, float] = {}
  for row in rows:
    minutes[row["source"]] = minutes.get(row["source"], 0.0) + row["seconds"] / 60
  return {"clips": len(rows), "minutes": round(sum(minutes.values()), 1),
          "minutes_by_source": {k: round(v, 1) for k, v in minutes.items()}}


def build(root: Path, versions: dict[str, str | None], seed: int, workers: int) -> dict:
  started = time.perf_counter()
  root.mkdir(parents=True)
  jobs = [(_corpus_job, ("corpus", root, seed))] + [
      (_task_job, (job, root, seed)) for job in TASK_BUILDERS]
  pool = (concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None)
  try:
    futures = [(args[0], pool.submit(fn, args) if pool else None, fn, args)
               for fn, args in jobs]
    results = {name: (f.result() if f else fn(args)) for name, f, fn, args in futures}
  finally:
    if pool:
      pool.shutdown(cancel_futures=True)
  tasks = {name: summary for job in TASK_BUILDERS for name, summary in results[job].items()}
  manifest = {"build_version": BUILD_VERSION, "seed": seed,
              "packages": {p: {"version": v, "use": sources.SOURCES[p][0],
                               "what": sources.SOURCES[p][1]} for p, v in versions.items()},
              "corpus": results["corpus"], "tasks": tasks,
              "build_seconds": round(time.perf_counter() - started, 1), "workers": workers}
  (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
  return manifest


def ensure_benchmark(cache_dir: Path | None = None, workers: int = 2, seed: int = SEED,
                     install: bool = False) -> Path:
  """The built benchmark's folder, building it first if it is not cached. Raises
  FileNotFoundError naming the missing packages (install=False)."""
  packages = list(sources.SOURCES)
  versions = sources.installed_versions(packages)
  absent = sources.missing(versions)
  if absent and install:
    command = sources.install_command(absent)
    print(" ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)
    versions = sources.installed_versions(packages)
    absent = sources.missing(versions)
  if absent:
    raise FileNotFoundError(
        f"missing Debian package(s): {' '.join(absent)}; install them with "
        f"`{' '.join(sources.install_command(absent))}` or run with --install")
  cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
  root = cache_dir / "real_audio" / cache_key(versions, seed)
  if (root / "manifest.json").is_file():
    return root
  if root.exists():
    raise RuntimeError(f"{root} is an incomplete build (no manifest.json); delete it and "
                       f"run again")
  print(f"building the real-audio benchmark in {root} ({workers} worker(s)) ...",
        file=sys.stderr, flush=True)
  manifest = atomic_build.build_atomically(
      root, lambda tmp: build(tmp, versions, seed, workers),
      lambda folder: (folder / "manifest.json").is_file())
  print(f"built in {manifest['build_seconds']:.0f} s: corpus {manifest['corpus']['minutes']} "
        f"min, {len(manifest['tasks'])} tasks", file=sys.stderr, flush=True)
  return root


def _define_flags(values: flags.FlagValues, command_line: list[str]) -> None:
  del command_line
  flags.DEFINE_bool("install", False, "apt-get install the missing packages first",
                    flag_values=values)
  flags.DEFINE_string("cache_dir", None, "cache folder (default: $JEPA_JAX_CACHE, else "
                      "~/.cache/jepa_jax)", flag_values=values)
  flags.DEFINE_integer("workers", 2, "processes", flag_values=values)


def main(argv: list[str] | None = None) -> int:
  values = cli_flags.parse(argv, _define_flags, __doc__)
  if values.workers < 1:
    print(f"error: --workers must be >= 1, got {values.workers}", file=sys.stderr)
    return 2
  try:
    root = ensure_benchmark(values.cache_dir and Path(values.cache_dir), values.workers,
                            install=values.install)
  except (FileNotFoundError, ValueError, RuntimeError, subprocess.CalledProcessError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  print(root)
  return 0


if __name__ == "__main__":
  sys.exit(main())
