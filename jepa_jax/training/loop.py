"""The train loop, read top to bottom:
workdir check -> data -> mesh -> abstract init -> shardings -> jitted step -> resume (or a
fresh start, from `config.init_from`'s parameters when set) ->
loop (metrics, checkpoints, non-finite guard, preemption) -> encoder export.

It runs any objective (see objectives/__init__.py) without knowing which."""
import contextlib
import dataclasses
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jepa_jax import export, objectives
from jepa_jax.config import fields, upgrade, validation
from jepa_jax.optim import optimizer
from jepa_jax.parallel import distributed
from jepa_jax.parallel import mesh as mesh_lib
from jepa_jax.training import checkpoint, datasets, fit, metric_writers, update, warm_start


class IncompatibleWorkdirError(RuntimeError):
  """The workdir holds a checkpoint of a config that cannot continue as this one."""


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or inf; the run stopped with its last good checkpoint intact."""


@dataclasses.dataclass
class TrainResult:
  step: int
  total_steps: int
  interrupted: bool
  last_metrics: dict
  timings: dict  # seconds: data, compile, train, input_wait (the part of train spent on input)

  @property
  def input_wait_fraction(self) -> float:
    """Share of the loop's wall time the host spent getting batches (goal <= 5 %)."""
    return self.timings["input_wait"] / max(self.timings["train"], 1e-9)


def has_checkpoint(workdir: Path) -> bool:
  return (workdir / "checkpoints").is_dir() and any(
      p.name.isdigit() for p in (workdir / "checkpoints").iterdir())


def check_workdir(workdir: Path, config: ml_collections.ConfigDict) -> None:
  """Refuse to resume a checkpoint written under an incompatible config."""
  saved_path = workdir / "config.json"
  if not has_checkpoint(workdir):
    return
  if not saved_path.exists():
    raise IncompatibleWorkdirError(
        f"{workdir} holds checkpoints but no config.json: it was not written by jepa_jax "
        f"or is damaged; use a new --workdir")
  saved = upgrade.upgrade(json.loads(saved_path.read_text()))
  differences = fields.resume_differences(saved, fields.to_dict(config))
  if differences:
    raise IncompatibleWorkdirError(
        f"{workdir} holds a checkpoint of a different config, so this run cannot resume it:\n  "
        + "\n  ".join(differences)
        + "\nUse a new --workdir, or the config the workdir was started with. Nothing was changed.")


class _StopRequest:
  """SIGTERM/SIGINT (preemption, Ctrl-C) ask the loop to checkpoint and stop. The
  processes of a multi-process run must stop after the same step, whichever of them got
  the signal: there jax's preemption service (started by jax.distributed.initialize)
  takes SIGTERM and agrees on that step with the others."""

  def __init__(self):
    self.requested = False
    self.agreed = jax.process_count() > 1

  def after(self, step: int) -> bool:
    """Whether to checkpoint and stop after `step`; asked once at every step."""
    if self.agreed:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  @contextlib.contextmanager
  def installed(self):
    if self.agreed or threading.current_thread() is not threading.main_thread():
      yield self
      return
    def handler(signum, frame):
      del frame
      if self.requested:
        print(f"signal {signum}: already stopping; the checkpoint is being saved",
              file=sys.stderr, flush=True)
        return
      self.requested = True
      print(f"signal {signum}: saving a checkpoint and stopping after this step",
            file=sys.stderr, flush=True)
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
      yield self
    finally:
      for s, h in previous.items():
        signal.signal(s, h)


def _ensure_finite(step: int, metrics: dict, ckpt: checkpoint.Checkpointer) -> None:
  """Stop before a NaN/inf loss or gradient can reach a checkpoint."""
  loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
  if not (math.isfinite(loss) and math.isfinite(grad_norm)):
    ckpt.wait()
    good = ckpt.latest_step()
    kept = (f"the last good checkpoint (step {good}) in {ckpt.directory} is intact"
            if good is not None else "no checkpoint had been written yet")
    raise NonFiniteLossError(
        f"loss became {loss} (gradient norm {grad_norm}) at step {step}; training stopped "
        f"and nothing after it was saved: {kept}. Lower optim.base_lr or lengthen the "
        f"warmup, then rerun to resume.")


def _say(line: str) -> None:
  if distributed.is_primary():
    print(line, file=sys.stderr, flush=True)


def _check_micro_batch(config: ml_collections.ConfigDict, mesh) -> None:
  if config.train.micro_batches == "auto":  # fit.py picks a count that divides
    return
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  micro_batch = config.train.batch_size // config.train.micro_batches
  if micro_batch % batch_devices:
    raise fields.ConfigError(
        f"a micro-batch of train.batch_size {config.train.batch_size} / train.micro_batches "
        f"{config.train.micro_batches} = {micro_batch} examples must divide over the "
        f"{batch_devices} data x fsdp devices; change the batch size, micro_batches or mesh")


def _initial_state(config: ml_collections.ConfigDict, workdir: Path, compiled, ckpt, iterator,
                   tx, pretrained) -> dict:
  """The state at the latest checkpoint (the iterator rewound with it) or, in a fresh
  workdir, at step 0 (from `pretrained` parameters when given), config.json written."""
  latest = ckpt.latest_step()
  primary = distributed.is_primary()  # every process restores and saves; one writes
  if latest is not None:
    state = ckpt.restore(latest, compiled.abstract_state, iterator)
    if primary:
      print(f"resumed from the checkpoint at step {latest} in {workdir}", flush=True)
    return state
  state = compiled.initial_state()
  if pretrained is not None:
    state = warm_start.start_from(state, pretrained, tx, compiled.shardings)
    if primary:
      print(f"started from the parameters of {config.init_from}", flush=True)
  if primary:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json(indent=2))
  return state


def _loop(config: ml_collections.ConfigDict, workdir: Path, compiled, state: dict, iterator,
          ckpt, total_steps: int, timings: dict) -> tuple[dict, dict]:
  """Steps from the state's step to `total_steps` or a stop request: (state, the metrics
  of the last log). Fills timings['input_wait'] and timings['train']."""
  start = int(state["step"])
  writer = metric_writers.MetricWriter(workdir, start)
  progress = metric_writers.Progress(start, total_steps)
  last_metrics: dict = {}
  stop = _StopRequest()
  t = time.perf_counter()
  with stop.installed():
    # Each step's loss is checked while the next one runs, so the host only waits for
    # the device at logs and saves.
    pending = None
    timings["input_wait"] = 0.0
    logged = (t, 0.0)  # time and input wait at the last log
    for step in range(start + 1, total_steps + 1):
      waited_from = time.perf_counter()
      local = next(iterator)
      batch = {k: jax.make_array_from_process_local_data(compiled.batch_sharding, np.asarray(v))
               for k, v in local.items()}
      # What blocks the host: the batch and the slicing into per-device shards; the copies
      # to the devices run asynchronously (the step waits for them, not the host).
      timings["input_wait"] += time.perf_counter() - waited_from
      state, metrics = compiled.step(state, batch)
      if step == start + 1:  # the first step's time, as soon as it is known
        jax.block_until_ready(metrics["loss"])
        progress.first_step(step, time.perf_counter() - waited_from)
      if pending is not None:
        _ensure_finite(*pending, ckpt)
      pending = (step, metrics)
      if step % config.train.log_every == 0 or step == total_steps:
        last_metrics = jax.device_get({**metrics, **compiled.monitors(state, batch)})
        _ensure_finite(step, last_metrics, ckpt)
        rate = progress.update(step, last_metrics)
        now, waited = time.perf_counter(), timings["input_wait"]
        writer.write(step, {**last_metrics, "steps_per_sec": rate,
                            "input_wait_fraction": (waited - logged[1]) / (now - logged[0])})
        logged = (now, waited)
      stopping = stop.after(step)
      if step % config.train.checkpoint_every == 0 or step == total_steps or stopping:
        _ensure_finite(step, metrics, ckpt)
        ckpt.save(step, state, iterator)
      if stopping:
        break
    # Inside the handler: another SIGTERM / Ctrl-C while the last save is written must not
    # kill the process half-way through it.
    ckpt.wait()
  timings["train"] = time.perf_counter() - t
  writer.close()
  return state, last_metrics


def _export(config: ml_collections.ConfigDict, workdir: Path, objective, state: dict,
            data: datasets.TrainingData) -> None:
  frontend_meta = datasets.frontend_metadata(config, data)
  transform = objective.input_transform(state["params"], state["aux"])
  if transform is not None:
    frontend_meta["input_norm"] = transform
  export.export_encoder(workdir / "export", config, objective.encoder_params(state["params"]),
                        frontend_meta)


def train(config: ml_collections.ConfigDict, workdir: str | Path) -> TrainResult:
  workdir = Path(workdir).absolute()
  validation.validate(config)
  check_workdir(workdir, config)
  # A fresh run's pretrained parameters, read and checked before anything compiles.
  pretrained = warm_start.load(config) \
      if config.init_from and not has_checkpoint(workdir) else None
  timings = {}

  t = time.perf_counter()
  data = datasets.resolve(config)
  validation.validate_dataset(config, data.num_examples)
  dataset = datasets.train_dataset(config, data)
  timings["data"] = time.perf_counter() - t
  total_steps, warmup_steps = update.schedule_steps(config, data.num_examples)

  mesh = mesh_lib.make_mesh(config.mesh)
  _check_micro_batch(config, mesh)

  def build(c: ml_collections.ConfigDict):
    objective = objectives.build(c, total_steps)
    tx, schedules = optimizer.make_optimizer(c.optim, c.get("ema"), c.train.batch_size,
                                             total_steps, warmup_steps, objective.ema_subtree)
    return objective, tx, update.compile_step(c, objective, tx, schedules, mesh,
                                              data.metadata["frontend"]["n_mels"])

  t = time.perf_counter()
  splits = objectives.OBJECTIVES[config.objective].splits_batch
  objective, tx, compiled = fit.fit(config, mesh, splits, build, _say)
  timings["compile"] = time.perf_counter() - t
  mesh_lib.check_replicated(config.sharding_check, compiled.abstract_state, compiled.shardings,
                            mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.rules(config)):
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", config.train.keep_checkpoints)
    iterator = iter(dataset)
    state = _initial_state(config, workdir, compiled, ckpt, iterator, tx, pretrained)
  state, last_metrics = _loop(config, workdir, compiled, state, iterator, ckpt, total_steps,
                              timings)
  finished = int(state["step"])
  if finished == total_steps:
    _export(config, workdir, objective, state, data)
  ckpt.close()
  return TrainResult(finished, total_steps, finished < total_steps,
                     {k: float(v) for k, v in last_metrics.items()}, timings)
