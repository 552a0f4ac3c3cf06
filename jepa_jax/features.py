"""Clip embeddings from a frozen encoder, as the Audio-JEPA / EVAR linear evaluation
computes them: the clip's log-mel is cut into model-length chunks, each chunk is
encoded without masking, the frequency tokens of each time step are concatenated
(5 x 768 = 3840-d for ViT-B on 80 mels) and the result is averaged over every time
step of the clip that holds audio (padding of the last chunk is left out).
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax import patches as patches_lib
from jepa_jax import vit


def chunk(mels: list[np.ndarray], frames: int, patch_frames: int, pad_value):
  """Split each (n_mels, T) clip into chunks of `frames`.

  `pad_value`: a scalar or one value per mel bin, (n_mels, 1).
  Returns chunks (C, n_mels, frames), owner clip of each chunk (C,), and the number of
  time patches of each chunk that contain real frames (C,).
  """
  chunks, owner, cols = [], [], []
  for i, mel in enumerate(mels):
    total = mel.shape[1]
    n = max(1, math.ceil(total / frames))
    padded = np.full((mel.shape[0], n * frames), pad_value, np.float32)
    padded[:, :total] = mel
    for j in range(n):
      chunks.append(padded[:, j * frames:(j + 1) * frames])
      owner.append(i)
      cols.append(math.ceil(max(min(frames, total - j * frames), 1) / patch_frames))
  return np.stack(chunks), np.asarray(owner), np.asarray(cols)


@functools.partial(jax.jit, static_argnums=0)
def _chunk_sums(encoder: vit.Encoder, params, chunks, cols):
  """Per chunk: sum over its real time steps of the concatenated frequency tokens."""
  tokens = encoder.apply({"params": params}, patches_lib.patchify(chunks, encoder.patch_shape))
  gf, gt = encoder.grid
  z = tokens.reshape(chunks.shape[0], gf, gt, -1).transpose(0, 2, 1, 3)
  z = z.reshape(chunks.shape[0], gt, -1).astype(jnp.float32)  # (C, time, freq * width)
  real = (jnp.arange(gt)[None, :] < cols[:, None]).astype(jnp.float32)
  return (z * real[..., None]).sum(1)


def clip_embeddings(encoder: vit.Encoder, params, mels: list[np.ndarray], frames: int,
                    pad_value, batch_size: int = 64) -> np.ndarray:
  """(num clips, freq patches * width) embeddings; one compiled shape for all clips."""
  chunks, owner, cols = chunk(mels, frames, encoder.patch_shape[1], pad_value)
  sums = np.zeros((len(mels), encoder.grid[0] * encoder.width), np.float64)
  counts = np.zeros(len(mels), np.float64)
  for start in range(0, len(chunks), batch_size):
    part = chunks[start:start + batch_size]
    part_cols = cols[start:start + batch_size]
    n = len(part)
    if n < batch_size:  # pad the last batch instead of compiling a new shape
      part = np.concatenate([part, np.zeros((batch_size - n,) + part.shape[1:], part.dtype)])
      part_cols = np.concatenate([part_cols, np.zeros(batch_size - n, part_cols.dtype)])
    out = np.asarray(_chunk_sums(encoder, params, jnp.asarray(part), jnp.asarray(part_cols)))
    np.add.at(sums, owner[start:start + n], out[:n])
    np.add.at(counts, owner[start:start + n], cols[start:start + n])
  return (sums / counts[:, None]).astype(np.float32)


def mean_logmel(mels: list[np.ndarray]) -> np.ndarray:
  """Baseline features: the clip's log-mel averaged over time (n_mels-d)."""
  return np.stack([m.mean(axis=1) for m in mels]).astype(np.float32)
