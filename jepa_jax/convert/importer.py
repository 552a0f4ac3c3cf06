"""A PyTorch checkpoint -> the `export/` every jepa_jax run writes (export.py), so that
evaluate, embed, hear and --config.init_from read it unchanged.

The export's config is a recipe's (RECIPES: the method the checkpoint comes from) with the
encoder's shape, positions, class token, front end and length set from the checkpoint;
frontend.json carries the checkpoint's normalisation (M2D's norm_stats, Dasheng's folded
BatchNorm). The parameters are checked against the encoder the config builds before
anything is written. An MAE decoder the format maps (AudioMAE's decoder_mode=1) goes into
the export's optional decoder/ with its shape in the config's decoder section, checked
against the decoder the recipe's objective builds, so that --config.init_from continues
pretraining with it (training/warm_start.py).
"""
import dataclasses
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from data_pipelines import frontends
from jepa_jax import export, models, objectives
from jepa_jax.config import fields, shapes, upgrade, validation
from jepa_jax.convert import audiomae, dasheng, export_torch, m2d, safe_load, timm_vit
from jepa_jax.models import vit

FORMATS = {"timm_vit": timm_vit, "audiomae": audiomae, "m2d": m2d, "dasheng": dasheng}
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = {"timm_vit": "audio_jepa.py", "audiomae": "audiomae.py", "m2d": "audio_jepa.py",
           "dasheng": "dasheng.py"}


def guess_format(state) -> str | None:
  """The format a loaded checkpoint looks like (for the message when another was named)."""
  if not isinstance(state, dict):
    return None
  inner = state.get("model") if isinstance(state.get("model"), dict) else state
  keys = set(inner)
  if "time_pos_embed" in keys:
    return "dasheng"
  if "norm_stats" in keys or any(k.startswith(("target_blocks", "offline_predictor",
                                               "backbone.", m2d.EVAR_PREFIX)) for k in keys):
    return "m2d"
  if "decoder_pred.weight" in keys or "model" in state and "pos_embed" in keys:
    return "audiomae"
  if "pos_embed" in keys and "patch_embed.proj.weight" in keys:
    return "timm_vit"
  return None


def recipe_config(format_name: str, recipe: str | None) -> ml_collections.ConfigDict:
  spec = recipe or str(CONFIGS / RECIPES[format_name])
  return fields.load(spec)


@dataclasses.dataclass
class Converted:
  config: ml_collections.ConfigDict
  encoder: dict          # in the config's encoder layout
  decoder: dict | None   # the MAE decoder in the config's decoder layout, where mapped
  frontend_meta: dict
  notes: list[str]


def convert(format_name: str, checkpoint: str | Path, options: timm_vit.Options,
            recipe: str | None = None) -> tuple[ml_collections.ConfigDict, dict, dict, list[str]]:
  """(config, encoder params in the config's layout, frontend metadata, notes) of a
  checkpoint; raises CheckpointError / ValueError with one line naming what is wrong."""
  c = convert_checkpoint(format_name, checkpoint, options, recipe)
  return c.config, c.encoder, c.frontend_meta, c.notes


def convert_checkpoint(format_name: str, checkpoint: str | Path, options: timm_vit.Options,
                       recipe: str | None = None) -> Converted:
  """`convert`, with the decoder where the format maps one."""
  if format_name not in FORMATS:
    raise ValueError(f"unknown --format {format_name!r}; known: {', '.join(FORMATS)}")
  state = safe_load.load(checkpoint)
  if not isinstance(state, dict):
    raise safe_load.CheckpointError(f"{checkpoint} holds a {type(state).__name__}, not a "
                                    f"state dict")
  try:
    exported = exported_by_jepa_jax(state) if format_name == "timm_vit" else None
    if exported is not None:  # what a bare timm state dict does not say, from the file
      options = dataclasses.replace(options, num_heads=exported[0].model.num_heads,
                                    frontend=exported[0].data.frontend)
    params, changes = FORMATS[format_name].to_jax(state, options)
  except safe_load.CheckpointError as err:
    guess = guess_format(state)
    hint = f" (it looks like a {guess} checkpoint: --format={guess})" \
        if guess and guess != format_name else ""
    raise safe_load.CheckpointError(f"{checkpoint}: {err}{hint}") from None
  notes = changes.pop("notes")
  decoder = changes.pop("decoder_params", None)
  if exported is None:
    config, meta = recipe_config_and_meta(format_name, recipe, changes)
  else:
    config, meta = exported
    # Factorised learned positions come back as the one table they sum to.
    config.model.positions = changes["model.positions"]
    validation.validate(config)
    notes.append("the file was written by jepa_jax.convert export: its config, front end "
                 "and normalisation are used")
  encoder = layout_for(config, params)
  if decoder is not None:
    decoder = decoder_layout_for(config, decoder)
    if decoder is None:
      notes.append(f"not imported: the MAE decoder (the recipe's objective "
                   f"{config.objective!r} has none)")
  return Converted(config, encoder, decoder, meta, notes)


def recipe_config_and_meta(format_name: str, recipe: str | None, changes: dict
                           ) -> tuple[ml_collections.ConfigDict, dict]:
  """The recipe's config with the checkpoint's `changes`, and the frontend metadata of
  the checkpoint's normalisation (the front end's own where it has none)."""
  normalization = changes.pop("frontend.normalization", None)
  transform = changes.pop("frontend.input_norm", None)
  config = recipe_config(format_name, recipe)
  for name, value in changes.items():
    section, key = name.split(".")
    if section not in config:  # a decoder for a recipe without one: decoder_layout_for says
      continue
    if isinstance(value, dict):  # a nested section (decoder.window)
      config[section][key].update(value)
    else:
      config[section][key] = value
  if any(name.startswith("decoder.") for name in changes) and "decoder" in config:
    config.decoder.scan_layers = False  # the decoder is stored unscanned (warm_start stacks it)
  # The recipe's own shape fields follow the imported width (a recipe's scanned sizes).
  config.model.scan_layers = any(
      all(config.model[k] == v for k, v in size.items())
      for name, size in fields.ENCODER_SIZES.items() if name in fields.SCANNED_SIZES)
  validation.validate(config)
  frontend = frontends.get_frontend(config.data.frontend)
  if normalization is None:
    normalization = {"mean": frontend.norm_mean, "std": frontend.norm_std}
  meta = {"frontend": frontend.to_dict(), "normalization": normalization,
          "frames": config.data.frames}
  if transform is not None:
    meta["input_norm"] = transform
  return config, meta


def exported_by_jepa_jax(state: dict) -> tuple[ml_collections.ConfigDict, dict] | None:
  """The config and frontend metadata a `convert export` file carries beside its state
  dict (None for other files), so that its import embeds as the exported run did (its
  dataset normalisation, frames, recipe)."""
  exported = state.get(export_torch.METADATA_KEY)
  if not isinstance(exported, dict):
    return None
  try:
    config = ml_collections.ConfigDict(upgrade.upgrade(json.loads(exported["config"])))
    return config, dict(exported["frontend_meta"])
  except (KeyError, TypeError, ValueError) as err:
    raise safe_load.CheckpointError(f"its '{export_torch.METADATA_KEY}' entry is not one "
                                    f"jepa_jax.convert export writes ({err!r})") from None


def layout_for(config: ml_collections.ConfigDict, params: dict) -> dict:
  """`params` as jnp float32 in the layout (scanned or not) of the config's encoder,
  checked leaf by leaf against it."""
  encoder = models.build_encoder(config, shapes.grid(config))
  abstract = jax.eval_shape(lambda: nn.unbox(models.init_encoder(encoder, jax.random.key(0))))
  if config.model.scan_layers:
    params = vit.stack_layers(params)
  return _checked(abstract, params, "encoder")


def decoder_layout_for(config: ml_collections.ConfigDict, params: dict) -> dict | None:
  """The decoder `params` as jnp float32, checked leaf by leaf against the decoder the
  config's objective builds; None when that objective has no decoder."""
  objective = objectives.build(config)
  abstract = jax.eval_shape(lambda: nn.unbox(objective.init(jax.random.key(0))))
  if "decoder" not in abstract:
    return None
  return _checked(abstract["decoder"], params, "decoder")


def _checked(abstract, params: dict, what: str) -> dict:
  want = {jax.tree_util.keystr(p): x.shape for p, x in
          jax.tree_util.tree_leaves_with_path(abstract)}
  have = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in
          jax.tree_util.tree_leaves_with_path(params)}
  wrong = sorted(set(want) ^ set(have)) + sorted(k for k in set(want) & set(have)
                                                  if want[k] != have[k])
  if wrong:
    raise ValueError(f"the converted parameters do not fit the {what} the config builds: "
                     f"{', '.join(wrong[:5])}")
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


def import_checkpoint(format_name: str, checkpoint: str | Path, workdir: str | Path,
                      options: timm_vit.Options | None = None,
                      recipe: str | None = None) -> tuple[Path, list[str]]:
  """Write <workdir>/export from a checkpoint (with decoder/ where the checkpoint's MAE
  decoder maps); (the export folder, notes)."""
  c = convert_checkpoint(format_name, checkpoint, options or timm_vit.Options(), recipe)
  out = export.export_encoder(Path(workdir) / "export", c.config, c.encoder, c.frontend_meta,
                              decoder_params=c.decoder)
  return out, c.notes
