"""Throughput of `python -m data_pipelines.prepare`: ten-second clips to mel shards, end to
end (listing, decode, resampling, log-mel, float16, writes, merge), per format and worker
count, plus where one clip's time goes.

    python benchmarks/prepare.py [--clips=1000] [--workers=1,2] [--formats=wav,flac,mp3]

Formats: 16 kHz mono 16-bit PCM WAV (the target: >= 300 clips/s on 2 cores with
audio_jepa), 44.1 kHz FLAC (resampled) and 128 kb/s-ish MP3 at 44.1 kHz (libsndfile
writes it). Clips are generated once per format in --workdir. Each run starts from an
empty output folder in a process that has already imported and warmed up librosa (a
fixed ~2-5 s per CLI call, reported apart). CPU time per clip (this process and its
workers) is reported beside wall time: on a shared machine it is the steadier figure.
Prints tables and writes JSON (--out).
"""
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
from absl import app, flags  # noqa: E402

from data_pipelines import audio_io, shards  # noqa: E402
from data_pipelines.frontends import get_frontend  # noqa: E402
from data_pipelines.prepare.plan import Options  # noqa: E402
from data_pipelines.prepare.run import prepare  # noqa: E402
from data_pipelines.prepare.workers import warm_up  # noqa: E402

flags.DEFINE_integer("clips", 1000, "clips per format")
flags.DEFINE_float("seconds", 10.0, "clip length")
flags.DEFINE_list("workers", ["1", "2"], "worker counts to time")
flags.DEFINE_list("formats", ["wav", "flac", "mp3"], "formats: wav (16 kHz PCM), flac, mp3 "
                  "(44.1 kHz)")
flags.DEFINE_string("frontend", "audio_jepa", "front end")
flags.DEFINE_string("workdir", None, "where clips and outputs go (default: a temp folder)")
flags.DEFINE_integer("profile_clips", 100, "clips timed stage by stage (one process)")
flags.DEFINE_string("out", "benchmarks/results/prepare.json", "JSON output")
FLAGS = flags.FLAGS

FORMATS = {"wav": (16000, "WAV", "PCM_16"), "flac": (44100, "FLAC", "PCM_16"),
           "mp3": (44100, "MP3", "MPEG_LAYER_III")}


def clip(index: int, rate: int, seconds: float) -> np.ndarray:
  """A tone with harmonics over pink-ish noise: what codecs and the mel see in speech or
  music, not digital silence (which compresses to nothing)."""
  rng = np.random.default_rng(index)
  t = np.arange(int(seconds * rate)) / rate
  f0 = rng.uniform(100, 800)
  tone = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.3)) / k for k in range(1, 6))
  noise = np.cumsum(rng.standard_normal(len(t))) * 0.002
  noise -= np.convolve(noise, np.ones(400) / 400, mode="same")  # no drift
  return (0.15 * tone * (0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * t)) + noise).astype(np.float32)


def make_clips(folder: Path, fmt: str, count: int, seconds: float) -> None:
  rate, container, subtype = FORMATS[fmt]
  folder.mkdir(parents=True, exist_ok=True)
  for i in range(count):
    path = folder / f"clip{i:05d}.{fmt}"
    if not path.exists():
      sf.write(path, np.clip(clip(i, rate, seconds), -1, 1), rate, format=container,
               subtype=subtype)


def cpu_seconds() -> float:
  """CPU time of this process and of its finished children (pools are joined per run)."""
  own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
      resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_prepare(folder: Path, out: Path, workers: int) -> dict:
  cpu = cpu_seconds()
  t = time.perf_counter()
  summary = prepare(out, input_dir=folder, options=Options(
      frontend=FLAGS.frontend, max_seconds=max(60.0, FLAGS.seconds)), workers=workers,
      progress=False, log=lambda message: None)
  seconds = time.perf_counter() - t
  cpu = cpu_seconds() - cpu
  if summary.errors or summary.num_examples != FLAGS.clips:
    raise RuntimeError(f"{folder}: {summary.num_examples} examples, errors {summary.errors[:3]}")
  audio_hours = FLAGS.clips * FLAGS.seconds / 3600
  return {"clips": FLAGS.clips, "seconds": seconds, "clips_per_s": FLAGS.clips / seconds,
          "audio_hours_per_hour": audio_hours / (seconds / 3600), "cpu_s": cpu,
          "cpu_ms_per_clip": 1000 * cpu / FLAGS.clips,
          "shard_mb": sum((out / s).stat().st_size for s in shards.read_metadata(out)["shards"])
          / 2**20}


def stage_profile(folder: Path, count: int) -> dict:
  """CPU milliseconds per clip of each stage, one process, the WAV clips (CPU time, not
  wall time: other processes on a shared machine do not count)."""
  frontend = get_frontend(FLAGS.frontend)
  paths = sorted(folder.iterdir())[:count]
  totals = dict.fromkeys(("decode", "logmel", "float16+moments", "encode+write"), 0.0)
  with tempfile.TemporaryDirectory() as tmp:
    writer = shards.PartWriter(lambda p: Path(tmp) / f"p{p}.array_record", 2**40,
                               options=shards.WRITER_OPTIONS)
    moments = shards.Moments()
    for path in paths:
      t0 = time.process_time()
      with audio_io.AudioReader(path, frontend.sample_rate) as reader:
        (wave,) = reader.segments()
      t1 = time.process_time()
      mel = frontend.logmel(wave)
      t2 = time.process_time()
      mel = mel.astype(shards.STORED_DTYPE)
      moments.add(mel)
      t3 = time.process_time()
      writer.write(shards.encode_record(0, mel, {}))
      t4 = time.process_time()
      for stage, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
        totals[stage] += seconds
    writer.close()
  return {stage: 1000 * seconds / len(paths) for stage, seconds in totals.items()}


def main(_):
  workdir = Path(FLAGS.workdir or tempfile.mkdtemp(prefix="prepare-bench-"))
  t = time.perf_counter()
  warm_up(get_frontend(FLAGS.frontend))  # librosa's lazy imports, once
  warm_up_s = time.perf_counter() - t
  rows = []
  for fmt in FLAGS.formats:
    folder = workdir / f"clips-{fmt}-{FLAGS.clips}x{FLAGS.seconds:g}s"
    make_clips(folder, fmt, FLAGS.clips, FLAGS.seconds)
    for workers in map(int, FLAGS.workers):
      out = workdir / f"out-{fmt}-{workers}"
      shutil.rmtree(out, ignore_errors=True)
      rows.append({"format": fmt, "rate": FORMATS[fmt][0], "workers": workers,
                   **time_prepare(folder, out, workers)})
      r = rows[-1]
      print(f"{fmt:5s} {r['workers']:2d} workers: {r['clips_per_s']:7.1f} clips/s", flush=True)
  profile = (stage_profile(workdir / f"clips-wav-{FLAGS.clips}x{FLAGS.seconds:g}s",
                           FLAGS.profile_clips) if "wav" in FLAGS.formats else {})

  print("\nformat | rate Hz | workers | clips | seconds | clips/s | audio h per h | "
        "CPU ms per clip | shards MiB")
  for r in rows:
    print(f"{r['format']} | {r['rate']} | {r['workers']} | {r['clips']} | {r['seconds']:.2f} | "
          f"{r['clips_per_s']:.1f} | {r['audio_hours_per_hour']:.0f} | "
          f"{r['cpu_ms_per_clip']:.2f} | {r['shard_mb']:.0f}")
  cores = len(os.sched_getaffinity(0))
  print(f"load average: {os.getloadavg()[0]:.1f} on {cores} cores. With other processes "
        f"on them, CPU ms per clip is the steadier figure: {cores} free cores would give "
        f"about {cores} x 1000 / (CPU ms per clip) clips/s.")
  if profile:
    print("\none WAV clip, one process (CPU ms): " + ", ".join(
        f"{stage} {ms:.2f}" for stage, ms in profile.items())
          + f"; total {sum(profile.values()):.2f} -> {1000 / sum(profile.values()):.0f} clips/s")
  print(f"librosa import + warm-up (once per CLI call, not in the rows): {warm_up_s:.1f} s")
  result = {"cores": len(os.sched_getaffinity(0)), "load_average": os.getloadavg(),
            "frontend": FLAGS.frontend, "clip_seconds": FLAGS.seconds,
            "writer_options": shards.WRITER_OPTIONS, "warm_up_s": warm_up_s, "runs": rows,
            "stage_ms_per_clip": profile}
  out = Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
