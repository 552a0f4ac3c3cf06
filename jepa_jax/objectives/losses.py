"""Distances between predicted and target token embeddings, and masked averaging."""
import jax.numpy as jnp


def standardize(x: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
  """Per-token standardisation over features (layer norm without affine)."""
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + eps)


def smooth_l1(pred: jnp.ndarray, target: jnp.ndarray, beta: float = 1.0) -> jnp.ndarray:
  """Element-wise smooth L1 (Huber / beta) averaged over features: (..., D) -> (...)."""
  d = jnp.abs(pred - target)
  per_element = jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
  return per_element.mean(-1)


def smooth_l1_vector(pred: jnp.ndarray, target: jnp.ndarray, beta: float = 1.0) -> jnp.ndarray:
  """Audio-JEPA eq. 3 as written, per token vector: switches on the L1 norm."""
  d = pred - target
  l1 = jnp.abs(d).sum(-1)
  return jnp.where(l1 < beta, 0.5 * (d * d).sum(-1) / beta, l1 - 0.5 * beta)


def l2(pred: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """Mean squared error over features: (..., D) -> (...)."""
  return ((pred - target) ** 2).mean(-1)


DISTANCES = {"smooth_l1": smooth_l1, "smooth_l1_vector": smooth_l1_vector, "l2": l2}


def masked_mean(per_token: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
  """Mean over each sample's valid tokens, then over the batch: (B, N) -> ()."""
  valid = valid.astype(per_token.dtype)
  per_sample = (per_token * valid).sum(-1) / jnp.maximum(valid.sum(-1), 1.0)
  return per_sample.mean()
