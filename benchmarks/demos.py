"""The demo recipes side by side: each trained from the main command on the embedded
corpus, its probe against its random-init encoder, loss and collapse monitors, step time.

    python benchmarks/demos.py [--configs=audio_jepa,ajepa,audiomae,dasheng]
                               [--root=runs/demos] [--seeds=0,1,2]

Each config and training seed runs `python -m jepa_jax.main --config=configs/NAME.py:demo
--config.seed=S` in ROOT/NAME/seed_S (a finished workdir is only probed again, an
interrupted one resumes: give a fresh ROOT to time the command). Monitors are read from
the workdir's metrics.jsonl at the first and last logged steps; wall_s is the command's
wall time. Per config, the margin over the random-init encoder is also summarised over
the seeds (mean, smallest, smallest in probe seed-stds). 4 to 8 minutes per
config and seed on a 2-core CPU (A-JEPA's about 30: its block masks need 52 epochs), twice
that on slower ones. Prints a table and writes JSON.
"""
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]


def define_flags() -> None:
  # Defined when run, not on import: the tests import this module beside other benchmarks
  # whose flags share these names.
  flags.DEFINE_list("configs", ["audio_jepa", "ajepa", "audiomae", "dasheng"], "demo recipes")
  flags.DEFINE_string("root", "runs/demos", "one workdir per config and seed under this folder")
  flags.DEFINE_list("seeds", ["0"], "training seeds (config.seed) of every config")
  flags.DEFINE_string("out", "benchmarks/results/demos.json", "JSON output")


FLAGS = flags.FLAGS


def run_demo(name: str, workdir: Path, seed: int) -> dict:
  command = [sys.executable, "-m", "jepa_jax.main", f"--config=configs/{name}.py:demo",
             f"--workdir={workdir}", f"--config.seed={seed}"]
  t = time.perf_counter()
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  if done.returncode != 0:
    raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
  return {**json.loads(done.stdout.strip().splitlines()[-1]),
          "wall_s": round(time.perf_counter() - t, 1)}


def over_seeds(rows: list[dict]) -> dict:
  """One config's margins over its training seeds."""
  margins = [r["margin"] for r in rows]
  return {"seeds": [r["seed"] for r in rows], "margin_mean": statistics.fmean(margins),
          "margin_min": min(margins),
          "margin_in_seed_std_min": min(r["margin_in_seed_std"] for r in rows),
          "wall_s_max": max(r["wall_s"] for r in rows)}


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
    for seed in map(int, FLAGS.seeds):
      workdir = Path(FLAGS.root).absolute() / name / f"seed_{seed}"
      probe = run_demo(name, workdir, seed)
      margin = probe["probe_accuracy"] - probe["probe_accuracy_random_init"]
      spread = max(probe["probe_accuracy_seed_std"],
                   probe["probe_accuracy_random_init_seed_std"])
      results.append({"config": name, "seed": seed, **probe, "margin": margin,
                      "margin_in_seed_std": margin / spread if spread else float("inf"),
                      "monitors": monitors(workdir)})
      print(f"{name} seed {seed}: done in {probe['wall_s']:.0f} s", flush=True)
  print("\nconfig | seed | probe | random init | margin (points, seed-std) | "
        "loss first -> last | monitors first -> last | steps/s | wall s")
  for r in results:
    m = r["monitors"]
    watched = [k for k in m if k not in ("loss", "steps_per_sec")]
    print(f"{r['config']} | {r['seed']} | {r['probe_accuracy']:.3f} +- "
          f"{r['probe_accuracy_seed_std']:.3f} | {r['probe_accuracy_random_init']:.3f} +- "
          f"{r['probe_accuracy_random_init_seed_std']:.3f} | {100 * r['margin']:+.1f}, "
          f"{r['margin_in_seed_std']:.1f} | {m['loss']['first']:.3f} -> {m['loss']['last']:.3f} | "
          + ", ".join(f"{k} {m[k]['first']:.2f} -> {m[k]['last']:.2f}" for k in watched)
          + f" | {m['steps_per_sec']:.2f} | {r['wall_s']:.0f}")
  summary = {name: over_seeds([r for r in results if r["config"] == name])
             for name in FLAGS.configs}
  print("\nconfig | seeds | margin mean | smallest margin | smallest in seed-stds | "
        "longest wall s")
  for name, s in summary.items():
    print(f"{name} | {','.join(map(str, s['seeds']))} | {100 * s['margin_mean']:+.1f} | "
          f"{100 * s['margin_min']:+.1f} | {s['margin_in_seed_std_min']:.1f} | "
          f"{s['wall_s_max']:.0f}")
  out = Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"rows": results, "over_seeds": summary}, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
