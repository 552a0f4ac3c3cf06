"""One training update, compiled ahead of time: the gradient of a batch (whole, or
accumulated over micro-batches in one scan), the optax update (EMA target included) and
the collapse monitors, on the state's shardings."""
import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jepa_jax.objectives import initial
from jepa_jax.optim import ema
from jepa_jax.parallel import mesh as mesh_lib
from jepa_jax.training import checkpoint


def schedule_steps(config: ml_collections.ConfigDict, num_examples: int) -> tuple[int, int]:
  """(total steps, warmup steps) from epochs over the training set."""
  steps_per_epoch = num_examples / config.train.batch_size
  total = max(1, round(config.train.epochs * steps_per_epoch))
  return total, min(round(config.optim.warmup_epochs * steps_per_epoch), total - 1)


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
  init_rng, step_key = initial.rngs(config)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(functools.partial(init_state, objective, tx), init_rng)
    shardings = mesh_lib.state_shardings(boxed, mesh, rules)
    abstract_state = checkpoint.abstract_with_shardings(mesh_lib.strip_boxes(boxed), shardings)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    b, k = config.train.batch_size, config.train.micro_batches
    if not isinstance(k, int):
      raise ValueError(f"compile_step needs a whole number of micro-batches, got {k!r}: "
                       f"resolve 'auto' first (training/fit.py)")
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
