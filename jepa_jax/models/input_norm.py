"""Dasheng's input normaliser: BatchNorm over mel bins, learned with the encoder.

Training normalises each mel bin by the batch's statistics (over clips and frames; under
jit with a batch sharded over devices, that is the global batch) and keeps running
averages with PyTorch momentum 0.01 (flax momentum 0.99). For evaluation the running
statistics and the affine parameters fold into one per-bin scale and shift, which the
encoder export carries (`frontend.json`, "input_norm"), so every consumer applies
exactly what the encoder saw: y = x * scale + shift per mel bin.
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

EPSILON = 1e-5  # torch.nn.BatchNorm2d's default


class MelBatchNorm(nn.Module):
  """(B, n_mels, T) -> the same, normalised per mel bin."""

  @nn.compact
  def __call__(self, mel: jnp.ndarray, train: bool) -> jnp.ndarray:
    return nn.BatchNorm(
        use_running_average=not train, axis=1, momentum=0.99, epsilon=EPSILON, name="bn",
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (None,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)))(mel)


def initial_stats(n_mels: int) -> dict:
  """The running statistics before training: mean 0, variance 1 (as PyTorch)."""
  return {"bn": {"mean": jnp.zeros((n_mels,), jnp.float32),
                 "var": jnp.ones((n_mels,), jnp.float32)}}


def fold(params: dict, stats: dict) -> dict:
  """The evaluation-mode BatchNorm as {"scale": [...], "shift": [...]} per mel bin."""
  p, s = params["bn"], stats["bn"]
  scale = np.asarray(p["scale"], np.float64) / np.sqrt(np.asarray(s["var"], np.float64)
                                                       + EPSILON)
  shift = np.asarray(p["bias"], np.float64) - np.asarray(s["mean"], np.float64) * scale
  return {"scale": scale.tolist(), "shift": shift.tolist()}
