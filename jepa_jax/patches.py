"""Spectrogram <-> 16 x 16 patch tokens, frequency-major (see positions.py)."""
import jax.numpy as jnp


def patch_grid(input_shape: tuple[int, int], patch_size: int) -> tuple[int, int]:
  """(frequency patches, time patches) for a (mels, frames) input."""
  mels, frames = input_shape
  if mels % patch_size or frames % patch_size:
    raise ValueError(
        f"input of {mels} mels x {frames} frames is not divisible into "
        f"{patch_size} x {patch_size} patches; choose frames as a multiple of {patch_size}")
  return mels // patch_size, frames // patch_size


def patchify(mel: jnp.ndarray, patch_size: int) -> jnp.ndarray:
  """(B, F, T) -> (B, F/p * T/p, p*p); token n = (f, t) = divmod(n, T/p)."""
  b, f, t = mel.shape
  p = patch_size
  x = mel.reshape(b, f // p, p, t // p, p)
  x = x.transpose(0, 1, 3, 2, 4)  # (B, Gf, Gt, pf, pt)
  return x.reshape(b, (f // p) * (t // p), p * p)


def unpatchify(tokens: jnp.ndarray, grid: tuple[int, int], patch_size: int) -> jnp.ndarray:
  """Inverse of patchify: (B, Gf*Gt, p*p) -> (B, Gf*p, Gt*p)."""
  b = tokens.shape[0]
  gf, gt = grid
  p = patch_size
  x = tokens.reshape(b, gf, gt, p, p).transpose(0, 1, 3, 2, 4)
  return x.reshape(b, gf * p, gt * p)
