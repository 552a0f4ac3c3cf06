"""Mask sampling cost: each strategy at 65 (5 x 13) and 512 (8 x 64) patches, next to
the train step of the demo config, also measured inside that jitted step.

    python benchmarks/masks.py [--batch=32] [--repeats=20]

Standalone: the jitted sampler for one batch. In the step: the demo train step with the
strategy sampling on device, minus the same compiled step taking those masks as an
input instead, at the demo's own 5 x 13 grid (the strategies a demo config can use).
Prints a table and writes JSON.
"""
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from jepa_jax import masks, objectives, optim, train  # noqa: E402
from tests.tiny import load_config_module  # noqa: E402

flags.DEFINE_integer("batch", 32, "clips per batch (the demo's)")
flags.DEFINE_integer("repeats", 20, "timed calls per measurement (median)")
flags.DEFINE_string("out", "benchmarks/results/masks.json", "JSON output")
FLAGS = flags.FLAGS


def median_seconds(fn, *args) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(FLAGS.repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def sampler_seconds(strategy: str, grid) -> float:
  cfg = masks.default_config(strategy)
  fn = jax.jit(lambda k: masks.sample(k, FLAGS.batch, grid, cfg, 500, 1000))
  return median_seconds(fn, jax.random.key(0))


def demo_step(strategy: str, precomputed: bool):
  """The demo train step with `strategy` (compiled, with its arguments): masks sampled on
  device, or given as an input."""
  config = load_config_module().get_config("demo")
  config.train.batch_size = FLAGS.batch
  config.mask.strategy = strategy
  objective = objectives.build(config, total_steps=1000)
  given = masks.sample(jax.random.key(0), FLAGS.batch, objective.grid, config.mask, 500, 1000)
  tx, schedules = optim.make_optimizer(config.optim, config.ema, FLAGS.batch, 1000, 10,
                                       objective.ema_subtree)
  init_rng, step_key = train.rngs(config)
  real_sample = masks.sample

  def step(state, batch, mask_input):
    if precomputed:  # the objective's sampler returns the masks passed in
      masks.sample = lambda *args, **kwargs: mask_input
    try:
      return train.train_step(objective, tx, schedules, step_key, state, batch)
    finally:
      masks.sample = real_sample

  state = jax.jit(lambda r: nn.unbox(train.init_state(objective, tx, r)))(init_rng)
  batch = {"mel": jnp.asarray(np.random.default_rng(0).normal(
      size=(FLAGS.batch, 80, config.data.frames)).astype(np.float32)),
           "id": jnp.arange(FLAGS.batch, dtype=jnp.int32)}
  compiled = jax.jit(step).lower(state, batch, given).compile()
  return compiled, (state, batch, given)


def in_step_seconds(strategy: str, rounds: int = 3) -> tuple[float, float]:
  """(sampled, precomputed) step seconds: medians of interleaved rounds, the fastest
  round of each kept (CPU timings here swing by 10-20 % between identical runs)."""
  variants = [demo_step(strategy, precomputed) for precomputed in (False, True)]
  best = [float("inf"), float("inf")]
  for _ in range(rounds):
    for i, (fn, args) in enumerate(variants):
      best[i] = min(best[i], median_seconds(fn, *args))
  return best[0], best[1]


def main(_):
  rows = []
  for strategy in masks.STRATEGIES:
    row = {"strategy": strategy}
    for grid in ((5, 13), (8, 64)):
      row[f"sample_ms_{grid[0] * grid[1]}"] = 1e3 * sampler_seconds(strategy, grid)
    if strategy in ("unstructured", "multi_block", "time"):  # the demo's own strategies
      with_sampling, without = in_step_seconds(strategy)
      row.update(step_ms=1e3 * with_sampling, step_precomputed_ms=1e3 * without,
                 in_step_share=(with_sampling - without) / with_sampling)
    rows.append(row)
  demo_step = next(r["step_ms"] for r in rows if r["strategy"] == "unstructured")
  for r in rows:
    r["standalone_share_of_step_65"] = r["sample_ms_65"] / demo_step
  print("strategy | sample ms (65) | sample ms (512) | % of demo step (65) | step ms | "
        "step ms, masks precomputed | in-step share")
  for r in rows:
    extra = (f"{r['step_ms']:.0f} | {r['step_precomputed_ms']:.0f} | {r['in_step_share']:+.1%}"
             if "step_ms" in r else "- | - | -")
    print(f"{r['strategy']} | {r['sample_ms_65']:.2f} | {r['sample_ms_512']:.2f} | "
          f"{r['standalone_share_of_step_65']:.1%} | {extra}")
  out = Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"batch": FLAGS.batch, "rows": rows}, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
