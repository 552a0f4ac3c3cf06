"""The train loop, read top to bottom:
workdir check -> the workdir's lock (run_lock.py) -> data -> mesh -> abstract init ->
shardings -> jitted step -> resume (or a fresh start, from `config.init_from`'s parameters
when set) -> this process's data iterator from the resumed data position -> loop
(metrics, checkpoints, non-finite guard, preemption) -> encoder export.

It runs any objective (see objectives/__init__.py) without knowing which."""
import contextlib
import dataclasses
import json
import math
import os
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

from data_pipelines import frontends
from jepa_jax import export, objectives
from jepa_jax.config import fields, upgrade, validation
from jepa_jax.optim import optimizer
from jepa_jax.parallel import allocator, distributed
from jepa_jax.parallel import mesh as mesh_lib
from jepa_jax.training import (
  checkpoint,
  datasets,
  fit,
  metric_writers,
  run_lock,
  update,
  warm_start,
)


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


# The front-end recipe a run started on (FrontEnd.to_dict()), written with config.json: the
# config names the recipe only, whose settings may change between versions.
FRONTEND_FILE = "frontend.json"


def started_frontend(workdir: Path, name: str) -> dict:
  """The record of the front end the run in `workdir` started on: its FRONTEND_FILE or,
  in a workdir written before runs recorded it, recipe `name` as it was then (a field
  recorded since takes the value it had then, frontends.LEGACY_FIELDS)."""
  path = workdir / FRONTEND_FILE
  if path.is_file():
    return frontends.upgrade_record(json.loads(path.read_text()))
  today = frontends.get_frontend(name).to_dict()
  return {**today, **frontends.LEGACY_FIELDS.get(today["kind"], {})}


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
  started = started_frontend(workdir, config.data.frontend)
  today = frontends.get_frontend(config.data.frontend).to_dict()
  differing = [f"{k} {started.get(k)!r}, now {v!r}" for k, v in today.items()
               if started.get(k) != v]
  if differing:
    raise IncompatibleWorkdirError(
        f"{workdir} holds a checkpoint of a run started on an older {config.data.frontend!r} "
        f"front end ({'; '.join(differing)}): resuming it would change its input features "
        f"mid-run. Use a new --workdir. Nothing was changed.")


class _StopRequest:
  """SIGTERM/SIGINT (preemption, Ctrl-C) ask the loop to checkpoint and stop. The
  processes of a multi-process run must stop after the same step, whichever of them got
  the signal: there jax's preemption service (started by jax.distributed.initialize)
  takes SIGTERM and agrees on that step with the others, and a SIGINT is passed to it as
  a SIGTERM of this process."""

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
    if threading.current_thread() is not threading.main_thread():
      yield self
      return
    def handler(signum, frame):
      del frame
      if self.requested:
        print(f"signal {signum}: already stopping; the checkpoint is being saved",
              file=sys.stderr, flush=True)
        return
      self.requested = True
      if self.agreed:
        print(f"signal {signum}: saving a checkpoint and stopping after the step all "
              f"processes agree on", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # to the preemption service's handler
        return
      print(f"signal {signum}: saving a checkpoint and stopping after this step",
            file=sys.stderr, flush=True)
    # SIGTERM stays with the preemption service where there is one.
    caught = (signal.SIGINT,) if self.agreed else (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, handler) for s in caught}
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


def _data_start(config: ml_collections.ConfigDict, workdir: Path, step: int,
                position: checkpoint.DataPosition) -> int:
  """The global batch a run resumed at `step` reads first: the number its checkpoint
  consumed, one a step, of this config's batch size (a checkpoint before data positions
  has the one of the workdir's config.json, which check_workdir compared)."""
  size = config.train.batch_size
  if position.global_batch_size not in (None, size):
    raise IncompatibleWorkdirError(
        f"the checkpoint of step {step} in {workdir} read global batches of "
        f"{position.global_batch_size} examples, this config's train.batch_size is {size}: "
        f"its data would continue elsewhere than where it stopped. Use a new --workdir, or "
        f"train.batch_size={position.global_batch_size}. Nothing was changed.")
  if position.global_batches != step:
    raise IncompatibleWorkdirError(
        f"the checkpoint of step {step} in {workdir} records {position.global_batches} "
        f"global batches read, not one a step: it was not written by this loop. Use a new "
        f"--workdir. Nothing was changed.")
  return position.global_batches


def _initial_state(config: ml_collections.ConfigDict, workdir: Path, compiled, ckpt, tx,
                   pretrained) -> tuple[dict, int]:
  """(state, the global batch its data continues from): those of the newest intact
  checkpoint or, in a fresh workdir, step 0 (from `pretrained` parameters when given) and
  batch 0, config.json written."""
  primary = distributed.is_primary()  # every process restores and saves; one writes
  restored = ckpt.restore_intact(compiled.abstract_state, _say)
  if restored is not None:
    step, state, position = restored
    start_batch = _data_start(config, workdir, step, position)
    if primary:
      print(f"resumed from the checkpoint at step {step} in {workdir}", flush=True)
    return state, start_batch
  state = compiled.initial_state()
  if pretrained is not None:
    state = warm_start.start_from(state, pretrained, tx, compiled.shardings)
    if primary:
      print(f"started from the parameters of {config.init_from}", flush=True)
  if primary:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json(indent=2))
    (workdir / FRONTEND_FILE).write_text(
        json.dumps(frontends.get_frontend(config.data.frontend).to_dict(), indent=2))
  return state, 0


def _save(ckpt, step: int, state: dict, config: ml_collections.ConfigDict) -> None:
  # `step` steps read `step` global batches (micro-batches split each of them).
  ckpt.save(step, state, checkpoint.DataPosition(step, config.train.batch_size))


def _loop(config: ml_collections.ConfigDict, workdir: Path, compiled, state: dict, iterator,
          ckpt, total_steps: int, timings: dict, stop: _StopRequest) -> tuple[dict, dict]:
  """Steps from the state's step to `total_steps` or a `stop` request: (state, the metrics
  of the last log). Fills timings['input_wait'] and timings['train']."""
  start = int(state["step"])
  writer = metric_writers.MetricWriter(workdir, start)
  progress = metric_writers.Progress(start, total_steps)
  last_metrics: dict = {}
  t = time.perf_counter()
  # The next batch is read while a step runs; then its loss is checked and a stop request
  # honoured before the next step is dispatched, so a signal during step N saves step N
  # (dispatching N + 1 first would make the stop wait for it too: minutes at paper sizes).
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
    if pending is not None:
      _ensure_finite(*pending, ckpt)
      if stop.after(pending[0]):
        if pending[0] % config.train.checkpoint_every:  # else saved at its step already
          _save(ckpt, pending[0], state, config)
        break
    state, metrics = compiled.step(state, batch)
    if step == start + 1:  # the first step's time, as soon as it is known
      jax.block_until_ready(metrics["loss"])
      progress.first_step(step, time.perf_counter() - waited_from)
      allocator.release_free_memory()  # one step's temporaries kept for the next, not two
    pending = (step, metrics)
    if step % config.train.log_every == 0 or step == total_steps:
      last_metrics = jax.device_get({**metrics, **compiled.monitors(state, batch)})
      _ensure_finite(step, last_metrics, ckpt)
      rate = progress.update(step, last_metrics)
      now, waited = time.perf_counter(), timings["input_wait"]
      writer.write(step, {**last_metrics, "steps_per_sec": rate,
                          "input_wait_fraction": (waited - logged[1]) / (now - logged[0])})
      logged = (now, waited)
    if step % config.train.checkpoint_every == 0 or step == total_steps:
      _ensure_finite(step, metrics, ckpt)
      _save(ckpt, step, state, config)
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
  # SIGTERM / Ctrl-C from here on stop the run at a checkpoint: before the first step, after
  # it; during the export, once it is written.
  with _StopRequest().installed() as stop, run_lock.held(workdir, _say) as lock:
    return _train(config, workdir, lock, stop)


def _train(config: ml_collections.ConfigDict, workdir: Path, lock: run_lock.RunLock | None,
           stop: _StopRequest) -> TrainResult:
  # A fresh run's pretrained parameters, read and checked before anything compiles.
  pretrained = warm_start.load(config) \
      if config.init_from and not has_checkpoint(workdir) else None
  timings = {}

  t = time.perf_counter()
  data = datasets.resolve(config)
  validation.validate_dataset(config, data.num_examples)
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
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", config.train.keep_checkpoints,
                                   before_save=lock.check if lock is not None else None)
    state, start_batch = _initial_state(config, workdir, compiled, ckpt, tx, pretrained)
  # This process's rows of the global batches from start_batch on: the same batches
  # whatever the process and device counts that saved the checkpoint (elastic resume).
  t = time.perf_counter()
  iterator = iter(datasets.train_dataset(config, data, start_batch))
  timings["data"] += time.perf_counter() - t
  state, last_metrics = _loop(config, workdir, compiled, state, iterator, ckpt, total_steps,
                              timings, stop)
  finished = int(state["step"])
  if finished == total_steps:
    _export(config, workdir, objective, state, data)
  ckpt.close()
  return TrainResult(finished, total_steps, finished < total_steps,
                     {k: float(v) for k, v in last_metrics.items()}, timings)
