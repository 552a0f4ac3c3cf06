"""Validation of a whole config before anything is built or compiled: every invalid field
in one ConfigError. It asks the parts (front ends, masks, models, objectives, the
distributed runtime) for their own checks."""
import functools
import os

import jax
import ml_collections

from data_pipelines import frontends
from jepa_jax import masks, models, objectives
from jepa_jax.config import fields, shapes
from jepa_jax.models import attention, vit
from jepa_jax.parallel import distributed
from jepa_jax.parallel import mesh as mesh_lib


def _check(errors: list[str], ok: bool, message: str) -> None:
  if not ok:
    errors.append(message)


def _positive(errors, config, section: str, *names):
  node = functools.reduce(getattr, section.split("."), config)
  for name in names:
    value = node[name]
    _check(errors, value > 0, f"{section}.{name} must be > 0, got {value}")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def finetune_errors(f, section: str = "finetune") -> list[str]:
  """Errors of a fine-tuning section (a ConfigDict or a dict of
  FINETUNE_DEFAULTS' fields)."""
  e: list[str] = []
  unknown = sorted(set(f) - set(fields.FINETUNE_DEFAULTS))
  missing = sorted(set(fields.FINETUNE_DEFAULTS) - set(f))
  _check(e, not unknown, f"{section}: unknown field(s) {', '.join(unknown)}; known: "
         f"{', '.join(sorted(fields.FINETUNE_DEFAULTS))}")
  _check(e, not missing, f"{section}: missing field(s) {', '.join(missing)}")
  if unknown or missing:
    return e
  for name in ("epochs", "batch_size", "seeds"):
    _check(e, _is_int(f[name]) and f[name] >= 1,
           f"{section}.{name} must be an integer >= 1, got {f[name]!r}")
  _check(e, _is_int(f["seed"]) and f["seed"] >= 0,
         f"{section}.seed must be an integer >= 0, got {f['seed']!r}")
  numbers = ("warmup_epochs", "base_lr", "b1", "b2", "weight_decay", "layer_decay", "mixup",
             "drop_freq", "drop_time", "rm_rate")
  bad = [n for n in numbers if not isinstance(f[n], (int, float)) or isinstance(f[n], bool)]
  for name in bad:
    e.append(f"{section}.{name} must be a number, got {f[name]!r}")
  if bad:
    return e
  _check(e, f["base_lr"] > 0, f"{section}.base_lr must be > 0, got {f['base_lr']}")
  _check(e, 0 <= f["b1"] < 1 and 0 <= f["b2"] < 1,
         f"{section}.b1/b2 must be in [0, 1), got {f['b1']}, {f['b2']}")
  _check(e, f["weight_decay"] >= 0, f"{section}.weight_decay must be >= 0, got "
         f"{f['weight_decay']}")
  if _is_int(f["epochs"]):
    _check(e, 0 <= f["warmup_epochs"] < f["epochs"], f"{section}.warmup_epochs must be in "
           f"[0, {section}.epochs={f['epochs']}), got {f['warmup_epochs']}")
  _check(e, 0 < f["layer_decay"] <= 1, f"{section}.layer_decay must be in (0, 1] (1 = off), "
         f"got {f['layer_decay']}")
  _check(e, f["mixup"] >= 0, f"{section}.mixup is the Beta(alpha, alpha) parameter, >= 0 "
         f"(0 = off), got {f['mixup']}")
  for name in ("drop_freq", "drop_time", "rm_rate"):
    _check(e, 0 <= f[name] < 1, f"{section}.{name} is a fraction of tokens in [0, 1) "
           f"(0 = off), got {f[name]}")
  _check(e, isinstance(f["balanced_sampling"], bool),
         f"{section}.balanced_sampling must be True or False, got {f['balanced_sampling']!r}")
  return e


def _data_errors(config: ml_collections.ConfigDict) -> list[str]:
  e: list[str] = []
  d = config.data
  _check(e, d.frontend in frontends.FRONTENDS,
         f"data.frontend {d.frontend!r} unknown; known: {sorted(frontends.FRONTENDS)}")
  patch_shape = tuple(config.model.patch_shape)
  _check(e, len(patch_shape) == 2 and min(patch_shape) > 0,
         f"model.patch_shape must be (mel bins, frames) > 0, got {patch_shape}")
  patch_frames = patch_shape[-1] if patch_shape else 1
  _check(e, d.frames > 0 and d.frames % patch_frames == 0,
         f"data.frames must be a positive multiple of the patch's {patch_frames} frames "
         f"(model.patch_shape {patch_shape}), got {d.frames}")
  _check(e, d.normalization in ("dataset", "recipe"),
         f"data.normalization must be 'dataset' or 'recipe', got {d.normalization!r}")
  _check(e, d.gain_jitter_db >= 0, f"data.gain_jitter_db must be >= 0, got {d.gain_jitter_db}")
  _check(e, d.worker_count >= 0, f"data.worker_count must be >= 0, got {d.worker_count}")
  _check(e, isinstance(d.cyclic_crop, bool),
         f"data.cyclic_crop must be True or False, got {d.cyclic_crop!r}")
  _positive(e, config, "data.synthetic", "num_pretrain", "num_probe")
  try:
    fields.parse_classes(d.exclude_classes)
  except fields.ConfigError as err:
    e.append(f"data.exclude_classes: {err}")
  return e


def _token_grid(config: ml_collections.ConfigDict) -> tuple[tuple[int, int] | None, list[str]]:
  """(the token grid, or None where the front end or shapes cannot give one; its error)."""
  patch_shape = tuple(config.model.patch_shape)
  if not (len(patch_shape) == 2 and min(patch_shape) > 0 and config.data.frames > 0
          and config.data.frontend in frontends.FRONTENDS):
    return None, []  # reported by _data_errors
  try:
    return shapes.grid(config), []
  except ValueError as err:  # mels or frames not divisible into patches
    return None, [str(err)]


def _model_errors(config: ml_collections.ConfigDict, grid: tuple[int, int] | None) -> list[str]:
  e: list[str] = []
  for section in ("model", "predictor", "decoder"):
    if section not in config:  # an objective without a predictor or decoder
      continue
    m = config[section]
    _positive(e, config, section, "width", "depth", "num_heads", "mlp_dim")
    _check(e, m.num_heads > 0 and m.width % m.num_heads == 0,
           f"{section}.width {m.width} must be divisible by {section}.num_heads {m.num_heads}")
    _check(e, m.width % 4 == 0, f"{section}.width must be a multiple of 4 (2-D sin-cos), "
           f"got {m.width}")
    e.extend(models.stack_errors(config, section, grid))
  m = config.model
  _check(e, m.dtype in models.DTYPES,
         f"model.dtype {m.dtype!r} unknown; known: {sorted(models.DTYPES)}")
  _check(e, m.attention_impl in attention.IMPLEMENTATIONS,
         f"model.attention_impl must be one of {attention.IMPLEMENTATIONS} ('auto' or '': "
         f"picked per backend and sequence length), got {m.attention_impl!r}")
  if m.attention_impl == "cudnn":  # cuDNN flash attention: GPU and bf16 / fp16 only
    backend = jax.default_backend()
    _check(e, backend == "gpu", f"model.attention_impl 'cudnn' needs a GPU, but jax's backend "
           f"is {backend!r}; use 'auto', 'dense', 'blockwise' or 'xla'")
    _check(e, m.dtype == "bfloat16", f"model.attention_impl 'cudnn' needs "
           f"model.dtype 'bfloat16', got {m.dtype!r}; or use 'auto', 'dense', 'blockwise' or "
           f"'xla'")
  if m.attention_impl == "splash":  # a Pallas TPU kernel (elsewhere only interpreted, slowly)
    backend = jax.default_backend()
    _check(e, backend == "tpu", f"model.attention_impl 'splash' needs a TPU, but jax's "
           f"backend is {backend!r}; use 'auto', 'blockwise' or 'dense'")
  _check(e, m.positions in vit.POSITIONS,
         f"model.positions must be one of {vit.POSITIONS}, got {m.positions!r}")
  _check(e, isinstance(m.class_token, bool),
         f"model.class_token must be True or False, got {m.class_token!r}")
  return e


def _optim_errors(config: ml_collections.ConfigDict) -> list[str]:
  e: list[str] = []
  o = config.optim
  _positive(e, config, "optim", "base_lr", "eps")
  _check(e, 0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"optim.b1/b2 must be in [0, 1), got {o.b1}, {o.b2}")
  _check(e, o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
  _check(e, o.clip_norm >= 0, f"optim.clip_norm must be >= 0 (0 = off), got {o.clip_norm}")
  _check(e, 0 <= o.end_lr_ratio <= 1, f"optim.end_lr_ratio must be in [0, 1], got {o.end_lr_ratio}")
  _check(e, 0 < o.layer_decay <= 1, f"optim.layer_decay must be in (0, 1] (1 = off), got "
         f"{o.layer_decay}")
  top = config.model.depth + 2  # embedding, blocks, final norm
  _check(e, _is_int(o.frozen_layers) and 0 <= o.frozen_layers <= top,
         f"optim.frozen_layers must be an integer in [0, {top}] (layers 0 = embedding, "
         f"1..{top - 2} = blocks, {top - 1} = final norm; 0 = none frozen), got "
         f"{o.frozen_layers!r}")
  _check(e, 0 <= o.warmup_epochs < config.train.epochs,
         f"optim.warmup_epochs must be in [0, train.epochs={config.train.epochs}), got "
         f"{o.warmup_epochs}")
  return e


def _run_errors(config: ml_collections.ConfigDict) -> list[str]:
  """Errors of the sections that say how a run goes: batches, checkpoints, devices,
  processes, the probe, fine-tuning and the warm start."""
  e: list[str] = []
  t = config.train
  _positive(e, config, "train", "batch_size", "epochs", "log_every", "checkpoint_every",
            "keep_checkpoints")
  _check(e, t.micro_batches == "auto" or (_is_int(t.micro_batches) and t.micro_batches >= 1
                                            and t.batch_size % t.micro_batches == 0),
         f"train.micro_batches must be 'auto' or an integer >= 1 dividing train.batch_size "
         f"{t.batch_size}, got {t.micro_batches!r}")
  mesh_sizes = [config.mesh[a] for a in ("data", "fsdp", "model")]
  sizes_ok = all(s == -1 or s >= 1 for s in mesh_sizes) and mesh_sizes.count(-1) <= 1
  _check(e, sizes_ok, f"mesh sizes must be >= 1 with at most one -1 (fill), got {mesh_sizes}")
  if sizes_ok:
    try:
      mesh_lib.mesh_shape(config.mesh, jax.device_count())
    except ValueError as err:
      e.append(str(err))
  mib = config.sharding_check.replicated_mib
  _check(e, mib >= 0, f"sharding_check.replicated_mib must be >= 0 (MiB), got {mib}")
  _positive(e, config, "probe", "seeds", "lr", "max_epochs", "patience", "batch_size",
            "chunk_batch")
  _check(e, config.probe.protocol in fields.PROBE_PROTOCOLS,
         f"probe.protocol must be one of {', '.join(fields.PROBE_PROTOCOLS)}, got "
         f"{config.probe.protocol!r}")
  grid = config.probe.lr_grid
  _check(e, isinstance(grid, (list, tuple)) and len(grid) > 0
         and all(isinstance(v, (int, float)) and v > 0 for v in grid),
         f"probe.lr_grid must be a non-empty list of learning rates > 0, got {grid!r}")
  _check(e, isinstance(config.init_from, str),
         f"init_from must be a path (a workdir or its export/) or '', got {config.init_from!r}")
  e.extend(distributed.config_errors(config.distributed, os.environ))
  e.extend(finetune_errors(config.finetune))
  return e


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError listing every invalid field of the config."""
  e: list[str] = []
  _check(e, config.objective in objectives.OBJECTIVES,
         f"objective {config.objective!r} unknown; known: {sorted(objectives.OBJECTIVES)}")
  grid, grid_errors = _token_grid(config)
  e.extend(_data_errors(config) + grid_errors + _model_errors(config, grid))
  if grid is not None and "mask" in config:  # contrastive objectives mask nothing
    e.extend(masks.config_errors(config.mask, grid))
  e.extend(_optim_errors(config) + _run_errors(config))
  if config.objective in objectives.OBJECTIVES and grid is not None:  # else reported above
    e.extend(objectives.OBJECTIVES[config.objective].config_errors(config))
  if e:
    raise fields.ConfigError(one_line("invalid config", e))


def one_line(title: str, errors: list[str]) -> str:
  """Every error of a config on one line: a command's message is one line."""
  return f"{title}: " + "; ".join(errors)


def validate_dataset(config: ml_collections.ConfigDict, num_examples: int) -> None:
  """Raises ConfigError for fields that do not fit a training set of `num_examples`."""
  check = getattr(objectives.OBJECTIVES[config.objective], "dataset_errors", None)
  e = check(config, num_examples) if check is not None else []
  if e:
    raise fields.ConfigError(one_line("invalid config for this data", e))
