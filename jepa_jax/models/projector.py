"""The NNCLR projector of uaMix-MAE: an MLP with batch-statistics normalisation on top of the
encoder's pooled embedding."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from jepa_jax.models import layers


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


class Projector(nn.Module):
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
      x = layers.dense(self.out if last else self.hidden, names, jnp.float32, f"dense_{i}")(x)
      x = BatchStatNorm(name=f"norm_{i}")(x)
      if not last:
        x = nn.relu(x)
    return x
