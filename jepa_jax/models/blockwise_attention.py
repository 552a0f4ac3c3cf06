"""Blockwise (flash-style) self-attention in plain JAX: the softmax is taken online over
blocks of keys, so no (S, S) score matrix is ever held, in the forward nor in the backward
(a custom VJP that recomputes each block's scores from the saved row maxima and sums).
Memory per step is one (B, heads, S, block) slab of scores instead of (B, heads, S, S).

Which keys a query sees is given in factored form, never as an (S, S) mask:
  allowed(b, i, j) = key_mask[b, j] and segments[b, i] == segments[b, j]
`key_mask` switches keys off (padding, A-JEPA's regularised masks); `segments` labels
tokens that may see each other (Swin's shifted-window regions, `Windows.regions`).
Masked keys get the score -1e30, as in `attention.dense_attention`, so a query with no
key left spreads evenly over all keys exactly as the dense path does."""
import functools

import jax
import jax.numpy as jnp

MASKED = -1e30  # attention.dense_attention's fill: a fully masked row weighs all keys alike
# Keys per block. Forward + backward at B=8, 12 heads of 64, f32, timed interleaved in one
# run on the 2-core CPU (2026-12-07): 256 took 220 ms at S=512 and 800 at 1024, 128
# took 283 and 859; at S=512 the ViT-B Audio-JEPA step peaked at 6118 MiB against 5834.
BLOCK = 256


def blockwise_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray,
                        key_mask: jnp.ndarray | None = None,
                        segments: jnp.ndarray | None = None,
                        block: int = BLOCK) -> jnp.ndarray:
  """Softmax attention over (B, S, heads, head_dim), scores q k / sqrt(head_dim) in
  float32, equal to `attention.dense_attention` with the mask above. `key_mask` (B, S)
  bool and `segments` (B, S) int may each be None (all keys; one segment). A sequence
  that is not a multiple of `block` gets padding keys that weigh nothing."""
  b, s = q.shape[:2]
  if key_mask is not None:
    key_mask = jnp.broadcast_to(key_mask, (b, s))
  if segments is not None:
    segments = jnp.broadcast_to(segments, (b, s)).astype(jnp.int32)
  return _attention(q, k, v, key_mask, segments, min(block, s))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, key_mask, segments, block):
  return _forward(q, k, v, key_mask, segments, block)[0]


def _heads_major(x: jnp.ndarray) -> jnp.ndarray:
  """(B, S, H, D) -> (B, H, S, D): the block products become plain batched GEMMs."""
  return jnp.swapaxes(x, 1, 2)


def _key_blocks(x: jnp.ndarray, block: int, axis: int, fill=0) -> jnp.ndarray:
  """Split `axis` (the key axis, length S) into ceil(S / block) blocks, padded with
  `fill`, stacked on a new leading axis for lax.scan."""
  s = x.shape[axis]
  count = -(-s // block)
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, count * block - s)
  x = jnp.pad(x, pad, constant_values=fill)
  x = x.reshape(x.shape[:axis] + (count, block) + x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _inputs(q, k, v, key_mask, segments, block):
  """The scaled queries (B, H, S, D) and the scan's per-block inputs: keys and values
  (blocks, B, H, block, D), key mask and segments (blocks, B, block), and whether each
  key is a real one rather than padding (blocks, block)."""
  s = q.shape[1]
  scaled = _heads_major(q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype))
  # None stays None (a pytree without leaves): no mask work where there is no mask.
  real = None if s % block == 0 else _key_blocks(jnp.ones((s,), bool), block, 0, False)
  blocks = (_key_blocks(_heads_major(k), block, 2), _key_blocks(_heads_major(v), block, 2),
            None if key_mask is None else _key_blocks(key_mask, block, 1, False),
            None if segments is None else _key_blocks(segments, block, 1, -1), real)
  return scaled, blocks


def _block_scores(scaled, segments, k_blk, mask_blk, seg_blk, real_blk):
  """(B, H, S, block) float32 scores of one key block: MASKED where the mask says no,
  -inf at padding keys (which then weigh nothing even in a fully masked row), and the
  bool (broadcastable to the scores) of the keys a query may see, None for all."""
  scores = jnp.einsum("bhqd,bhkd->bhqk", scaled, k_blk, preferred_element_type=jnp.float32)
  allowed = None
  if mask_blk is not None:
    allowed = mask_blk[:, None, None, :]
  if seg_blk is not None:
    same = (segments[:, :, None] == seg_blk[:, None, :])[:, None]
    allowed = same if allowed is None else allowed & same
  if allowed is not None:
    scores = jnp.where(allowed, scores, jnp.float32(MASKED))
  if real_blk is not None:
    scores = jnp.where(real_blk, scores, -jnp.inf)
    allowed = real_blk if allowed is None else allowed & real_blk
  return scores, allowed


def _forward(q, k, v, key_mask, segments, block):
  scaled, blocks = _inputs(q, k, v, key_mask, segments, block)
  b, h, s, d = scaled.shape

  def step(carry, blk):
    row_max, row_sum, acc = carry
    k_blk, v_blk, mask_blk, seg_blk, real_blk = blk
    scores, _ = _block_scores(scaled, segments, k_blk, mask_blk, seg_blk, real_blk)
    new_max = jnp.maximum(row_max, scores.max(-1))
    rescale = jnp.exp(row_max - new_max)  # exp(-inf) = 0 on the first block
    weights = jnp.exp(scores - new_max[..., None])
    acc = acc * rescale[..., None] + jnp.einsum(
        "bhqk,bhkd->bhqd", weights.astype(v.dtype), v_blk, preferred_element_type=jnp.float32)
    return (new_max, row_sum * rescale + weights.sum(-1), acc), None

  init = (jnp.full((b, h, s), -jnp.inf, jnp.float32), jnp.zeros((b, h, s), jnp.float32),
          jnp.zeros((b, h, s, d), jnp.float32))
  (row_max, row_sum, acc), _ = jax.lax.scan(step, init, blocks)
  out = _heads_major(acc / row_sum[..., None]).astype(q.dtype)
  # The row max and sum, not their logsumexp: in a fully masked row max = -1e30 swallows
  # log(S) in float32, and the backward would weigh each key 1 instead of 1 / S.
  return out, (q, k, v, key_mask, segments, out, row_max, row_sum)


def _keys_major(x: jnp.ndarray) -> jnp.ndarray:
  """(..., S, block) -> (..., block, S) for the products that sum over queries. On CPU
  the swap is a copy: XLA:CPU runs a batched product that sums over its left operand's
  rows at half speed (50 ms, against 22 + 7 for the copy, at (96, 512, 512) x
  (96, 512, 64)); the barrier keeps XLA from folding the swap back into the product.
  Elsewhere the product reads the swapped operand as it is."""
  x = jnp.swapaxes(x, -1, -2)
  return jax.lax.optimization_barrier(x) if jax.default_backend() == "cpu" else x


def _backward(block, residuals, d_out):
  q, k, v, key_mask, segments, out, row_max, row_sum = residuals
  scaled, blocks = _inputs(q, k, v, key_mask, segments, block)
  d_out_h = _heads_major(d_out).astype(jnp.float32)
  # D_i = sum_j P_ij dP_ij = d_out_i . out_i, the softmax backward's row term.
  row_dot = jnp.einsum("bhqd,bhqd->bhq", d_out_h, _heads_major(out).astype(jnp.float32))

  def step(d_q, blk):
    k_blk, v_blk, mask_blk, seg_blk, real_blk = blk
    scores, allowed = _block_scores(scaled, segments, k_blk, mask_blk, seg_blk, real_blk)
    weights = jnp.exp(scores - row_max[..., None]) / row_sum[..., None]
    d_v = jnp.einsum("bhkq,bhqd->bhkd", _keys_major(weights), d_out_h)
    d_weights = jnp.einsum("bhqd,bhkd->bhqk", d_out_h, v_blk, preferred_element_type=jnp.float32)
    # Masked scores are constants in the dense path: no gradient flows through them.
    d_scores = weights * (d_weights - row_dot[..., None])
    if allowed is not None:
      d_scores = jnp.where(allowed, d_scores, 0.0)
    d_q = d_q + jnp.einsum("bhqk,bhkd->bhqd", d_scores, k_blk, preferred_element_type=jnp.float32)
    d_k = jnp.einsum("bhkq,bhqd->bhkd", _keys_major(d_scores), scaled,
                     preferred_element_type=jnp.float32)
    return d_q, (d_k, d_v)

  d_q, (d_k, d_v) = jax.lax.scan(step, jnp.zeros(scaled.shape, jnp.float32), blocks)
  s = q.shape[1]

  def unblock(x, like):  # (blocks, B, H, block, D) -> (B, S, H, D)
    x = jnp.moveaxis(x, 0, 2).reshape(x.shape[1], x.shape[2], -1, x.shape[-1])[:, :, :s]
    return _heads_major(x).astype(like.dtype)

  d_q = _heads_major(d_q * q.shape[-1] ** -0.5).astype(q.dtype)
  return d_q, unblock(d_k, k), unblock(d_v, v), None, None


_attention.defvjp(_forward, _backward)
