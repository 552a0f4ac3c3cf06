"""Label-free collapse monitors on a set of token embeddings.

A collapsing JEPA maps every input to nearly the same vector: the per-feature standard
deviation across tokens falls towards zero, and so does the effective rank (Roy &
Vetterli 2007: exp of the entropy of the normalised singular values).
"""
import jax.numpy as jnp


def _weighted_centered(z: jnp.ndarray, valid: jnp.ndarray):
  z = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
  w = valid.reshape(-1).astype(jnp.float32)
  n = jnp.maximum(w.sum(), 1.0)
  mean = (z * w[:, None]).sum(0) / n
  return (z - mean) * w[:, None], n


def feature_std(z: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
  """Mean over features of each feature's std across the valid tokens."""
  zc, n = _weighted_centered(z, valid)
  return jnp.sqrt((zc * zc).sum(0) / n).mean()


def effective_rank(z: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
  """exp(H(p)), p = singular values / their sum, of the centred valid tokens."""
  zc, n = _weighted_centered(z, valid)
  eig = jnp.linalg.eigvalsh(zc.T @ zc / n)
  # Eigenvalues below the float32 resolution of the covariance are zero; their rounding
  # noise would otherwise inflate the rank after the square root.
  eig = jnp.where(eig > eig.max() * eig.shape[0] * jnp.finfo(jnp.float32).eps, eig, 0.0)
  sv = jnp.sqrt(eig)
  p = sv / jnp.maximum(sv.sum(), 1e-12)
  entropy = -(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)).sum()
  return jnp.exp(entropy)


def collapse_monitors(prefix: str, z: jnp.ndarray, valid: jnp.ndarray) -> dict:
  return {f"{prefix}_feature_std": feature_std(z, valid),
          f"{prefix}_effective_rank": effective_rank(z, valid)}
