"""Fixed sin-cos positional embeddings over a (frequency, time) patch grid.

Token order everywhere in jepa_jax is frequency-major: token n sits at
(f, t) = divmod(n, grid_time). The table built here follows the same order, so
row n of the table is the embedding of token n (one PyTorch reference builds its
grid transposed relative to its tokens; this module is the single place the
order is defined, and tests pin it).
"""
import numpy as np


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  """(len(positions), dim): [sin(p * w_i), cos(p * w_i)], w_i = 10000^(-2i/dim)."""
  if dim % 2:
    raise ValueError(f"sin-cos embedding width must be even, got {dim}")
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
  angles = np.asarray(positions, np.float64)[:, None] * omega[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def grid_coordinates(grid: tuple[int, int]) -> np.ndarray:
  """(F*T, 2) integer (f, t) coordinates of each token, in token order."""
  f, t = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
  return np.stack([f.reshape(-1), t.reshape(-1)], axis=1)


def sincos_2d(dim: int, grid: tuple[int, int]) -> np.ndarray:
  """(F*T, dim) float32 table: first half encodes frequency, second half time."""
  if dim % 4:
    raise ValueError(f"2-D sin-cos embedding width must be a multiple of 4, got {dim}")
  coords = grid_coordinates(grid)
  table = np.concatenate(
      [sincos_1d(dim // 2, coords[:, 0]), sincos_1d(dim // 2, coords[:, 1])], axis=1)
  return table.astype(np.float32)
