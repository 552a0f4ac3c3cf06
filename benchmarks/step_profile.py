"""Where a compiled train step's time goes, op by op: jax.profiler's trace of whole steps,
each XLA op's time summed into the parts of the step and split into matrix products and
the rest.

    python benchmarks/step_profile.py --config=configs/audio_jepa.py --batch=8 --tokens=512

After 2 warm-up steps, --steps steps run under jax.profiler.trace. Every op the XLA CPU
runtime executed is found in the compiled step's HLO by name; its metadata (the JAX
operation and the module path it came from) gives its part:
  projections and MLP GEMMs  the matrix products of the attention's QKV and output
                             projections and of the MLPs;
  attention core             scores, softmax and value product (the attention's other ops);
  other model ops            LayerNorms, GELU, residual adds, embeddings, positions;
  masks                      the mask sampler;
  parameter copies           relayouts of a parameter (e.g. the QKV kernel for its product);
  update, loss, other        what no module holds: AdamW, the EMA target, the loss.
and its opcode whether it is a matrix product (XLA's dot ops and YNNPACK fusions) or not.
Times are op time summed over the runtime's threads, so they add up to more than the
step's wall time where two ops ran at once; the shares are of that sum. Prints the table
and writes JSON (--out): 'parts' {part: {'matmul_ms', 'other_ms', 'share'}}, 'step_s' (the
median wall time of the traced steps), 'ops' (the 25 costliest matrix products and the 25
costliest other ops, each with its part).
"""
import collections
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks import step_setup  # noqa: E402
from data_pipelines import cli_flags as cli  # noqa: E402
from jepa_jax.config import fields  # noqa: E402
from jepa_jax.parallel import allocator  # noqa: E402

FLAGS = flags.FLAGS

WARMUP = 2
PARTS = ("projections and MLP GEMMs", "attention core", "other model ops", "masks",
         "parameter copies", "update, loss, other")
# An HLO instruction: its name and opcode; then its metadata's op_name and called computation.
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([\w\-]+)\(")
OP_NAME = re.compile(r'op_name="([^"]*)"')
CALLS = re.compile(r"calls=%?([\w.\-]+)")
MATMUL_OPS = ("dot", "dot_general", "convolution")


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (opcode, op_name)} of the entry computation of an HLO module's
  text. An instruction without metadata (a fusion) takes the op_name of the computation
  it calls (its first instruction that has one); '' where none has."""
  computation_op_name, entry, current = {}, {}, None
  for line in hlo_text.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith("{"):
      current = "ENTRY" if line.startswith("ENTRY") else line.split()[0].lstrip("%")
      continue
    m = INSTRUCTION.match(line)
    if current is None or not m:
      continue
    op_name, calls = OP_NAME.search(line), CALLS.search(line)
    if current == "ENTRY":
      entry[m.group(1)] = (m.group(2), op_name.group(1) if op_name else "",
                           calls.group(1) if calls else None)
    elif op_name:
      computation_op_name.setdefault(current, op_name.group(1))
  return {name: (opcode, op_name or computation_op_name.get(calls, ""))
          for name, (opcode, op_name, calls) in entry.items()}


def is_matmul(name: str, opcode: str) -> bool:
  """Matrix products: XLA's dot ops, and fusions XLA:CPU hands to YNNPACK (its dots)."""
  return opcode in MATMUL_OPS or name.startswith(("ynn_fusion", "dot"))


def part_of(op_name: str, matmul: bool) -> str:
  """The step part (PARTS) of an op from its metadata op_name (the JAX operation under its
  module path, e.g. 'jit(train_step)/transpose(jvp(Encoder))/transformer/block_3/attn/qkv/
  dot_general') and whether it is a matrix product."""
  if op_name.startswith("state["):
    return "parameter copies"
  path = op_name.split("/")
  if any("mask_sampling" in p for p in path):
    return "masks"
  if "attn" in path:
    projection = path[path.index("attn") + 1:][:1] in (["qkv"], ["out"])
    if not projection:
      return "attention core"
    return "projections and MLP GEMMs" if matmul else "other model ops"
  module = re.sub(r"^(transpose\()?(jvp\()?", "", path[1]) if len(path) > 1 else ""
  if module[:1].isupper():  # a flax module's op: Encoder, Predictor, Decoder, ...
    return "projections and MLP GEMMs" if matmul and "mlp" in path else "other model ops"
  return "update, loss, other"


def shares(events: list[tuple[str, float]], ops: dict[str, tuple[str, str]]) -> dict:
  """{part: {'matmul_ms', 'other_ms', 'share'}} from (op name, ms) events; events that
  name no op of the entry computation (runtime bookkeeping) are left out."""
  totals = {p: [0.0, 0.0] for p in PARTS}
  for name, ms in events:
    if name not in ops:
      continue
    opcode, op_name = ops[name]
    matmul = is_matmul(name, opcode)
    totals[part_of(op_name, matmul)][0 if matmul else 1] += ms
  whole = sum(sum(t) for t in totals.values()) or 1.0
  return {p: {"matmul_ms": m, "other_ms": o, "share": (m + o) / whole}
          for p, (m, o) in totals.items()}


def costliest(per_op: collections.Counter, ops: dict[str, tuple[str, str]], count: int) -> list:
  """The `count` costliest matrix products and the `count` costliest other ops."""
  rows = []
  for name, ms in per_op.most_common():
    matmul = is_matmul(name, ops[name][0])
    rows.append({"name": name, "ms": ms, "matmul": matmul, "op_name": ops[name][1],
                 "part": part_of(ops[name][1], matmul)})
  return [r for r in rows if r["matmul"]][:count] + [r for r in rows if not r["matmul"]][:count]


def traced_events(run, steps: int) -> tuple[list[tuple[str, float]], float]:
  """(op name, ms per step) of every op event in `steps` traced calls of `run`, and the
  median wall seconds of those calls."""
  with tempfile.TemporaryDirectory() as folder:
    walls = []
    with jax.profiler.trace(folder):
      for _ in range(steps):
        t = time.perf_counter()
        run()
        walls.append(time.perf_counter() - t)
    trace = next(Path(folder).rglob("*.xplane.pb"))
    data = jax.profiler.ProfileData.from_file(str(trace))
  events = [(e.name, e.duration_ns / 1e6 / steps) for plane in data.planes
            for line in plane.lines for e in line.events]
  return events, statistics.median(walls)


def main(_):
  config = FLAGS.config
  if FLAGS.tokens:
    try:
      config = step_setup.with_tokens(config, FLAGS.tokens)
    except fields.ConfigError as err:
      cli.fail(str(err))
  config.train.batch_size = FLAGS.batch
  setup = step_setup.benchmark_step(config)
  state = setup.state

  def run():
    nonlocal state
    state, metrics = setup.compiled.step(state, setup.batch)
    jax.block_until_ready(metrics)

  for _ in range(WARMUP):
    run()
  events, step_s = traced_events(run, FLAGS.steps)
  ops = hlo_ops(setup.compiled.step.as_text())
  parts = shares(events, ops)
  per_op = collections.Counter()
  for name, ms in events:
    if name in ops:
      per_op[name] += ms
  op_ms = sum(r["matmul_ms"] + r["other_ms"] for r in parts.values())
  tokens = f"{FLAGS.tokens} tokens" if FLAGS.tokens else "the config's tokens"
  print(f"batch {FLAGS.batch}, {tokens}: step {step_s:.3f} s "
        f"(median of {FLAGS.steps} traced), op time over all threads {op_ms:.0f} ms")
  print("part | matmul ms | other ms | share")
  for part, row in parts.items():
    print(f"{part} | {row['matmul_ms']:.0f} | {row['other_ms']:.0f} | {100 * row['share']:.1f} %")
  out = Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({
      "device": jax.devices()[0].device_kind, "batch": FLAGS.batch, "tokens": FLAGS.tokens,
      "step_s": step_s, "parts": parts,
      "ops": costliest(per_op, ops, 25)},
      indent=1))
  print(f"wrote {out}")


def define_flags() -> None:
  """The command's flags; defined only when run as a command, since the tests import
  this module beside other benchmarks that define flags of the same names."""
  config_flags.DEFINE_config_file("config", "configs/audio_jepa.py", "config to profile")
  flags.DEFINE_integer("batch", 8, "global batch")
  flags.DEFINE_integer("tokens", 0, "tokens per clip (0: the config's own)")
  flags.DEFINE_integer("steps", 2, "traced steps, after 2 warm-up steps")
  flags.DEFINE_string("out", "benchmarks/results/step_profile.json", "JSON output")


if __name__ == "__main__":
  define_flags()
  allocator.use_caching_allocator()  # as the commands (JEPA_JAX_MALLOC, glibc by default)
  app.run(main)
