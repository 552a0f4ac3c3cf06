"""Config variants (`file.py:name,k=v`), validation before anything compiles, and the
check that a workdir's checkpoint came from a compatible config."""
import importlib.util
import json
from pathlib import Path

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


def parse_classes(spec: str) -> dict[str, tuple[str, ...]]:
  """'task:name,name;task2:name' -> {task: (class names)}; '' -> {}."""
  out = {}
  for part in filter(None, (p.strip() for p in spec.split(";"))):
    task, sep, names = (s.strip() for s in part.partition(":"))
    classes = tuple(n.strip() for n in names.split(",") if n.strip())
    if not sep or not task or not classes:
      raise ConfigError(f"classes are written 'task:name,name;task:name', got {part!r} in "
                        f"{spec!r}")
    if task in out:
      raise ConfigError(f"task {task!r} appears twice in {spec!r}")
    out[task] = classes
  return out


def recipe_module(path: str | Path):
  """A recipe file (configs/*.py) as a module, for its get_config(variant)."""
  if not Path(path).is_file():
    raise ConfigError(f"config file {path} not found")
  module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load(spec: str | Path) -> ml_collections.ConfigDict:
  """The config a recipe file gives for a variant: 'configs/ajepa.py:demo,sets=4'
  (what --config=... loads, for scripts and tests)."""
  path, _, variant = str(spec).partition(":")
  return recipe_module(path).get_config(variant or None)


# Encoder shapes (docs/models.md): width, depth, heads, MLP width.
ENCODER_SIZES = {
    "vit_s": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "vit_b": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "vit_l": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
    "dasheng_0.6b": dict(width=1280, depth=32, num_heads=16, mlp_dim=5120),
    "dasheng_1.2b": dict(width=1536, depth=40, num_heads=24, mlp_dim=6144),
}


# Deep encoders compile one scanned block instead of 24-40 unrolled ones.
SCANNED_SIZES = ("vit_l", "dasheng_0.6b", "dasheng_1.2b")


# Predictor / decoder shapes (docs/models.md).
PREDICTOR_SIZES = {
    "audio_jepa": dict(width=512, depth=8, num_heads=16, mlp_dim=2048),
    "ajepa": dict(width=512, depth=16, num_heads=16, mlp_dim=2048),
    "dec_25m": dict(width=512, depth=8, num_heads=16, mlp_dim=2048),
    "dec_56m": dict(width=768, depth=8, num_heads=24, mlp_dim=3072),
    "audiomae": dict(width=512, depth=16, num_heads=16, mlp_dim=2048),
}


# Fine-tuning on a labelled task (jepa_jax/evaluation/finetune.py): AudioMAE's recipe
# (AS-20K / ESC-50 column: base lr 1e-3, AdamW (0.9, 0.999), wd 1e-4, layer decay 0.75,
# time / frequency token dropping 0.2, mixup 0.5) with A-JEPA's regularised masking (10 % of
# keys per layer), 60 epochs (4 warmup) shortened to 20 (2) for a CPU.
FINETUNE_DEFAULTS = dict(
    epochs=20, warmup_epochs=2.0, batch_size=32,
    base_lr=1e-3,        # lr = base_lr * batch_size / 256, warmup then cosine to 0
    b1=0.9, b2=0.999, weight_decay=1e-4,
    layer_decay=0.75,    # encoder layer i's lr x layer_decay ** (L + 1 - i); head x 1
    mixup=0.5,           # Beta(mixup, mixup) mixing of spectrograms and targets; 0 = off
    drop_freq=0.2,       # fraction of frequency rows of the token grid dropped; 0 = off
    drop_time=0.2,       # fraction of time columns of the token grid dropped; 0 = off
    rm_rate=0.1,         # regularised masking: keys dropped per layer; 0 = off
    balanced_sampling=True,  # multi-label tasks: sample by summed inverse class counts
    seeds=3, seed=0)     # seeds seed, seed + 1, ...; each runs every fold


def finetune_config(**overrides) -> ml_collections.ConfigDict:
  """The `finetune` section: FINETUNE_DEFAULTS with `overrides`."""
  return ml_collections.ConfigDict({**FINETUNE_DEFAULTS, **overrides})


def base_config(objective: str, frontend: str, frames: int) -> ml_collections.ConfigDict:
  """The fields every recipe has, with ViT-B/16 and neutral defaults; a recipe file
  overrides what its paper sets."""
  c = ml_collections.ConfigDict()
  c.objective = objective
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      dir="",                  # prepared mel shards; "" = the embedded synthetic corpus
      frontend=frontend, frames=frames,
      normalization="dataset",  # mean/std measured on the shards; 'recipe': its constants
      gain_jitter_db=0.0, worker_count=0,
      # Roll each clip by a uniform random offset of its frames before padding and
      # cropping (A-JEPA's cyclic 10 s segment from a random start): content wraps around,
      # the padding stays at the end (data_pipelines/pipeline.py crop).
      cyclic_crop=False,
      # Classes held out of training, 'task:name,name;task:name' (the records' label maps):
      # clips whose label is one of them are never read, e.g. to test on unseen classes.
      exclude_classes=""))
  c.data.synthetic = ml_collections.ConfigDict(dict(num_pretrain=3000, num_probe=1200, seed=0))
  c.model = ml_collections.ConfigDict(dict(
      patch_shape=(16, 16), positions="sincos", dtype="float32",
      attention_impl="auto",  # attention.IMPLEMENTATIONS; 'auto' picks per backend and length
      scan_layers=False,  # one nn.scan over the blocks (params stacked on a 'layers' axis)
      # vit.REMAT: recompute block activations in the backward pass; 'auto': only where the
      # step would not fit in the devices' memory otherwise (training/fit.py)
      remat="auto",
      # A learned class token before the patches, in attention, dropped from the output
      # (models/vit.Encoder): off in every recipe; imported AudioMAE / M2D encoders have it.
      class_token=False,
      **ENCODER_SIZES["vit_b"]))
  c.optim = ml_collections.ConfigDict(dict(
      base_lr=3e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05, clip_norm=0.0,
      warmup_epochs=1.0, end_lr_ratio=0.0,
      layer_decay=1.0,    # encoder layer i's lr x layer_decay ** (L + 1 - i); 1 = off
      frozen_layers=0))   # encoder layers 0 (embedding) .. frozen_layers - 1 stay fixed
  c.train = ml_collections.ConfigDict(dict(
      batch_size=256,     # the global batch of one update (the lr scales with it)
      # Gradient accumulation: a step runs its batch as micro_batches pieces in turn and
      # averages their gradients into one update, holding the activations of
      # batch_size / micro_batches examples. BatchNorm statistics, in-batch negatives
      # (uamix) and mixing partners then come from one micro-batch. 'auto': the fewest
      # that fit in the devices' memory (training/fit.py); an integer or 'auto' (the
      # field takes both, hence a reference of any type).
      micro_batches=ml_collections.FieldReference("auto", field_type=object),
      epochs=100.0, log_every=100, checkpoint_every=2000, keep_checkpoints=3))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
  # Several processes (hosts) on jax.distributed (jepa_jax/parallel/distributed.py).
  # Unset fields fall back to $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES,
  # $JAX_PROCESS_ID; all unset, jax detects a TPU / SLURM / MPI cluster, and without one
  # the run is a single process.
  c.distributed = ml_collections.ConfigDict(dict(
      coordinator_address="",  # host:port of process 0; "" = unset
      num_processes=0,         # 0 = unset
      process_id=-1))          # this process, 0 .. num_processes - 1; -1 = unset
  c.sharding_rules = (
      ("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "model"),
      ("heads", "model"), ("kv", None), ("length", None), ("patch", None),
      ("layers", None))   # the stacked axis of scanned blocks stays whole on every device
  # Start-up check (mesh.check_replicated): on a mesh with fsdp or model > 1, a train-state
  # leaf over replicated_mib MiB left whole on every device (no rule splits it) is warned
  # about, or stops the run when fail is True.
  c.sharding_check = ml_collections.ConfigDict(dict(replicated_mib=4.0, fail=False))
  # Linear probe after training on the embedded corpus's held-out tasks, and the frozen
  # protocols of jepa_jax.evaluate (evaluation/frozen.py). `linear` is EVAR's linear
  # evaluation (nttcslab/eval-audio-repr): lr = its lr_lineareval for the encoder's family
  # (config/m2d.yaml: 3e-5 for M2D-like ViTs, as this library's patch ViTs; 3e-4 for the
  # others, recipes set theirs), up to 200 epochs (lineareval.py), patience 20
  # (early_stop_epochs), batch 200 (torch_mlp_clf2.py: min(200, n)), seeds 3
  # (2pass_lineareval.py repeat=3). `linear_validated` picks the lr of lr_grid with the
  # best mean validation score. `protocol`: the main job's ('linear' or
  # 'linear_validated').
  c.probe = ml_collections.ConfigDict(dict(
      protocol="linear_validated", lr=3e-5, lr_grid=PROBE_LR_GRID, seeds=3,
      max_epochs=200, patience=20, batch_size=200, chunk_batch=64))
  c.finetune = finetune_config()
  # Warm start: a workdir (or its export/) whose encoder this run starts from; "" = none.
  c.init_from = ""
  return c


def set_encoder_size(c: ml_collections.ConfigDict, size: str) -> None:
  if size not in ENCODER_SIZES:
    raise ConfigError(f"unknown encoder size {size!r}; known: {sorted(ENCODER_SIZES)}")
  c.model.update(ENCODER_SIZES[size])
  c.model.scan_layers = size in SCANNED_SIZES


def predictor_config(size: str | dict, layout: str, attention: str = "global",
                     window: tuple[int, int] = (4, 4), shift: tuple[int, int] = (0, 2),
                     positions: str = "sincos", block: str = "prenorm"
                     ) -> ml_collections.ConfigDict:
  """A predictor / decoder section. `layout`: 'queries' (context + a mask token per
  target) or 'full_grid' (context restored on the grid, mask tokens elsewhere);
  `attention` 'global' or 'local' (windows of (freq, time) tokens, shifted by `shift`
  on odd blocks); `block` 'prenorm' (the encoder's pre-norm block) or 'swinv2'
  (AudioMAE's local decoder block, models/swinv2.py: post-norm, scaled cosine window
  attention, relative position bias MLP; local attention only)."""
  shape = PREDICTOR_SIZES[size] if isinstance(size, str) else size
  return ml_collections.ConfigDict(dict(
      layout=layout, attention=attention, window=dict(freq=window[0], time=window[1]),
      shift=dict(freq=shift[0], time=shift[1]), positions=positions, block=block,
      scan_layers=False, remat="auto", **shape))


PROBE_PROTOCOLS = ("linear", "linear_validated")  # what the main job's probe may run
# linear_validated's lrs: EVAR's two lr_lineareval values, 1e-3 (this library's probe lr
# before it followed EVAR's) and two above it, where the embedded corpus's small tasks
# (800 training clips) had their best validation scores
PROBE_LR_GRID = (3e-5, 3e-4, 1e-3, 3e-3, 1e-2)


# Fields that may change when a run resumes: they do not change what is computed.
RESUME_FREE = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
               "data.worker_count", "mesh", "probe", "finetune",
               "model.remat", "predictor.remat", "decoder.remat",  # memory, not values
               "model.attention_impl",  # how attention is computed (float rounding), not what
               # memory: the same global batch, schedule and data, split for another device
               # count (per-micro-batch statistics aside, see base_config)
               "train.micro_batches",
               "distributed",  # where the processes run, not what they compute
               "sharding_rules", "sharding_check")  # layout, as the mesh


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
  """Fields (outside RESUME_FREE) whose values differ between two config dicts (the saved
  one upgraded to today's fields first, see upgrade.py)."""
  def relevant(tree):
    return {k: v for k, v in _flatten(tree).items()
            if not any(k == f or k.startswith(f + ".") for f in RESUME_FREE)}
  a, b = relevant(saved), relevant(current)
  return [f"{k}: {a.get(k, '<absent>')!r} in the workdir, {b.get(k, '<absent>')!r} now"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def to_dict(config: ml_collections.ConfigDict) -> dict:
  """JSON-safe plain dict (tuples become lists, as they would after a JSON round trip)."""
  return json.loads(config.to_json())
