"""Augmentations of normalised log-mel batches on the device, vectorised over the batch:
the chain that makes the positive view e+ of uaMix-MAE (the paper does not list its own).

In order: another clip of the batch mixed in as background (BYOL-A's log-mixup-exp,
Niizumi et al. 2021: the sum of the two sounds' powers, the other at a share lambda ~
U(0, background)), so the background and any second event are no cue to a clip's
identity; a circular time shift (keeps every frame and the static shape), a gain offset
(a constant in the log domain), Gaussian noise, then SpecAugment frequency and time masks
(Park et al. 2019) filled with 0, the normalised mean. Amounts are in normalised log-mel
units (0.15 is about 6 dB for the AudioMAE recipe, whose ln-power scale is 2 x 4.57) and
fractions of the clip, so one chain fits every front end. Each step is off at 0.
"""
import jax
import jax.numpy as jnp
import ml_collections

from data_pipelines import frontends

FIELDS = ("background", "time_shift", "gain", "noise", "freq_masks", "freq_mask", "time_masks",
          "time_mask")


def default_config(**overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({**dict(
      background=0.4,    # share of the other clip's power, up to (BYOL-A's 0.4)
      time_shift=0.25,   # roll by up to +-25 % of the frames
      # offset ~ U(-gain, gain): +-20 dB for the AudioMAE recipe, as wide as the spread of
      # levels in a corpus, so loudness is no cue to a clip's identity (configs/uamix.py)
      gain=0.5,
      noise=0.05,        # additive N(0, noise^2)
      # SpecAugment frequency bands: none by default, as they hide the harmonics that
      # carry pitch, and a contrastive task then learns to do without them (uaMix demo:
      # held-out pitch few-shot gained more without them; docs/results.md)
      freq_masks=0,
      freq_mask=0.15,    # ... each up to 15 % of the mel bins wide, when there are some
      time_masks=2,      # time bands ...
      time_mask=0.1),    # ... each up to 10 % of the frames wide
      **overrides})


def config_errors(a: ml_collections.ConfigDict, section: str) -> list[str]:
  errors = [f"{section}.{n} is missing" for n in FIELDS if n not in a]
  errors += [f"{section}: unknown field {n!r}; known: {FIELDS}" for n in a if n not in FIELDS]
  if errors:
    return errors
  if not 0 <= a.background < 1:
    errors.append(f"{section}.background is the largest share of another clip's power, in "
                  f"[0, 1), got {a.background}")
  for name in ("time_shift", "freq_mask", "time_mask"):
    if not 0 <= a[name] <= 1:
      errors.append(f"{section}.{name} is a fraction of the clip in [0, 1], got {a[name]}")
  for name in ("gain", "noise"):
    if a[name] < 0:
      errors.append(f"{section}.{name} must be >= 0 (0 = off), got {a[name]}")
  for name in ("freq_masks", "time_masks"):
    if not (isinstance(a[name], int) and a[name] >= 0):
      errors.append(f"{section}.{name} must be an integer >= 0, got {a[name]!r}")
  return errors


def ln_power_scale(frontend: str, normalization: str) -> float:
  """ln(power) per unit of the model input: the front end's log unit times the recipe's
  normalisation divisor. Only the recipe's constants are known before the data is read."""
  if normalization != "recipe":
    raise ValueError(f"the background mix needs data.normalization 'recipe' (its scale is "
                     f"known up front), got {normalization!r}; or set background to 0")
  f = frontends.get_frontend(frontend)
  return f.ln_power_per_unit * f.norm_std


def time_shift(rng: jax.Array, mel: jnp.ndarray, max_fraction: float) -> jnp.ndarray:
  """Each clip rolled along time by an integer in [-m, m], m = round(max_fraction * T)."""
  b, f, t = mel.shape
  m = round(max_fraction * t)
  if m == 0:
    return mel
  shift = jax.random.randint(rng, (b,), -m, m + 1)
  src = (jnp.arange(t)[None, :] - shift[:, None]) % t  # output frame n <- frame n - shift
  return jnp.take_along_axis(mel, jnp.broadcast_to(src[:, None, :], mel.shape), axis=2)


def band_mask(rng: jax.Array, batch: int, size: int, count: int, max_fraction: float
              ) -> jnp.ndarray:
  """(batch, size) bool: the union of `count` bands per clip, each of a width uniform in
  [0, round(max_fraction * size)] and at a uniform position inside the axis."""
  w_max = round(max_fraction * size)
  if count == 0 or w_max == 0:
    return jnp.zeros((batch, size), bool)
  k_width, k_start = jax.random.split(rng)
  width = jax.random.randint(k_width, (batch, count), 0, w_max + 1)
  start = jnp.floor(jax.random.uniform(k_start, (batch, count)) * (size - width + 1))
  pos = jnp.arange(size)[None, None, :]
  inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])
  return inside.any(axis=1)


def background_mix(rng: jax.Array, mel: jnp.ndarray, max_share: float, ln_scale: float
                   ) -> jnp.ndarray:
  """Clip i plus the sound of clip (i + r) mod B (r ~ U{1..B-1}, one draw per batch, so
  never itself) at power share lambda_i ~ U(0, max_share):
  log((1 - lambda) e^(s x) + lambda e^(s y)) / s, s = ln_scale, the ln-power of one
  normalised unit (the normalisation's offset cancels)."""
  b = mel.shape[0]
  if max_share == 0 or b < 2:
    return mel
  k_roll, k_share = jax.random.split(rng)
  other = jnp.roll(mel, jax.random.randint(k_roll, (), 1, b), axis=0)
  share = jax.random.uniform(k_share, (b, 1, 1), jnp.float32, 0.0, max_share)
  mixed = jnp.logaddexp(jnp.log1p(-share) + ln_scale * mel.astype(jnp.float32),
                        jnp.log(share) + ln_scale * other.astype(jnp.float32)) / ln_scale
  return mixed.astype(mel.dtype)


def apply(rng: jax.Array, mel: jnp.ndarray, a: ml_collections.ConfigDict,
          ln_scale: float | None = None) -> jnp.ndarray:
  """The augmentation chain on a (B, F, T) batch; independent draws per clip. `ln_scale`:
  the ln-power of one normalised unit (ln_power_scale), needed by the background mix."""
  k_mix, k_shift, k_gain, k_noise, k_freq, k_time = jax.random.split(rng, 6)
  b, f, t = mel.shape
  x = mel
  if a.background > 0:
    if ln_scale is None:
      raise ValueError("augment.background mixes powers: pass ln_scale (ln_power_scale)")
    x = background_mix(k_mix, x, a.background, ln_scale)
  x = time_shift(k_shift, x, a.time_shift)
  if a.gain > 0:
    x = x + jax.random.uniform(k_gain, (b, 1, 1), x.dtype, -a.gain, a.gain)
  if a.noise > 0:
    x = x + a.noise * jax.random.normal(k_noise, x.shape, x.dtype)
  freq = band_mask(k_freq, b, f, a.freq_masks, a.freq_mask)
  time = band_mask(k_time, b, t, a.time_masks, a.time_mask)
  return jnp.where(freq[:, :, None] | time[:, None, :], jnp.zeros((), x.dtype), x)
