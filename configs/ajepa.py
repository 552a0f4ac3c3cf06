"""A-JEPA (Fei et al. 2023, "A-JEPA: JEPA can listen"): the paper recipe, and variants.

    configs/ajepa.py             ViT-B/16 on 128 x 1024 Kaldi fbank frames (10.24 s, 8 x 64
                                 = 512 patches, AudioMAE normalisation, gain jitter +-6 dB,
                                 cyclic crops: clips rolled by a random offset first);
                                 curriculum masking (time-frequency aware blocks with
                                 probability f(s) rising from c0 = 0.01 to 1, else
                                 multi-block); latent-domain targets (the EMA encoder sees
                                 the whole spectrogram, one pass for every mask set);
                                 predictor 16 x 512 on the full restored grid with local
                                 4 x 4 windows shifted by 2 time patches on odd blocks, in
                                 AudioMAE's local decoder blocks (Swin V2: post-norm,
                                 scaled cosine attention, relative position bias MLP); L2
                                 on standardised targets; batch 512, 24 epochs, lr 2e-4.
    configs/ajepa.py:sets=4      multi-mask: 4 mask sets per clip share the target pass.
    configs/ajepa.py:global      predictor with global attention instead of windows (and
                                 pre-norm ViT blocks, as AudioMAE's global decoder).
    configs/ajepa.py:size=vit_l  encoder size: vit_s, vit_b (default), vit_l.
    configs/ajepa.py:demo        sized for a laptop CPU on the embedded corpus.

Not given by the paper (choices documented here): warmup (3 epochs, AudioMAE's), AdamW
betas (0.9, 0.95) and weight decay 0.05 (I-JEPA / M2D), EMA 0.996 -> 1.0 (I-JEPA).
"""
import ml_collections

from jepa_jax import masks
from jepa_jax.config import fields


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = fields.parse_variant(arg, names={"demo", "global"},
                                 values={"sets": int, "size": str})
  c = fields.base_config("jepa", "ajepa", frames=1024)
  c.data.normalization = "recipe"   # AudioMAE: (x + 4.27) / (2 x 4.57)
  c.data.gain_jitter_db = 6.0
  # "a 10-second segment extracted cyclically from a random start time": AudioMAE's roll
  # (its dataset.py _roll_mag_aug) of the clip before padding, here over frames.
  c.data.cyclic_crop = True
  fields.set_encoder_size(c, variant.get("size", "vit_b"))
  # The predictor follows AudioMAE's local decoder (decoder_mode=1): Swin V2 blocks.
  c.predictor = fields.predictor_config(
      "ajepa", layout="full_grid", attention="global" if variant.get("global") else "local",
      window=(4, 4), shift=(0, 2), block="prenorm" if variant.get("global") else "swinv2")

  c.mask = masks.default_config("curriculum", num_sets=variant.get("sets", 1))
  c.jepa = ml_collections.ConfigDict(dict(
      target_domain="latent", distance="l2", smooth_l1_beta=1.0,
      standardize_targets=True,      # MSE against patch-normalised targets
      standardize_eps=1e-6))
  c.ema = ml_collections.ConfigDict(dict(tau_start=0.996, tau_end=1.0))
  # lr 2e-4 at batch 512 under the linear scaling rule lr = base_lr x batch / 256.
  c.optim.update(base_lr=1e-4, b1=0.9, b2=0.95, weight_decay=0.05, clip_norm=0.0,
                 warmup_epochs=3.0, end_lr_ratio=0.0)
  c.train.update(batch_size=512, epochs=24.0)

  if variant.get("demo"):
    # 128 x 128 frames = 8 x 8 patches, which 4 x 4 windows tile; 4,875 steps of batch 32,
    # sized for 2 CPU cores. Choices (measured results: README "Recipes and models", and
    # docs/results.md "A-JEPA demo"):
    # - the corpus's own mean / std: AudioMAE's AudioSet constants leave this corpus's
    #   inputs at a small std, where the fixed sin-cos positions dominate the first layer's
    #   token variance and the embeddings lose effective rank;
    # - 'time' removal: three crosses on 8 frequency rows leave little context;
    # - lr 3e-3 and 52 epochs: the block masks learn slowly here (unstructured masks learn
    #   faster on this corpus).
    c.data.frames = 128
    c.data.normalization = "dataset"
    c.mask.time_frequency_aware["removal"] = "time"
    c.model.update(width=192, depth=6, num_heads=3, mlp_dim=768)
    c.predictor.update(width=128, depth=4, num_heads=4, mlp_dim=512)
    c.optim.update(base_lr=3e-3, warmup_epochs=1.0)
    c.train.update(batch_size=32, epochs=52.0, log_every=50, checkpoint_every=500)
  return c
