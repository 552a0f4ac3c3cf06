"""Attention alone, forward + backward, per implementation and sequence length, beside
PyTorch's scaled_dot_product_attention in the same run; the measurements behind
model.attention_impl 'auto' on CPU (attention.BLOCKWISE_FROM).

    python benchmarks/attention.py [--lengths=65,256,512,1024] [--batch=8] [--reps=7]

Each cell: the median over --reps repetitions of one jitted call computing the output
and the gradients wrt q, k and v of sum(out * cotangent), after one warm-up call; the
repetitions are interleaved (dense, xla, blockwise, torch, dense, ...) so that a busy
spell on the shared machine hits every implementation alike. Beside each length: the
share of the CPUs that other processes used while it ran (from /proc/stat less this
process's own time; where /proc/stat shows other CPUs than ours, the load average only),
and XLA's temporary bytes of each compiled call (memory_analysis). Prints a table and
writes JSON (--out): 'rows' (one per length), 'auto_rule' (the shortest length from
which blockwise was the faster of dense and blockwise, and so from which on it stays so).
"""
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from jepa_jax.models import attention  # noqa: E402
from jepa_jax.models.blockwise_attention import BLOCK, blockwise_attention  # noqa: E402

flags.DEFINE_list("lengths", ["65", "256", "512", "1024"], "sequence lengths S")
flags.DEFINE_integer("batch", 8, "batch size B")
flags.DEFINE_integer("heads", 12, "attention heads")
flags.DEFINE_integer("head_dim", 64, "head dimension")
flags.DEFINE_integer("reps", 7, "interleaved timed repetitions per cell (median)")
flags.DEFINE_list("implementations", ["dense", "xla", "blockwise"], "JAX implementations")
flags.DEFINE_enum("torch", "on", ["on", "off"], "time torch's SDPA beside, if importable")
flags.DEFINE_string("out", "benchmarks/results/attention.json", "JSON output")
FLAGS = flags.FLAGS

JAX_ATTENTION = {
    "dense": lambda q, k, v: attention.dense_attention(q, k, v, None),
    "xla": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"),
    "blockwise": lambda q, k, v: blockwise_attention(q, k, v),
}


def jax_step(name: str, q, k, v, cotangent):
  """A jitted forward + backward of one implementation, and XLA's temporary bytes."""
  attend = JAX_ATTENTION[name]

  def forward_backward(q, k, v):
    out, vjp = jax.vjp(attend, q, k, v)
    return out, vjp(cotangent)

  compiled = jax.jit(forward_backward).lower(q, k, v).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  return (lambda: jax.block_until_ready(compiled(q, k, v))), temp


def torch_step(q, k, v, cotangent):
  """The same in PyTorch eager: SDPA on (B, heads, S, D) leaves, then backward."""
  import torch  # optional dependency: only this column needs it

  def tensor(x, grad):
    return torch.from_numpy(np.array(x)).transpose(1, 2).contiguous().requires_grad_(grad)
  tq, tk, tv = (tensor(x, True) for x in (q, k, v))
  tct = tensor(cotangent, False)

  def run():
    for t in (tq, tk, tv):
      t.grad = None
    out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
    out.backward(tct)
  return run


def torch_version() -> str | None:
  try:
    import torch  # optional dependency
  except ImportError:
    return None
  return torch.__version__


def busy_jiffies() -> int | None:
  """Non-idle time of the machine's CPUs (/proc/stat, USER_HZ ticks), or None where
  /proc/stat counts other CPUs than this process may use (a container's host)."""
  try:
    lines = Path("/proc/stat").read_text().splitlines()
  except OSError:
    return None
  if sum(line.startswith("cpu") and line[3].isdigit() for line in lines) != os.cpu_count():
    return None
  fields = [int(f) for f in lines[0].split()[1:]]
  return sum(fields) - fields[3] - fields[4]  # less idle and iowait


def timed(run) -> tuple[float, float | None]:
  """(seconds, other processes' share of the CPUs meanwhile or None) of one call."""
  busy, own = busy_jiffies(), sum(os.times()[:4])
  start = time.perf_counter()
  run()
  seconds = time.perf_counter() - start
  after = busy_jiffies()
  if busy is None or after is None:
    return seconds, None
  hz = os.sysconf("SC_CLK_TCK")
  other = (after - busy) / hz - (sum(os.times()[:4]) - own)
  return seconds, max(other, 0.0) / (seconds * os.cpu_count())


def measure_length(s: int, with_torch: bool) -> dict:
  shape = (FLAGS.batch, s, FLAGS.heads, FLAGS.head_dim)
  q, k, v, cotangent = jax.random.normal(jax.random.key(s), (4,) + shape, jnp.float32)
  runs, temps = {}, {}
  for name in FLAGS.implementations:
    runs[name], temps[name] = jax_step(name, q, k, v, cotangent)
  if with_torch:
    runs["torch_sdpa"] = torch_step(q, k, v, cotangent)
  for run in runs.values():
    run()  # warm-up
  times = {name: [] for name in runs}
  others = []
  for _ in range(FLAGS.reps):
    for name, run in runs.items():
      seconds, other = timed(run)
      times[name].append(seconds)
      if other is not None:
        others.append(other)
  return dict(length=s, median_ms={n: 1e3 * float(np.median(t)) for n, t in times.items()},
              all_ms={n: [round(1e3 * x, 2) for x in t] for n, t in times.items()},
              xla_temp_bytes=temps,
              other_cpu_share_median=float(np.median(others)) if others else None,
              other_cpu_share_max=float(np.max(others)) if others else None,
              load_average=os.getloadavg()[0])


def auto_rule(rows: list[dict]) -> int | None:
  """The shortest length from which blockwise beat dense at every measured length."""
  start = None
  for row in sorted(rows, key=lambda r: r["length"]):
    ms = row["median_ms"]
    if "blockwise" in ms and "dense" in ms and ms["blockwise"] < ms["dense"]:
      start = row["length"] if start is None else start
    else:
      start = None
  return start


def main(argv):
  del argv
  version = torch_version() if FLAGS.torch == "on" else None
  rows = []
  for s in (int(x) for x in FLAGS.lengths):
    rows.append(measure_length(s, version is not None))
    row = rows[-1]
    cells = "  ".join(f"{n} {ms:8.1f}" for n, ms in row["median_ms"].items())
    other = row["other_cpu_share_median"]
    print(f"S={s:5d}  {cells}  ms  (others' CPU share median "
          f"{'n/a' if other is None else f'{other:.2f}'}, load {row['load_average']:.1f})",
          flush=True)
  for row in rows:
    temps = "  ".join(f"{n} {b / 2**20:7.1f}" for n, b in row["xla_temp_bytes"].items())
    print(f"S={row['length']:5d}  XLA temp MiB  {temps}")
  rule = auto_rule(rows)
  print(f"blockwise faster than dense from S={rule}" if rule else
        "blockwise never faster than dense at the longest lengths measured")
  result = dict(backend=jax.default_backend(), device=str(jax.devices()[0]),
                cpu_count=os.cpu_count(), batch=FLAGS.batch, heads=FLAGS.heads,
                head_dim=FLAGS.head_dim, reps=FLAGS.reps, dtype="float32",
                torch=version or "not importable (column skipped)",
                blockwise_block=BLOCK,
                rows=rows, auto_rule=dict(blockwise_from=rule,
                                          in_code=attention.BLOCKWISE_FROM))
  Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
  Path(FLAGS.out).write_text(json.dumps(result, indent=1))
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
