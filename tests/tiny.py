"""A tiny Audio-JEPA config for fast tests (the demo recipe, shrunk; one micro-batch, so
that tests may compile its step directly: training/fit.py resolves "auto")."""
from pathlib import Path

import jax
import numpy as np

from jepa_jax import export
from jepa_jax.config import fields

ROOT = Path(__file__).resolve().parents[1]
# The command-line overrides that shrink configs/audio_jepa.py:demo like tiny_config.
TINY_FLAGS = ["--config.data.frames=64", "--config.data.synthetic.num_pretrain=48",
              "--config.data.synthetic.num_probe=36", "--config.model.width=32",
              "--config.model.depth=1", "--config.model.num_heads=2",
              "--config.model.mlp_dim=64", "--config.predictor.width=16",
              "--config.predictor.depth=1", "--config.predictor.num_heads=2",
              "--config.predictor.mlp_dim=32", "--config.train.batch_size=8",
              "--config.train.epochs=1.0", "--config.optim.warmup_epochs=0.25",
              "--probe=false"]


def load_config_module(name: str = "audio_jepa"):
  return fields.recipe_module(ROOT / "configs" / f"{name}.py")


def tiny_config(**train):
  c = load_config_module().get_config("demo")
  c.data.frames = 64                      # 5 x 4 patches
  c.data.synthetic.update(num_pretrain=48, num_probe=36)
  c.model.update(width=32, depth=1, num_heads=2, mlp_dim=64)
  c.predictor.update(width=16, depth=1, num_heads=2, mlp_dim=32)
  c.train.update(batch_size=8, epochs=1.0, log_every=2, checkpoint_every=3, keep_checkpoints=2,
                 micro_batches=1)
  c.optim.warmup_epochs = 0.25
  c.probe.update(max_epochs=20, patience=5, chunk_batch=16)
  c.train.update(**train)
  return c


def tiny_mae_config(**train):
  """The AudioMAE demo shrunk like `tiny_config` (80-mel front end, 5 x 4 patches,
  decoder with 5 x 2 windows shifted one time patch)."""
  c = load_config_module("audiomae").get_config("demo")
  c.data.frontend = "audio_jepa"
  c.data.frames = 64
  c.data.synthetic.update(num_pretrain=48, num_probe=36)
  c.model.update(width=32, depth=1, num_heads=2, mlp_dim=64)
  c.decoder.update(width=16, depth=2, num_heads=2, mlp_dim=32, window=dict(freq=5, time=2),
                   shift=dict(freq=0, time=1))
  c.train.update(batch_size=8, epochs=1.0, log_every=2, checkpoint_every=3, keep_checkpoints=2,
                 micro_batches=1)
  c.optim.warmup_epochs = 0.25
  c.probe.update(max_epochs=20, patience=5, chunk_batch=16)
  c.train.update(**train)
  return c


def tiny_uamix_config(stage: int = 1, init_from: str = "/nonexistent", **train):
  """The uaMix demo shrunk like `tiny_mae_config` (2 blocks, so stage 2 freezes the
  embedding and block 1), starting from `init_from`."""
  module = load_config_module("uamix")
  c = module.get_config(f"stage{stage},demo")
  c.data.frontend = "audio_jepa"
  c.data.frames = 64
  c.data.synthetic.update(num_pretrain=48, num_probe=36)
  c.data.exclude_classes = ""  # the demo's held-out pitch classes would leave ~18 clips
  c.model.update(width=32, depth=2, num_heads=2, mlp_dim=64)
  c.uamix.update(queue_size=16)
  c.uamix.projector.update(hidden=16, out=8)
  c.train.update(batch_size=8, epochs=1.0, log_every=2, checkpoint_every=3, keep_checkpoints=2,
                 micro_batches=1)
  c.probe.update(max_epochs=20, patience=5, chunk_batch=16)
  c.train.update(**train)
  module.set_stage(c, stage)
  c.optim.warmup_epochs = 0.25
  c.init_from = init_from
  return c


def exported_params(workdir: Path):
  """The encoder parameters of a workdir's export, as numpy arrays."""
  return jax.tree.map(np.asarray, export.load_encoder(Path(workdir) / "export")[2])
