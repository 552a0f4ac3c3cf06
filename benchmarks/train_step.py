"""Train-step speed of a masked-prediction config (JEPA or MAE) against the matmul ceiling,
plain ViT passes and PyTorch, measured in one run; scaling with batch size and tokens.

    python benchmarks/train_step.py --config=configs/audio_jepa.py:demo --batch_sizes=32
    python benchmarks/train_step.py --config=configs/audio_jepa.py --batch_sizes=32,16,64 \
        --tokens=65,100,200,512 --steps=10 [--dtype=bfloat16] [--torch=compile|off]

Two tables, every row measured alike: batch scaling (each --batch_sizes at the config's
own tokens per clip) and token scaling (each --tokens at the first batch size; a token
count changes the crop length, and the front end where the config's mel rows do not
divide it: 65 = 5 x 13 and 200 = 5 x 40 on 80 mels, 512 = 8 x 64 on 128 x 1024).

Each row: the compiled train step's median time after 2 warm-up steps, samples/s;
analytic FLOPs beside XLA's cost_analysis; achieved FLOP/s and its fraction of the matmul
ceiling, one GEMM of the step's dominant shape (the MLP input of its costliest pass)
timed in the same run and dtype; on a GPU in bf16 also MFU against the card's peak.
Page faults per timed step (the allocator's, jepa_jax/parallel/allocator.py).
Peak memory: XLA's memory_analysis of the compiled step (arguments + temporaries + outputs
not aliased to arguments); on a GPU also the device's peak_bytes_in_use so far. Then
the same passes as plain ViTs (step_setup.plain_step) and the ratio step / plain; then
the same step in PyTorch (torch_step.py; eager, or --torch=compile, whose compilation
falls in the warm-up) and JAX's speed over it.

Analytic FLOPs: per pass (step_setup.step_passes) 6 x params x tokens when trained
(forward and backward), 2 x params x tokens for the EMA target pass, plus attention,
4 x queries x keys x width per layer forward (x3 when trained); no remat recompute.
Prints both tables and writes JSON (--out): 'rows' (the batch table), 'token_rows'.
"""
import json
import os
import resource
import sys
import time
from pathlib import Path

# JAX would otherwise take 75 % of a GPU's memory up front, leaving torch the rest and
# making peak_bytes_in_use the only usable memory figure.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks import step_setup  # noqa: E402
from data_pipelines import cli_flags as cli  # noqa: E402
from jepa_jax import models  # noqa: E402
from jepa_jax.config import fields, shapes, validation  # noqa: E402
from jepa_jax.parallel import allocator, memory  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/audio_jepa.py:demo", "config to time")
flags.DEFINE_list("batch_sizes", ["32"], "global batch sizes of the batch table; the first "
                  "is the token table's")
flags.DEFINE_list("tokens", [], "tokens per clip of the token table, e.g. 65,100,200,512 "
                  "(none: no token table)")
flags.DEFINE_integer("steps", 10, "timed steps per row, after 2 warm-up steps")
flags.DEFINE_enum("torch", "eager", ["eager", "compile", "off"],
                  "the PyTorch step: eager, its modules under torch.compile, or off")
flags.DEFINE_enum("dtype", None, list(models.DTYPES), "model compute dtype (default: the "
                  "config's model.dtype)")
flags.DEFINE_bool("attention_memory", False, "also XLA's peak of each row's step "
                  "(compiled only) per CPU attention implementation and without scores")
flags.DEFINE_string("out", "benchmarks/results/train_step.json", "JSON output")
FLAGS = flags.FLAGS

WARMUP = 2
# Dense bf16 peak FLOP/s by a substring of jax's device_kind, first match wins (MFU on
# GPUs only). H100 is the SXM part; H200 has the same tensor cores.
BF16_PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12),
                   ("A100", 312e12))


def bf16_peak(device_kind: str) -> float | None:
  return next((peak for key, peak in BF16_PEAK_FLOPS if key in device_kind), None)


def matmul_ceiling(m: int, k: int, n: int, dtype) -> float:
  """FLOP/s of a GEMM of the given shape: the best of 5 timings of 10 back-to-back calls
  (so that a GPU's dispatch overlaps the previous product)."""
  a, b = jnp.ones((m, k), dtype), jnp.ones((k, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  times = []
  for _ in range(5):
    t = time.perf_counter()
    for _ in range(10):
      y = f(a, b)
    y.block_until_ready()
    times.append((time.perf_counter() - t) / 10)
  return 2 * m * k * n / min(times)


def time_jax_step(config: ml_collections.ConfigDict, batch: int) -> dict:
  setup = step_setup.benchmark_step(config)
  compiled, state, data = setup.compiled.step, setup.state, setup.batch
  xla_flops = step_setup.xla_flops(compiled)

  faults = []  # minor page faults of each call (see jepa_jax/parallel/allocator.py)

  def run():
    nonlocal state
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

  step_s = step_setup.median_seconds(run, FLAGS.steps, WARMUP)
  params = state["params"]
  passes = step_setup.step_passes(config)
  flops = [batch * step_setup.pass_flops(p, step_setup.count(params[p.module]))
           for p in passes]
  top = passes[int(np.argmax(flops))]
  gemm = (batch * top.sequences * top.tokens, top.width, top.mlp_dim)
  row = {"compile_s": setup.compile_s, "step_s": step_s, "samples_per_s": batch / step_s,
         "analytic_flops": sum(flops), "xla_flops": xla_flops,
         "achieved_flops_per_s": sum(flops) / step_s,
         "pass_flops": {p.name: f for p, f in zip(passes, flops)},
         "dominant_gemm": {"pass": top.name, "m_k_n": gemm},
         "peak_bytes": memory.needed_bytes(compiled),
         "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
         "page_faults_per_step": int(np.median(faults[WARMUP:]))}
  if jax.default_backend() == "gpu":
    row["device_peak_bytes_so_far"] = jax.devices()[0].memory_stats()["peak_bytes_in_use"]
  return row


def time_plain_step(config: ml_collections.ConfigDict) -> dict:
  plain = step_setup.plain_step(config)
  params = plain.params

  def run():
    nonlocal params
    params, loss = plain.step(params, plain.frozen, plain.inputs)
    loss.block_until_ready()

  return {"compile_s": plain.compile_s,
          "step_s": step_setup.median_seconds(run, FLAGS.steps, WARMUP)}


def time_torch_step(config: ml_collections.ConfigDict, batch: int) -> dict | str:
  """torch_step's row, or why there is none."""
  if FLAGS.torch == "off":
    return "off"
  try:
    from benchmarks import torch_step
  except ImportError as err:
    return f"n/a: {err}"
  try:
    return torch_step.time_step(config, batch, FLAGS.steps, WARMUP,
                                gpu=jax.default_backend() == "gpu",
                                compile_modules=FLAGS.torch == "compile")
  except torch_step.Unsupported as err:
    return f"n/a: {err}"


def measure(config: ml_collections.ConfigDict, batch: int) -> dict:
  config = config.copy_and_resolve_references()
  config.train.batch_size = batch
  config.model.dtype = FLAGS.dtype or config.model.dtype
  validation.validate(config)
  mels, frames = shapes.input_shape(config)
  grid = shapes.grid(config)
  row = {"batch": batch, "mels": mels, "frames": frames, "tokens_per_clip": grid[0] * grid[1],
         **time_jax_step(config, batch)}
  dtype = models.DTYPES[config.model.dtype]
  row["matmul_ceiling_flops_per_s"] = matmul_ceiling(*row["dominant_gemm"]["m_k_n"], dtype)
  row["fraction_of_ceiling"] = row["achieved_flops_per_s"] / row["matmul_ceiling_flops_per_s"]
  peak = bf16_peak(jax.devices()[0].device_kind)
  if jax.default_backend() == "gpu" and config.model.dtype == "bfloat16" and peak:
    row["mfu"] = row["achieved_flops_per_s"] / peak
  row["plain"] = time_plain_step(config)
  row["step_over_plain"] = row["step_s"] / row["plain"]["step_s"]
  row["torch"] = time_torch_step(config, batch)
  if isinstance(row["torch"], dict):
    row["jax_speedup_over_torch"] = row["torch"]["step_s"] / row["step_s"]
  if FLAGS.attention_memory:
    row["attention_memory"] = step_setup.peak_by_attention(config)
  print(f"  measured batch {batch}, {row['tokens_per_clip']} tokens: {row['step_s']:.3f} s",
        flush=True)
  return row


COLUMNS = (  # (header, format of a row)
    ("batch", lambda r: str(r["batch"])),
    ("tokens", lambda r: f"{r['tokens_per_clip']} ({r['mels']}x{r['frames']})"),
    ("compile s", lambda r: f"{r['compile_s']:.1f}"),
    ("step s", lambda r: f"{r['step_s']:.3f}"),
    ("faults/step", lambda r: f"{r['page_faults_per_step']:,}"),
    ("samples/s", lambda r: f"{r['samples_per_s']:.1f}"),
    ("GFLOP analytic", lambda r: f"{r['analytic_flops'] / 1e9:.1f}"),
    ("GFLOP XLA", lambda r: f"{r['xla_flops'] / 1e9:.1f}"),
    ("GFLOP/s", lambda r: f"{r['achieved_flops_per_s'] / 1e9:.1f}"),
    ("ceiling GFLOP/s", lambda r: f"{r['matmul_ceiling_flops_per_s'] / 1e9:.1f}"),
    ("of ceiling", lambda r: f"{r['fraction_of_ceiling']:.0%}"),
    ("MFU bf16", lambda r: f"{r['mfu']:.0%}" if "mfu" in r else "-"),
    ("peak MiB (XLA / GPU so far)", lambda r: f"{r['peak_bytes'] / 2**20:.0f}" + (
        f" / {r['device_peak_bytes_so_far'] / 2**20:.0f}" if "device_peak_bytes_so_far" in r
        else "")),
    ("plain s", lambda r: f"{r['plain']['step_s']:.3f}"),
    ("step/plain", lambda r: f"{r['step_over_plain']:.2f}"),
    ("torch s", lambda r: f"{r['torch']['step_s']:.3f}" if isinstance(r["torch"], dict)
     else r["torch"]),
    ("JAX speed/torch", lambda r: f"{r['jax_speedup_over_torch']:.2f}"
     if "jax_speedup_over_torch" in r else "-"),
)


def print_table(title: str, rows: list[dict]) -> None:
  print(f"\n{title}")
  print(" | ".join(h for h, _ in COLUMNS))
  for r in rows:
    print(" | ".join(f(r) for _, f in COLUMNS))


def print_attention_memory(rows: list[dict]) -> None:
  rows = [r for r in rows if "attention_memory" in r]
  if not rows:
    return
  print("\nXLA's peak MiB of the step by model.attention_impl (compiled only)")
  kinds = (*step_setup.CPU_ATTENTION, "scoreless")
  print(" | ".join(("batch", "tokens", *kinds[:-1], "no scores", "scores' share",
                    "auto removes")))
  for r in rows:
    m = r["attention_memory"]
    print(" | ".join((str(r["batch"]), str(r["tokens_per_clip"]),
                      *(f"{m['peak_bytes'][k] / 2**20:.0f}" for k in kinds),
                      f"{m['score_share_bytes'] / 2**20:.0f}",
                      f"{m['auto_removes_of_score_share']:.0%}")))


def main(_):
  config = FLAGS.config
  step_setup.check_objective(config)
  batches = [int(b) for b in FLAGS.batch_sizes]
  own_tokens = shapes.grid(config)[0] * shapes.grid(config)[1]
  try:
    token_configs = {t: step_setup.with_tokens(config, t) for t in map(int, FLAGS.tokens)}
  except fields.ConfigError as err:
    cli.fail(str(err))
  batch_rows = [measure(config, b) for b in batches]
  token_rows = [batch_rows[0] if t == own_tokens else measure(c, batches[0])
                for t, c in token_configs.items()]
  device, spec = jax.devices()[0], config_flags.get_config_filename(FLAGS["config"])
  dtype = FLAGS.dtype or config.model.dtype
  print(f"\n{spec} on {jax.device_count()} x {device.device_kind} ({jax.default_backend()}), "
        f"{dtype}, torch {FLAGS.torch}; median of {FLAGS.steps} steps after {WARMUP} warm-up")
  print_table(f"batch scaling at {own_tokens} tokens per clip", batch_rows)
  if token_rows:
    print_table(f"token scaling at batch {batches[0]}", token_rows)
  print_attention_memory(batch_rows + [r for r in token_rows if r not in batch_rows])
  out = Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({
      "config": spec, "device": device.device_kind, "backend": jax.default_backend(),
      "devices": jax.device_count(), "dtype": dtype, "torch": FLAGS.torch,
      "steps": FLAGS.steps, "warmup": WARMUP,
      "rows": batch_rows, "token_rows": token_rows}, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  allocator.use_caching_allocator()  # as the commands (JEPA_JAX_MALLOC, glibc by default)
  app.run(main)
