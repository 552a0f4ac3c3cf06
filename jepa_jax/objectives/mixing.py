"""Unsupervised mixing of a log-mel batch with virtual labels (uaMix-MAE, eq. 2-3).

Clip i is mixed with clip j = partner[i] (a random permutation; a fixed point mixes a clip
with itself, which is harmless: its label is then v_i). lambda ~ Beta(alpha, alpha) per
clip. Modes:
  'time'      T-CutMix: a full-frequency time box of nominal width w = T side(lambda),
              starting at s ~ U{0..T-1}, clipped to the clip, is copied from clip j;
  'time_freq' TF-CutMix: the same rule on both axes (a box of both sides);
  'mixup'     m = lambda e_i + (1 - lambda) e_j (the paper's "MixUp + LS" ablation);
  'none'      no mixing (lambda = 1).
side(lambda) is sqrt(1 - lambda) ('sqrt', the paper) or 1 - lambda ('linear'). Box sides
are whole frames / mel bins. A clipped box replaces less than its nominal share, so the
labels use the effective lambda = 1 - (box area) / (clip area), never the sampled one.
"""
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

MODES = ("time", "time_freq", "mixup", "none")
WIDTH_RULES = ("sqrt", "linear")


@flax.struct.dataclass
class Mix:
  mel: jnp.ndarray      # (B, F, T) mixed clips m_ij
  lam: jnp.ndarray      # (B,) effective share of clip i
  partner: jnp.ndarray  # (B,) j
  box: jnp.ndarray      # (B, 4) int freq start, end, time start, end (CutMix; else 0)
  sampled: jnp.ndarray  # (B,) lambda as drawn from Beta(alpha, alpha)


def config_errors(m: ml_collections.ConfigDict, section: str) -> list[str]:
  errors = []
  if m.mode not in MODES:
    errors.append(f"{section}.mode must be one of {MODES}, got {m.mode!r}")
  if m.width_rule not in WIDTH_RULES:
    errors.append(f"{section}.width_rule must be one of {WIDTH_RULES}, got {m.width_rule!r}")
  if not m.alpha > 0:
    errors.append(f"{section}.alpha is the Beta(alpha, alpha) parameter, > 0, got {m.alpha}")
  if not 0 <= m.label_smoothing < 1:
    errors.append(f"{section}.label_smoothing must be in [0, 1), got {m.label_smoothing}")
  return errors


def side(lam: jnp.ndarray, rule: str) -> jnp.ndarray:
  """Box side as a fraction of its axis for a sampled lambda."""
  return jnp.sqrt(1.0 - lam) if rule == "sqrt" else 1.0 - lam


def box_interval(rng: jax.Array, fraction: jnp.ndarray, size: int) -> tuple:
  """(start, end) ints: start ~ U{0..size-1}, end = min(start + round(fraction size), size)."""
  start = jax.random.randint(rng, fraction.shape, 0, size)
  width = jnp.round(fraction * size).astype(jnp.int32)
  return start, jnp.minimum(start + width, size)


def convex(a: jnp.ndarray, partner: jnp.ndarray, lam: jnp.ndarray) -> jnp.ndarray:
  """lam * a + (1 - lam) * a[partner], lam (B,) broadcast over a's trailing axes (MixUp of
  inputs and of targets alike)."""
  lam = lam.reshape((-1,) + (1,) * (a.ndim - 1)).astype(a.dtype)
  return lam * a + (1 - lam) * a[partner]


def sample(rng: jax.Array, mel: jnp.ndarray, m: ml_collections.ConfigDict) -> Mix:
  """Mix a (B, F, T) batch as `m.mode` says."""
  b, f, t = mel.shape
  k_perm, k_lam, k_time, k_freq = jax.random.split(rng, 4)
  if m.mode == "none":
    return Mix(mel, jnp.ones((b,), mel.dtype), jnp.arange(b), jnp.zeros((b, 4), jnp.int32),
               jnp.ones((b,)))
  partner = jax.random.permutation(k_perm, b)
  lam = jax.random.beta(k_lam, m.alpha, m.alpha, (b,))
  if m.mode == "mixup":
    box = jnp.zeros((b, 4), jnp.int32)
    return Mix(convex(mel, partner, lam), lam.astype(mel.dtype), partner, box, lam)
  frac = side(lam, m.width_rule)
  t0, t1 = box_interval(k_time, frac, t)
  if m.mode == "time_freq":
    f0, f1 = box_interval(k_freq, frac, f)
  else:
    f0, f1 = jnp.zeros((b,), jnp.int32), jnp.full((b,), f, jnp.int32)
  rows, frames = jnp.arange(f)[None, :], jnp.arange(t)[None, :]
  in_f = (rows >= f0[:, None]) & (rows < f1[:, None])
  in_t = (frames >= t0[:, None]) & (frames < t1[:, None])
  inside = in_f[:, :, None] & in_t[:, None, :]
  effective = 1.0 - ((f1 - f0) * (t1 - t0)).astype(jnp.float32) / (f * t)
  return Mix(jnp.where(inside, mel[partner], mel), effective.astype(mel.dtype), partner,
             jnp.stack([f0, f1, t0, t1], axis=1), lam)


def soft_labels(lam: jnp.ndarray, partner: jnp.ndarray, smoothing: float = 0.0
                ) -> jnp.ndarray:
  """(B, B) y_ij = lambda v_i + (1 - lambda) v_j, then (1 - eps) y + eps / B."""
  b = lam.shape[0]
  lam = lam.astype(jnp.float32)[:, None]
  y = lam * jnp.eye(b) + (1.0 - lam) * jax.nn.one_hot(partner, b)
  return (1.0 - smoothing) * y + smoothing / b
