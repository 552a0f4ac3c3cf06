"""Spectrogram <-> patch tokens, frequency-major (see positions.py).

A patch is `patch_shape` = (mel bins, frames): 16 x 16 squares for Audio-JEPA, A-JEPA
and AudioMAE; all 64 mel bins x 4 frames ("frame chunks", 25 tokens/s) for Dasheng.
"""
import jax.numpy as jnp


def patch_grid(input_shape: tuple[int, int], patch_shape: tuple[int, int]) -> tuple[int, int]:
  """(frequency patches, time patches) for a (mels, frames) input."""
  mels, frames = input_shape
  pf, pt = patch_shape
  if mels % pf or frames % pt:
    raise ValueError(
        f"input of {mels} mels x {frames} frames is not divisible into {pf} x {pt} "
        f"patches; choose frames as a multiple of {pt} (and mels of {pf})")
  return mels // pf, frames // pt


def patchify(mel: jnp.ndarray, patch_shape: tuple[int, int]) -> jnp.ndarray:
  """(B, F, T) -> (B, F/pf * T/pt, pf*pt); token n = (f, t) = divmod(n, T/pt), values
  in (mel, frame) row-major order."""
  b, f, t = mel.shape
  pf, pt = patch_shape
  x = mel.reshape(b, f // pf, pf, t // pt, pt)
  x = x.transpose(0, 1, 3, 2, 4)  # (B, Gf, Gt, pf, pt)
  return x.reshape(b, (f // pf) * (t // pt), pf * pt)


def unpatchify(tokens: jnp.ndarray, grid: tuple[int, int],
               patch_shape: tuple[int, int]) -> jnp.ndarray:
  """Inverse of patchify: (B, Gf*Gt, pf*pt) -> (B, Gf*pf, Gt*pt)."""
  b = tokens.shape[0]
  gf, gt = grid
  pf, pt = patch_shape
  x = tokens.reshape(b, gf, gt, pf, pt).transpose(0, 1, 3, 2, 4)
  return x.reshape(b, gf * pf, gt * pt)


def gather_tokens(x: jnp.ndarray, idx: jnp.ndarray) -> jnp.ndarray:
  """(B, N, C), (B, M) -> (B, M, C): the tokens at positions `idx` of each sample."""
  return jnp.take_along_axis(x, idx[..., None], axis=1)
