"""Nearest-neighbour contrastive learning (NNCLR, Dwibedi et al. 2021) as uaMix-MAE uses it
(eq. 1 and 4): a projection head, a FIFO queue of past embeddings with their example ids,
a nearest-neighbour lookup that never returns a copy of the example itself, and InfoNCE
against the batch's positives with soft (virtual) labels.

The queue is a dict of arrays with static shapes (the objective's aux state, so it is
sharded, donated and checkpointed with the rest of the train state):
  embeddings (Q, d) float32, L2-normalised rows; ids (Q,) int32, -1 = empty; ptr () int32.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from jepa_jax import vit


class BatchStatNorm(nn.Module):
  """BatchNorm in training mode (batch statistics, learned scale and bias). The head only
  exists during training, so no running statistics are kept."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                             (None,)), (x.shape[-1],))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                           (None,)), (x.shape[-1],))
    mean = x.mean(0, keepdims=True)
    var = x.var(0, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


class ProjectionHead(nn.Module):
  """NNCLR's projector: (Linear, BatchNorm, ReLU) x (layers - 1), then Linear, BatchNorm."""
  hidden: int
  out: int
  layers: int = 3

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = x.astype(jnp.float32)
    for i in range(self.layers):
      last = i == self.layers - 1
      # Axis names alternate as in the encoder's MLP, so FSDP ('embed') and tensor
      # parallelism ('mlp') split every kernel instead of leaving it on each device.
      names = ("embed", "mlp") if i % 2 == 0 else ("mlp", "embed")
      x = vit.dense(self.out if last else self.hidden, names, jnp.float32, f"dense_{i}")(x)
      x = BatchStatNorm(name=f"norm_{i}")(x)
      if not last:
        x = nn.relu(x)
    return x


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
