"""Mask sampling cost: each strategy alone at 65 (5 x 13) and 512 (8 x 64) patches, and
inside the jitted train step of a config that uses it, at that config's own grid.

    python benchmarks/masks.py [--steps=3] [--only=ajepa]

Alone: the jitted sampler for one batch of 32 clips (median of 20 calls).
In the step: the compiled train step is profiled (jax.profiler) for a few steps; every
XLA op that the sampler emitted (its named scope, masks.SCOPE, in the op's metadata) is
summed and divided by the steps' wall time. Timing the whole step with and without
sampling cannot resolve a 2 % difference on this machine (identical runs swing by
5-20 %); the profile attributes the time op by op. Ops run concurrently, so the share is
an upper bound. The full-size recipes run at a small batch: the sampler and the step both
scale with the batch, and a small batch only inflates the sampler's fixed overheads.
Prints a table and writes JSON.
"""
import collections
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.profiler import ProfileData  # noqa: E402

from benchmarks.step_setup import benchmark_step, median_seconds  # noqa: E402
from jepa_jax import masks  # noqa: E402
from jepa_jax.config import fields, validation

flags.DEFINE_integer("steps", 3, "profiled steps per case (after 2 warm-up steps)")
flags.DEFINE_list("only", [], "run the in-step cases whose config contains one of these")
flags.DEFINE_string("out", "benchmarks/results/masks.json", "JSON output")
FLAGS = flags.FLAGS

SAMPLER_BATCH = 32
# (strategy, config, batch): each strategy in a recipe that uses it, demo and full size.
IN_STEP_CASES = (
    ("unstructured", "configs/audio_jepa.py:demo", 32),
    ("multi_block", "configs/audio_jepa.py:demo", 32),   # Audio-JEPA table 3
    ("time", "configs/audio_jepa.py:demo", 32),
    ("curriculum", "configs/ajepa.py:demo", 32),
    ("unstructured", "configs/audiomae.py:demo", 32),
    ("grouped", "configs/dasheng.py:demo", 32),
    ("unstructured", "configs/audio_jepa.py", 8),
    ("curriculum", "configs/ajepa.py", 4),
    ("time_frequency_aware", "configs/ajepa.py", 4),     # the curriculum's end point
    ("unstructured", "configs/audiomae.py", 4),
    ("time_and_frequency", "configs/audiomae.py:lines", 4),
    ("grouped", "configs/dasheng.py", 8),
)


def sampler_ms(strategy: str, grid) -> float:
  cfg = masks.default_config(strategy)
  fn = jax.jit(lambda k: masks.sample(k, SAMPLER_BATCH, grid, cfg, 500, 1000))
  key = jax.random.key(0)
  return 1e3 * median_seconds(lambda: jax.block_until_ready(fn(key)), steps=20, warmup=1)


def load_config(spec: str, strategy: str, batch: int):
  config = fields.load(spec)
  if config.mask.strategy != strategy:
    config.mask = masks.default_config(strategy, num_sets=config.mask.num_sets)
  config.train.batch_size = batch
  validation.validate(config)
  return config


_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = .*? ([a-z][\w\-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"(?:calls|body|condition|to_apply)=%([\w.\-]+)")
_CONTAINERS = ("while", "conditional", "call")  # their events span their bodies' ops


def sampler_ops(hlo_text: str) -> tuple[set[str], set[str]]:
  """(instructions the sampler emitted, container instructions) of a compiled module.
  An instruction without an op name (most fusions) counts as the sampler's when most of
  the instructions of the computation it calls do."""
  op_names, calls, members, containers = {}, {}, collections.defaultdict(list), set()
  computation = None
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+) .*\{\s*$", line)
    if header and " = " not in line:
      computation = header.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, opcode = m.groups()
    members[computation].append(name)
    op_name = _OP_NAME.search(line)
    op_names[name] = op_name.group(1) if op_name else None
    calls[name] = _CALLS.findall(line)
    if opcode in _CONTAINERS:
      containers.add(name)

  def is_sampler(name: str, depth: int = 0) -> bool:
    if op_names[name] is not None:
      return masks.SCOPE in op_names[name]
    inner = [n for c in calls[name] for n in members.get(c, [])]
    if not inner or depth > 4:
      return False
    return 2 * sum(is_sampler(n, depth + 1) for n in inner) > len(inner)

  return {n for n in op_names if is_sampler(n)}, containers


def op_seconds(trace_dir: str, module: str) -> dict[str, float]:
  """Seconds per HLO instruction of `module` over a profile."""
  path = next(Path(trace_dir).rglob("*.xplane.pb"))
  out: dict[str, float] = collections.defaultdict(float)
  for plane in ProfileData.from_file(str(path)).planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if stats.get("hlo_module") == module and "hlo_op" in stats:
          out[stats["hlo_op"]] += event.duration_ns * 1e-9
  return out


def in_step(strategy: str, spec: str, batch: int) -> dict:
  config = load_config(spec, strategy, batch)
  setup = benchmark_step(config, total_steps=1000)
  compiled, state, data = setup.compiled, setup.state, setup.batch
  text = compiled.step.as_text()
  module = re.match(r"HloModule (\S+?),", text).group(1)
  sampler, containers = sampler_ops(text)
  for _ in range(2):
    state, metrics = compiled.step(state, data)
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    t = time.perf_counter()
    for _ in range(FLAGS.steps):
      state, metrics = compiled.step(state, data)
      jax.block_until_ready(metrics)
    wall = time.perf_counter() - t
    jax.profiler.stop_trace()
    seconds = op_seconds(trace_dir, module)
  leaf = {n: s for n, s in seconds.items() if n not in containers}
  sampler_s = sum(s for n, s in leaf.items() if n in sampler)
  return {"strategy": strategy, "config": spec, "batch": batch, "grid": list(setup.objective.grid),
          "step_ms": 1e3 * wall / FLAGS.steps,
          "sampler_in_step_ms": 1e3 * sampler_s / FLAGS.steps,
          "op_time_ms": 1e3 * sum(leaf.values()) / FLAGS.steps,
          "in_step_share": sampler_s / wall}


def main(_):
  alone = [{"strategy": s, "sample_ms_65": sampler_ms(s, (5, 13)),
            "sample_ms_512": sampler_ms(s, (8, 64))} for s in masks.STRATEGIES]
  print(f"sampler alone, batch {SAMPLER_BATCH}: strategy | ms at 65 patches | ms at 512")
  for r in alone:
    print(f"{r['strategy']} | {r['sample_ms_65']:.2f} | {r['sample_ms_512']:.2f}")
  cases = [c for c in IN_STEP_CASES if not FLAGS.only or any(o in c[1] for o in FLAGS.only)]
  rows = []
  print("\nin the train step: strategy | config | grid | batch | step ms | sampler ms in "
        "step | share of step", flush=True)
  for case in cases:
    r = in_step(*case)
    rows.append(r)
    print(f"{r['strategy']} | {r['config']} | {r['grid'][0]} x {r['grid'][1]} | {r['batch']} "
          f"| {r['step_ms']:.0f} | {r['sampler_in_step_ms']:.2f} | {r['in_step_share']:.2%}",
          flush=True)
  out = Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"sampler_batch": SAMPLER_BATCH, "alone": alone, "in_step": rows},
                            indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
