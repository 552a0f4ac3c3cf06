"""Global self-attention through the splash attention Pallas kernel that JAX ships for
TPUs (jax.experimental.pallas.ops.tpu.splash_attention), with `attention.dense_attention`'s
semantics: the key mask as segment ids, padding to the kernel's blocks, and a query with
no key left spreading evenly over all keys. `interpret=True` runs the kernel's Pallas
program on any backend (slowly): how the tests check it on CPU."""
import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

BLOCK = 128  # the kernel's default tile (BlockSizes.get_default); sequences pad to it
KEY_ON, KEY_OFF, PADDING = 0, 1, 2  # segment ids: a query (segment 0) sees KEY_ON keys


@functools.cache
def _kernel(heads: int, length: int, interpret: bool):
  """The kernel for one example, (heads, length, head_dim) in, no static mask (all
  masking comes from the segment ids)."""
  mask = splash.MultiHeadMask([splash.FullMask((length, length))] * heads)
  return splash.make_splash_mha_single_device(mask, interpret=interpret)


def splash_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray,
                     key_mask: jnp.ndarray | None = None, interpret: bool = False
                     ) -> jnp.ndarray:
  """Softmax attention over (B, S, heads, head_dim) with an optional (B, S) bool key
  mask, equal to `attention.dense_attention` with that mask."""
  b, s, heads, d = q.shape
  length = -(-s // BLOCK) * BLOCK
  key_mask = jnp.ones((b, s), bool) if key_mask is None else jnp.broadcast_to(key_mask, (b, s))
  # The kernel's softmax needs a key in every row; an example with none is replaced below.
  none_left = ~key_mask.any(-1)
  key_ids = jnp.where(key_mask | none_left[:, None], KEY_ON, KEY_OFF)
  # Padding queries see only padding keys, so their rows are never empty either.
  ids = splash.SegmentIds(
      q=jnp.pad(jnp.full((b, s), KEY_ON), ((0, 0), (0, length - s)), constant_values=PADDING),
      kv=jnp.pad(key_ids, ((0, 0), (0, length - s)), constant_values=PADDING))

  def heads_major(x):  # (B, S, H, D) -> (B, H, length, D), padded
    return jnp.pad(jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (0, length - s), (0, 0)))

  scaled = q * jnp.asarray(d ** -0.5, q.dtype)  # the kernel does not scale
  kernel = _kernel(heads, length, interpret)
  out = jax.vmap(kernel)(heads_major(scaled), heads_major(k), heads_major(v), ids)
  out = jnp.swapaxes(out, 1, 2)[:, :s]
  # dense_attention's fully masked row: every score -1e30, so even weights over all keys.
  even = jnp.broadcast_to(v.mean(1, keepdims=True), out.shape)
  return jnp.where(none_left[:, None, None, None], even.astype(out.dtype), out)
