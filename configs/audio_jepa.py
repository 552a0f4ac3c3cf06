"""Audio-JEPA (Riou et al. 2024): the paper recipe, and variants.

    configs/audio_jepa.py            ViT-B on 80 x 208 log-mel (d = 2.1 s), unstructured
                                     masking of 60 % targets, audio-domain targets,
                                     predictor 8 x 512 x 16 heads, EMA 0.99995 -> 0.99999,
                                     batch 2048, 300 epochs (20 warmup), AdamW (0.9, 0.95),
                                     lr 3e-4 x batch / 256, wd 0.05, clip 3.0 (= M2D).
    configs/audio_jepa.py:d=3.2      training crop of 3.2 s (320 frames); also d=6.4.
    configs/audio_jepa.py:size=vit_l encoder size: vit_s, vit_b (default), vit_l.
    configs/audio_jepa.py:demo       sized for a laptop CPU on the embedded corpus.

Variants combine: `configs/audio_jepa.py:demo,d=3.2`.
"""
import ml_collections

from jepa_jax import masks
from jepa_jax.config import fields

FRAMES_PER_SECOND = 100  # 10 ms hop


def frames_for(seconds: float, patch_frames: int = 16) -> int:
  """Crop length in frames, rounded to whole patches (2.1 s -> 208, 3.2 -> 320, 6.4 -> 640)."""
  return max(1, round(seconds * FRAMES_PER_SECOND / patch_frames)) * patch_frames


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = fields.parse_variant(arg, names={"demo"}, values={"d": float, "size": str})
  # 80 mels, 25 ms / 10 ms, 50-8000 Hz, ln(power + eps); 'recipe' normalisation: -7.06 / 4.20
  c = fields.base_config("jepa", "audio_jepa", frames_for(variant.get("d", 2.1)))
  fields.set_encoder_size(c, variant.get("size", "vit_b"))
  # Queries only: context + one mask token per target slot, global attention.
  c.predictor = fields.predictor_config("audio_jepa", layout="queries")

  # Table 3: mask.strategy in {unstructured, multi_block, time} x jepa.target_domain in
  # {audio, latent}; each strategy's parameters are the papers' (jepa_jax/masks/).
  c.mask = masks.default_config("unstructured")
  c.jepa = ml_collections.ConfigDict(dict(
      target_domain="audio",         # 'audio' (paper best) or 'latent' (I-JEPA)
      distance="smooth_l1",          # element-wise, beta 1; 'smooth_l1_vector' (eq. 3), 'l2'
      smooth_l1_beta=1.0,
      standardize_targets=True,      # per-token standardisation as in the released code
      standardize_eps=1e-6))
  c.ema = ml_collections.ConfigDict(dict(tau_start=0.99995, tau_end=0.99999))
  c.optim.update(base_lr=3e-4, b1=0.9, b2=0.95, weight_decay=0.05, clip_norm=3.0,
                 warmup_epochs=20.0, end_lr_ratio=0.0)
  c.train.update(batch_size=2048, epochs=300.0, log_every=100, checkpoint_every=2000)

  if variant.get("demo"):
    # Sized for 2 CPU cores: ViT-6/192, 2,250 steps of batch 32 (about 7 minutes). On this
    # budget the number of updates matters most, hence the small batch; 24 epochs clear the
    # random init by 10 points where 13 gave 8 (measured results: README "Quick start",
    # docs/results.md); the EMA schedule suits a short run (I-JEPA's).
    c.model.update(width=192, depth=6, num_heads=3, mlp_dim=768)
    c.predictor.update(width=128, depth=3, num_heads=4, mlp_dim=512)
    c.ema.update(tau_start=0.996, tau_end=1.0)
    c.optim.update(base_lr=3e-3, warmup_epochs=1.0)
    c.train.update(batch_size=32, epochs=24.0, log_every=50, checkpoint_every=500)
  return c
