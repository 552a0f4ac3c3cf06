"""The train loop, read top to bottom:
workdir check -> data -> mesh -> abstract init -> shardings -> jitted step -> resume (or a
fresh start, from `config.init_from`'s parameters when set) ->
loop (metrics, checkpoints, non-finite guard, preemption) -> encoder export.

It runs any objective (see objectives/__init__.py) without knowing which.
"""
import contextlib
import dataclasses
import functools
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from jepa_jax import (
    checkpoint,
    config_lib,
    datasets,
    distributed,
    ema,
    export,
    objectives,
    optim,
    warm_start,
)
from jepa_jax import mesh as mesh_lib
from jepa_jax import metrics as metrics_lib


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


def schedule_steps(config: ml_collections.ConfigDict, num_examples: int) -> tuple[int, int]:
  """(total steps, warmup steps) from epochs over the training set."""
  steps_per_epoch = num_examples / config.train.batch_size
  total = max(1, round(config.train.epochs * steps_per_epoch))
  return total, min(round(config.optim.warmup_epochs * steps_per_epoch), total - 1)


def rngs(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """(init key, step key); the step's key is fold_in(step key, step)."""
  base = jax.random.key(config.seed)
  return jax.random.fold_in(base, 0), jax.random.fold_in(base, 1)


def initial_encoder_params(config: ml_collections.ConfigDict):
  """The encoder as training starts (a run's random-init baseline)."""
  objective = objectives.build(config)
  params = jax.jit(lambda rng: nn.unbox(objective.init(rng)))(rngs(config)[0])
  return objective.encoder_params(params)


def init_state(objective, tx, rng) -> dict:
  params = objective.init(rng)
  return {"step": jnp.zeros([], jnp.int32), "params": params,
          "opt_state": tx.init(params), "aux": objective.init_aux()}


def _objective_aux(opt_state, aux) -> dict:
  """What the objective sees besides its parameters: its own non-trained state `aux` and
  the EMA target the optimizer keeps (None without one)."""
  return {"ema": ema.find_target(opt_state), **aux}


def split_micro_batches(batch: dict, k: int) -> dict:
  """Each (B, ...) array as (k, B/k, ...): micro-batch i holds examples i, i + k, i + 2k...
  A device's contiguous rows of the batch split into k local pieces, so every micro-batch
  stays spread over the data x fsdp devices and no example moves (contiguous slices would
  put each micro-batch on 1/k of the devices)."""
  def split(x):
    x = jnp.moveaxis(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 1, 0)
    return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))
  return jax.tree.map(split, batch)


def accumulated_gradients(grad_fn, params, opt_state, aux, batch, rng, step, k: int):
  """(metrics, new aux, gradient) of `batch` run as k micro-batches in order (one scan):
  gradient and metrics are the means over micro-batches, micro-batch i draws its masks
  and augmentations from fold_in(rng, i), and aux goes through them in turn, so the
  objective's own state (BatchNorm running statistics, the NNCLR queue) is updated once
  per micro-batch, from its B/k examples. The scan carries only the gradient sum: memory
  is one micro-batch's activations plus one gradient."""
  def micro_step(carry, xs):
    grad_sum, aux = carry
    i, micro = xs
    (loss, (metrics, aux)), grads = grad_fn(params, _objective_aux(opt_state, aux), micro,
                                            jax.random.fold_in(rng, i), step)
    return (jax.tree.map(jnp.add, grad_sum, grads), aux), {**metrics, "loss": loss}

  zeros = jax.tree.map(jnp.zeros_like, params)
  (grad_sum, aux), metrics = jax.lax.scan(
      micro_step, (zeros, aux), (jnp.arange(k), split_micro_batches(batch, k)))
  return (jax.tree.map(lambda m: m.mean(0), metrics), aux,
          jax.tree.map(lambda g: g / k, grad_sum))


def train_step(objective, tx, schedules, step_key, state, batch, micro_batches: int = 1):
  """One optimizer (and EMA) update from the gradient of the whole batch, computed at once
  or, with micro_batches k > 1, accumulated over k micro-batches."""
  step = state["step"]
  rng = jax.random.fold_in(step_key, step)
  grad_fn = jax.value_and_grad(objective.loss, has_aux=True)
  if micro_batches == 1:
    aux = _objective_aux(state["opt_state"], state["aux"])
    (loss, (metrics, new_aux)), grads = grad_fn(state["params"], aux, batch, rng, step)
    metrics = {**metrics, "loss": loss}
  else:
    metrics, new_aux, grads = accumulated_gradients(
        grad_fn, state["params"], state["opt_state"], state["aux"], batch, rng, step,
        micro_batches)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = {**metrics, "grad_norm": optax.tree.norm(grads),
             **{name: schedule(step) for name, schedule in schedules.items()}}
  return {"step": step + 1, "params": params, "opt_state": opt_state, "aux": new_aux}, metrics


def monitor_step(objective, step_key, state, batch, micro_batches: int = 1):
  """The objective's collapse monitors after a step, on that step's batch and masks (its
  first micro-batch, so they fit in the memory the step fits in)."""
  step = state["step"] - 1
  rng = jax.random.fold_in(step_key, step)
  if micro_batches > 1:
    batch = jax.tree.map(lambda x: x[0], split_micro_batches(batch, micro_batches))
    rng = jax.random.fold_in(rng, 0)
  return objective.monitors(state["params"], _objective_aux(state["opt_state"], state["aux"]),
                            batch, rng, step)


@dataclasses.dataclass
class CompiledStep:
  step: Callable            # (state, batch) -> (state, metrics); donates the state
  monitors: Callable | None  # (state, batch) -> collapse monitors of the last step
  initial_state: Callable   # () -> the state at step 0, sharded
  abstract_state: dict      # shapes, dtypes and shardings of the train state
  shardings: dict
  batch_sharding: jax.sharding.Sharding


def compile_step(config: ml_collections.ConfigDict, objective, tx, schedules, mesh, n_mels: int,
                 monitors: bool = True) -> CompiledStep:
  """The train step (and monitor step) compiled ahead of time for the config's batch of
  (n_mels, frames) log-mels, with the state sharded by the config's rules on `mesh`."""
  rules = mesh_lib.rules(config)
  init_rng, step_key = rngs(config)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(functools.partial(init_state, objective, tx), init_rng)
    shardings = mesh_lib.state_shardings(boxed, mesh, rules)
    abstract_state = checkpoint.abstract_with_shardings(mesh_lib.strip_boxes(boxed), shardings)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    b, k = config.train.batch_size, config.train.micro_batches
    abstract_batch = {
        "mel": jax.ShapeDtypeStruct((b, n_mels, config.data.frames), jnp.float32,
                                    sharding=batch_sharding),
        "id": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sharding)}
    step = jax.jit(functools.partial(train_step, objective, tx, schedules, step_key,
                                     micro_batches=k),
                   in_shardings=(shardings, batch_sharding),
                   out_shardings=(shardings, mesh_lib.replicated(mesh)),
                   donate_argnums=(0,)).lower(abstract_state, abstract_batch).compile()
    monitor = jax.jit(functools.partial(monitor_step, objective, step_key, micro_batches=k),
                      in_shardings=(shardings, batch_sharding),
                      out_shardings=mesh_lib.replicated(mesh),
                      ).lower(abstract_state, abstract_batch).compile() if monitors else None
    init = jax.jit(lambda rng: nn.unbox(init_state(objective, tx, rng)),
                   out_shardings=shardings).lower(init_rng).compile()
  return CompiledStep(step, monitor, functools.partial(init, init_rng), abstract_state,
                      shardings, batch_sharding)


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
  differences = config_lib.resume_differences(json.loads(saved_path.read_text()),
                                              config_lib.to_dict(config))
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
      self.requested = True
      print(f"signal {signum}: saving a checkpoint and stopping after this step",
            flush=True)
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


def train(config: ml_collections.ConfigDict, workdir: str | Path) -> TrainResult:
  workdir = Path(workdir).absolute()
  config_lib.validate(config)
  check_workdir(workdir, config)
  # A fresh run's pretrained parameters, read and checked before anything compiles.
  pretrained = warm_start.load(config) \
      if config.get("init_from") and not has_checkpoint(workdir) else None
  timings = {}

  t = time.perf_counter()
  data = datasets.resolve(config)
  config_lib.validate_dataset(config, data.num_examples)
  dataset = datasets.train_dataset(config, data)
  timings["data"] = time.perf_counter() - t
  total_steps, warmup_steps = schedule_steps(config, data.num_examples)

  mesh = mesh_lib.make_mesh(config.mesh)
  rules = mesh_lib.rules(config)
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  micro_batch = config.train.batch_size // config.train.micro_batches
  if micro_batch % batch_devices:
    raise config_lib.ConfigError(
        f"a micro-batch of train.batch_size {config.train.batch_size} / train.micro_batches "
        f"{config.train.micro_batches} = {micro_batch} examples must divide over the "
        f"{batch_devices} data x fsdp devices; change the batch size, micro_batches or mesh")
  objective = objectives.build(config, total_steps)
  tx, schedules = optim.make_optimizer(config.optim, config.get("ema"), config.train.batch_size,
                                       total_steps, warmup_steps, objective.ema_subtree)

  t = time.perf_counter()
  compiled = compile_step(config, objective, tx, schedules, mesh,
                          data.metadata["frontend"]["n_mels"])
  timings["compile"] = time.perf_counter() - t
  mesh_lib.check_replicated(config.sharding_check, compiled.abstract_state, compiled.shardings,
                            mesh)
  batch_sharding = compiled.batch_sharding
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", config.train.keep_checkpoints)
    iterator = iter(dataset)
    latest = ckpt.latest_step()
    primary = distributed.is_primary()  # every process restores and saves; one writes
    if latest is not None:
      state = ckpt.restore(latest, compiled.abstract_state, iterator)
      if primary:
        print(f"resumed from the checkpoint at step {latest} in {workdir}", flush=True)
    else:
      state = compiled.initial_state()
      if pretrained is not None:
        state = warm_start.start_from(state, pretrained, tx, compiled.shardings)
        if primary:
          print(f"started from the parameters of {config.init_from}", flush=True)
      if primary:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json(indent=2))

  start = int(state["step"])
  writer = metrics_lib.MetricWriter(workdir, start)
  progress = metrics_lib.Progress(start, total_steps)
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
      batch = {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
               for k, v in local.items()}
      # What blocks the host: the batch and the slicing into per-device shards; the copies
      # to the devices run asynchronously (the step waits for them, not the host).
      timings["input_wait"] += time.perf_counter() - waited_from
      state, metrics = compiled.step(state, batch)
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
  ckpt.wait()
  timings["train"] = time.perf_counter() - t
  writer.close()
  finished = int(state["step"])
  if finished == total_steps:
    frontend_meta = datasets.frontend_metadata(config, data)
    transform = objective.input_transform(state["params"], state["aux"])
    if transform is not None:
      frontend_meta["input_norm"] = transform
    export.export_encoder(workdir / "export", config, objective.encoder_params(state["params"]),
                          frontend_meta)
  ckpt.close()
  return TrainResult(finished, total_steps, finished < total_steps,
                     {k: float(v) for k, v in last_metrics.items()}, timings)
