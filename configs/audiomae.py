"""AudioMAE-style masked autoencoder (Huang et al. 2022; method reference: docs/).

    configs/audiomae.py              ViT-B/16 on 128 x 1024 Kaldi fbank frames (512
                                     patches, AudioMAE normalisation); 80 % of the patches
                                     masked at random; decoder 16 x 512 on the full grid
                                     with Swin-style 4 x 4 windows shifted (time 2, freq 0)
                                     on odd blocks, in AudioMAE's Swin V2 blocks (post-norm,
                                     scaled cosine attention, relative position bias
                                     MLP: models/swinv2.py); MSE on masked patches against
                                     norm-pix targets; batch 512, 33 epochs (3 warmup), lr 4e-4,
                                     weight decay 1e-4.
    configs/audiomae.py:global       the global 8-block pre-norm decoder (Dec-25M) instead
                                     (AudioMAE's decoder_mode=0).
    configs/audiomae.py:lines        time-and-frequency line masking instead of random.
    configs/audiomae.py:size=vit_l   encoder size: vit_s, vit_b (default), vit_l.
    configs/audiomae.py:demo         sized for a laptop CPU on the embedded corpus.
"""
import ml_collections

from jepa_jax import masks
from jepa_jax.config import fields


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = fields.parse_variant(arg, names={"demo", "global", "lines"},
                                 values={"size": str})
  c = fields.base_config("mae", "ajepa", frames=1024)  # AudioMAE's fbank = A-JEPA's
  c.data.normalization = "recipe"
  fields.set_encoder_size(c, variant.get("size", "vit_b"))
  if variant.get("global"):
    c.decoder = fields.predictor_config("dec_25m", layout="full_grid")
  else:
    c.decoder = fields.predictor_config("audiomae", layout="full_grid", attention="local",
                                        window=(4, 4), shift=(0, 2), block="swinv2")
  if variant.get("lines"):
    c.mask = masks.default_config("time_and_frequency")
  else:
    c.mask = masks.default_config("unstructured", unstructured=dict(target_ratio=0.8))
  c.mae = ml_collections.ConfigDict(dict(norm_pix_eps=1e-6, input_norm="none"))
  # lr 4e-4 at batch 512 = 2e-4 x batch / 256.
  c.optim.update(base_lr=2e-4, b1=0.9, b2=0.95, weight_decay=1e-4, clip_norm=0.0,
                 warmup_epochs=3.0, end_lr_ratio=0.0)
  c.train.update(batch_size=512, epochs=33.0)

  if variant.get("demo"):
    c.data.frames = 256  # 8 x 16 patches
    c.model.update(width=192, depth=6, num_heads=3, mlp_dim=768)
    c.decoder.update(width=128, depth=4, num_heads=4, mlp_dim=512)
    # Sized for 2 CPU cores: 938 steps of batch 32 (measured results, benchmarks/demos.py:
    # README "Recipes and models", docs/results.md).
    c.optim.update(base_lr=1.5e-3, warmup_epochs=1.0)
    c.train.update(batch_size=32, epochs=10.0, log_every=50, checkpoint_every=500)
  return c
