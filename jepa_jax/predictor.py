"""JEPA predictor (Audio-JEPA / I-JEPA): context tokens + mask tokens -> target tokens.

Linear in (encoder width -> predictor width), sin-cos positions added to the context
tokens, a shared learnable mask token plus the sin-cos position of every target, a
narrow ViT over the concatenation (padding keys masked out), LayerNorm, linear out
(predictor width -> encoder width); returns the outputs at the target slots.
"""
import flax.linen as nn
import jax.numpy as jnp

from jepa_jax import positions
from jepa_jax.vit import Dtype, Transformer, dense


class Predictor(nn.Module):
  grid: tuple[int, int]
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  out_dim: int
  dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, context: jnp.ndarray, context_idx: jnp.ndarray,
               context_valid: jnp.ndarray, target_idx: jnp.ndarray,
               target_valid: jnp.ndarray) -> jnp.ndarray:
    table = jnp.asarray(positions.sincos_2d(self.width, self.grid))
    x = dense(self.width, (None, "embed"), self.dtype, "embed")(context)
    x = x + table[context_idx]
    mask_token = self.param(
        "mask_token",
        nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed")),
        (1, 1, self.width))
    queries = jnp.broadcast_to(mask_token, target_idx.shape + (self.width,)) + table[target_idx]
    h = jnp.concatenate([x, queries.astype(x.dtype)], axis=1)
    valid = jnp.concatenate([context_valid, target_valid], axis=1)
    h = Transformer(self.depth, self.num_heads, self.mlp_dim, self.dtype,
                    self.attention_impl, name="transformer")(h, valid)
    return dense(self.out_dim, ("embed", None), self.dtype, "project")(h[:, context.shape[1]:])
