"""The one Vision Transformer of jepa_jax: attention, MLP, pre-norm blocks, encoder.

Every parameter carries logical axis names ('embed', 'mlp', 'heads', 'kv', 'patch');
mesh.py maps them to mesh axes by the rules in the config, so model code never names
a device axis. Attention goes through `jax.nn.dot_product_attention` with an optional
key mask: padded tokens, block masks and regularised masking all switch keys off.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jepa_jax import positions

Dtype = Any
LN_EPS = 1e-6  # timm / MAE / M2D ViTs


def _param(init, names):
  return nn.with_logical_partitioning(init, names)


def layer_norm(name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=LN_EPS, name=name,
      scale_init=_param(nn.initializers.ones_init(), ("embed",)),
      bias_init=_param(nn.initializers.zeros_init(), ("embed",)))


def dense(features: int, names: tuple, dtype: Dtype, name: str) -> nn.Dense:
  """Linear layer with Xavier-uniform kernel and zero bias (MAE / M2D init)."""
  return nn.Dense(
      features, dtype=dtype, name=name,
      kernel_init=_param(nn.initializers.xavier_uniform(), names),
      bias_init=_param(nn.initializers.zeros_init(), names[-1:]))


class Projection(nn.Module):
  """Linear map over the last `len(in_names)` axes into `features`; Xavier-uniform on the
  full kernel shape (fan_in = prod of input axes, fan_out = prod of features), zero bias.
  (flax's DenseGeneral initialises a flattened kernel, which breaks logical sharding
  constraints applied to the unflattened one.)"""
  features: tuple[int, ...]
  in_names: tuple
  out_names: tuple
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    n_in = len(self.in_names)
    in_shape = x.shape[-n_in:]
    kernel = self.param(
        "kernel",
        _param(nn.initializers.xavier_uniform(
            in_axis=tuple(range(n_in)),
            out_axis=tuple(range(n_in, n_in + len(self.features)))),
            self.in_names + self.out_names),
        in_shape + tuple(self.features))
    bias = self.param("bias", _param(nn.initializers.zeros_init(), self.out_names),
                      tuple(self.features))
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (contract, ((), ())))
    return y + bias.astype(self.dtype)


class Attention(nn.Module):
  """Multi-head self-attention; `key_mask` (B, S) bool switches keys off."""
  num_heads: int
  dtype: Dtype = jnp.float32
  implementation: str | None = None  # None lets jax choose; 'xla' or 'cudnn'

  @nn.compact
  def __call__(self, x: jnp.ndarray, key_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
    head_dim = width // self.num_heads
    # One fused QKV projection (a single larger GEMM); Xavier over (width, 3 * width)
    # as the reference Linear(width, 3 * width).
    qkv = Projection((3, self.num_heads, head_dim), ("embed",), (None, "heads", "kv"),
                     self.dtype, name="qkv")(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.implementation)
    return Projection((width,), ("heads", "kv"), ("embed",), self.dtype, name="out")(out)


class Mlp(nn.Module):
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    width = x.shape[-1]
    x = dense(self.hidden, ("embed", "mlp"), self.dtype, "fc1")(x)
    x = nn.gelu(x, approximate=False)
    return dense(width, ("mlp", "embed"), self.dtype, "fc2")(x)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, key_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    y = Attention(self.num_heads, self.dtype, self.attention_impl, name="attn")(
        layer_norm("norm1")(x), key_mask)
    x = x + y
    x = x + Mlp(self.mlp_dim, self.dtype, name="mlp")(layer_norm("norm2")(x))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Transformer(nn.Module):
  """`depth` pre-norm blocks followed by the final LayerNorm."""
  depth: int
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, key_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_dim, self.dtype, self.attention_impl,
                name=f"block_{i}")(x, key_mask)
    return layer_norm("norm")(x)


class Encoder(nn.Module):
  """ViT over 16 x 16 spectrogram patches with fixed 2-D sin-cos positions, no CLS.

  Call with the patches it should see: `patches` (B, M, p*p) at token positions
  `idx` (B, M) (every position in order when None), and `valid` (B, M) marking real
  tokens (padding is never attended to).
  """
  grid: tuple[int, int]
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, patches: jnp.ndarray, idx: jnp.ndarray | None = None,
               valid: jnp.ndarray | None = None) -> jnp.ndarray:
    if patches.shape[-1] != self.patch_size ** 2:
      raise ValueError(f"patches of {patches.shape[-1]} values given to an encoder of "
                       f"{self.patch_size} x {self.patch_size} patches")
    x = dense(self.width, ("patch", "embed"), self.dtype, "patch_embed")(patches)
    table = jnp.asarray(positions.sincos_2d(self.width, self.grid))
    if idx is None:
      if x.shape[1] != table.shape[0]:
        raise ValueError(f"{x.shape[1]} patches given without positions; the grid "
                         f"{self.grid} has {table.shape[0]}")
      x = x + table[None]
    else:
      x = x + table[idx]
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return Transformer(self.depth, self.num_heads, self.mlp_dim, self.dtype,
                       self.attention_impl, name="transformer")(x, valid)
