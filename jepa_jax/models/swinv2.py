"""AudioMAE's local decoder block (and so the A-JEPA predictor's): a Swin V2 block.

AudioMAE (facebookresearch/AudioMAE, models_mae.py, decoder_mode=1, its default) builds
its 16 decoder blocks from `SwinTransformerBlock` of timm_patch/swin_transformer.py, which
timm_patch.sh copies over timm's own swin_transformer.py: timm's Swin V2 "cr" block
(swin_transformer_v2_cr.py), not the pre-norm ViT block of vit.Block. Per block:

  x = x + LN1(window_attention(x))      post-norm residual branches (LN on the branch,
  x = x + LN2(mlp(x))                   not on its input); no extra main-branch norm

  window_attention, per window of L tokens and head h:
    s_qk = (q . k) / max(|q| |k|, 1e-6) / max(tau_h, 0.01) + B_h[q, k]
    scaled cosine attention: one learned temperature tau per head, initialised to 1;
    qkv one Linear with bias on q, k and v; B from a two-layer "meta" MLP
    (2 -> 384, ReLU -> heads) over the log-spaced relative coordinates
    sign(d) ln(1 + |d|) of each query-key pair of a window (d = query - key, per axis),
    used as it comes out (no 16 sigmoid, no normalisation by the window size);
    shifted windows, labelled and masked as attention.Windows does.
  mlp: Linear -> exact GELU -> Linear (vit.Mlp).

Initialised as AudioMAE's `_init_weights`: every Linear (the meta MLP's too) Xavier-uniform
with zero bias, LayerNorms 1 / 0; tau 1.

Differences from the reference, all deliberate:
- windows come from attention.Windows, in this package's (frequency, time) order: the
  reference's grid is (time, frequency) and its shift (2, 0); here (0, 2). The meta
  MLP's two inputs are (frequency, time) offsets, which permutes the rows of its first
  kernel against the reference's (time, frequency), nothing else;
- masked keys get no weight at all (the reference adds -100 to the logits of keys from
  another region, which s_qk in [-100, 100] + B can leak through when tau is at its
  clamp); padding keys (a key mask) are switched off the same way;
- the reference's meta MLP has dropout 0.1 in training (a FIXME in timm's code); no
  module here has dropout, so neither does this one.
Attention is the dense product over each window's L (16) keys; model.attention_impl has
nothing to choose there.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax.models import attention, layers, vit

META_HIDDEN = 384    # timm's meta_hidden_dim default, which AudioMAE keeps
TAU_MIN = 0.01       # tau.clamp(min=0.01): at most a 100x sharper softmax
NORM_EPS = 1e-6      # denominator clamp of the cosine similarity


def log_relative_coordinates(size: tuple[int, int]) -> np.ndarray:
  """(L * L, 2) float32, L = size[0] * size[1]: row q * L + k holds sign(d) ln(1 + |d|)
  for d = position(q) - position(k) on each axis of the window, tokens row-major."""
  a, b = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
  coords = np.stack([a.ravel(), b.ravel()], axis=-1)            # (L, 2)
  d = (coords[:, None, :] - coords[None, :, :]).reshape(-1, 2)  # (L * L, 2)
  return (np.sign(d) * np.log1p(np.abs(d))).astype(np.float32)


class RelativePositionBias(nn.Module):
  """(heads, L, L) float32 bias of a window of `size` tokens: the two-layer meta MLP
  over log_relative_coordinates."""
  num_heads: int
  size: tuple[int, int]

  @nn.compact
  def __call__(self) -> jnp.ndarray:
    n = self.size[0] * self.size[1]
    h = layers.dense(META_HIDDEN, (None, None), jnp.float32, "fc1")(
        jnp.asarray(log_relative_coordinates(self.size)))
    h = layers.dense(self.num_heads, (None, "heads"), jnp.float32, "fc2")(nn.relu(h))
    return h.T.reshape(self.num_heads, n, n)


class CosineWindowAttention(nn.Module):
  """Scaled cosine attention within `windows`, plus the meta MLP's position bias;
  `key_mask` (B, S) bool switches keys off."""
  num_heads: int
  windows: attention.Windows
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, key_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    width, w = x.shape[-1], self.windows
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
    if x.shape[1] != w.grid[0] * w.grid[1]:
      raise ValueError(f"windowed attention needs the whole {w.grid} token grid, got "
                       f"{x.shape[1]} tokens")
    qkv = layers.Projection((3, self.num_heads, width // self.num_heads), ("embed",),
                            (None, "heads", "kv"), self.dtype, name="qkv")(x)
    qkv = w.partition(qkv)  # (B * windows, L, 3, heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    dots = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    q2 = jnp.sum(jnp.square(q.astype(jnp.float32)), -1).swapaxes(1, 2)  # (B*w, heads, L)
    k2 = jnp.sum(jnp.square(k.astype(jnp.float32)), -1).swapaxes(1, 2)
    # max(|q| |k|, eps) as sqrt(max(|q|^2 |k|^2, eps^2)): no infinite gradient at zero.
    norms = jnp.sqrt(jnp.maximum(q2[..., :, None] * k2[..., None, :], NORM_EPS ** 2))
    tau = self.param("tau", layers.named(nn.initializers.ones_init(), ("heads",)),
                     (self.num_heads,))
    scale = 1.0 / jnp.maximum(tau, TAU_MIN)
    bias = RelativePositionBias(self.num_heads, w.size, name="meta_mlp")()
    scores = dots / norms * scale[:, None, None] + bias
    mask = jnp.tile(jnp.asarray(w.region_mask), (x.shape[0], 1, 1))
    if key_mask is not None:
      mask = mask & w.partition(key_mask)[:, None, :]
    scores = jnp.where(mask[:, None], scores, jnp.float32(-1e30))
    weights = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v,
                     preferred_element_type=jnp.float32).astype(v.dtype)
    return layers.Projection((width,), ("heads", "kv"), ("embed",), self.dtype,
                             name="out")(w.merge(out))


class SwinV2Block(nn.Module):
  """Post-norm Swin V2 block: x + LN(window_attention(x)), then x + LN(mlp(x)). The same
  constructor and call as vit.Block, for vit.Transformer(block=SwinV2Block);
  `attention_impl` is unused (see the module docstring), `windows` required."""
  num_heads: int
  mlp_dim: int
  dtype: layers.Dtype = jnp.float32
  attention_impl: str | None = None
  windows: attention.Windows | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, key_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    if self.windows is None:
      raise ValueError("the Swin V2 block needs local attention windows")
    y = CosineWindowAttention(self.num_heads, self.windows, self.dtype, name="attn")(x, key_mask)
    x = x + layers.layer_norm("norm1", self.dtype)(y)
    x = x + layers.layer_norm("norm2", self.dtype)(vit.Mlp(self.mlp_dim, self.dtype, name="mlp")(x))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))
