"""A large config's sharded train step compiled ahead of time on an 8-device FSDP mesh of
simulated CPU devices, with nothing allocated: compile time, parameter count, XLA's
memory analysis per device, and the train state's bytes per device against its total.

    python benchmarks/compile_large.py                                   # Dasheng-1.2B
    python benchmarks/compile_large.py --config=configs/dasheng.py:0.6b --per_device_batch=16

train.compile_step lowers the step with the abstract train state (jax.eval_shape shapes,
dtypes and shardings) and an abstract batch, and compiles the initial state's function
without running it; the live arrays after it are checked to be only its random key. The
compile time covers that step and the initial state's function (no monitor step). The
memory figures are one device's share of the partitioned step (XLA's buffer assignment);
the state is donated, so its outputs reuse its arguments (alias). Prints a table and
writes JSON (--out) with this process's peak resident memory.
"""
import os

DEVICES = 8  # mesh fsdp=8 of simulated host devices, set before jax starts
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={DEVICES}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import step_setup  # noqa: E402
from jepa_jax.config import fields, validation  # noqa: E402

flags.DEFINE_string("config", "configs/dasheng.py:1.2b", "config (file:variant) to compile")
flags.DEFINE_integer("per_device_batch", 8, "examples per device; global batch x 8 devices")
flags.DEFINE_string("out", "benchmarks/results/compile_large.json", "JSON output")
FLAGS = flags.FLAGS

GIB = 2.0**30


def state_bytes(abstract_state: dict) -> dict:
  """{part of the state: (bytes on one device, bytes in all)} from its shardings."""
  def nbytes(shape, dtype):
    return int(np.prod(shape)) * np.dtype(dtype).itemsize

  out = {}
  for part, tree in abstract_state.items():
    leaves = jax.tree.leaves(tree)
    out[part] = {"per_device": sum(nbytes(x.sharding.shard_shape(x.shape), x.dtype)
                                   for x in leaves),
                 "total": sum(nbytes(x.shape, x.dtype) for x in leaves)}
  return out


def main(_):
  config = fields.load(FLAGS.config)
  config.mesh.update(data=1, fsdp=DEVICES, model=1)
  config.train.batch_size = FLAGS.per_device_batch * DEVICES
  validation.validate(config)
  _, compiled, compile_s = step_setup.compiled_step(config)
  live = sum(x.nbytes for x in jax.live_arrays())
  assert live < 1024, f"compiling allocated {live} bytes of arrays"
  memory = compiled.step.memory_analysis()
  xla = {name: int(getattr(memory, f"{name}_size_in_bytes"))
         for name in ("argument", "output", "alias", "temp", "generated_code")}
  xla["peak_estimate"] = memory.needed_bytes(compiled.step)
  parts = state_bytes(compiled.abstract_state)
  params = step_setup.count(compiled.abstract_state["params"])
  max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
  model = config.model
  print(f"{FLAGS.config}: encoder {model.depth} x {model.width}, "
        f"scan_layers={model.scan_layers}, remat={model.remat!r}; {params / 1e9:.3f} B "
        f"parameters (all modules); mesh fsdp={DEVICES}; global batch "
        f"{config.train.batch_size} ({FLAGS.per_device_batch} per device); compiled in "
        f"{compile_s:.0f} s; peak RSS {max_rss / GIB:.1f} GiB; {live} bytes of arrays live")
  print("per device (XLA memory analysis of the step) | GiB")
  for name, value in xla.items():
    print(f"  {name} | {value / GIB:.2f}")
  print("train state | GiB per device | GiB total")
  for part, b in parts.items():
    print(f"  {part} | {b['per_device'] / GIB:.3f} | {b['total'] / GIB:.3f}")
  out = Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({
      "config": FLAGS.config, "devices": DEVICES, "mesh": config.mesh.to_dict(),
      "global_batch": config.train.batch_size, "per_device_batch": FLAGS.per_device_batch,
      "encoder": {k: model[k] for k in ("width", "depth", "num_heads", "mlp_dim",
                                        "scan_layers", "remat")},
      "parameters": params, "compile_s": compile_s, "max_rss_bytes": max_rss,
      "live_array_bytes": live, "xla_per_device_bytes": xla, "state_bytes": parts,
      "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
