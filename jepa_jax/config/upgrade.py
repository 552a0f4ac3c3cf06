"""Configs saved by earlier versions (a workdir's config.json, an export's), brought to
today's fields: the one place that knows what older versions wrote. Every reader of a
saved config goes through `upgrade`, so the rest of the code reads every field directly."""
import copy

from jepa_jax.config import fields

# Fields added after runs were saved without them, with the value that does what those
# runs did. A field is added only where its section exists (a decoder's fields only to
# configs with a decoder).
ADDED_FIELDS = {
    "init_from": "",  # warm start, once uaMix's alone
    "data.exclude_classes": "", "data.cyclic_crop": False,
    "uamix.augment.background": 0.0,
    "model.scan_layers": False, "model.remat": "none",
    "model.class_token": False,  # before imported encoders (jepa_jax/convert)
    "predictor.scan_layers": False, "predictor.remat": "none",
    "decoder.scan_layers": False, "decoder.remat": "none",
    "predictor.block": "prenorm", "decoder.block": "prenorm",  # before models/swinv2.py
    "optim.layer_decay": 1.0, "optim.frozen_layers": 0,
    "train.micro_batches": 1,
    # The main job probed with `linear` (at the saved probe.lr) before linear_validated.
    "probe.protocol": "linear", "probe.lr_grid": fields.PROBE_LR_GRID,
}
# Fields renamed since: old name -> new name (the value moves).
RENAMED_FIELDS = {"uamix.head": "uamix.projector"}
# Sections added whole (their fields never change what a run computed).
ADDED_SECTIONS = {
    "finetune": fields.FINETUNE_DEFAULTS,
    "distributed": dict(coordinator_address="", num_processes=0, process_id=-1),
}


def upgrade(saved: dict) -> dict:
  """A copy of a saved config dict (JSON) with the fields renamed and added since it was
  written."""
  out = copy.deepcopy(saved)
  for old, new in RENAMED_FIELDS.items():
    old_parent, old_key = _section(out, old), old.rpartition(".")[2]
    if old_parent is not None and old_key in old_parent:
      _section(out, new)[new.rpartition(".")[2]] = old_parent.pop(old_key)
  for name, value in ADDED_SECTIONS.items():
    out.setdefault(name, copy.deepcopy(value))
  for name, value in ADDED_FIELDS.items():
    section = _section(out, name)
    if section is not None:
      section.setdefault(name.rpartition(".")[2], value)
  return out


def _section(config: dict, name: str) -> dict | None:
  """The dict holding field `name` ('a.b.c' -> config['a']['b']), or None where the
  config lacks that section."""
  section = config
  for part in name.split(".")[:-1]:
    section = section.get(part)
    if not isinstance(section, dict):
      return None
  return section
