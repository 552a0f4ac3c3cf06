"""The train step fitted to the devices' memory before the first step.

The compiled step's memory analysis (parameters, optimizer state, batch, activations;
per device) is compared with what each device can give (parallel/memory.py). Where it does
not fit, `train.micro_batches='auto'` splits every device's rows of the batch into the
fewest micro-batches that fit (one compiled step at the whole batch, the count scaled
from its activations, one more compile to confirm), then `remat='auto'` (encoder,
predictor, decoder) recomputes block activations in the backward pass. The global batch
and the learning rate stay as configured. Micro-batches keep the math only for objectives
whose loss is a mean of per-example terms (`objective.splits_batch`); for the others
'auto' tries remat alone. Where nothing fits, memory.OutOfMemoryError names what the step
needs, what a device has and the settings that would fit, and nothing has been written.
"""
import copy
from collections.abc import Callable

import ml_collections

from jepa_jax.parallel import memory

STACKS = ("model", "predictor", "decoder")


def is_auto(config: ml_collections.ConfigDict) -> tuple[bool, bool]:
  """(micro_batches is 'auto', some stack's remat is 'auto')."""
  return (config.train.micro_batches == "auto",
          any(config[s].remat == "auto" for s in STACKS if s in config))


def resolved(config: ml_collections.ConfigDict, micro_batches: int,
             remat: str) -> ml_collections.ConfigDict:
  """A copy of `config` with its 'auto' micro_batches and remat fields set."""
  out = copy.deepcopy(config)
  if config.train.micro_batches == "auto":
    _set(out, "train", "micro_batches", micro_batches)
  for s in STACKS:
    if s in config and config[s].remat == "auto":
      out[s].remat = remat
  return out


def _set(config: ml_collections.ConfigDict, section: str, field: str, value) -> None:
  """config[section][field] = value, also where copy_and_resolve_references has turned the
  'auto' field (typed `object`) into a plain str field that refuses an int."""
  try:
    config[section][field] = value
  except TypeError:
    with config.unlocked():
      config[section] = ml_collections.ConfigDict({**config[section].to_dict(), field: value})


def per_device_batch(config: ml_collections.ConfigDict, mesh) -> int:
  return config.train.batch_size // (mesh.shape["data"] * mesh.shape["fsdp"])


def estimated_bytes(needed: int, temporary: int, k: int, new_k: int) -> int:
  """The step's memory with `new_k` micro-batches from one compiled with `k`: the
  activations scale with the micro-batch, parameters, optimizer state and batch do not."""
  return needed - temporary + temporary * k // new_k


def fewest_micro_batches(per_device: int, needed: int, temporary: int, k: int,
                         budget: int) -> int:
  """The fewest micro-batches k' > k (dividing the per-device batch) estimated to fit
  `budget`; the most there can be (one example per device and micro-batch) if none."""
  counts = [d for d in range(k + 1, per_device + 1) if per_device % d == 0]
  for d in counts:
    if estimated_bytes(needed, temporary, k, d) <= budget:
      return d
  return counts[-1] if counts else k


def _suggestions(config, mesh, splits: bool, needed: int, temporary: int, k: int,
                 budget: int) -> list[str]:
  """Settings with evidence that they fit: micro-batches by the activations' scaling, the
  state split over devices, fewer examples. (Recomputing activations is not among them:
  XLA's CPU compiler may keep as much; 'auto' measures it instead.)"""
  out = []
  per_device = per_device_batch(config, mesh)
  if splits and per_device > k:
    d = fewest_micro_batches(per_device, needed, temporary, k, budget)
    if estimated_bytes(needed, temporary, k, d) <= budget:
      out.append(f"--config.train.micro_batches={d}")
  devices = mesh.devices.size
  if devices > 1 and mesh.shape["fsdp"] == 1:
    out.append(f"--config.mesh.fsdp={devices} --config.mesh.data=1")
  out.append("a smaller train.batch_size, or the recipe's :demo variant")
  return out


def fit(config: ml_collections.ConfigDict, mesh, splits_batch: Callable, build: Callable,
        say: Callable[[str], None]) -> tuple:
  """What `build(resolved config) -> (..., compiled step)` returns for the settings that
  fit (the compiled step's `.step` is the jitted update). `splits_batch(config)`: whether
  the objective's loss is a mean over examples."""
  auto_k, auto_remat = is_auto(config)
  available = memory.available_bytes(mesh.devices.flat)
  budget = memory.budget_of(available)

  def attempt(k: int, remat: str):
    trial = resolved(config, k, remat)
    built = build(trial)
    step = built[-1].step
    return trial, built, memory.needed_bytes(step), memory.temporary_bytes(step)

  k, remat = (1 if auto_k else config.train.micro_batches), "none"
  trial, built, needed, temporary = attempt(k, remat)
  whole = needed
  splits, per_device = splits_batch(config), per_device_batch(config, mesh)
  for _ in range(2):  # the estimate, then once more from the second compile
    if budget is None or needed <= budget or not (auto_k and splits) or k >= per_device:
      break
    k = fewest_micro_batches(per_device, needed, temporary, k, budget)
    trial, built, needed, temporary = attempt(k, remat)
  if budget is not None and needed > budget and auto_remat:
    remat = "full"
    trial, built, needed, temporary = attempt(k, remat)
  platform = mesh.devices.flat[0].platform
  if budget is not None and needed > budget:
    raise memory.OutOfMemoryError(
        f"the train step needs {memory.readable(needed)} per device (XLA's memory analysis, "
        f"micro_batches {k}, remat {trial.model.remat}) and each {platform} device has "
        f"{memory.readable(available)} ({int(memory.MARGIN * 100)} % usable); settings that "
        f"would fit: " + "; or ".join(_suggestions(trial, mesh, splits, needed, temporary, k,
                                             budget)))
  if auto_k or auto_remat:
    have = "unknown" if available is None else memory.readable(available)
    why = "" if needed == whole else f" (the whole batch needs {memory.readable(whole)})"
    say(f"memory: micro_batches {k}, remat {trial.model.remat}: the step needs "
        f"{memory.readable(needed)} per device of {have} on each {platform} device{why}")
  return built
