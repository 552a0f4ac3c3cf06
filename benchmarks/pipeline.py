"""Grain pipeline throughput: batches/s of `train_dataset` over mel shards at the Audio-JEPA
demo and paper batch shapes, with 0, 1 and 2 worker processes, against the rate at which
the demo train step consumes batches.

    python benchmarks/pipeline.py                              # measures the demo step too
    python benchmarks/pipeline.py --step_s=0.36 --workers=0,2  # a step time measured before

The shards hold generated 10 s log-mels (80 x 1001 frames, written directly with
shards.write_shards: no audio) and are reused between runs. Each row times --batches
batches after --warmup (worker start-up excluded), or as many as fit in --max_seconds.
Also prints what each step of the pipeline costs per example, timed alone. Prints a table
and writes JSON (--out), with the load average: on a shared machine the rates move with it.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from array_record.python.array_record_data_source import ArrayRecordDataSource  # noqa: E402

from data_pipelines import pipeline, shards  # noqa: E402
from data_pipelines.frontends import get_frontend  # noqa: E402
from jepa_jax.config import fields  # noqa: E402

flags.DEFINE_string("shard_dir", "benchmarks/results/pipeline_shards",
                    "generated shards (made when missing or different)")
flags.DEFINE_integer("examples", 512, "generated 10 s examples")
flags.DEFINE_list("shapes", ["demo", "paper"], "configs/audio_jepa.py variants to time")
flags.DEFINE_list("workers", ["0", "1", "2"], "worker process counts")
flags.DEFINE_integer("batches", 300, "timed batches per row")
flags.DEFINE_integer("warmup", 3, "untimed batches per row (worker start-up)")
flags.DEFINE_float("max_seconds", 30.0, "time budget per row (fewer batches if reached)")
flags.DEFINE_float("gain_jitter_db", 6.0, "gain jitter (A-JEPA's +-6 dB; 0 skips it)")
flags.DEFINE_float("step_s", 0.0, "demo train step seconds; 0 measures it now with "
                   "benchmarks/train_step.py")
flags.DEFINE_string("out", "benchmarks/results/pipeline.json", "JSON output")
FLAGS = flags.FLAGS

SECONDS = 10.0


def config(variant: str | None):
  return fields.load(f"{ROOT / 'configs' / 'audio_jepa.py'}:{variant or ''}")


def ensure_shards(shard_dir: Path, count: int) -> Path:
  """`count` random 10 s audio_jepa log-mels; kept if an earlier run made the same."""
  frontend = get_frontend("audio_jepa")
  frames = frontend.frames(SECONDS)
  if shard_dir.exists():
    metadata = shards.read_metadata(shard_dir)
    if (metadata["num_examples"], metadata["source"], metadata["frontend"]) == (
        count, f"benchmark {frames}", frontend.to_dict()):
      return shard_dir
    raise FileExistsError(f"{shard_dir} holds other data (or was made with other front-end "
                          f"settings); remove it or pass another --shard_dir.")
  rng = np.random.default_rng(0)
  examples = ((i, rng.normal(-7.0, 4.0, (frontend.n_mels, frames)).astype(np.float16), {})
              for i in range(count))
  shards.write_shards(shard_dir, examples, frontend, source=f"benchmark {frames}",
                      label_maps={})
  return shard_dir


def time_pipeline(shard_dir: Path, batch: int, frames: int, workers: int) -> dict:
  ds = pipeline.train_dataset(shard_dir, frames=frames, global_batch_size=batch, seed=0,
                              gain_jitter_db=FLAGS.gain_jitter_db, worker_count=workers)
  it = iter(ds)
  start = time.perf_counter()
  for _ in range(FLAGS.warmup):
    next(it)
  warmup_s = time.perf_counter() - start
  start, count = time.perf_counter(), 0
  while count < FLAGS.batches and time.perf_counter() - start < FLAGS.max_seconds:
    out = next(it)
    count += 1
  elapsed = time.perf_counter() - start
  it.close()
  assert out["mel"].shape == (batch, 80, frames)
  return {"batch": batch, "frames": frames, "workers": workers, "batches": count,
          "warmup_s": warmup_s, "batches_per_s": count / elapsed,
          "examples_per_s": count * batch / elapsed,
          "mb_per_s": count * out["mel"].nbytes / elapsed / 1e6}


def stage_costs(shard_dir: Path, batch: int, frames: int) -> dict[str, float]:
  """Microseconds per example of each step the pipeline takes, one at a time."""
  metadata = shards.read_metadata(shard_dir)
  frontend = get_frontend(metadata["frontend"]["name"])
  records = ArrayRecordDataSource([str(shard_dir / name) for name in metadata["shards"]])
  rng = np.random.default_rng(0)
  indices = iter(rng.integers(0, len(records), 10**6))
  record = records[0]
  mel = shards.decode_record(record)["mel"]
  window = pipeline.crop(mel, frames, frontend.pad_value(mel), rng)
  windows = [window] * batch
  mean, std = metadata["mean"], metadata["std"]
  stages = {
      "read record (array_record)": lambda: records[int(next(indices))],
      "decode_record": lambda: shards.decode_record(record),
      "crop + float16->float32": lambda: pipeline.crop(mel, frames, frontend.pad_value(mel),
                                                      rng),
      "float16->float32 of the whole clip": lambda: mel.astype(np.float32),
      "gain (apply_gain_db)": lambda: frontend.apply_gain_db(window, 3.0),
      "normalise": lambda: ((window - mean) / std).astype(np.float32),  # as pipeline's
      "batch (np.stack) / batch size": lambda: np.stack(windows),
      "per-example Philox generator (Grain)": lambda: np.random.Generator(
          np.random.Philox(1)),
  }
  costs = {}
  for name, fn in stages.items():
    number = 200
    seconds = min(timeit.repeat(fn, number=number, repeat=3)) / number
    costs[name] = seconds * 1e6 / (batch if name.startswith("batch") else 1)
  return costs


def demo_step_seconds() -> float:
  """Median demo train step (batch 32) from benchmarks/train_step.py, run now."""
  with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "train_step.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_step.py"),
                    "--config=configs/audio_jepa.py:demo", "--batch_sizes=32", "--steps=10",
                    f"--out={out}"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["rows"][0]["step_s"]


def main(_):
  os.chdir(ROOT)
  step_s = FLAGS.step_s or demo_step_seconds()
  shard_dir = ensure_shards(Path(FLAGS.shard_dir), FLAGS.examples)
  demo = config("demo")
  costs = stage_costs(shard_dir, demo.train.batch_size, demo.data.frames)
  print(f"per example, demo shape ({demo.data.frames} frames of 10 s clips):")
  for name, us in costs.items():
    print(f"  {name:40s} {us:8.1f} us")
  rows = []
  for shape in FLAGS.shapes:
    c = config("demo" if shape == "demo" else None)
    for workers in FLAGS.workers:
      row = time_pipeline(shard_dir, c.train.batch_size, c.data.frames, int(workers))
      row["shape"] = shape
      # The demo step consumes 1 / step_s batches per second; the paper step is not timed.
      row["x_demo_step"] = row["batches_per_s"] * step_s if shape == "demo" else None
      rows.append(row)
  header = ("shape", "batch", "frames", "workers", "batches/s", "examples/s", "MB/s",
            "x demo step")
  print(f"demo train step: {step_s:.3f} s = {1 / step_s:.2f} batches/s")
  print(" | ".join(header))
  for r in rows:
    ratio = "-" if r["x_demo_step"] is None else f"{r['x_demo_step']:.1f}x"
    print(" | ".join([r["shape"], str(r["batch"]), str(r["frames"]), str(r["workers"]),
                      f"{r['batches_per_s']:.2f}", f"{r['examples_per_s']:.0f}",
                      f"{r['mb_per_s']:.0f}", ratio]))
  out = Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"cpu_count": os.cpu_count(), "demo_step_s": step_s,
                             "step_measured_now": not FLAGS.step_s,
                             "gain_jitter_db": FLAGS.gain_jitter_db,
                             "examples": FLAGS.examples, "load_average": os.getloadavg(),
                             "stage_us_per_example": costs, "rows": rows}, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
