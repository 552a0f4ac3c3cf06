"""Train-step speed of a config: compile time, step time, samples/s, analytic and XLA
FLOPs, achieved FLOP/s against this machine's matmul ceiling measured in the same run.

    python benchmarks/train_step.py --config=configs/audio_jepa.py:demo --batch_sizes=32,64
    python benchmarks/train_step.py --config=configs/audio_jepa.py --batch_sizes=32

Prints a table and writes JSON (--out). Analytic FLOPs follow the usual rule: 6 x params
x tokens for passes that are trained (context encoder, predictor), 2 x params x tokens
for the EMA target pass, plus attention (4 T^2 D per layer and sample forward, x3 when
trained); no remat recompute and no padding are counted.
"""
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks.step_setup import benchmark_step  # noqa: E402
from jepa_jax import masks, objectives  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/audio_jepa.py:demo", "config to time")
flags.DEFINE_list("batch_sizes", ["32", "64"], "global batch sizes")
flags.DEFINE_integer("steps", 10, "timed steps per batch size (after 2 warm-up steps)")
flags.DEFINE_string("out", "benchmarks/results/train_step.json", "JSON output")
FLAGS = flags.FLAGS


def count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def token_counts(config) -> tuple[int, int, int]:
  """(grid tokens, context slots, target slots) of one clip for the config's masks."""
  grid = objectives.build(config).grid
  m = jax.eval_shape(lambda k: masks.sample(k, 1, grid, config.mask), jax.random.key(0))
  return grid[0] * grid[1], int(np.prod(m.context_idx.shape)), int(np.prod(m.target_idx.shape))


def analytic_flops(config, params: dict, batch: int) -> float:
  """For fixed-count masks (unstructured); block masks pad their slots, which the
  step computes but these FLOPs do not count."""
  n, n_context, n_target = token_counts(config)
  jepa = config.objective == "jepa"  # else MAE: a decoder and no target pass
  head = "predictor" if jepa else "decoder"
  n_target_pass = (n_target if config.jepa.target_domain == "audio" else n) if jepa else 0
  enc, pred = count(params["encoder"]), count(params[head])
  width, depth = config.model.width, config.model.depth
  pwidth, pdepth = config[head].width, config[head].depth
  attn = lambda t, d, layers: 4 * t * t * d * layers  # noqa: E731  forward, per sample
  return batch * (6 * enc * n_context + 3 * attn(n_context, width, depth)
                  + 2 * enc * n_target_pass + attn(n_target_pass, width, depth)
                  + 6 * pred * n + 3 * attn(n, pwidth, pdepth))


def matmul_ceiling(m: int, k: int, n: int) -> float:
  """FLOP/s of one f32 GEMM of the given shape, best of several runs."""
  a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  times = []
  for _ in range(20):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * m * k * n / min(times)


def time_step(config, batch: int) -> dict:
  config.train.batch_size = batch
  setup = benchmark_step(config)
  objective, compiled, state, data = setup.objective, setup.compiled, setup.state, setup.batch
  cost = compiled.step.cost_analysis()
  xla_flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", float("nan")))
  times = []
  for i in range(FLAGS.steps + 2):
    t = time.perf_counter()
    state, metrics = compiled.step(state, data)
    jax.block_until_ready(metrics)
    if i >= 2:
      times.append(time.perf_counter() - t)
  step_s = statistics.median(times)
  flops = analytic_flops(config, state["params"], batch)
  grid = objective.grid
  _, n_context, _ = token_counts(config)
  # The step's dominant GEMM: the context encoder's MLP, (B * Nc) x D x 4D.
  ceiling = matmul_ceiling(batch * n_context, config.model.width, config.model.mlp_dim)
  return {"batch": batch, "tokens_per_clip": grid[0] * grid[1], "compile_s": setup.compile_s,
          "step_s": step_s, "samples_per_s": batch / step_s, "analytic_flops": flops,
          "xla_flops": xla_flops, "achieved_flops_per_s": flops / step_s,
          "matmul_ceiling_flops_per_s": ceiling,
          "fraction_of_ceiling": flops / step_s / ceiling}


def main(_):
  rows = [time_step(FLAGS.config, int(b)) for b in FLAGS.batch_sizes]
  header = ("batch", "tokens", "compile s", "step s", "samples/s", "GFLOP (analytic)",
            "GFLOP (XLA)", "GFLOP/s", "ceiling GFLOP/s", "of ceiling")
  print(" | ".join(header))
  for r in rows:
    print(" | ".join([str(r["batch"]), str(r["tokens_per_clip"]), f"{r['compile_s']:.1f}",
                      f"{r['step_s']:.3f}", f"{r['samples_per_s']:.1f}",
                      f"{r['analytic_flops'] / 1e9:.1f}", f"{r['xla_flops'] / 1e9:.1f}",
                      f"{r['achieved_flops_per_s'] / 1e9:.1f}",
                      f"{r['matmul_ceiling_flops_per_s'] / 1e9:.1f}",
                      f"{r['fraction_of_ceiling']:.0%}"]))
  out = Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"device": str(jax.devices()[0].device_kind),
                             "devices": jax.device_count(), "rows": rows}, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
