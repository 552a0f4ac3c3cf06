"""Nearest-neighbour contrastive learning (NNCLR, Dwibedi et al. 2021) as uaMix-MAE uses it
(eq. 1 and 4): a projection head, a FIFO queue of past embeddings with their example ids,
a nearest-neighbour lookup that never returns a copy of the example itself, and InfoNCE
against the batch's positives with soft (virtual) labels.

The queue is a dict of arrays with static shapes (the objective's aux state, so it is
sharded, donated and checkpointed with the rest of the train state):
  embeddings (Q, d) float32, L2-normalised rows; ids (Q,) int32, -1 = empty; ptr () int32."""
import jax
import jax.numpy as jnp


def l2_normalize(x: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
  return x * jax.lax.rsqrt(jnp.maximum((x * x).sum(-1, keepdims=True), eps))


def init_queue(size: int, dim: int) -> dict:
  return {"embeddings": jnp.zeros((size, dim), jnp.float32),
          "ids": jnp.full((size,), -1, jnp.int32), "ptr": jnp.zeros([], jnp.int32)}


def enqueue(queue: dict, z: jnp.ndarray, ids: jnp.ndarray) -> dict:
  """Write the batch over the oldest entries (MoCo's FIFO); Q must be a multiple of B so a
  batch never straddles the end."""
  size, b = queue["ids"].shape[0], z.shape[0]
  if size % b:
    raise ValueError(f"queue size {size} is not a multiple of the batch size {b}")
  ptr = queue["ptr"]
  return {"embeddings": jax.lax.dynamic_update_slice(
              queue["embeddings"], z.astype(jnp.float32), (ptr, 0)),
          "ids": jax.lax.dynamic_update_slice(queue["ids"], ids.astype(jnp.int32), (ptr,)),
          "ptr": (ptr + b) % size}


def nearest_neighbours(z: jnp.ndarray, exclude: jnp.ndarray, queue: dict, k: int):
  """Top-k queue entries by cosine similarity to each row of z (B, d), skipping empty
  entries and entries whose id is in that row of `exclude` (B, E).

  Returns (neighbours (B, k, d), found (B, k) bool: False where fewer than k entries
  qualify, queue index (B, k)).
  """
  sim = z.astype(jnp.float32) @ queue["embeddings"].T
  ids = queue["ids"]
  barred = (ids[None, :] < 0) | (ids[None, None, :] == exclude[:, :, None]).any(axis=1)
  top, index = jax.lax.top_k(jnp.where(barred, -jnp.inf, sim), k)
  return queue["embeddings"][index], jnp.isfinite(top), index


def soft_info_nce(anchors: jnp.ndarray, positives: jnp.ndarray, labels: jnp.ndarray,
                  temperature: float) -> jnp.ndarray:
  """Per-example loss sum_l y[i, l] L_CL(anchor_i, z+_l), with L_CL(a, z+_l) = -log softmax
  over the batch's positives of a . z+ / tau, at l; averaged over the k anchors of a row.
  anchors (B, k, d), positives (B, d), labels (B, B) -> (B,)."""
  logits = jnp.einsum("bkd,nd->bkn", anchors.astype(jnp.float32),
                      positives.astype(jnp.float32)) / temperature
  return -(labels[:, None, :] * jax.nn.log_softmax(logits, axis=-1)).sum(-1).mean(-1)
