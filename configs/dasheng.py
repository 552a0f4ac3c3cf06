"""Dasheng-style masked autoencoder (Dinkel et al. 2024, "Scaling up masked audio encoder
learning"; method reference: docs/).

    configs/dasheng.py           Dasheng-Base: ViT-B (768 x 12) on 64-mel dB spectrograms,
                                 10 s crops (1000 frames = 250 frame-chunk tokens of
                                 64 mels x 4 frames, 25 Hz), factorised learnable time /
                                 frequency positions, BatchNorm over mel bins in front of
                                 the encoder (loss target taken before it), grouped
                                 masking of 75 % of aligned token pairs, decoder Dec-25M
                                 (8 x 512) on the full grid, norm-pix MSE; batch 256,
                                 lr 3e-4, wd 0.01, 3 warmup epochs, cosine to 10 %.
    configs/dasheng.py:0.6b      32 x 1280 x 16 heads (the released checkpoint's shape).
    configs/dasheng.py:1.2b      40 x 1536 x 24 heads; lr 2e-4, wd 0 (the paper's).
    configs/dasheng.py:dec56m    the 8 x 768 decoder (Dec-56M) instead of Dec-25M.
    configs/dasheng.py:demo      sized for a laptop CPU on the embedded corpus.

Not reproduced: 8-bit AdamW (plain AdamW here; the update is the same up to quantisation)
and the paper's 15,000-batch "epochs" (train.epochs counts passes over the data).
AdamW betas are not given: MAE's (0.9, 0.95).
"""
import ml_collections

from jepa_jax import masks
from jepa_jax.config import fields


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = fields.parse_variant(arg, names={"demo", "base", "0.6b", "1.2b", "dec56m"},
                                 values={})
  if sum(bool(variant.get(v)) for v in ("base", "0.6b", "1.2b")) > 1:
    raise fields.ConfigError("pick one Dasheng size of base, 0.6b, 1.2b")
  c = fields.base_config("mae", "dasheng", frames=1000)
  c.data.normalization = "recipe"
  size = "dasheng_0.6b" if variant.get("0.6b") else \
      "dasheng_1.2b" if variant.get("1.2b") else "vit_b"
  fields.set_encoder_size(c, size)
  c.model.update(patch_shape=(64, 4), positions="learned")
  c.decoder = fields.predictor_config("dec_56m" if variant.get("dec56m") else "dec_25m",
                                      layout="full_grid", positions="learned")
  c.mask = masks.default_config("grouped")  # ratio 0.75, groups of 2 tokens (80 ms)
  c.mae = ml_collections.ConfigDict(dict(norm_pix_eps=1e-6, input_norm="batch_norm"))
  c.optim.update(base_lr=3e-4, b1=0.9, b2=0.95, weight_decay=0.01, clip_norm=0.0,
                 warmup_epochs=3.0, end_lr_ratio=0.1)
  if variant.get("1.2b"):
    c.optim.update(base_lr=2e-4, weight_decay=0.0)
  c.train.update(batch_size=256, epochs=100.0)
  c.probe.lr = 3e-4  # EVAR's lr_lineareval for Dasheng (its config/dasheng.yaml)

  if variant.get("demo"):
    c.data.frames = 400  # 4 s clips: 100 tokens
    c.model.update(width=192, depth=6, num_heads=3, mlp_dim=768)
    c.decoder.update(width=128, depth=4, num_heads=4, mlp_dim=512)
    # Sized for 2 CPU cores: 938 steps of batch 32 (measured results, benchmarks/demos.py:
    # README "Recipes and models", docs/results.md).
    c.optim.update(base_lr=1.5e-3, warmup_epochs=1.0)
    c.train.update(batch_size=32, epochs=10.0, log_every=50, checkpoint_every=500)
  return c
