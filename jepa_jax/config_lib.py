"""Config variants (`file.py:name,k=v`), validation before anything compiles, and the
check that a workdir's checkpoint came from a compatible config."""
import functools
import json

import ml_collections


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


def parse_variant(arg: str | None, names: set[str], values: dict[str, type]) -> dict:
  """'demo,d=3.2' -> {'demo': True, 'd': 3.2}; unknown parts are errors."""
  out: dict = {}
  for part in filter(None, (p.strip() for p in (arg or "").split(","))):
    if "=" in part:
      key, raw = (s.strip() for s in part.split("=", 1))
      if key not in values:
        raise ConfigError(f"unknown config variant value {key!r} in {arg!r}; known: "
                          f"{sorted(values)} (and variants {sorted(names)})")
      try:
        out[key] = values[key](raw)
      except ValueError:
        raise ConfigError(f"config variant {key}={raw!r} is not a {values[key].__name__}") from None
    elif part in names:
      out[part] = True
    else:
      raise ConfigError(f"unknown config variant {part!r} in {arg!r}; known: {sorted(names)}"
                        f" and values {sorted(values)} written k=v")
  return out


def _check(errors: list[str], ok: bool, message: str) -> None:
  if not ok:
    errors.append(message)


def _positive(errors, config, section: str, *names):
  node = functools.reduce(getattr, section.split("."), config)
  for name in names:
    value = node[name]
    _check(errors, value > 0, f"{section}.{name} must be > 0, got {value}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError listing every invalid field of the config."""
  from data_pipelines import frontends
  from jepa_jax import masks, models, objectives

  e: list[str] = []
  _check(e, config.objective in objectives.OBJECTIVES,
         f"objective {config.objective!r} unknown; known: {sorted(objectives.OBJECTIVES)}")
  d = config.data
  _check(e, d.frontend in frontends.FRONTENDS,
         f"data.frontend {d.frontend!r} unknown; known: {sorted(frontends.FRONTENDS)}")
  _check(e, d.frames > 0 and d.frames % config.model.patch_size == 0,
         f"data.frames must be a positive multiple of model.patch_size "
         f"({config.model.patch_size}), got {d.frames}")
  _check(e, d.normalization in ("dataset", "recipe"),
         f"data.normalization must be 'dataset' or 'recipe', got {d.normalization!r}")
  _check(e, d.gain_jitter_db >= 0, f"data.gain_jitter_db must be >= 0, got {d.gain_jitter_db}")
  _check(e, d.worker_count >= 0, f"data.worker_count must be >= 0, got {d.worker_count}")
  _positive(e, config, "data.synthetic", "num_pretrain", "num_probe")

  for section in ("model", "predictor"):
    m = config[section]
    _positive(e, config, section, "width", "depth", "num_heads", "mlp_dim")
    _check(e, m.num_heads > 0 and m.width % m.num_heads == 0,
           f"{section}.width {m.width} must be divisible by {section}.num_heads {m.num_heads}")
    _check(e, m.width % 4 == 0, f"{section}.width must be a multiple of 4 (2-D sin-cos), "
           f"got {m.width}")
  _check(e, config.model.dtype in models.DTYPES,
         f"model.dtype {config.model.dtype!r} unknown; known: {sorted(models.DTYPES)}")
  _check(e, config.model.attention_impl in ("", "xla", "cudnn"),
         f"model.attention_impl must be '', 'xla' or 'cudnn', got {config.model.attention_impl!r}")

  grid_ok = d.frames > 0 and d.frames % config.model.patch_size == 0 \
      and d.frontend in frontends.FRONTENDS
  if grid_ok:
    e.extend(masks.config_errors(config.mask, models.grid(config)))

  o = config.optim
  _positive(e, config, "optim", "base_lr", "eps")
  _check(e, 0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"optim.b1/b2 must be in [0, 1), got {o.b1}, {o.b2}")
  _check(e, o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
  _check(e, o.clip_norm >= 0, f"optim.clip_norm must be >= 0 (0 = off), got {o.clip_norm}")
  _check(e, 0 <= o.end_lr_ratio <= 1, f"optim.end_lr_ratio must be in [0, 1], got {o.end_lr_ratio}")
  t = config.train
  _positive(e, config, "train", "batch_size", "epochs", "log_every", "checkpoint_every",
            "keep_checkpoints")
  _check(e, 0 <= o.warmup_epochs < t.epochs,
         f"optim.warmup_epochs must be in [0, train.epochs={t.epochs}), got {o.warmup_epochs}")
  mesh_sizes = [config.mesh[a] for a in ("data", "fsdp", "model")]
  _check(e, all(s == -1 or s >= 1 for s in mesh_sizes) and mesh_sizes.count(-1) <= 1,
         f"mesh sizes must be >= 1 with at most one -1 (fill), got {mesh_sizes}")
  _positive(e, config, "probe", "seeds", "lr", "max_epochs", "patience", "batch_size",
            "chunk_batch")

  if config.objective in objectives.OBJECTIVES:
    e.extend(objectives.OBJECTIVES[config.objective].config_errors(config))
  if e:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(e))


# Fields that may change when a run resumes: they do not change what is computed.
RESUME_FREE = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
               "data.worker_count", "mesh", "probe")


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def resume_differences(saved: dict, current: dict) -> list[str]:
  """Fields (outside RESUME_FREE) whose values differ between two config dicts."""
  def relevant(tree):
    return {k: v for k, v in _flatten(tree).items()
            if not any(k == f or k.startswith(f + ".") for f in RESUME_FREE)}
  a, b = relevant(saved), relevant(current)
  return [f"{k}: {a.get(k, '<absent>')!r} in the workdir, {b.get(k, '<absent>')!r} now"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def to_dict(config: ml_collections.ConfigDict) -> dict:
  """JSON-safe plain dict (tuples become lists, as they would after a JSON round trip)."""
  return json.loads(config.to_json())
