"""The one encoder export every consumer loads: `export/` in a workdir with

  config.json    the training config (rebuilds the encoder),
  encoder/       the encoder parameters (orbax),
  frontend.json  the front end and normalisation that make its input from audio.
"""
import json
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import orbax.checkpoint as ocp

from jepa_jax import models
from jepa_jax.config import shapes, upgrade
from jepa_jax.parallel import distributed


def export_encoder(export_dir: Path, config: ml_collections.ConfigDict, encoder_params,
                   frontend_meta: dict) -> Path:
  """Write atomically: a half-written export never replaces a good one.

  Every process calls it: each saves the parameter shards it holds (sharded or not fully
  addressable arrays need no gathering), process 0 writes the rest and renames the folder."""
  export_dir = Path(export_dir).absolute()
  tmp = export_dir.with_name(export_dir.name + ".tmp")
  primary = distributed.is_primary()
  if primary:
    if tmp.exists():
      shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
  distributed.barrier("export: empty folder")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp / "encoder", encoder_params)
  checkpointer.wait_until_finished()
  if primary:
    (tmp / "config.json").write_text(config.to_json(indent=2))
    (tmp / "frontend.json").write_text(json.dumps(frontend_meta, indent=2))
    if export_dir.exists():
      shutil.rmtree(export_dir)
    tmp.rename(export_dir)
  distributed.barrier("export: written")
  return export_dir


def load_config(export_dir: Path) -> ml_collections.ConfigDict:
  path = Path(export_dir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(
        f"no encoder export at {export_dir} (missing config.json): train to the end with "
        f"jepa_jax.main, which writes <workdir>/export")
  return ml_collections.ConfigDict(upgrade.upgrade(json.loads(path.read_text())))


def load_encoder(export_dir: Path):
  """(config, encoder module, encoder params, frontend metadata) from an export."""
  export_dir = Path(export_dir).absolute()
  config = load_config(export_dir)
  encoder = models.build_encoder(config, shapes.grid(config))
  abstract = jax.eval_shape(lambda: nn.unbox(models.init_encoder(encoder, jax.random.key(0))))
  # Restore onto this process's first device, whatever mesh the export was written from,
  # by this process alone: no barrier waits for the others of a multi-process run.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)
  alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                             active_processes={jax.process_index()})
  params = ocp.StandardCheckpointer(multiprocessing_options=alone).restore(
      export_dir / "encoder", abstract)
  frontend_meta = json.loads((export_dir / "frontend.json").read_text())
  return config, encoder, params, frontend_meta
