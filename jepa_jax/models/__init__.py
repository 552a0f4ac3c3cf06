"""Build the modules a config names (one place that reads model fields). The token grid
comes in as an argument (config/shapes.py derives it from the front end): models never
read data."""
import jax.numpy as jnp
import ml_collections

from jepa_jax.models import attention, predictor, vit

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


ATTENTION = ("global", "local")


PREDICTOR_LAYOUTS = ("queries", "full_grid")


def _attention_impl(model: ml_collections.ConfigDict) -> str | None:
  return model.attention_impl or None


def stack_options(section: ml_collections.ConfigDict) -> dict:
  """Layer scanning and remat of a model / predictor / decoder section. Training resolves
  remat 'auto' (training/fit.py); built anywhere else (evaluation, an export) a stack
  recomputes nothing."""
  return dict(scan=section.scan_layers,
              remat="none" if section.remat == "auto" else section.remat)


def stack_errors(config: ml_collections.ConfigDict, section: str,
                 grid: tuple[int, int] | None) -> list[str]:
  """Errors of a section's scan_layers and remat fields (the windows' period is checked
  only with a `grid`)."""
  s = config[section]
  options, errors = stack_options(s), []
  if not isinstance(options["scan"], bool):
    errors.append(f"{section}.scan_layers must be True or False, got {options['scan']!r}")
  if s.remat not in vit.REMAT + ("auto",):
    errors.append(f"{section}.remat must be 'auto' or one of {vit.REMAT}, got {s.remat!r}")
  if options["scan"] is True and section != "model" and s.attention == "local" \
      and grid is not None:
    try:
      period = vit.scan_period(windows(s, grid))
    except ValueError:
      period = 1  # bad windows are reported by predictor_config_errors
    if s.depth % period:
      errors.append(f"{section}.scan_layers scans shifted-window blocks in (unshifted, shifted) "
                    f"pairs: {section}.depth must be even, got {s.depth}")
  return errors


def build_encoder(config: ml_collections.ConfigDict, grid: tuple[int, int]) -> vit.Encoder:
  m = config.model
  return vit.Encoder(grid=grid, patch_shape=tuple(m.patch_shape), width=m.width,
                     depth=m.depth, num_heads=m.num_heads, mlp_dim=m.mlp_dim,
                     dtype=DTYPES[m.dtype], attention_impl=_attention_impl(m),
                     positions=m.positions, class_token=m.class_token,
                     **stack_options(m))


def windows(head: ml_collections.ConfigDict,
            token_grid: tuple[int, int]) -> attention.Windows | None:
  """The local-attention windows of a predictor / decoder section, or None (global)."""
  if head.attention == "global":
    return None
  return attention.Windows(token_grid, (head.window.freq, head.window.time),
                           (head.shift.freq, head.shift.time))


def build_predictor(config: ml_collections.ConfigDict, grid: tuple[int, int],
                    section: str = "predictor", out_dim: int | None = None
                    ) -> predictor.Predictor:
  """The JEPA predictor (out_dim = encoder width) or, with section='decoder' and the
  patch size as out_dim, the MAE decoder: one module, two uses."""
  p = config[section]
  return predictor.Predictor(
      grid=grid, width=p.width, depth=p.depth, num_heads=p.num_heads,
      mlp_dim=p.mlp_dim, out_dim=config.model.width if out_dim is None else out_dim,
      dtype=DTYPES[config.model.dtype], attention_impl=_attention_impl(config.model),
      full_grid=p.layout == "full_grid", windows=windows(p, grid),
      positions=p.positions, block=p.block, **stack_options(p))


def predictor_config_errors(config: ml_collections.ConfigDict, section: str,
                            grid: tuple[int, int]) -> list[str]:
  """Errors of a predictor / decoder section's attention and layout fields."""
  p = config[section]
  errors = []
  if p.layout not in PREDICTOR_LAYOUTS:
    errors.append(f"{section}.layout must be one of {PREDICTOR_LAYOUTS}, got {p.layout!r}")
  if p.attention not in ATTENTION:
    errors.append(f"{section}.attention must be one of {ATTENTION}, got {p.attention!r}")
  if p.positions not in vit.POSITIONS:
    errors.append(f"{section}.positions must be one of {vit.POSITIONS}, got {p.positions!r}")
  if p.block not in predictor.BLOCKS:
    errors.append(f"{section}.block must be one of {tuple(predictor.BLOCKS)}, got {p.block!r}")
  elif p.block == "swinv2" and p.attention != "local":
    errors.append(f"{section}.block 'swinv2' (AudioMAE's local decoder block) needs "
                  f"{section}.attention 'local'; use block 'prenorm' for global attention")
  if p.attention == "local":
    if p.layout != "full_grid":
      errors.append(f"{section}.attention 'local' needs {section}.layout 'full_grid'")
    try:
      windows(p, grid)
    except ValueError as err:
      errors.append(f"{section}: {err}")
  return errors


def init_encoder(encoder: vit.Encoder, rng) -> dict:
  """Logically boxed parameters of a fresh `encoder`."""
  n = encoder.grid[0] * encoder.grid[1]
  pf, pt = encoder.patch_shape
  return encoder.init(rng, jnp.zeros((1, n, pf * pt), jnp.float32))["params"]
