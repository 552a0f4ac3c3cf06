"""Unstructured masking: exact counts, exact complement, uniform over positions."""
import jax
import numpy as np
import pytest

from jepa_jax import masks


@pytest.mark.parametrize("grid,ratio", [((5, 13), 0.6), ((8, 64), 0.8), ((1, 250), 0.75)])
def test_unstructured_counts_and_complement(grid, ratio):
  n = grid[0] * grid[1]
  m = jax.jit(lambda k: masks.sample(k, 16, grid, "unstructured", target_ratio=ratio))(
      jax.random.key(0))
  n_target = int(round(n * ratio))
  assert m.target_idx.shape == (16, n_target) and m.context_idx.shape == (16, n - n_target)
  assert bool(m.target_valid.all()) and bool(m.context_valid.all())
  both = np.concatenate([np.asarray(m.context_idx), np.asarray(m.target_idx)], axis=1)
  np.testing.assert_array_equal(np.sort(both, axis=1), np.tile(np.arange(n), (16, 1)))
  assert (np.diff(np.asarray(m.target_idx), axis=1) > 0).all()  # sorted, no repeats


def test_unstructured_is_uniform_over_positions():
  grid, ratio, draws = (5, 13), 0.6, 20000
  m = masks.unstructured(jax.random.key(1), draws, grid, target_ratio=ratio)
  counts = np.bincount(np.asarray(m.target_idx).ravel(), minlength=65)
  p = 39 / 65
  sigma = np.sqrt(draws * p * (1 - p))
  assert np.abs(counts - draws * p).max() < 5 * sigma
  # Every position is also context in a matching share of samples.
  ctx = np.bincount(np.asarray(m.context_idx).ravel(), minlength=65)
  np.testing.assert_array_equal(ctx + counts, np.full(65, draws))


def test_same_key_same_masks_other_key_other_masks():
  a = masks.unstructured(jax.random.key(3), 4, (5, 13), target_ratio=0.6)
  b = masks.unstructured(jax.random.key(3), 4, (5, 13), target_ratio=0.6)
  c = masks.unstructured(jax.random.key(4), 4, (5, 13), target_ratio=0.6)
  np.testing.assert_array_equal(a.target_idx, b.target_idx)
  assert not np.array_equal(a.target_idx, c.target_idx)


def test_bad_ratio_and_unknown_strategy_are_errors():
  with pytest.raises(ValueError, match="at least one target and one context"):
    masks.unstructured(jax.random.key(0), 2, (5, 13), target_ratio=0.999)
  with pytest.raises(ValueError, match="unknown mask strategy"):
    masks.sample(jax.random.key(0), 2, (5, 13), "nope")
