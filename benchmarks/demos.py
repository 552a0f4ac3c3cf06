"""The demo recipes side by side: each trained from the main command on the embedded
corpus, its probe against its random-init encoder, loss and collapse monitors, step time.

    python benchmarks/demos.py [--configs=audio_jepa,ajepa,audiomae,dasheng]
                               [--root=runs/demos] [--seed=0]

Each config runs `python -m jepa_jax.main --config=configs/NAME.py:demo` in ROOT/NAME
(a finished workdir is only probed again, an interrupted one resumes). Monitors are read
from the workdir's metrics.jsonl at the first and last logged steps. 4 to 5 minutes per
config on a 2-core CPU (A-JEPA's about 30: its block masks need 52 epochs), twice that on
slower ones. Prints a table and writes JSON.
"""
import json
import subprocess
import sys
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
flags.DEFINE_list("configs", ["audio_jepa", "ajepa", "audiomae", "dasheng"], "demo recipes")
flags.DEFINE_string("root", "runs/demos", "one workdir per config under this folder")
flags.DEFINE_integer("seed", 0, "config.seed of every run")
flags.DEFINE_string("out", "benchmarks/results/demos.json", "JSON output")
FLAGS = flags.FLAGS


def run_demo(name: str, workdir: Path) -> dict:
  command = [sys.executable, "-m", "jepa_jax.main", f"--config=configs/{name}.py:demo",
             f"--workdir={workdir}", f"--config.seed={FLAGS.seed}"]
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  if done.returncode != 0:
    raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def monitors(workdir: Path) -> dict:
  """First and last logged values of the loss and of every collapse monitor."""
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  keys = [k for k in rows[0] if k == "loss" or k.endswith(("feature_std", "effective_rank"))]
  return {k: {"first": rows[0][k], "last": rows[-1][k], "first_step": rows[0]["step"],
              "last_step": rows[-1]["step"]} for k in keys} | {
      "steps_per_sec": rows[-1]["steps_per_sec"]}


def main(_):
  results = []
  for name in FLAGS.configs:
    workdir = Path(FLAGS.root).absolute() / name
    probe = run_demo(name, workdir)
    margin = probe["probe_accuracy"] - probe["probe_accuracy_random_init"]
    spread = max(probe["probe_accuracy_seed_std"], probe["probe_accuracy_random_init_seed_std"])
    results.append({"config": name, **probe, "margin": margin,
                    "margin_in_seed_std": margin / spread if spread else float("inf"),
                    "monitors": monitors(workdir)})
    print(f"{name}: done", flush=True)
  print("\nconfig | probe | random init | margin (points, seed-std) | loss first -> last | "
        "monitors first -> last | steps/s")
  for r in results:
    m = r["monitors"]
    watched = [k for k in m if k not in ("loss", "steps_per_sec")]
    print(f"{r['config']} | {r['probe_accuracy']:.3f} +- {r['probe_accuracy_seed_std']:.3f} | "
          f"{r['probe_accuracy_random_init']:.3f} +- "
          f"{r['probe_accuracy_random_init_seed_std']:.3f} | {100 * r['margin']:+.1f}, "
          f"{r['margin_in_seed_std']:.1f} | {m['loss']['first']:.3f} -> {m['loss']['last']:.3f} | "
          + ", ".join(f"{k} {m[k]['first']:.2f} -> {m[k]['last']:.2f}" for k in watched)
          + f" | {m['steps_per_sec']:.2f}")
  out = Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"seed": FLAGS.seed, "rows": results}, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
