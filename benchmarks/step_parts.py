"""Where a masked-prediction train step spends its time and memory, part by part, for
several configs at the same batch, and how their steps compare with their FLOPs.

    python benchmarks/step_parts.py           # configs/ajepa.py against configs/audiomae.py
    python benchmarks/step_parts.py --configs=configs/ajepa.py,configs/ajepa.py:sets=4,\
        configs/audiomae.py --batch=8 --steps=3

Each part is compiled on its own from the config's objective, on the shapes the step
gives it (masks drawn by the step's sampler), and timed as the median of --steps calls
after 2 warm-up calls:
  masks      the mask sampler for the batch (every mask set);
  context    the encoder forward and backward on each mask set's context slots;
  target     (JEPA) the EMA target encoder forward: the whole grid ('latent') or the
             target slots ('audio');
  predictor  the predictor / decoder forward and backward (full grid or queries);
  loss       target standardisation, distance and masked mean, forward and backward;
  update     AdamW (and the EMA target) on a gradient of the parameters' shapes.
Then the whole compiled train steps, every config's in turn (--rounds medians; the shared
machine's slow spells then fall on all alike). Per row: milliseconds, XLA's cost_analysis
GFLOP and its memory analysis (arguments + temporaries + outputs not aliased, MiB). A part's
memory is its own peak, not its share of the step's. Parts run on one device: on a host
of several, the step's figures are one device's share of a step split over all, and only
the steps' ratios compare.

Last, every config's step time and XLA FLOPs over the --reference config's: JEPA does
more work than MAE by design, so its step may take longer, but in proportion to its FLOPs; the
column 'time / FLOPs ratio' is that proportion (issue 21 holds A-JEPA's to <= 1.15 x
AudioMAE's). Prints the tables and writes JSON (--out).
"""
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import step_setup  # noqa: E402
from jepa_jax import masks  # noqa: E402
from jepa_jax.config import fields, shapes  # noqa: E402
from jepa_jax.models import patches  # noqa: E402
from jepa_jax.objectives import losses  # noqa: E402
from jepa_jax.parallel import allocator, memory  # noqa: E402

flags.DEFINE_list("configs", ["configs/ajepa.py", "configs/audiomae.py"],
                  "configs (path[:variant]) to profile")
flags.DEFINE_string("reference", "configs/audiomae.py", "the config (one of --configs) "
                    "whose step the others' are compared with")
flags.DEFINE_integer("batch", 4, "global batch of every config")
flags.DEFINE_integer("steps", 3, "timed calls per part, after 2 warm-up calls")
flags.DEFINE_integer("rounds", 5, "timed steps of each config, in turn with the others'")
flags.DEFINE_string("out", "benchmarks/results/step_parts.json", "JSON output")
FLAGS = flags.FLAGS

WARMUP = 2


def _measure(fn, args: tuple, steps: int) -> dict:
  """Compile `fn` for `args`; its median time, XLA FLOPs and peak memory."""
  compiled = jax.jit(fn).lower(*args).compile()
  run = lambda: jax.block_until_ready(compiled(*args))  # noqa: E731
  return {"ms": 1e3 * step_setup.median_seconds(run, steps, WARMUP),
          "gflop": step_setup.xla_flops(compiled) / 1e9,
          "mib": memory.needed_bytes(compiled) / 2**20}


def _backward(apply, params, *inputs):
  """Forward and backward of `apply(params, *inputs)` against a fixed cotangent (the sum
  of the outputs' squares): gradients of the parameters and of the first input."""
  def loss(params, first):
    out = apply(params, first, *inputs[1:])
    return jnp.sum(jnp.square(out.astype(jnp.float32)))
  return jax.grad(loss, argnums=(0, 1))(params, inputs[0])


def profile_parts(config, batch: int, steps: int):
  """({part: {ms, gflop, mib}} of one config's train step at `batch` clips, with 'step'
  (its time left to interleaved_step_ms), a function that runs one step)."""
  config = config.copy_and_resolve_references()
  config.train.batch_size = batch
  setup = step_setup.benchmark_step(config)
  objective, state = setup.objective, setup.state
  params, grid = state["params"], shapes.grid(config)
  head_name = step_setup.predictor_section(config)
  encoder, head = objective.encoder, getattr(objective, head_name)
  mel = setup.batch["mel"]
  tokens = patches.patchify(mel, shapes.patch_shape(config))
  rng = jax.random.key(0)
  m = masks.sample(rng, batch, grid, config.mask)
  b, k, nc = m.context_idx.shape
  groups, nt = m.target_idx.shape[2:]
  context_idx = m.context_idx.reshape(b * k, nc)
  context_valid = m.context_valid.reshape(b * k, nc)
  context_tokens = patches.gather_tokens(tokens, m.context_idx.reshape(b, k * nc)).reshape(
      b * k, nc, -1)
  apply_encoder = lambda p, *a: encoder.apply({"params": p}, *a)  # noqa: E731
  apply_head = lambda p, *a: head.apply({"params": p}, *a)  # noqa: E731
  context = apply_encoder(params["encoder"], context_tokens, context_idx, context_valid)
  if head.full_grid:
    head_inputs = (context, context_idx, context_valid, m.target_idx.reshape(b * k, -1),
                   m.target_valid.reshape(b * k, -1))
  else:
    rep = lambda x: jnp.repeat(x, groups, axis=0)  # noqa: E731
    head_inputs = (rep(context), rep(context_idx), rep(context_valid),
                   m.target_idx.reshape(b * k * groups, nt),
                   m.target_valid.reshape(b * k * groups, nt))
  pred = apply_head(params[head_name], *head_inputs).reshape(b, k * groups * nt, -1)
  target_valid = m.target_valid.reshape(b, -1)

  parts = {
      "masks": _measure(lambda r: masks.sample(r, batch, grid, config.mask), (rng,), steps),
      "context": _measure(lambda p, *a: _backward(apply_encoder, p, *a),
                          (params["encoder"], context_tokens, context_idx, context_valid),
                          steps)}
  if config.objective == "jepa":
    target_idx = m.target_idx.reshape(b, -1)
    if config.jepa.target_domain == "latent":
      parts["target"] = _measure(
          lambda p, t, i: patches.gather_tokens(apply_encoder(p, t), i),
          (params["encoder"], tokens, target_idx), steps)
    else:
      parts["target"] = _measure(
          lambda p, t, i, v: apply_encoder(p, patches.gather_tokens(t, i), i, v),
          (params["encoder"], tokens, target_idx, target_valid), steps)
    distance = objective.distance
    standardize, eps = config.jepa.standardize_targets, config.jepa.standardize_eps
  else:
    distance, standardize, eps = losses.l2, True, config.mae.norm_pix_eps
  goal = lambda t: losses.standardize(t, eps) if standardize else t  # noqa: E731
  target = jnp.zeros(pred.shape, jnp.float32)  # values do not change the loss's time
  parts["predictor"] = _measure(lambda p, *a: _backward(apply_head, p, *a),
                                (params[head_name], *head_inputs), steps)
  parts["loss"] = _measure(
      jax.value_and_grad(lambda p, t, v: losses.masked_mean(distance(p, goal(t)), v)),
      (pred.astype(jnp.float32), target, target_valid), steps)
  tx, _ = step_setup.optimizer_of(config, objective)

  def update(grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  parts["update"] = _measure(update, (params, state["opt_state"], params), steps)

  compiled = setup.compiled.step
  step_state = state

  def run_step():
    nonlocal step_state
    step_state, metrics = compiled(step_state, setup.batch)
    jax.block_until_ready(metrics)

  for _ in range(WARMUP):
    run_step()
  parts["step"] = {"ms": float("nan"), "gflop": step_setup.xla_flops(compiled) / 1e9,
                   "mib": memory.needed_bytes(compiled) / 2**20}
  row = {"batch": batch, "grid": list(grid), "parts": parts,
         "mask_slots": {"context": nc, "target": nt, "sets": k, "groups": groups}}
  return row, run_step


def interleaved_step_ms(runs: dict, rounds: int) -> dict:
  """{name: median ms} of each config's step, timed in turn (A, B, A, B, ...) for
  `rounds` rounds, so that the shared machine's slow spells fall on every config alike."""
  times = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      t = time.perf_counter()
      run()
      times[name].append(1e3 * (time.perf_counter() - t))
  return {name: statistics.median(ts) for name, ts in times.items()}


PARTS = ("masks", "context", "target", "predictor", "loss", "update")


def print_parts(name: str, row: dict) -> None:
  parts, slots = row["parts"], row["mask_slots"]
  print(f"\n{name}: batch {row['batch']}, grid {row['grid'][0]} x {row['grid'][1]}, "
        f"{slots['sets']} mask set(s) of {slots['context']} context slots and "
        f"{slots['groups']} x {slots['target']} target slots")
  print("part | ms | of step | GFLOP XLA | peak MiB")
  step_ms = parts["step"]["ms"]
  for part in [p for p in PARTS if p in parts] + ["step"]:
    r = parts[part]
    print(f"{part} | {r['ms']:.0f} | {r['ms'] / step_ms:.0%} | {r['gflop']:.1f} | "
          f"{r['mib']:.0f}")
  total = sum(parts[p]["ms"] for p in PARTS if p in parts)
  print(f"sum of parts | {total:.0f} | {total / step_ms:.0%} | "
        f"{sum(parts[p]['gflop'] for p in PARTS if p in parts):.1f} | -")


def ratios(rows: dict, reference: str) -> dict:
  """Each config's step time and XLA FLOPs over the reference config's."""
  ref = rows[reference]["parts"]["step"]
  out = {}
  for name, row in rows.items():
    step = row["parts"]["step"]
    time_ratio, flops_ratio = step["ms"] / ref["ms"], step["gflop"] / ref["gflop"]
    out[name] = {"time_ratio": time_ratio, "flops_ratio": flops_ratio,
                 "time_over_flops": time_ratio / flops_ratio}
  return out


def main(argv):
  del argv
  if FLAGS.reference not in FLAGS.configs:
    sys.exit(f"--reference {FLAGS.reference} is not among --configs {FLAGS.configs}")
  rows, runs = {}, {}
  for name in FLAGS.configs:
    rows[name], runs[name] = profile_parts(fields.load(name), FLAGS.batch, FLAGS.steps)
  for name, ms in interleaved_step_ms(runs, FLAGS.rounds).items():
    rows[name]["parts"]["step"]["ms"] = ms
    print_parts(name, rows[name])
  result = ratios(rows, FLAGS.reference)
  print(f"\nsteps against {FLAGS.reference} on {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}")
  print("config | step ms | time ratio | XLA FLOPs ratio | time / FLOPs ratio")
  for name, r in result.items():
    print(f"{name} | {rows[name]['parts']['step']['ms']:.0f} | {r['time_ratio']:.2f} | "
          f"{r['flops_ratio']:.2f} | {r['time_over_flops']:.2f}")
  out = Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"device": jax.devices()[0].device_kind, "rows": rows,
                             "ratios": result}, indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  allocator.use_caching_allocator()  # as the commands (JEPA_JAX_MALLOC, glibc by default)
  app.run(main)
