"""The one encoder export every consumer loads: `export/` in a workdir with

  config.json     the training config (rebuilds the encoder),
  encoder/        the encoder parameters (orbax),
  checksums.json  their content checksums (jepa_jax/checksums.py; exports before it lack it),
  frontend.json   the front end and normalisation that make its input from audio.

and, optionally (written by `convert import` from a checkpoint with an MAE decoder; a run's
own decoder stays in its checkpoints):

  decoder/                the MAE decoder's parameters (orbax), unscanned, shaped as the
                          config's decoder section builds it,
  decoder_checksums.json  their checksums.
Exports without them load as before; `load_decoder` reads them for init_from.
"""
import contextlib
import gc
import json
import logging
import shutil
import sys
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import orbax.checkpoint as ocp

from jepa_jax import checksums, models
from jepa_jax.config import shapes, upgrade
from jepa_jax.parallel import distributed

CHECKSUMS = "checksums.json"
DECODER, DECODER_CHECKSUMS = "decoder", "decoder_checksums.json"


class CorruptExportError(RuntimeError):
  """An export's encoder parameters cannot be read or differ from their checksums."""


def error_line(err: BaseException, limit: int = 160) -> str:
  """A read or write error (TensorStore's run to pages) as the start of one line."""
  text = " ".join(str(err).split()) or type(err).__name__
  return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def unlogged_io_errors():
  """When orbax fails to read or write one array it abandons the others: asyncio logs
  each abandoned failure (a page of TensorStore specs) when its task is collected, and
  TensorStore's late callbacks to orbax's closed event loop print a traceback each. The
  caller's one-line error says it all: on a failure, collect the tasks here, unlogged,
  and from then on drop those callbacks' errors (only those)."""
  try:
    yield
  except Exception:
    log = logging.getLogger("asyncio")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
      gc.collect()
    finally:
      log.setLevel(level)
    drop_closed_loop_callbacks()
    raise


def drop_closed_loop_callbacks() -> None:
  """From now on, TensorStore's callbacks to orbax's closed event loops (after an I/O
  failed) raise unseen: their 'Event loop is closed' tracebacks say nothing."""
  hook = sys.unraisablehook
  if getattr(hook, "drops_closed_loop_callbacks", False):
    return

  def dropping(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      hook(unraisable)

  dropping.drops_closed_loop_callbacks = True
  sys.unraisablehook = dropping


def export_encoder(export_dir: Path, config: ml_collections.ConfigDict, encoder_params,
                   frontend_meta: dict, decoder_params=None) -> Path:
  """Write atomically: a half-written export never replaces a good one.

  Every process calls it: each saves the parameter shards it holds (sharded or not fully
  addressable arrays need no gathering), process 0 writes the rest and renames the folder.
  `decoder_params` (an imported MAE decoder) go to the optional decoder/."""
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
  sums = checksums.of_tree(encoder_params)  # every process: a computation over all shards
  if decoder_params is not None:
    checkpointer.save(tmp / DECODER, decoder_params)
    checkpointer.wait_until_finished()
    decoder_sums = checksums.of_tree(decoder_params)
  if primary:
    (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2))
    if decoder_params is not None:
      (tmp / DECODER_CHECKSUMS).write_text(json.dumps(decoder_sums, indent=2))
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
  params = _restore_checked(export_dir / "encoder", export_dir / CHECKSUMS, abstract)
  frontend_meta = json.loads((export_dir / "frontend.json").read_text())
  return config, encoder, params, frontend_meta


def has_decoder(export_dir: Path) -> bool:
  return (Path(export_dir) / DECODER).is_dir()


def load_decoder(export_dir: Path, abstract):
  """The export's decoder/ parameters, restored as `abstract` (the unscanned decoder
  tree of the export's config); CorruptExportError when unreadable or changed."""
  export_dir = Path(export_dir).absolute()
  return _restore_checked(export_dir / DECODER, export_dir / DECODER_CHECKSUMS, abstract)


def _restore_checked(path: Path, sums: Path, abstract):
  """Parameters at `path` shaped as `abstract`, checked against the checksums in `sums`
  (when the export has them)."""
  # Restore onto this process's first device, whatever mesh the export was written from,
  # by this process alone: no barrier waits for the others of a multi-process run.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)
  alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                             active_processes={jax.process_index()})
  try:
    with unlogged_io_errors():
      params = ocp.StandardCheckpointer(multiprocessing_options=alone).restore(path, abstract)
  except Exception as err:  # noqa: BLE001 - TensorStore's errors carry no common type
    raise CorruptExportError(
        f"the {path.name} parameters in {path} cannot be read ("
        f"{error_line(err)}); export again from the run's checkpoints or "
        f"restore the folder from a copy") from err
  wrong = checksums.mismatches(params, json.loads(sums.read_text())) if sums.exists() else []
  if wrong:
    raise CorruptExportError(
        f"{len(wrong)} array(s) of {path} differ from {sums} (e.g. "
        f"{', '.join(wrong[:3])}): the files changed after they were written; export again "
        f"or restore the folder from a copy")
  return params
