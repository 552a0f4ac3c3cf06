"""Host time the train loop waits for input (the next batch from Grain and its hand-over
to the devices) against its wall time per step, for the demo recipes and the paper grids
at batch 32, on the embedded corpus.

    python benchmarks/input_wait.py                  # every row: 23 min at load ~7
    python benchmarks/input_wait.py --paper= --steps=100        # demo recipes only
    python benchmarks/input_wait.py --demo= --paper=dasheng.py --paper_depth=0  # ViT-B

Each config runs loop.train for warm-up + timed steps, logging every warm-up steps. The
loop logs, for each interval between two logs, its steps/s and the share of its wall time
spent waiting for input (`input_wait_fraction` in metrics.jsonl); the intervals after the
first give the figures (the first holds Grain's start, before its read-ahead has built
up: its wait is reported apart; the final checkpoint comes after the last log). Each
interval ends with the log's device sync and collapse monitors, as in training.

Paper grids keep their input (mels x frames, batch, augmentation) and widths but only
--paper_depth blocks per stack, since full ViT-B steps take tens of seconds to minutes on
2 CPU cores (Audio-JEPA's ViT-B on 80 x 208: 41 s a step and 7.8 GB under load): a
shorter step makes the wait a larger share, so their shares bound the full models'.
A-JEPA's paper grid is half of the default run's time (112 s a step at load ~7).
Prints a table and writes JSON (--out) with the load average: on a shared machine the
step times move with it. Goal: input wait <= 5 % of the step.
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from jepa_jax.config import fields  # noqa: E402
from jepa_jax.training import datasets, loop  # noqa: E402

flags.DEFINE_list("demo", ["audio_jepa.py:demo", "ajepa.py:demo", "audiomae.py:demo",
                           "dasheng.py:demo"], "demo recipes (configs/...), their own batch")
flags.DEFINE_list("paper", ["audio_jepa.py", "ajepa.py", "audiomae.py", "dasheng.py"],
                  "paper recipes (configs/...), run at --batch")
flags.DEFINE_integer("batch", 32, "global batch of the paper grids")
flags.DEFINE_integer("warmup", 10, "untimed first steps of a demo recipe (its log interval)")
flags.DEFINE_integer("steps", 40, "timed steps of a demo recipe")
flags.DEFINE_integer("paper_warmup", 2, "untimed first steps of a paper grid")
flags.DEFINE_integer("paper_steps", 2, "timed steps of a paper grid")
flags.DEFINE_integer("paper_depth", 2, "blocks of every stack of a paper grid (0: the recipe's)")
flags.DEFINE_integer("worker_count", -1, "Grain worker processes; -1 keeps the config's")
flags.DEFINE_string("out", "benchmarks/results/input_wait.json", "JSON output")
FLAGS = flags.FLAGS

GOAL = 0.05  # input wait as a fraction of the step
STACKS = ("model", "predictor", "decoder")


def recipe(spec: str, batch: int | None, depth: int):
  """configs/<spec> at `batch` (when given) with at most `depth` blocks per stack (when
  > 0), no learning-rate warmup (the runs are short)."""
  config = fields.load(ROOT / "configs" / spec)
  if batch is not None:
    config.train.batch_size = batch
  for section in STACKS:
    if depth and section in config:
      config[section].depth = min(depth, config[section].depth)
  if FLAGS.worker_count >= 0:
    config.data.worker_count = FLAGS.worker_count
  config.optim.warmup_epochs = 0.0
  return config


def log_intervals(rows: list[dict]) -> list[dict]:
  """metrics.jsonl rows -> each log interval's steps, seconds and seconds of input wait."""
  out, previous = [], 0
  for row in rows:
    steps = row["step"] - previous
    seconds = steps / row["steps_per_sec"]
    out.append({"steps": steps, "seconds": seconds,
                "wait": row["input_wait_fraction"] * seconds})
    previous = row["step"]
  return out


def measure(spec: str, batch: int | None, warmup: int, steps: int, depth: int = 0) -> dict:
  config = recipe(spec, batch, depth)
  data = datasets.resolve(config)
  config.train.epochs = (warmup + steps) * config.train.batch_size / data.num_examples
  config.train.log_every = warmup
  with tempfile.TemporaryDirectory() as workdir:
    result = loop.train(config, workdir)
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").open()]
  assert result.step == warmup + steps, (result.step, warmup + steps)
  first, *timed = log_intervals(rows)
  timed_steps = sum(i["steps"] for i in timed)
  step_s = sum(i["seconds"] for i in timed) / timed_steps
  wait_s = sum(i["wait"] for i in timed) / timed_steps
  return {"config": spec, "grid": [data.metadata["frontend"]["n_mels"], config.data.frames],
          "depths": {s: config[s].depth for s in STACKS if s in config},
          "batch": config.train.batch_size, "worker_count": config.data.worker_count,
          "warmup_steps": warmup, "steps": timed_steps, "step_s": step_s,
          "input_wait_s": wait_s, "input_wait_fraction": wait_s / step_s,
          "warmup_wait_s": first["wait"], "run_input_wait_fraction": result.input_wait_fraction,
          "compile_s": result.timings["compile"]}


def print_table(rows: list[dict]) -> None:
  print(" | ".join(("config", "mels x frames", "depths", "batch", "workers", "steps",
                    "step s", "wait ms/step", "wait %", "warm-up wait s", "whole run wait %")))
  for r in rows:
    print(" | ".join([r["config"], "x".join(map(str, r["grid"])),
                      "/".join(map(str, r["depths"].values())), str(r["batch"]),
                      str(r["worker_count"]), str(r["steps"]), f"{r['step_s']:.3f}",
                      f"{r['input_wait_s'] * 1e3:.1f}", f"{r['input_wait_fraction']:.1%}",
                      f"{r['warmup_wait_s']:.2f}", f"{r['run_input_wait_fraction']:.1%}"]))
  over = [r["config"] for r in rows if r["input_wait_fraction"] > GOAL]
  print(f"input wait above {GOAL:.0%} of the step: {', '.join(over) or 'none'}")


def main(_):
  os.chdir(ROOT)
  logging.set_verbosity(logging.WARNING)  # orbax logs several lines per checkpoint
  started = time.perf_counter()
  rows = [measure(spec, None, FLAGS.warmup, FLAGS.steps) for spec in FLAGS.demo]
  rows += [measure(spec, FLAGS.batch, FLAGS.paper_warmup, FLAGS.paper_steps, FLAGS.paper_depth)
           for spec in FLAGS.paper]
  print_table(rows)
  out = Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({
      "cpu_count": os.cpu_count(), "devices": jax.device_count(), "goal_fraction": GOAL,
      "load_average": os.getloadavg(), "wall_s": time.perf_counter() - started,
      "rows": rows}, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
