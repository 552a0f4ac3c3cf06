"""The positional grid matches the token order; patchify is that order."""
import numpy as np
import pytest

from jepa_jax.models import patches, positions


def test_sincos_1d_matches_formula():
  table = positions.sincos_1d(8, np.array([0.0, 3.0]))
  w = [1.0, 10000 ** -0.25, 10000 ** -0.5, 10000 ** -0.75]
  expected = [np.sin(3 * wi) for wi in w] + [np.cos(3 * wi) for wi in w]
  np.testing.assert_allclose(table[1], expected, rtol=1e-12)
  np.testing.assert_allclose(table[0], [0, 0, 0, 0, 1, 1, 1, 1])


def test_2d_table_row_is_frequency_then_time_of_that_token():
  grid = (5, 13)
  table = positions.sincos_2d(16, grid)
  assert table.shape == (65, 16)
  for n in (0, 1, 12, 13, 27, 64):
    f, t = divmod(n, grid[1])  # frequency-major token order
    expected = np.concatenate([positions.sincos_1d(8, np.array([f]))[0],
                               positions.sincos_1d(8, np.array([t]))[0]])
    np.testing.assert_allclose(table[n], expected, rtol=1e-6, atol=1e-7)
  # The first half only changes with frequency: tokens in one frequency row share it.
  np.testing.assert_array_equal(table[13:26, :8], np.repeat(table[13:14, :8], 13, 0))


@pytest.mark.parametrize("shape", [(4, 4), (8, 3)])  # square; Dasheng-like frame chunk
def test_patchify_token_order_matches_position_grid(shape):
  pf, pt = shape
  mel = np.arange(2 * 8 * 12, dtype=np.float32).reshape(2, 8, 12)
  tokens = np.asarray(patches.patchify(mel, shape))
  grid = patches.patch_grid((8, 12), shape)
  assert grid == (8 // pf, 12 // pt) and tokens.shape == (2, grid[0] * grid[1], pf * pt)
  coords = positions.grid_coordinates(grid)
  for n, (f, t) in enumerate(coords):
    patch = mel[1, f * pf:(f + 1) * pf, t * pt:(t + 1) * pt]
    np.testing.assert_array_equal(tokens[1, n], patch.reshape(-1))
  np.testing.assert_array_equal(np.asarray(patches.unpatchify(tokens, grid, shape)), mel)


def test_patch_grid_rejects_indivisible_input():
  with pytest.raises(ValueError, match="multiple of 16"):
    patches.patch_grid((80, 200), (16, 16))
  with pytest.raises(ValueError, match="multiple of 4"):
    patches.patch_grid((64, 1001), (64, 4))
  with pytest.raises(ValueError, match="multiple of 4"):
    positions.sincos_2d(10, (2, 2))
