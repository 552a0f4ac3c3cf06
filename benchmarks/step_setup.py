"""The compiled train step of a config with its initial state and a random batch: what
the step benchmarks (train_step.py, masks.py) time and profile."""
import dataclasses
import time

import jax
import numpy as np

from jepa_jax import mesh as mesh_lib
from jepa_jax import models, objectives, optim, train


@dataclasses.dataclass
class BenchmarkStep:
  objective: object
  compiled: train.CompiledStep
  state: dict
  batch: dict       # normal noise of the config's (batch, mels, frames) shape
  compile_s: float  # the train step's compile time


def benchmark_step(config, total_steps: int = 1) -> BenchmarkStep:
  """The step for `config.train.batch_size` clips; the schedules (lr, EMA, curriculum)
  span `total_steps` for the objective and 1000 steps (10 warm-up) for the optimizer."""
  batch = config.train.batch_size
  objective = objectives.build(config, total_steps)
  tx, schedules = optim.make_optimizer(config.optim, config.get("ema"), batch, 1000, 10,
                                       objective.ema_subtree)
  mels, frames = models.input_shape(config)
  t = time.perf_counter()
  compiled = train.compile_step(config, objective, tx, schedules,
                                mesh_lib.make_mesh(config.mesh), mels, monitors=False)
  compile_s = time.perf_counter() - t
  bs = compiled.batch_sharding
  data = {"mel": jax.device_put(np.random.default_rng(0).normal(
      size=(batch, mels, frames)).astype(np.float32), bs),
          "id": jax.device_put(np.arange(batch, dtype=np.int32), bs)}
  return BenchmarkStep(objective, compiled, compiled.initial_state(), data, compile_s)
