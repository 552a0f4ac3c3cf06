"""Predictor (JEPA) and decoder (MAE): context tokens + mask tokens -> outputs at targets.

Linear in (encoder width -> predictor width) plus positions for the context tokens; a
shared learnable mask token plus the position of every query; a narrow ViT; linear out
(predictor width -> `out_dim`: the encoder width for JEPA, the patch values for MAE);
the outputs at the target slots are returned.

Two layouts of the query tokens:
  queries only (Audio-JEPA / I-JEPA): the ViT sees the context and one mask token per
      target slot (padding keys masked out); each target group needs its own pass.
  full grid (A-JEPA predictor, MAE decoders): the context is put back on the whole token
      grid and every other position gets a mask token, so one pass serves every target
      group, and attention may be local (shifted windows over the grid).

Two blocks (`block`, BLOCKS): 'prenorm' (vit.Block, as the encoder's) or 'swinv2'
(swinv2.SwinV2Block: AudioMAE's local decoder block, post-norm scaled cosine window
attention with a relative position bias MLP; needs local windows).
"""
import flax.linen as nn
import jax.numpy as jnp

from jepa_jax.models.attention import Windows
from jepa_jax.models.layers import Dtype, dense
from jepa_jax.models.patches import gather_tokens
from jepa_jax.models.swinv2 import SwinV2Block
from jepa_jax.models.vit import Block, PositionTable, Transformer

BLOCKS = {"prenorm": Block, "swinv2": SwinV2Block}  # predictor / decoder `block`


class Predictor(nn.Module):
  grid: tuple[int, int]
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  out_dim: int
  dtype: Dtype = jnp.float32
  attention_impl: str | None = None
  full_grid: bool = False
  windows: Windows | None = None  # local attention; needs full_grid
  positions: str = "sincos"
  scan: bool = False       # see vit.Transformer
  remat: str = "none"
  block: str = "prenorm"   # BLOCKS

  @nn.compact
  def __call__(self, context: jnp.ndarray, context_idx: jnp.ndarray,
               context_valid: jnp.ndarray, target_idx: jnp.ndarray,
               target_valid: jnp.ndarray) -> jnp.ndarray:
    if self.windows is not None and not self.full_grid:
      raise ValueError("windowed attention needs the full token grid (full_grid=True)")
    if self.block not in BLOCKS:
      raise ValueError(f"unknown block {self.block!r}; known: {', '.join(BLOCKS)}")
    table = PositionTable(self.grid, self.width, self.positions, name="positions")()
    x = dense(self.width, (None, "embed"), self.dtype, "embed")(context)
    x = (x + table[context_idx]).astype(self.dtype)  # the float32 table would promote it
    mask_token = self.param(
        "mask_token",
        nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed")),
        (1, 1, self.width))
    transformer = Transformer(self.depth, self.num_heads, self.mlp_dim, self.dtype,
                              self.attention_impl, self.windows, scan=self.scan,
                              remat=self.remat, block=BLOCKS[self.block], name="transformer")
    if self.full_grid:
      b, n = x.shape[0], table.shape[0]
      grid = jnp.broadcast_to(mask_token + table[None], (b, n, self.width)).astype(x.dtype)
      # Padding context slots point past the grid and are dropped by the scatter.
      slots = jnp.where(context_valid, context_idx, n)
      grid = grid.at[jnp.arange(b)[:, None], slots].set(x, mode="drop")
      h = gather_tokens(transformer(grid), target_idx)
    else:
      queries = jnp.broadcast_to(mask_token, target_idx.shape + (self.width,)) \
          + table[target_idx]
      h = jnp.concatenate([x, queries.astype(x.dtype)], axis=1)
      valid = jnp.concatenate([context_valid, target_valid], axis=1)
      h = transformer(h, valid)[:, context.shape[1]:]
    return dense(self.out_dim, ("embed", None), self.dtype, "project")(h)
