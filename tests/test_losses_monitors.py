"""Distances, masked means and collapse monitors against hand-computed values."""
import jax.numpy as jnp
import numpy as np

from jepa_jax.objectives import losses, monitors


def test_smooth_l1_elementwise_hand_values():
  pred = jnp.array([[0.0, 0.0, 0.0, 0.0]])
  target = jnp.array([[0.5, -2.0, 1.0, 0.0]])
  # 0.5*0.25 = 0.125 ; 2 - 0.5 = 1.5 ; |1| is not < 1 -> 1 - 0.5 = 0.5 ; 0
  np.testing.assert_allclose(losses.smooth_l1(pred, target), [(0.125 + 1.5 + 0.5) / 4])
  np.testing.assert_allclose(losses.smooth_l1(pred, target, beta=2.0),
                             [(0.0625 + 1.0 + 0.25) / 4])


def test_smooth_l1_vector_switches_on_l1_norm():
  small = losses.smooth_l1_vector(jnp.zeros(2), jnp.array([0.3, 0.4]))  # L1 0.7 < 1
  np.testing.assert_allclose(small, 0.5 * 0.25, rtol=1e-6)
  large = losses.smooth_l1_vector(jnp.zeros(2), jnp.array([0.6, -0.8]))  # L1 1.4
  np.testing.assert_allclose(large, 1.4 - 0.5, rtol=1e-6)


def test_l2_and_standardize():
  np.testing.assert_allclose(losses.l2(jnp.zeros(3), jnp.array([1.0, 2.0, 2.0])), 3.0)
  z = losses.standardize(jnp.array([1.0, 2.0, 3.0, 6.0]))
  x = np.array([1.0, 2.0, 3.0, 6.0])
  np.testing.assert_allclose(z, (x - 3) / np.sqrt(x.var() + 1e-6), rtol=1e-5)


def test_masked_mean_is_per_sample_then_batch():
  per_token = jnp.array([[1.0, 3.0, 100.0], [2.0, 2.0, 2.0]])
  valid = jnp.array([[True, True, False], [True, True, True]])
  np.testing.assert_allclose(losses.masked_mean(per_token, valid), (2.0 + 2.0) / 2)


def test_feature_std_and_effective_rank():
  rng = np.random.default_rng(0)
  # Orthonormal directions with equal singular values: effective rank = their count.
  q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
  basis = q[:, :4]
  coeff = np.concatenate([np.eye(4), -np.eye(4)], 0)  # centred, equal energy per axis
  z = jnp.asarray(coeff @ basis.T)
  valid = jnp.ones(8, bool)
  np.testing.assert_allclose(monitors.effective_rank(z, valid), 4.0, rtol=1e-4)
  x = rng.normal(size=(50, 6)) * np.arange(1, 7)
  np.testing.assert_allclose(monitors.feature_std(jnp.asarray(x), jnp.ones(50, bool)),
                             x.std(0).mean(), rtol=1e-5)
  # Invalid rows are ignored, whatever they hold.
  padded = np.concatenate([x, np.full((5, 6), 1e6)])
  valid = np.arange(55) < 50
  np.testing.assert_allclose(monitors.feature_std(jnp.asarray(padded), jnp.asarray(valid)),
                             x.std(0).mean(), rtol=1e-5)
  collapsed = jnp.ones((10, 6))
  assert float(monitors.feature_std(collapsed, jnp.ones(10, bool))) == 0.0
