"""Building blocks shared by every transformer here: LayerNorm, dense and multi-axis
projections with logically named, MAE-initialised parameters."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


LN_EPS = 1e-6  # timm / MAE / M2D ViTs


def named(init, names):
  """An initialiser whose parameter carries logical axis `names`."""
  return nn.with_logical_partitioning(init, names)


def layer_norm(name: str | None = None, dtype: Dtype | None = None) -> nn.LayerNorm:
  """Statistics in float32 whatever the input; the output in `dtype`, or float32 (the
  parameters' dtype) when None."""
  return nn.LayerNorm(
      epsilon=LN_EPS, name=name, dtype=dtype,
      scale_init=named(nn.initializers.ones_init(), ("embed",)),
      bias_init=named(nn.initializers.zeros_init(), ("embed",)))


def dense(features: int, names: tuple, dtype: Dtype, name: str) -> nn.Dense:
  """Linear layer with Xavier-uniform kernel and zero bias (MAE / M2D init)."""
  return nn.Dense(
      features, dtype=dtype, name=name,
      kernel_init=named(nn.initializers.xavier_uniform(), names),
      bias_init=named(nn.initializers.zeros_init(), names[-1:]))


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
        named(nn.initializers.xavier_uniform(
            in_axis=tuple(range(n_in)),
            out_axis=tuple(range(n_in, n_in + len(self.features)))),
            self.in_names + self.out_names),
        in_shape + tuple(self.features))
    bias = self.param("bias", named(nn.initializers.zeros_init(), self.out_names),
                      tuple(self.features))
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (contract, ((), ())))
    return y + bias.astype(self.dtype)
