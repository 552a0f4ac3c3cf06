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
    "data.exclude_classes": "",
    "uamix.augment.background": 0.0,
    "model.scan_layers": False, "model.remat": "none",
    "predictor.scan_layers": False, "predictor.remat": "none",
    "decoder.scan_layers": False, "decoder.remat": "none",
    "optim.layer_decay": 1.0, "optim.frozen_layers": 0,
    "train.micro_batches": 1,
}
# Sections added whole (their fields never change what a run computed).
ADDED_SECTIONS = {
    "finetune": fields.FINETUNE_DEFAULTS,
    "distributed": dict(coordinator_address="", num_processes=0, process_id=-1),
}


def upgrade(saved: dict) -> dict:
  """A copy of a saved config dict (JSON) with every field added since it was written."""
  out = copy.deepcopy(saved)
  for name, value in ADDED_SECTIONS.items():
    out.setdefault(name, copy.deepcopy(value))
  for name, value in ADDED_FIELDS.items():
    *path, key = name.split(".")
    section = out
    for part in path:
      section = section.get(part)
      if not isinstance(section, dict):
        break
    else:
      section.setdefault(key, value)
  return out
