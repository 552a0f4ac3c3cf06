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
    # The product on a view of the kernel with its axes merged where no sharded axis moves
    # (e.g. QKV's (embed, 3, heads, kv) as (embed, 3, heads x kv)): XLA:CPU otherwise lays
    # the kernel out afresh for the product every step, and its gradient back for AdamW:
    # 108 ms of copies in 2758 ms of a ViT-B Audio-JEPA step's op time at batch 8 (issue 26).
    in_view, out_view = _merged(in_shape, self.in_names), _merged(self.features, self.out_names)
    lead = x.shape[:-n_in]
    x = x.reshape(lead + in_view).astype(self.dtype)
    kernel = kernel.reshape(in_view + out_view).astype(self.dtype)
    contract = (tuple(range(len(lead), x.ndim)), tuple(range(len(in_view))))
    y = jax.lax.dot_general(x, kernel, (contract, ((), ())))
    return y.reshape(lead + tuple(self.features)) + bias.astype(self.dtype)


def _merged(shape: tuple, names: tuple) -> tuple:
  """`shape` with each axis named None or 'kv' (a head's own width; no sharding rule here
  splits either) merged into the axis before it: a merged axis then has at most its
  leading part split over devices, so sharding it needs no communication."""
  merged = []
  for size, name in zip(shape, names):
    if merged and name in (None, "kv"):
      merged[-1] *= size
    else:
      merged.append(size)
  return tuple(merged)
