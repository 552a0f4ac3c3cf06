"""Start a fresh run from a pretrained one: `config.init_from` names a workdir or its
export/ (uaMix stage 1 from an MAE run, stage 2 from stage 1).

The encoder comes from the export (export.load_encoder), which every finished run writes.
An MAE decoder comes from the export's optional decoder/ (an imported AudioMAE checkpoint,
`convert import`) when this objective has a decoder the source config's decoder section
describes alike; one line says when it differs and the decoder starts fresh. Other
parameter entries this objective shares by name with the source run (uaMix stage 1's
projection head, an MAE run's decoder) come from the newest checkpoint of its workdir
whose parameters read and match their checksums, when it has one (a newer corrupt one is
named in a warning); the rest is ignored. The config must build the same encoder on the same
input. The optimizer state is then built afresh on the loaded parameters. A resumed run
never reloads: its checkpoint already holds everything.
"""
import sys
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from data_pipelines import frontends
from jepa_jax import export, models, objectives
from jepa_jax.config import shapes
from jepa_jax.config.fields import ConfigError
from jepa_jax.models import vit
from jepa_jax.parallel import distributed
from jepa_jax.training import checkpoint

# What makes two configs' encoders (and their inputs) interchangeable.
ENCODER_FIELDS = ("model.patch_shape", "model.width", "model.depth", "model.num_heads",
                  "model.mlp_dim", "model.positions", "model.class_token", "model.scan_layers",
                  "data.frontend",
                  "data.frames", "data.normalization")


# What makes two decoders' parameters interchangeable (beside the encoder's fields, which
# fix the token grid, the patch size and the width the decoder reads). scan_layers is not
# one: the decoder is stored unscanned and stacked here when this run scans it.
DECODER_FIELDS = ("decoder.layout", "decoder.attention", "decoder.window", "decoder.shift",
                  "decoder.block", "decoder.width", "decoder.depth", "decoder.num_heads",
                  "decoder.mlp_dim", "decoder.positions")


def source_dirs(init_from: str | Path) -> tuple[Path, Path | None]:
  """(export dir, workdir or None when `init_from` is an export itself)."""
  path = Path(init_from).expanduser().absolute()
  if (path / "export" / "config.json").exists():
    return path / "export", path
  if (path / "config.json").exists() and (path / "encoder").is_dir():
    return path, None
  raise ConfigError(
      f"init_from={str(init_from)!r}: no encoder export there (expected <workdir>/export or "
      f"an export folder); train the source run to the end first")


def _field(config: ml_collections.ConfigDict, name: str):
  section, key = name.split(".")
  value = config[section].get(key) if section in config else None
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  return list(value) if isinstance(value, (tuple, list)) else value


def compatibility_errors(config: ml_collections.ConfigDict,
                         source: ml_collections.ConfigDict) -> list[str]:
  return [f"{name}: {_field(source, name)!r} in the source, {_field(config, name)!r} here"
          for name in ENCODER_FIELDS if _field(source, name) != _field(config, name)]


def load(config: ml_collections.ConfigDict) -> dict:
  """{params entry: numpy tree} to start from: 'encoder', plus the source checkpoint's
  other entries (`merge` keeps those the new run's parameters have)."""
  export_dir, workdir = source_dirs(config.init_from)
  source_config, _, encoder, frontend = export.load_encoder(export_dir)
  errors = compatibility_errors(config, source_config)
  recorded = frontends.FrontEnd.recorded(frontend["frontend"]).to_dict()
  current = frontends.get_frontend(config.data.frontend).to_dict()
  differing = sorted(k for k, v in current.items() if recorded.get(k) != v)
  if differing and not errors:
    errors.append(f"the source encoder was trained on an older {config.data.frontend!r} "
                  f"recipe (differing in {', '.join(differing)}), whose features this run "
                  f"would not make")
  if "input_norm" in frontend:
    errors.append("the source encoder needs its learned input normaliser (Dasheng's "
                  "BatchNorm), which this objective does not apply")
  if errors:
    raise ConfigError(f"init_from={config.init_from!r} holds an encoder this config cannot "
                      f"use:\n  " + "\n  ".join(errors))
  loaded = {"encoder": jax.tree.map(np.asarray, encoder)}
  has_decoder = "decoder" in config and "decoder" in _abstract_params(config)
  if has_decoder and export.has_decoder(export_dir):
    decoder = imported_decoder(config, source_config, export_dir)
    if decoder is not None:
      loaded["decoder"] = decoder
  try:
    params = (checkpoint.latest_entry(workdir / "checkpoints", warn=_say)
              if workdir is not None else None)
  except checkpoint.NoIntactCheckpointError as err:
    raise ConfigError(f"init_from={config.init_from!r}: {err}. Restore that folder from a "
                      f"copy, or set init_from={export_dir} to start from the export "
                      f"alone") from err
  for name, tree in (params or {}).items():
    if name != "encoder":
      loaded[name] = tree
  if has_decoder and "decoder" not in loaded and not export.has_decoder(export_dir):
    _say(f"note: init_from={config.init_from!r} holds no decoder (an export of a run, or "
         f"an import of a checkpoint without one): the decoder starts fresh")
  return loaded


def imported_decoder(config: ml_collections.ConfigDict, source: ml_collections.ConfigDict,
                     export_dir: Path) -> dict | None:
  """The export's decoder/ in this config's decoder layout (stacked when it scans), or
  None, said in one line, when the source's decoder section describes another decoder."""
  differing = [f"{name} {_field(source, name)!r} there, {_field(config, name)!r} here"
               for name in DECODER_FIELDS if _field(source, name) != _field(config, name)]
  if differing:
    _say(f"note: the decoder in {export_dir} is not used ({'; '.join(differing)}): the "
         f"decoder starts fresh")
    return None
  stored = ml_collections.ConfigDict(source.to_dict())
  stored.decoder.scan_layers = False
  decoder = export.load_decoder(export_dir, _abstract_params(stored)["decoder"])
  if config.decoder.scan_layers:
    period = vit.scan_period(models.windows(config.decoder, shapes.grid(config)))
    decoder = vit.stack_layers(decoder, period)
  return jax.tree.map(np.asarray, decoder)


def _abstract_params(config: ml_collections.ConfigDict) -> dict:
  """The shapes of the parameters `config`'s objective starts from."""
  objective = objectives.build(config)
  return jax.eval_shape(lambda: nn.unbox(objective.init(jax.random.key(0))))


def _say(line: str) -> None:
  if distributed.is_primary():
    print(line, file=sys.stderr, flush=True)


def _placed(current: jax.Array, value: np.ndarray, where: str) -> jax.Array:
  if value.shape != current.shape:
    raise ConfigError(f"init_from: {where} has shape {value.shape} in the source, "
                      f"{current.shape} here")
  value = np.asarray(value, current.dtype)
  return jax.make_array_from_callback(current.shape, current.sharding, lambda i: value[i])


def merge(params: dict, loaded: dict) -> dict:
  """`params` with the entries `loaded` shares with it replaced, on the same shardings."""
  out = dict(params)
  for name in loaded.keys() & params.keys():
    if jax.tree.structure(params[name]) != jax.tree.structure(loaded[name]):
      raise ConfigError(f"init_from: params[{name!r}] is laid out differently in the source "
                        f"(another size or layer layout)")
    out[name] = jax.tree_util.tree_map_with_path(
        lambda path, c, v, n=name: _placed(c, v, f"params[{n!r}]{jax.tree_util.keystr(path)}"),
        params[name], loaded[name])
  return out


def start_from(state: dict, loaded: dict, tx, shardings: dict) -> dict:
  """The fresh train state with `loaded` (from `load`) in its parameters and a new
  optimizer state."""
  params = merge(state["params"], loaded)
  opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
  return {**state, "params": params, "opt_state": opt_state}
